//! Backups to one consistent point, through the CLI as docs/operations.md tells it: every
//! shard archived by pgBackRest into one repository, `orders backup`, `orders backup point`
//! under load, `orders restore` into new clusters, and the restored copy checked.
//!
//! The backed-up deployment has four clusters of its own (a point is about all shards at
//! once); the shared clusters have no WAL archive.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use orders_backup::pgbackrest::{LocalShard, Repository};
use orders_core::shards::PoolSettings;
use orders_core::store::{backup_points, fences, shard_identity, two_phase};
use orders_core::{Consistency, Shards};
use orders_dev::{PostgresCluster, PostgresOptions};
use orders_worker::client::OrderOutcome;

use crate::consistency::{assert_audit_clean, product_on};
use crate::helpers::{
    BuildOrder, LoadRecord, STOCKED_PRODUCTS, TestApp, TestDir, order, run_load, until,
};
use crate::in_doubt::wait_for_commit_decision;
use crate::metrics::{sample, scrape};
use crate::resharding::Mover;

/// A deployment whose four shards archive their WAL into one pgBackRest repository.
struct BackedUp {
    app: TestApp,
    repository: Repository,
    _clusters: Vec<PostgresCluster>,
    dir: TestDir,
}

impl BackedUp {
    async fn spawn() -> Self {
        let dir = TestDir::create("backup");
        let shards: Vec<LocalShard> = (0..4)
            .map(|i| LocalShard {
                data_dir: dir.path().join(format!("live-{i}")),
                port: orders_dev::free_port().expect("a free port"),
                socket_dir: dir.path().join("sockets"),
            })
            .collect();
        let repository = Repository::write_local(dir.path(), &shards).expect("pgbackrest.conf");
        let mut clusters = Vec::new();
        for (i, shard) in shards.iter().enumerate() {
            let options = PostgresOptions {
                data_dir: shard.data_dir.clone(),
                port: shard.port,
                ephemeral: true,
            };
            let archive = repository.wal_archive(i).expect("the archive command");
            clusters.push(
                tokio::task::spawn_blocking(move || {
                    PostgresCluster::start_archiving(options, &archive)
                })
                .await
                .unwrap()
                .expect("an archived cluster starts"),
            );
        }
        let on: Vec<&PostgresCluster> = clusters.iter().collect();
        let app = TestApp::migrated_and_stocked(TestApp::on_clusters(&on).await).await;
        Self {
            app,
            repository,
            _clusters: clusters,
            dir,
        }
    }

    /// The `orders` CLI with the repository configured, as the docs say.
    fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("orders CLI runs")
    }

    fn command(&self) -> Command {
        backup_command(&self.app, &self.repository)
    }

    #[track_caller]
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let output = self.cli(&[args, &["--json"]].concat());
        assert!(
            output.status.success(),
            "orders {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("the report is JSON")
    }

    /// `orders restore --point NAME` into a new directory; the restored shards, connected.
    async fn restore(&self, point: &str) -> Restored {
        let into = self.dir.path().join(format!("restored-{point}"));
        let first_port = orders_dev::free_port_run(4).expect("four free ports in a row");
        let started = Instant::now();
        let output = self
            .command()
            .args(["restore", "--point", point, "--json", "--into"])
            .arg(&into)
            .args(["--first-port", &first_port.to_string()])
            .output()
            .expect("orders restore runs");
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
                panic!(
                    "orders restore printed no report: {}",
                    String::from_utf8_lossy(&output.stderr)
                )
            });
        eprintln!(
            "restored {point} in {:?}: {}",
            started.elapsed(),
            serde_json::to_string(&report).unwrap()
        );
        let urls: Vec<String> = report["orders_shards"]
            .as_str()
            .expect("the report gives ORDERS_SHARDS")
            .split(',')
            .map(str::to_owned)
            .collect();
        let shards = Shards::connect_lazy(
            &urls,
            PoolSettings {
                max_connections: 2,
                connect_timeout: Duration::from_secs(5),
            },
        )
        .await
        .expect("the restored shards connect");
        shards.refresh_map().await.expect("the restored map reads");
        Restored {
            shards,
            dirs: (0..urls.len())
                .map(|i| into.join(format!("shard-{i}")))
                .collect(),
            report,
            succeeded: output.status.success(),
        }
    }
}

