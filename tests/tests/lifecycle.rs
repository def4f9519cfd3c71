//! A confirmed order lives on in its OrderLifecycle workflow: shipped, delivered, or
//! cancelled with its credit and stock returned, through the validated `SetStatus` update.
//! PlaceOrder does not start it: the first status change does (update-with-start).

use std::time::Duration;

use orders_entities::order::OrderStatus;
use orders_worker::client;
use orders_workflows::OrderLifecycleWorkflow;
use orders_workflows::order_lifecycle::workflow_id;
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use temporalio_client::{WorkflowDescribeOptions, WorkflowGetResultOptions};

use crate::consistency::{assert_audit_clean, three_shard_order};
use crate::helpers::{BuildOrder, TestApp, order};

async fn status_in_database(app: &TestApp, order_id: i64) -> OrderStatus {
    orders_read::find_order(&app.shards, order_id)
        .await
        .unwrap()
        .expect("order exists")
        .1
        .status
}

async fn lifecycle_exists(app: &TestApp, order_id: i64) -> bool {
    app.client
        .get_workflow_handle::<OrderLifecycleWorkflow>(workflow_id(order_id))
        .describe(WorkflowDescribeOptions::default())
        .await
        .is_ok()
}

async fn set_status(
    app: &TestApp,
    order_id: i64,
    to: OrderStatus,
) -> anyhow::Result<orders_activities::PlacedOrder> {
    client::set_order_status(&app.client, &app.task_queue, order_id, to).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confirmed_order_is_shipped_then_delivered_and_invalid_moves_are_refused() {
    let app = TestApp::spawn().await;
    let customer = app.add_customer("Radia Perlman", "100.00").await;
    let (_, placed) = app
        .place_confirmed_order(order(customer).item(6, 1, "20.00"))
        .await;
    assert!(
        !lifecycle_exists(&app, placed.order_id).await,
        "placing an order starts no lifecycle"
    );

    // The first change starts the lifecycle, which reads the order from its shard.
    let refused = set_status(&app, placed.order_id, OrderStatus::Delivered)
        .await
        .expect_err("a confirmed order cannot skip shipping");
    assert!(
        refused.to_string().contains("cannot become delivered"),
        "{refused:#}"
    );
    assert_eq!(
        status_in_database(&app, placed.order_id).await,
        OrderStatus::Confirmed,
        "nothing was written"
    );

    let shipped = set_status(&app, placed.order_id, OrderStatus::Shipped)
        .await
        .unwrap();
    assert_eq!(shipped.status, OrderStatus::Shipped);
    assert_eq!(shipped.consistency, placed.consistency);
    assert_eq!(shipped.total_amount, placed.total_amount);
    assert_eq!(
        status_in_database(&app, placed.order_id).await,
        OrderStatus::Shipped
    );

    let delivered = set_status(&app, placed.order_id, OrderStatus::Delivered)
        .await
        .unwrap();
    assert_eq!(delivered.status, OrderStatus::Delivered);
    assert_eq!(
        status_in_database(&app, placed.order_id).await,
        OrderStatus::Delivered
    );
    let ended = app
        .client
        .get_workflow_handle::<OrderLifecycleWorkflow>(workflow_id(placed.order_id))
        .get_result(WorkflowGetResultOptions::default())
        .await
        .expect("the lifecycle ends once the order is delivered");
    assert_eq!(ended.status, OrderStatus::Delivered);

    // Its lifecycle has ended; a change after that is judged on the shard's status.
    let again = set_status(&app, placed.order_id, OrderStatus::Cancelled)
        .await
        .expect_err("a delivered order cannot be cancelled");
    assert!(
        again
            .to_string()
            .contains("is delivered; it cannot become cancelled"),
        "{again:#}"
    );
    assert_eq!(
        status_in_database(&app, placed.order_id).await,
        OrderStatus::Delivered
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_status_change_for_an_order_no_shard_holds_is_refused() {
    let app = TestApp::spawn().await;
    let missing = 987_654_321;
    let refused = set_status(&app, missing, OrderStatus::Shipped)
        .await
        .expect_err("no such order");
    assert!(
        refused
            .to_string()
            .contains("order 987654321 does not exist on any shard"),
        "{refused:#}"
    );
    let from_cli = app.cli(&["set-status", &missing.to_string(), "shipped"]);
    assert!(!from_cli.status.success());
    assert!(
        String::from_utf8_lossy(&from_cli.stderr).contains("does not exist on any shard"),
        "{}",
        String::from_utf8_lossy(&from_cli.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_confirmed_order_returns_its_credit_through_the_cli() {
    let app = TestApp::spawn().await;
    let customer = app.add_customer("Sophie Wilson", "100.00").await;
    let (_, placed) = app
        .place_confirmed_order(order(customer).item(6, 3, "10.00"))
        .await;
    assert_eq!(app.credit_used(customer).await, Decimal::new(3000, 2));

    let output = app.cli_ok(&[
        "set-status",
        &placed.order_id.to_string(),
        "cancelled",
        "--json",
    ]);
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["status"], "cancelled");
    assert_eq!(printed["consistency"], "saga");
    assert_eq!(
        status_in_database(&app, placed.order_id).await,
        OrderStatus::Cancelled
    );
    assert_eq!(
        app.credit_used(customer).await,
        Decimal::ZERO,
        "the credit came back"
    );
    let again = app.cli(&["set-status", &placed.order_id.to_string(), "shipped"]);
    assert!(
        !again.status.success(),
        "a cancelled order cannot be shipped"
    );
}

/// A two-phase order is confirmed when its home part commits, just before its stock parts
/// do. A cancellation arriving in between must still give back the stock those parts hold.
#[tokio::test(flavor = "multi_thread")]
async fn a_two_phase_order_cancelled_before_its_stock_parts_commit_gets_its_stock_back() {
    let mut app = TestApp::spawn_without_worker().await;
    app.start_worker(Some("commit_stock_part.before=sleep:3000"));
    let customer = app.add_customer("Leslie Lamport", "500.00").await;
    let (input, products) = three_shard_order(&app, customer, orders_core::Consistency::TwoPhase);
    let workflow_id = app.start_order(input).await;

    // The home part has committed: the order is confirmed, its stock parts still prepared.
    let order_id = crate::helpers::eventually(
        "the order's home part committed",
        Duration::from_secs(20),
        async || {
            app.shards
                .for_customer(customer)
                .conn
                .query_one_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT id FROM orders WHERE customer_id = $1 AND status = 'confirmed'",
                    [customer.into()],
                ))
                .await
                .expect("the home shard answers")
                .map(|row| row.try_get::<i64>("", "id").unwrap())
        },
    )
    .await;
    assert_eq!(
        app.stock(products[0]).await.reserved,
        0,
        "not committed yet"
    );

    let cancelled = set_status(&app, order_id, OrderStatus::Cancelled)
        .await
        .expect("a confirmed order can be cancelled");
    assert_eq!(cancelled.status, OrderStatus::Cancelled);
    assert_eq!(cancelled.consistency, orders_core::Consistency::TwoPhase);
    app.outcome(&workflow_id).await;
    assert_eq!(app.stock(products[0]).await.reserved, 0, "stock returned");
    assert_eq!(app.stock(products[1]).await.reserved, 0, "stock returned");
    assert_eq!(app.credit_used(customer).await, Decimal::ZERO);
    assert_audit_clean(&app);
}
