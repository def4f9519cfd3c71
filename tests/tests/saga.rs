//! PlaceOrder end to end: the happy path and the declined payment with its compensation.

use orders_worker::client::OrderOutcome;
use rust_decimal::Decimal;
use serde_json::json;

use crate::helpers::{BuildOrder, SHARD_COUNT, ShardRows, TestApp, expect_failure, order};

#[tokio::test(flavor = "multi_thread")]
async fn a_confirmed_order_is_written_once_on_its_customers_shard_with_credit_reserved() {
    let app = TestApp::spawn().await;
    let customer = app.add_customer("Ada Lovelace", "500.00").await;
    let home = app.shards.for_customer(customer).index;

    let outcome = app
        .place_order(order(customer).item(7, 2, "19.99").notes("optional"))
        .await;

    let OrderOutcome::Placed(placed) = outcome else {
        panic!("expected a confirmed order, got {outcome:?}")
    };
    assert_eq!(
        serde_json::to_value(&placed).unwrap(),
        json!({"order_id": placed.order_id, "customer_id": customer, "shard": home, "status": "confirmed", "total_amount": "39.98", "consistency": "saga"}),
        "the result is the documented JSON"
    );
    for shard in 0..SHARD_COUNT {
        let rows = app.rows_on_shard(shard).await;
        if shard == home {
            assert_eq!(
                (rows.orders, rows.items, rows.held_credit),
                (1, 1, 1),
                "shard {shard} holds the order"
            );
        } else {
            assert_eq!(
                (rows.orders, rows.items),
                (0, 0),
                "shard {shard} holds nothing"
            );
        }
    }
    assert_eq!(app.credit_used(customer).await, Decimal::new(3998, 2));

    let shown = app.cli(&["get", &placed.order_id.to_string(), "--json"]);
    assert!(
        shown.status.success(),
        "orders get failed: {}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["status"], "confirmed");
    assert_eq!(shown["notes"], "optional");
    assert_eq!(shown["shard"], home);
    assert_eq!(
        shown["items"],
        json!([{"id": shown["items"][0]["id"], "product_id": 7, "quantity": 2, "price": "19.99"}])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declined_payment_fails_the_order_deletes_it_and_gives_the_credit_back() {
    let app = TestApp::spawn().await;
    let customer = app.add_customer("Alan Turing", "50.00").await;
    let earlier = app.place_order(order(customer).item(1, 1, "30.00")).await;
    assert!(
        matches!(earlier, OrderOutcome::Placed(_)),
        "the first order fits the limit: {earlier:?}"
    );

    let outcome = app.place_order(order(customer).item(2, 3, "7.00")).await;

    let message = expect_failure(&outcome, "PaymentDeclined");
    assert!(
        message.contains("21.00") && message.contains("20.00"),
        "the message gives total and available credit: {message}"
    );
    let home = app.shards.for_customer(customer).index;
    let rows = app.rows_on_shard(home).await;
    assert_eq!(
        (rows.orders, rows.items, rows.held_credit),
        (1, 1, 1),
        "only the first order remains"
    );
    assert_eq!(
        app.credit_used(customer).await,
        Decimal::new(3000, 2),
        "the declined order holds no credit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_order_runs_its_compensations_and_leaves_nothing() {
    let mut app = TestApp::spawn_without_worker().await;
    // ReserveCredit fails every attempt, as if its shard were down: the order stays inside
    // its credit step, retrying, until the cancellation reaches it. (Its steps run inside one
    // workflow task, which a cancellation reaches at the task's next heartbeat.)
    app.start_worker(Some("reserve_credit.before=fail"));
    let customer = app.add_customer("Grace Hopper", "100.00").await;
    let home = app.shards.for_customer(customer).index;
    let workflow_id = app.start_order(order(customer).item(3, 1, "10.00")).await;
    // Wait until the order exists, i.e. the saga is inside its credit step.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while app.rows_on_shard(home).await.orders == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the order was never created"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    app.client
        .get_workflow_handle::<orders_workflows::PlaceOrderWorkflow>(&workflow_id)
        .cancel(
            temporalio_client::WorkflowCancelOptions::builder()
                .reason("customer changed their mind")
                .build(),
        )
        .await
        .expect("cancel request is accepted");

    assert_eq!(app.outcome(&workflow_id).await, OrderOutcome::Cancelled);
    assert_eq!(
        app.rows_on_shard(home).await,
        ShardRows {
            idempotency_keys: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        app.credit_used(customer).await,
        Decimal::ZERO,
        "credit is back"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compensation_that_keeps_failing_fails_the_order_loudly_instead_of_dropping_it() {
    let mut app = TestApp::spawn_without_worker().await;
    // DeleteOrder fails every attempt, as if the shard stayed down; its retries run out
    // after about two minutes.
    app.start_worker(Some("delete_order.before=fail"));
    let customer = app.add_customer("Tony Hoare", "5.00").await;
    let home = app.shards.for_customer(customer).index;

    let workflow_id = app.start_order(order(customer).item(2, 1, "9.00")).await;
    let outcome = app
        .outcome_within(&workflow_id, std::time::Duration::from_secs(240))
        .await;

    let message = expect_failure(&outcome, "CompensationFailed");
    assert!(
        message.contains("PaymentDeclined: payment declined"),
        "the original reason is kept: {message}"
    );
    assert!(
        message.contains("DeleteOrder"),
        "the failed compensation is named: {message}"
    );
    assert_eq!(
        app.rows_on_shard(home).await.orders,
        1,
        "the order that could not be deleted is still there to repair"
    );
    let log = std::fs::read_to_string(app.worker_log()).unwrap_or_default();
    assert!(
        log.contains("compensation failed; manual repair needed"),
        "the worker logged it at error level"
    );
}
