//! One shard down never blocks orders that do not touch it: a two-phase order waiting for a
//! stopped shard releases the rows it prepared on the others, and completes once the shard
//! is back. An import whose rows go to a stopped shard says which step fails, and finishes
//! once the shard is back.

use std::time::Duration;

use orders_core::Consistency;
use orders_core::store::two_phase;

use crate::consistency::{assert_audit_clean, prepared_everywhere, product_on};
use crate::helpers::{BuildOrder, TestApp, eventually, order};
use crate::import::allow_imports;
use crate::in_doubt::wait_for_commit_decision;

/// The shard stopped: the last in shard order, so an order's parts on the others are
/// prepared before its part there fails.
const DOWN: usize = 3;

/// A customer whose rows are not on [`DOWN`].
async fn customer_off_the_stopped_shard(app: &TestApp, name: &str) -> i64 {
    loop {
        let customer = app.add_customer(name, "100000.00").await;
        if app.shards.for_customer(customer).index != DOWN {
            return customer;
        }
    }
}

/// Places an order of `product` for `customer` in each mode, each within 20 s: the product's
/// row is not held by an order waiting for a down shard.
async fn places_orders_of(app: &TestApp, customer: i64, product: i64, beside: &str) {
    for mode in [Consistency::Saga, Consistency::TwoPhase] {
        let started = std::time::Instant::now();
        let passing = app
            .start_order(order(customer).item(product, 1, "2.00").in_mode(mode))
            .await;
        let outcome = app.outcome_within(&passing, Duration::from_secs(20)).await;
        assert!(
            matches!(outcome, orders_worker::client::OrderOutcome::Placed(_)),
            "{mode:?} order {beside}: {outcome:?}"
        );
        eprintln!("{mode:?} order {beside} placed in {:?}", started.elapsed());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_phase_order_waiting_for_a_stopped_shard_holds_no_row_on_the_others() {
    let (mut app, mut own) = TestApp::spawn_with_own_cluster_for(DOWN).await;
    app.start_worker(None);
    let waiting = customer_off_the_stopped_shard(&app, "Ada Waiting").await;
    let other = customer_off_the_stopped_shard(&app, "Bob Healthy").await;
    let healthy_shard = app.shards.for_customer(waiting).index;
    let shared = product_on(&app, healthy_shard, &[]);
    let on_down = product_on(&app, DOWN, &[]);
    own.stop().await;

    // Prepares its part on the healthy shard (holding `shared`'s stock row), then meets the
    // stopped shard.
    let held = app
        .start_order(
            order(waiting)
                .item(shared, 1, "2.00")
                .item(on_down, 1, "3.00")
                .two_phase(),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    places_orders_of(&app, other, shared, "beside the stopped shard").await;

    own.restart().await;
    let outcome = app.outcome_within(&held, Duration::from_secs(90)).await;
    assert!(
        matches!(outcome, orders_worker::client::OrderOutcome::Placed(_)),
        "the waiting order completes once its shard is back: {outcome:?}"
    );
    assert!(prepared_everywhere(&app).await.is_empty());
    assert_audit_clean(&app);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_phase_order_decided_commit_whose_home_shard_crashes_releases_its_rows_on_the_others()
{
    let (mut app, mut own) = TestApp::spawn_with_own_cluster_for(DOWN).await;
    // Holds the order with its parts prepared and its decision (commit) made.
    app.start_worker(Some("commit_part.before=fail"));
    let mut home = app.add_customer("Hal Home", "100000.00").await;
    while app.shards.for_customer(home).index != DOWN {
        home = app.add_customer("Hal Home", "100000.00").await;
    }
    let other = customer_off_the_stopped_shard(&app, "Bob Healthy").await;
    let healthy_shard = (0..app.shards.len()).find(|s| *s != DOWN).unwrap();
    let shared = product_on(&app, healthy_shard, &[]);
    let held = app
        .start_order(order(home).item(shared, 1, "2.00").two_phase())
        .await;
    // Its decision in the history: a new worker replays the order from there, without
    // running the steps before it (the plan needs the home shard) again.
    wait_for_commit_decision(&app, &held).await;
    own.crash().await;
    // A worker without the failpoint takes the order over and meets the crashed home shard.
    app.restart_worker(None);

    let healthy = &app.shards.get(healthy_shard).conn;
    let released = std::time::Instant::now();
    eventually(
        "the part on the healthy shard commits while the home shard is down",
        Duration::from_secs(30),
        async || {
            let prepared = two_phase::in_doubt(healthy).await.ok()?;
            prepared.is_empty().then_some(())
        },
    )
    .await;
    eprintln!(
        "healthy shard's part committed {:?} after the restart",
        released.elapsed()
    );
    places_orders_of(&app, other, shared, "beside the crashed home shard").await;

    own.restart().await;
    let outcome = app.outcome_within(&held, Duration::from_secs(90)).await;
    let orders_worker::client::OrderOutcome::Placed(placed) = outcome else {
        panic!("the order decided commit is placed once its home shard is back: {outcome:?}");
    };
    let rows = app.order_rows_on_shard(placed.order_id, DOWN).await;
    assert_eq!(rows.confirmed, 1, "the order is on its home shard");
    assert!(prepared_everywhere(&app).await.is_empty());
    assert_audit_clean(&app);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_waiting_for_a_stopped_shard_names_its_failing_step_and_finishes_after() {
    let (mut app, mut own) = TestApp::spawn_with_own_cluster_for(DOWN).await;
    let dir = allow_imports(&mut app);
    app.start_worker(None);
    let mut customer = app.add_customer("Ida Import", "100.00").await;
    while app.shards.for_customer(customer).index != DOWN {
        customer = app.add_customer("Ida Import", "100.00").await;
    }
    let file = dir.join("to-the-stopped-shard.jsonl");
    std::fs::write(
        &file,
        format!(
            "{}\n",
            serde_json::json!({"order_ref": "r-1", "customer_id": customer,
                "items": [{"product_id": 7, "quantity": 1, "unit_price": "1.00"}]})
        ),
    )
    .unwrap();
    own.stop().await;
    let id = "import-to-a-stopped-shard";
    app.cli_ok(&[
        "import",
        file.to_str().unwrap(),
        "--workflow-id",
        id,
        "--detach",
    ]);
    let failing = eventually(
        "orders import-status names the failing step",
        Duration::from_secs(90),
        async || {
            let output = app.cli(&["import-status", id, "--json"]);
            let status: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
            status["failing"]
                .as_array()
                .and_then(|steps| steps.first().cloned())
        },
    )
    .await;
    assert_eq!(failing["step"], "ImportSegment", "{failing}");
    assert!(
        failing["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("shard {DOWN}"))),
        "{failing}"
    );
    own.restart().await;
    let done = eventually(
        "the import finishes",
        Duration::from_secs(120),
        async || {
            let output = app.cli(&["import-status", id, "--json"]);
            let status: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
            (status["done"] == true).then_some(status)
        },
    )
    .await;
    assert_eq!(done["imported"][DOWN.to_string()], 1, "{done}");
    assert_eq!(done["rejected"], 0, "{done}");
}
