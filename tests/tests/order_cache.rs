//! The worker's read API serves orders through its cache: repeated reads hit it, the
//! worker's own status changes drop the entry at once, and writes from elsewhere are seen
//! only when the entry expires (the documented staleness).

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};

use crate::helpers::{BuildOrder, TestApp, http_get, http_get_with, order};

fn get_json(port: u16, path: &str) -> (u16, Value) {
    let (status, body) = http_get(port, path);
    let json =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} answered {body:?}: {e}"));
    (status, json)
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_hit_the_cache_and_the_workers_own_status_change_is_seen_at_once() {
    let app = TestApp::spawn().await;
    let customer = app.add_customer("Edsger Dijkstra", "500.00").await;
    let (_, placed) = app
        .place_confirmed_order(order(customer).item(3, 2, "12.50"))
        .await;
    let path = format!("/orders/{}", placed.order_id);

    let (status, first) = get_json(app.api_port, &path);
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["order"]["status"], "confirmed");
    assert_eq!(first["order"]["total_amount"], "25.00");
    assert_eq!(first["order"]["customer_name"], "Edsger Dijkstra");
    assert_eq!(first["shard"], app.shards.for_customer(customer).index);
    let (_, again) = get_json(app.api_port, &path);
    assert_eq!(again, first);
    let (_, stats) = get_json(app.api_port, "/cache");
    assert_eq!(
        (stats["hits"].as_u64(), stats["misses"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );

    // The worker ships the order: its activity drops the cached entry.
    app.cli_ok(&["set-status", &placed.order_id.to_string(), "shipped"]);
    let (_, shipped) = get_json(app.api_port, &path);
    assert_eq!(
        shipped["order"]["status"], "shipped",
        "the worker's own write is seen at once"
    );

    // A write that bypasses this worker is not seen until the entry expires (TTL 1 h here).
    let (_, cached) = get_json(app.api_port, &path);
    assert_eq!(cached["order"]["status"], "shipped");
    let shard = app.shards.for_order(placed.order_id);
    shard
        .conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE orders SET notes = 'edited behind the worker''s back' WHERE id = $1",
            [placed.order_id.into()],
        ))
        .await
        .unwrap();
    let (_, stale) = get_json(app.api_port, &path);
    assert_eq!(
        stale["order"]["notes"],
        Value::Null,
        "served from the cache, as documented"
    );
    let in_db = orders_core::store::orders::find_with_items(&shard.conn, placed.order_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        in_db.notes.as_deref(),
        Some("edited behind the worker's back")
    );

    let (status, missing) = get_json(app.api_port, "/orders/12345678");
    assert_eq!(status, 404);
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("does not exist")
    );
    let (_, stats) = get_json(app.api_port, "/cache");
    assert!(stats["hit_ratio"].as_f64().unwrap() > 0.0, "{stats}");
    let metrics = http_get(app.metrics_port, "/metrics").1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("orders_cache_lookups") && l.contains("result=\"hit\"")),
        "hits are exported to Prometheus"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_pages_all_orders_and_counts_them_by_status() {
    let app = TestApp::spawn().await;
    let mut customers = Vec::new();
    for name in [
        "Ken Thompson",
        "Dennis Ritchie",
        "Barbara Liskov",
        "Frances Allen",
    ] {
        customers.push(app.add_customer(name, "500.00").await);
    }
    for &customer in &customers {
        app.place_confirmed_order(order(customer).item(1, 1, "5.00"))
            .await;
    }
    let (status, first) = get_json(app.api_port, "/orders?limit=3");
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["orders"].as_array().unwrap().len(), 3);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let (_, second) = get_json(app.api_port, &format!("/orders?limit=3&cursor={cursor}"));
    assert_eq!(second["orders"].as_array().unwrap().len(), 1);
    assert_eq!(second["next_cursor"], Value::Null);

    let (status, bad) = get_json(app.api_port, "/orders?cursor=garbage");
    assert_eq!(status, 400, "{bad}");
    let (_, counts) = get_json(app.api_port, "/orders/counts");
    assert_eq!(counts["by_status"]["confirmed"], 4);
    assert_eq!(counts["missing_shards"], json!([]));
    let (_, theirs) = get_json(app.api_port, &format!("/customers/{}/orders", customers[2]));
    assert_eq!(theirs["orders"][0]["customer_name"], "Barbara Liskov");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_orders_api_token_set_the_read_api_answers_only_requests_bearing_it() {
    let mut app = TestApp::spawn_without_worker().await;
    let token = format!("token-{}", uuid::Uuid::new_v4().simple());
    app.worker_env.push(("ORDERS_API_TOKEN", token.clone()));
    app.start_worker(None);
    let customer = app.add_customer("Barbara Liskov", "500.00").await;
    let (_, placed) = app
        .place_confirmed_order(order(customer).item(4, 1, "7.00"))
        .await;
    let path = format!("/orders/{}", placed.order_id);

    for refused in [None, Some("Bearer wrong".to_owned()), Some(token.clone())] {
        let (status, body) = http_get_with(app.api_port, &path, refused.as_deref());
        assert_eq!(status, 401, "{refused:?} was let in: {body}");
        assert!(
            !body.contains("Barbara"),
            "a refused request saw the customer: {body}"
        );
    }
    let (status, body) = http_get_with(app.api_port, &path, Some(&format!("Bearer {token}")));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Barbara Liskov"), "{body}");
    let log = std::fs::read_to_string(app.worker_log()).expect("worker log reads");
    assert!(!log.contains(&token), "the token reached the worker's log");
}
