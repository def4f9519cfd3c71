//! The shard map: stored on every shard by `migrate up`, adopted when a newer version
//! appears on any shard, refused when it does not fit the configured shards; and the
//! `orders shards` report.

use orders_core::shard_map::ShardMap;
use orders_core::shards::MapError;
use orders_core::store::shard_map;
use orders_migration::MigratorTrait;

use crate::helpers::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn migrate_stores_the_map_everywhere_and_a_newer_version_on_any_shard_is_adopted() {
    let app = TestApp::spawn_without_worker().await;
    for shard in app.shards.iter() {
        let (version, owners) = shard_map::latest(&shard.conn)
            .await
            .unwrap()
            .expect("a stored map");
        assert_eq!(
            (version, owners.as_slice()),
            (1, ShardMap::initial(4).owners())
        );
    }

    // Version 2 gives bucket 5 (shard 1 under v1) to shard 3, and is stored on shard 2 only.
    let customer = 1024 * 9 + 5;
    assert_eq!(app.shards.for_customer(customer).index, 1);
    let mut owners: Vec<u16> = ShardMap::initial(4).owners().to_vec();
    owners[5] = 3;
    let v2 = ShardMap::from_stored(2, owners, 4).unwrap();
    shard_map::publish(&app.shards.get(2).conn, &v2)
        .await
        .unwrap();
    let refresh = app.shards.refresh_map().await.unwrap();
    assert!(refresh.changed && refresh.version == 2, "{refresh:?}");
    assert_eq!(app.shards.for_customer(customer).index, 3);
    assert_eq!(
        app.shards.for_order(1024 * 77 + 5).index,
        3,
        "orders follow their bucket"
    );

    // A map for five shards cannot route over four URLs.
    let v3 = ShardMap::from_stored(3, ShardMap::initial(5).owners().to_vec(), 5).unwrap();
    shard_map::publish(&app.shards.get(0).conn, &v3)
        .await
        .unwrap();
    let refused = app
        .shards
        .refresh_map()
        .await
        .expect_err("the map does not fit");
    assert!(matches!(refused, MapError::Invalid(_)), "{refused}");
    assert!(
        refused
            .to_string()
            .contains("routes to 5 shards but 4 shard URLs"),
        "{refused}"
    );
    assert_eq!(
        app.shards.map().version(),
        2,
        "routing stays on the last good map"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_shards_reports_every_shard_and_marks_one_that_is_down() {
    let app = TestApp::spawn_without_worker().await;
    let customer = app.add_customer("Leslie Lamport", "100.00").await;
    app.insert_order(customer, &[(1, 1, "1.00")]).await;
    let home = app.shards.for_customer(customer).index;

    let output = app.cli_ok(&["shards", "--json"]);
    let reports: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 4);
    for (i, r) in reports.iter().enumerate() {
        assert_eq!(r["reachable"], true, "{r}");
        assert_eq!(r["buckets"], 256);
        assert_eq!(
            r["migration"],
            orders_migration::Migrator::migrations()
                .last()
                .unwrap()
                .name()
        );
        assert_eq!(r["orders"], i64::from(i == home), "{r}");
        assert_eq!(r["customers"], i64::from(i == home), "{r}");
        assert!(r["connections_open"].as_i64().unwrap() >= 1, "{r}");
        assert!(!r["url"].as_str().unwrap().contains(":secret"), "{r}");
    }

    let urls = app.urls_with_shard_down(1);
    let output = app
        .orders_command()
        .env("ORDERS_SHARDS", urls.join(","))
        .env("ORDERS_CONNECT_TIMEOUT_SECS", "2")
        .arg("shards")
        .output()
        .unwrap();
    assert!(
        !output.status.success(),
        "a down shard makes the report exit non-zero"
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("1 "))
        .expect("a line for shard 1");
    assert!(line.contains("UNREACHABLE"), "{text}");
    assert_eq!(text.matches(" up ").count(), 3, "{text}");

    let plan = app.cli(&["shards", "plan", "--to", "5", "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["buckets_moved"], 204, "{plan}");
}
