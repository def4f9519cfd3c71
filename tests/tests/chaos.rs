//! Chaos: a load of orders while the worker is SIGKILLed and restarted at random moments and
//! one shard's postmaster is stopped and started again. Afterwards every order reached a
//! terminal state that agrees with the databases, nothing is left prepared, and
//! `orders audit` is clean. Bounded: the load must finish within four minutes.
//!
//! Also a SIGTERM mid-load: the worker stops within its shutdown grace, and its successor
//! finishes the load with nothing lost or duplicated.

use std::time::{Duration, Instant};

use orders_entities::order::OrderStatus;
use orders_read::find_order;

use crate::consistency::{assert_audit_clean, prepared_everywhere};
use crate::helpers::TestApp;
use crate::load_process::LoadProcess;

const ORDERS: u64 = 40;
/// The shard whose postmaster is stopped mid-load.
const BOUNCED_SHARD: usize = 1;

/// A pause of 0.5–2.5 s drawn from `seed` (printed, so a failing run can be understood).
fn pause(seed: &mut u64) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    Duration::from_millis(500 + *seed % 2000)
}

async fn chaos_load(consistency: &str) {
    let (mut app, mut cluster) = TestApp::spawn_with_own_cluster_for(BOUNCED_SHARD).await;
    app.start_worker(None);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("chaos seed {seed} ({consistency})");
    let load = LoadProcess::start(&app, consistency, ORDERS, 8, 25);

    for round in 0..3 {
        tokio::time::sleep(pause(&mut seed)).await;
        app.kill_worker();
        tokio::time::sleep(pause(&mut seed) / 2).await;
        app.start_worker(None);
        if round == 0 {
            tokio::time::sleep(pause(&mut seed)).await;
            cluster.stop().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.restart().await;
        }
    }
    finish_consistently(load, &app).await;
}

/// Waits for the load, then checks that every order reached a terminal state that agrees
/// with the databases, nothing is left prepared, and the audit is clean.
async fn finish_consistently(load: LoadProcess, app: &TestApp) {
    let report = load.report(Duration::from_secs(240)).await;
    assert_consistent(app, &report).await;
}

/// Every order of the load's `report` placed or refused for stock, one row per placed order,
/// no prepared transaction left, and a clean audit.
async fn assert_consistent(app: &TestApp, report: &serde_json::Value) {
    assert_eq!(report["orders"], ORDERS, "{report:#}");
    let results = report["results"].as_array().expect("results");
    let mut placed = 0;
    for result in results {
        match result["outcome"].as_str() {
            Some("placed") => {
                placed += 1;
                let order_id = result["order_id"].as_i64().expect("placed orders have ids");
                let (_, order) = find_order(&app.shards, order_id)
                    .await
                    .expect("shards answer")
                    .unwrap_or_else(|| panic!("placed order {order_id} is in its shard"));
                assert_eq!(order.status, OrderStatus::Confirmed, "{result}");
            }
            Some("failed") => assert_eq!(
                result["failure_type"], "OutOfStock",
                "only stock may run out: {result}"
            ),
            _ => panic!("every order ends placed or refused: {result}"),
        }
    }
    let in_db: i64 = app.rows_everywhere().await.iter().map(|r| r.orders).sum();
    assert_eq!(
        in_db, placed,
        "one row per placed order, none for refused ones"
    );
    assert!(placed > 0, "the load placed orders: {report:#}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !prepared_everywhere(app).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "prepared transactions left behind"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_audit_clean(app);
}

#[tokio::test(flavor = "multi_thread")]
async fn sagas_survive_worker_kills_and_a_shard_restart_and_the_audit_stays_clean() {
    chaos_load("saga").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_phase_orders_survive_worker_kills_and_a_shard_restart_and_the_audit_stays_clean() {
    chaos_load("two_phase").await;
}

/// What `orders worker` gets to finish in-flight tasks after SIGTERM, in this test.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_load_stops_the_worker_within_its_grace_and_no_order_is_lost_or_duplicated() {
    let mut app = TestApp::spawn_without_worker().await;
    app.worker_env.push((
        "ORDERS_SHUTDOWN_GRACE_SECS",
        SHUTDOWN_GRACE.as_secs().to_string(),
    ));
    // Every order's credit step takes a second, so SIGTERM finds steps in flight.
    app.start_worker(Some("reserve_credit.before=sleep:1000"));
    let load = LoadProcess::start(&app, "saga", ORDERS, 8, 25);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let asked = Instant::now();
    app.terminate_worker();
    assert!(
        app.worker_exits_within(SHUTDOWN_GRACE + Duration::from_secs(5)),
        "the worker was still running {:?} after SIGTERM (grace {SHUTDOWN_GRACE:?}); log: {}",
        asked.elapsed(),
        app.worker_log().display()
    );
    let log = std::fs::read_to_string(app.worker_log()).expect("worker log reads");
    assert!(
        log.contains("shutting down: polling stopped"),
        "the worker drained instead of dying: {}",
        app.worker_log().display()
    );

    app.start_worker(None);
    finish_consistently(load, &app).await;
}