/// `app`'s `orders` command with `repository` configured, as the docs say.
fn backup_command(app: &TestApp, repository: &Repository) -> Command {
    let mut command = app.orders_command();
    command.env("ORDERS_PGBACKREST_CONFIG", repository.config());
    command
}

/// A restored copy, stopped when dropped.
struct Restored {
    shards: Shards,
    dirs: Vec<PathBuf>,
    report: serde_json::Value,
    succeeded: bool,
}

impl Restored {
    /// Whether order `order_id` is on its shard in the restored copy.
    async fn has_order(&self, order_id: i64) -> bool {
        orders_core::store::orders::find_with_items(&self.shards.for_order(order_id).conn, order_id)
            .await
            .expect("the restored shard reads")
            .is_some()
    }

    async fn prepared(&self) -> usize {
        let mut n = 0;
        for shard in self.shards.iter() {
            n += two_phase::in_doubt(&shard.conn).await.unwrap().len();
        }
        n
    }

    fn assert_audit_clean(&self) {
        assert!(self.succeeded, "orders restore failed: {}", self.report);
        assert_eq!(
            self.report["audit"]["violations"],
            serde_json::json!([]),
            "the restored copy's audit"
        );
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        let dirs: Vec<&Path> = self.dirs.iter().map(PathBuf::as_path).collect();
        if let Err(e) = orders_backup::restore::stop_restored(&dirs) {
            eprintln!("could not stop a restored cluster: {e}");
        }
    }
}

