//! A confirmed order lives on in its OrderLifecycle workflow: shipped, delivered, or
//! cancelled with its credit returned, through the validated `SetStatus` update.

use orders_entities::order::OrderStatus;
use orders_worker::client;
use orders_workflows::OrderLifecycleWorkflow;
use orders_workflows::order_lifecycle::workflow_id;
use rust_decimal::Decimal;
use serde_json::json;
use temporalio_client::WorkflowGetResultOptions;

use crate::helpers::TestApp;

async fn status_in_database(app: &TestApp, order_id: i64) -> OrderStatus {
    orders_activities::read::find_order(&app.shards, order_id)
        .await
        .unwrap()
        .expect("order exists")
        .1
        .status
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confirmed_order_is_shipped_then_delivered_and_invalid_moves_are_refused() {
    let app = TestApp::spawn().await;
    let customer = app.add_customer("Radia Perlman", "100.00").await;
    let (_, placed) = app.place_confirmed_order(json!({"customer_id": customer, "items": [{"product_id": 6, "quantity": 1, "unit_price": "20.00"}]})).await;

    let refused = client::set_order_status(&app.client, placed.order_id, OrderStatus::Delivered)
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

    let shipped = client::set_order_status(&app.client, placed.order_id, OrderStatus::Shipped)
        .await
        .unwrap();
    assert_eq!(shipped.status, OrderStatus::Shipped);
    assert_eq!(
        status_in_database(&app, placed.order_id).await,
        OrderStatus::Shipped
    );

    let delivered = client::set_order_status(&app.client, placed.order_id, OrderStatus::Delivered)
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
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_confirmed_order_returns_its_credit_through_the_cli() {
    let app = TestApp::spawn().await;
    let customer = app.add_customer("Sophie Wilson", "100.00").await;
    let (_, placed) = app.place_confirmed_order(json!({"customer_id": customer, "items": [{"product_id": 6, "quantity": 3, "unit_price": "10.00"}]})).await;
    assert_eq!(app.credit_used(customer).await, Decimal::new(3000, 2));

    let output = app.cli_ok(&[
        "set-status",
        &placed.order_id.to_string(),
        "cancelled",
        "--json",
    ]);
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["status"], "cancelled");
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
