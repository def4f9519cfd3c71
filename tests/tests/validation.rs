//! Bad input fails PlaceOrder with a clear, non-retryable failure and writes nothing.

use serde_json::json;

use crate::helpers::{BuildOrder, ShardRows, TestApp, expect_failure, order};

#[tokio::test(flavor = "multi_thread")]
async fn each_invalid_order_fails_with_its_reason_and_writes_nothing_anywhere() {
    let app = TestApp::spawn().await;
    let customer = app.add_customer("Katherine Johnson", "1000.00").await;
    // Raw JSON on purpose: the workflow must refuse whatever any client sends, including
    // inputs an `OrderRequest` cannot express (no customer, not an object, a price that is
    // not a number).
    let item = |quantity: i64, price: &str| json!({"product_id": 7, "quantity": quantity, "unit_price": price});
    let oversized: Vec<_> = (0..1001).map(|_| item(1, "1.00")).collect();
    let cases = [
        (
            "no items",
            json!({"customer_id": customer, "items": []}),
            "at least one item",
        ),
        (
            "zero quantity",
            json!({"customer_id": customer, "items": [item(0, "1.00")]}),
            "quantity",
        ),
        (
            "negative quantity",
            json!({"customer_id": customer, "items": [item(-2, "1.00")]}),
            "quantity",
        ),
        (
            "three decimals",
            json!({"customer_id": customer, "items": [item(1, "19.999")]}),
            "at most 2 decimals",
        ),
        (
            "negative price",
            json!({"customer_id": customer, "items": [item(1, "-5.00")]}),
            "negative",
        ),
        (
            "price not a number",
            json!({"customer_id": customer, "items": [item(1, "cheap")]}),
            "not a decimal",
        ),
        ("malformed input", json!("just a string"), "malformed input"),
        (
            "missing customer",
            json!({"items": [item(1, "1.00")]}),
            "customer_id",
        ),
        (
            "oversized order",
            json!({"customer_id": customer, "items": oversized}),
            "at most 1000 items",
        ),
    ];

    let starts = futures::future::join_all(
        cases
            .iter()
            .map(|(_, input, _)| app.start_order_raw(input.clone())),
    )
    .await;
    for ((name, _, reason), workflow_id) in cases.iter().zip(starts) {
        let message = expect_failure(&app.outcome(&workflow_id).await, "InvalidOrder");
        assert!(
            message.contains(reason),
            "{name}: {message:?} should mention {reason:?}"
        );
    }
    assert_eq!(
        app.rows_everywhere().await,
        vec![ShardRows::default(); 4],
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_customer_fails_the_order_and_writes_nothing_anywhere() {
    let app = TestApp::spawn().await;
    let outcome = app.place_order(order(424242).item(7, 1, "1.00")).await;
    let message = expect_failure(&outcome, "UnknownCustomer");
    assert!(message.contains("424242"), "{message}");
    assert_eq!(
        app.rows_everywhere().await,
        vec![ShardRows::default(); 4],
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_names_the_field_and_rule_never_the_value_sent() {
    let app = TestApp::spawn().await;
    let item = json!({"product_id": 7, "quantity": 1, "unit_price": "1.00"});
    // What a client sends is echoed nowhere: each input carries a marker where a value or a
    // key would go, and the refusal must name the field instead.
    let cases = [
        (
            json!({"customer_id": "SECRET-1", "items": [item]}),
            "customer_id",
        ),
        (
            json!({"customer_id": 1, "items": [item], "SECRET-2": 1}),
            "unknown field",
        ),
        (json!({"customer_id": 1, "items": "SECRET-3"}), "items"),
        (
            json!({"customer_id": 1, "items": [{"product_id": 7, "quantity": 1, "unit_price": "SECRET-4"}]}),
            "unit_price",
        ),
        (
            json!({"customer_id": 1, "items": [item], "consistency": "SECRET-5"}),
            "consistency",
        ),
        (
            json!({"customer_id": 1, "items": [{"product_id": 7, "quantity": "SECRET-6", "unit_price": "1.00"}]}),
            "items[0].quantity",
        ),
        (
            json!({"customer_id": 1, "items": [item], "notes": ["SECRET-7"]}),
            "notes",
        ),
        (json!("SECRET-8"), "JSON object"),
        (
            json!({"customer_id": -123456789, "items": [item]}),
            "customer_id",
        ),
    ];
    let starts = futures::future::join_all(
        cases
            .iter()
            .map(|(input, _)| app.start_order_raw(input.clone())),
    )
    .await;
    for ((input, field), workflow_id) in cases.iter().zip(starts) {
        let message = expect_failure(&app.outcome(&workflow_id).await, "InvalidOrder");
        assert!(
            message.contains(field),
            "{input}: {message:?} should name {field:?}"
        );
        assert!(
            !message.contains("SECRET") && !message.contains("123456789"),
            "{input}: {message:?} echoes what the client sent"
        );
    }
}