fn placed_id(record: &LoadRecord) -> Option<i64> {
    match &record.outcome {
        OrderOutcome::Placed(order) => Some(order.order_id),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_point_taken_under_load_restores_exactly_the_orders_confirmed_before_it() {
    let mut backed = BackedUp::spawn().await;
    backed.app.start_worker(None);
    let backup = backed.json(&["backup"]);
    assert_eq!(
        backup["shards"].as_array().map(Vec::len),
        Some(4),
        "{backup}"
    );

    let mut customers = Vec::new();
    for _ in 0..8 {
        customers.push(backed.app.add_customer("Load Customer", "1000000.00").await);
    }
    let products: Vec<i64> = STOCKED_PRODUCTS.collect();
    let request = move |n: usize| {
        let mode = if n.is_multiple_of(2) {
            Consistency::Saga
        } else {
            Consistency::TwoPhase
        };
        order(customers[n % customers.len()])
            .item(products[n % products.len()], 1, "1.00")
            .item(products[(n + 7) % products.len()], 2, "2.50")
            .in_mode(mode)
    };
    let app = Arc::new(backed.app);
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let load = tokio::spawn(run_load(
        app.clone(),
        4,
        Arc::new(request),
        stop.clone(),
        began,
    ));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let point_began = began.elapsed();
    let point_began_at = SystemTime::now();
    let point = {
        let output = backup_command(&app, &backed.repository)
            .args(["backup", "point", "under-load", "--json"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let point_ended = began.elapsed();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let records = load.await.unwrap();
    backed.app = Arc::try_unwrap(app).ok().expect("the load is over");
    eprintln!("point under load: {point}");
    // What the `NoRecentRestorePoint` alert watches: the worker reports the point's time.
    let written_after = point_began_at
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        .floor();
    until(
        "the worker reports the point's time on every shard",
        Duration::from_secs(10),
        async || {
            let body = scrape(backed.app.metrics_port);
            let times: Vec<Option<f64>> = (0..4)
                .map(|i| {
                    let shard = format!("shard=\"{i}\"");
                    sample(&body, "orders_restore_point_timestamp_seconds", &[&shard])
                })
                .collect();
            if times
                .iter()
                .all(|t| t.is_some_and(|at| at >= written_after))
            {
                Ok(())
            } else {
                Err(format!(
                    "{times:?}, the point written after {written_after}"
                ))
            }
        },
    )
    .await;

    let listed = backed.json(&["backup", "list"]);
    let listed_point = listed["points"]
        .as_array()
        .and_then(|points| points.iter().find(|p| p["name"] == "under-load"))
        .unwrap_or_else(|| panic!("backup list shows the point: {listed}"));
    assert!(
        listed_point["reached_from"]
            .as_array()
            .is_some_and(|shards| shards.len() == 4 && shards.iter().all(|b| b.is_string())),
        "every shard has a backup that reaches the point: {listed_point}"
    );

    let restored = backed.restore("under-load").await;
    restored.assert_audit_clean();
    assert_eq!(restored.prepared().await, 0, "nothing left prepared");
    let (mut before, mut after, mut between) = (0, 0, 0);
    for record in &records {
        let Some(order_id) = placed_id(record) else {
            continue;
        };
        if record.ended < point_began {
            before += 1;
            assert!(
                restored.has_order(order_id).await,
                "order {order_id}, confirmed before the point began, is restored"
            );
        } else if record.started > point_ended {
            after += 1;
            assert!(
                !restored.has_order(order_id).await,
                "order {order_id}, started after the point ended, is not restored"
            );
        } else {
            between += 1;
        }
    }
    eprintln!(
        "{before} orders confirmed before the point, {after} started after it, {between} around it"
    );
    assert!(
        before > 20 && after > 10,
        "the load ran on both sides of the point"
    );

    let live = shard_identity::read(&backed.app.shards.get(0).conn)
        .await
        .unwrap()
        .unwrap();
    for shard in restored.shards.iter() {
        let copy = shard_identity::read(&shard.conn).await.unwrap().unwrap();
        assert_ne!(
            copy.deployment, live.deployment,
            "the copy is a deployment of its own"
        );
        assert_eq!(copy.index, shard.index);
        let points = backup_points::list(&shard.conn).await.unwrap();
        assert!(
            points.iter().any(|p| p.name == "under-load"),
            "the copy knows the point it was restored to"
        );
    }
    // A live deployment's command refuses a restored shard in its list.
    let mut mixed = backed.app.shard_urls.clone();
    mixed[1] = restored.report["shards"][1]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = backed
        .app
        .orders_command()
        .env("ORDERS_SHARDS", mixed.join(","))
        .args(["counts"])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "a restored shard among live ones is refused"
    );
    assert_audit_clean(&backed.app);
}

/// Waits until the worker's log shows `failpoint` reached `times` times.
async fn until_reached(app: &TestApp, failpoint: &str, times: usize) {
    until(
        &format!("{failpoint} is reached {times} time(s)"),
        Duration::from_secs(60),
        async || {
            let log = std::fs::read_to_string(app.worker_log()).unwrap_or_default();
            let reached = log.matches(&format!("\"{failpoint}\"")).count();
            (reached >= times).then_some(()).ok_or(format!("{reached}"))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prepared_order_is_restored_committed_when_its_decision_preceded_the_point_and_rolled_back_otherwise()
 {
    let mut backed = BackedUp::spawn().await;
    // A saga stops 2 s before its confirmation (its order pending, its stock held). The
    // two-phase order stops twice in phase two: 2.5 s before its decision is recorded, then
    // 1 s before each part commits (the home part, then the other). A point is taken in
    // each stop. (The stops fit in the steps' 5 s, so their first attempts complete.)
    backed.app.start_worker(Some(
        "reserve_credit.before=sleep:2000,commit_decision.before=sleep:2500,commit_part.before=sleep:1000",
    ));
    backed.json(&["backup"]);
    let customer = backed.app.add_customer("Held Customer", "1000.00").await;
    let home = backed.app.shards.for_customer(customer).index;
    let elsewhere = product_on(&backed.app, (home + 1) % 4, &[]);

    let saga = backed
        .app
        .start_order(order(customer).item(elsewhere, 3, "1.00"))
        .await;
    until_reached(&backed.app, "reserve_credit.before", 1).await;
    backed.json(&["backup", "point", "saga-mid-flight"]);
    let OrderOutcome::Placed(saga) = backed
        .app
        .outcome_within(&saga, Duration::from_secs(60))
        .await
    else {
        panic!("the held saga is placed in the live deployment");
    };

    let held = backed
        .app
        .start_order(order(customer).item(elsewhere, 2, "5.00").two_phase())
        .await;
    for (point, failpoint) in [
        ("decided-after", "commit_decision.before"),
        ("decided-before", "commit_part.before"),
    ] {
        until_reached(&backed.app, failpoint, 1).await;
        backed.json(&["backup", "point", point]);
    }
    wait_for_commit_decision(&backed.app, &held).await;
    let OrderOutcome::Placed(placed) = backed
        .app
        .outcome_within(&held, Duration::from_secs(60))
        .await
    else {
        panic!("the held order is placed in the live deployment");
    };

    let mid_flight = backed.restore("saga-mid-flight").await;
    mid_flight.assert_audit_clean();
    assert_eq!(
        mid_flight.report["sagas_undone"], 1,
        "{}",
        mid_flight.report
    );
    assert!(
        !mid_flight.has_order(saga.order_id).await,
        "the pending saga is undone"
    );
    let stock = orders_core::store::inventory::find(
        &mid_flight.shards.for_product(elsewhere).conn,
        elsewhere,
    )
    .await
    .unwrap()
    .expect("the product is restored");
    assert_eq!(stock.reserved, 0, "the saga's stock hold is released");
    drop(mid_flight);

    let after = backed.restore("decided-after").await;
    after.assert_audit_clean();
    assert_eq!(after.report["rolled_back_parts"], 2, "{}", after.report);
    assert_eq!(after.prepared().await, 0);
    assert!(
        !after.has_order(placed.order_id).await,
        "decided after the point: rolled back"
    );
    drop(after);

    let before = backed.restore("decided-before").await;
    before.assert_audit_clean();
    // Both parts, or the other alone if the home part committed before the point.
    assert!(
        before.report["committed_parts"].as_u64() >= Some(1),
        "{}",
        before.report
    );
    assert_eq!(before.prepared().await, 0);
    assert!(
        before.has_order(placed.order_id).await,
        "decided before the point: committed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_point_with_a_shard_down_is_refused_naming_it_and_the_other_shards_write_on() {
    let (mut app, mut own) = TestApp::spawn_with_own_cluster_for(2).await;
    app.start_worker(None);
    let mut customer = app.add_customer("Off Shard Two", "1000.00").await;
    while app.shards.for_customer(customer).index == 2 {
        customer = app.add_customer("Off Shard Two", "1000.00").await;
    }
    let product = product_on(&app, app.shards.for_customer(customer).index, &[]);
    own.stop().await;
    let refused = app.cli(&["backup", "point", "with-one-down"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "refused");
    assert!(stderr.contains("shard 2"), "names the shard: {stderr}");
    for mode in [Consistency::Saga, Consistency::TwoPhase] {
        let started = Instant::now();
        let outcome = app
            .outcome_within(
                &app.start_order(order(customer).item(product, 1, "1.00").in_mode(mode))
                    .await,
                Duration::from_secs(20),
            )
            .await;
        assert!(
            matches!(outcome, OrderOutcome::Placed(_)),
            "{mode:?}: {outcome:?}"
        );
        eprintln!(
            "{mode:?} order placed {:?} after the refusal",
            started.elapsed()
        );
    }
    for shard in [0, 1, 3] {
        let points = backup_points::list(&app.shards.get(shard).conn)
            .await
            .unwrap();
        assert!(
            points.is_empty(),
            "the refused point is forgotten on shard {shard}"
        );
    }
    own.restart().await;
    let taken = app.cli_ok(&["backup", "point", "with-one-down", "--json"]);
    let taken: serde_json::Value = serde_json::from_slice(&taken.stdout).unwrap();
    assert_eq!(
        taken["positions"].as_array().map(Vec::len),
        Some(4),
        "{taken}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_point_during_a_bucket_move_is_refused_naming_the_shard() {
    let mut app = TestApp::spawn_without_worker().await;
    let mover = Mover::new(&app, "Moving Customer", "1000.00", 1).await;
    // The move's copy keeps failing, so the move stays in flight with its buckets fenced.
    app.start_worker(Some("copy_bucket.before=fail"));
    app.cli_ok(&[
        "reshard",
        "--move-bucket",
        &mover.bucket.to_string(),
        "--to",
        &mover.to.to_string(),
        "--detach",
    ]);
    until(
        "the bucket is fenced",
        Duration::from_secs(60),
        async || {
            let fenced = fences::list(&app.shards.get(mover.from).conn)
                .await
                .map_err(|e| e.to_string())?;
            (!fenced.is_empty())
                .then_some(())
                .ok_or("not yet".to_owned())
        },
    )
    .await;
    let refused = app.cli(&["backup", "point", "during-a-move"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "refused");
    assert!(
        stderr.contains("bucket move") && stderr.contains("shard"),
        "says a move is running, naming the shard: {stderr}"
    );
    app.cli_ok(&["reshard", "cancel"]);
}
