//! A worker killed mid-saga: the order completes exactly once after a restart.

use std::time::Duration;

use orders_worker::client::OrderOutcome;
use rust_decimal::Decimal;

use crate::helpers::{BuildOrder, ShardRows, TestApp, order};

/// A worker armed to abort at `failpoint` dies there mid-saga, when the customer's shard shows
/// what `written` checks (`what`, in words). A healthy worker then confirms the order after
/// the step's timeout, and nothing is written twice.
async fn confirms_once_after_dying_at(
    failpoint: &str,
    what: &str,
    written: fn(&ShardRows) -> bool,
) {
    let mut app = TestApp::spawn_without_worker().await;
    app.start_worker(Some(failpoint));
    let customer = app.add_customer("Barbara Liskov", "300.00").await;
    let workflow_id = app.start_order(order(customer).item(5, 4, "12.50")).await;
    assert!(
        app.worker_exits_within(Duration::from_secs(30)),
        "the worker should have aborted at {failpoint}; log: {}",
        app.worker_log().display()
    );
    let home = app.shards.for_customer(customer).index;
    let before = app.rows_on_shard(home).await;
    assert!(written(&before), "{what} before the crash: {before:?}");

    // A healthy worker picks the saga up and runs the step again: it finds its work done.
    app.start_worker(None);
    let outcome = app.outcome(&workflow_id).await;
    let OrderOutcome::Placed(placed) = outcome else {
        panic!("expected a confirmed order, got {outcome:?}")
    };
    assert_eq!(placed.total_amount, Decimal::new(5000, 2));
    let rows = app.rows_on_shard(home).await;
    assert_eq!(
        (rows.orders, rows.items, rows.held_credit),
        (1, 1, 1),
        "exactly one order, one item, one hold"
    );
    assert_eq!(
        app.credit_used(customer).await,
        Decimal::new(5000, 2),
        "credit reserved once"
    );
    let shown = app.cli(&["get", &placed.order_id.to_string(), "--json"]);
    let shown: serde_json::Value =
        serde_json::from_slice(&shown.stdout).expect("orders get prints JSON");
    assert_eq!(shown["status"], "confirmed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_after_committing_the_order_completes_it_exactly_once_after_restart() {
    // It dies right after CreateOrder commits, before Temporal hears of it.
    confirms_once_after_dying_at("create_order.after_commit", "the order committed", |rows| {
        rows.orders == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_after_holding_credit_and_confirming_confirms_once_after_restart() {
    // It dies right after the credit hold and the confirmation commit together.
    confirms_once_after_dying_at(
        "reserve_credit_and_confirm.after_commit",
        "the credit held",
        |rows| rows.held_credit == 1,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_compensation_keeps_the_refusals_reason_and_undoes_once() {
    let mut app = TestApp::spawn_without_worker().await;
    // The first worker dies right after DeleteOrder (the last compensation of a declined
    // payment) commits its tombstone, before its workflow task completes.
    app.start_worker(Some("delete_order.after_commit"));
    let customer = app.add_customer("Jim Gray", "10.00").await;
    let home = app.shards.for_customer(customer).index;
    let workflow_id = app.start_order(order(customer).item(5, 1, "25.00")).await;
    assert!(
        app.worker_exits_within(Duration::from_secs(30)),
        "the worker should have aborted at the failpoint; log: {}",
        app.worker_log().display()
    );

    // The next worker replays the recorded steps (the refusal among them) instead of running
    // CreateOrder again into the tombstone, and finishes the compensations.
    app.start_worker(None);
    let outcome = app.outcome(&workflow_id).await;
    let message = crate::helpers::expect_failure(&outcome, "PaymentDeclined");
    assert!(message.contains("payment declined"), "{message}");
    let rows = app.rows_on_shard(home).await;
    assert_eq!((rows.orders, rows.items), (0, 0), "the order is gone");
    assert_eq!(app.credit_used(customer).await, Decimal::ZERO);
}
