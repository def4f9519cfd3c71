//! One order across several shards, in both consistency modes: stock on the products'
//! shards, credit and the order on the customer's, all or nothing.

use std::time::Duration;

use orders_activities::PlacedOrder;
use orders_core::Consistency;
use orders_core::OrderRequest;
use orders_core::store::two_phase;
use orders_worker::client::OrderOutcome;
use rust_decimal::Decimal;

use crate::helpers::{BuildOrder, STOCKED_PRODUCTS, TestApp, expect_failure, item, order};

/// A stocked product on shard `shard`, other than those in `not`.
pub(crate) fn product_on(app: &TestApp, shard: usize, not: &[i64]) -> i64 {
    STOCKED_PRODUCTS
        .clone()
        .find(|id| app.shards.for_product(*id).index == shard && !not.contains(id))
        .unwrap_or_else(|| panic!("a stocked product on shard {shard}"))
}

/// An order of `customer` for one unit of a product on two shards other than the customer's:
/// three shards in one order. Returns the request and the two products.
pub(crate) fn three_shard_order(
    app: &TestApp,
    customer: i64,
    consistency: Consistency,
) -> (OrderRequest, [i64; 2]) {
    three_shard_order_avoiding(app, customer, consistency, &[])
}

/// [`three_shard_order`] with products other than `avoid` (whose rows a prepared
/// transaction may hold locked).
pub(crate) fn three_shard_order_avoiding(
    app: &TestApp,
    customer: i64,
    consistency: Consistency,
    avoid: &[i64],
) -> (OrderRequest, [i64; 2]) {
    let home = app.shards.for_customer(customer).index;
    let others: Vec<usize> = (0..app.shards.len()).filter(|s| *s != home).collect();
    let products = [
        product_on(app, others[0], avoid),
        product_on(app, others[1], avoid),
    ];
    let request = order(customer)
        .in_mode(consistency)
        .item(products[0], 2, "10.00")
        .item(products[1], 1, "5.50");
    (request, products)
}

/// Our prepared transactions on every shard.
pub(crate) async fn prepared_everywhere(app: &TestApp) -> Vec<String> {
    let mut all = Vec::new();
    for shard in app.shards.iter() {
        for prepared in two_phase::in_doubt(&shard.conn)
            .await
            .expect("pg_prepared_xacts reads")
        {
            all.push(prepared.gid.to_string());
        }
    }
    all
}

/// `orders audit` with a zero grace period must find nothing.
pub(crate) fn assert_audit_clean(app: &TestApp) {
    let audit = app.cli(&["audit", "--grace", "0"]);
    assert!(
        audit.status.success(),
        "orders audit found violations:\n{}{}",
        String::from_utf8_lossy(&audit.stdout),
        String::from_utf8_lossy(&audit.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn both_modes_place_one_order_across_three_shards_and_echo_their_mode() {
    let app = TestApp::spawn().await;
    for consistency in [Consistency::Saga, Consistency::TwoPhase] {
        let customer = app.add_customer("Edsger Dijkstra", "100.00").await;
        let (input, products) = three_shard_order(&app, customer, consistency);
        let before = [app.stock(products[0]).await, app.stock(products[1]).await];

        let (_, placed) = app.place_confirmed_order(input).await;

        assert_eq!(placed.consistency, consistency, "{placed:?}");
        assert_eq!(placed.total_amount, Decimal::new(2550, 2));
        assert_eq!(
            app.stock(products[0]).await.reserved - before[0].reserved,
            2,
            "{consistency}: stock held on the first product's shard"
        );
        assert_eq!(
            app.stock(products[1]).await.reserved - before[1].reserved,
            1,
            "{consistency}: stock held on the second product's shard"
        );
        assert_eq!(app.credit_used(customer).await, Decimal::new(2550, 2));
        let shown = app.cli_ok(&["get", &placed.order_id.to_string(), "--json"]);
        let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
        assert_eq!(shown["status"], "confirmed", "{consistency}: {shown}");
    }
    assert!(
        prepared_everywhere(&app).await.is_empty(),
        "no prepared transaction outlives its order"
    );
    assert_audit_clean(&app);
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_stock_fails_either_mode_naming_the_product_and_writes_nothing() {
    let app = TestApp::spawn().await;
    for consistency in [Consistency::Saga, Consistency::TwoPhase] {
        let customer = app.add_customer("Frances Allen", "1000.00").await;
        let (mut input, products) = three_shard_order(&app, customer, consistency);
        let scarce = 900 + products[1];
        app.add_product(scarce, 2).await;
        input.items[1] = item(scarce, 3, "1.00");
        let before = app.stock(products[0]).await;

        let outcome = app.place_order(input).await;

        let message = expect_failure(&outcome, "OutOfStock");
        assert!(
            message.contains(&format!("product {scarce}")) && message.contains("has 2 available"),
            "{consistency}: the product and what is left are named: {message}"
        );
        assert_eq!(app.stock(scarce).await.reserved, 0, "{consistency}");
        assert_eq!(
            app.stock(products[0]).await.reserved,
            before.reserved,
            "{consistency}: the other product's hold was undone"
        );
        assert_eq!(
            app.credit_used(customer).await,
            Decimal::ZERO,
            "{consistency}"
        );
        let home = app.shards.for_customer(customer).index;
        assert_eq!(
            app.rows_on_shard(home).await.orders,
            0,
            "{consistency}: no order row"
        );
    }
    assert!(prepared_everywhere(&app).await.is_empty());
    assert_audit_clean(&app);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_product_and_a_declined_payment_roll_a_two_phase_order_back() {
    let app = TestApp::spawn().await;
    let customer = app.add_customer("Barbara Liskov", "10.00").await;
    let outcome = app
        .place_order(order(customer).two_phase().item(987_654, 1, "1.00"))
        .await;
    let message = expect_failure(&outcome, "UnknownProduct");
    assert!(message.contains("987654"), "{message}");

    let (input, products) = three_shard_order(&app, customer, Consistency::TwoPhase);
    let outcome = app.place_order(input).await;
    expect_failure(&outcome, "PaymentDeclined");
    assert_eq!(app.stock(products[0]).await.reserved, 0);
    assert_eq!(app.stock(products[1]).await.reserved, 0);
    assert!(prepared_everywhere(&app).await.is_empty());
    assert_audit_clean(&app);
}

#[tokio::test(flavor = "multi_thread")]
async fn product_add_and_get_work_from_the_cli_on_the_owning_shard() {
    let app = TestApp::spawn().await;
    app.cli_ok(&[
        "product", "add", "--id", "4242", "--stock", "7", "--name", "Teapot",
    ]);
    let shown = app.cli_ok(&["product", "get", "4242", "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["on_hand"], 7);
    assert_eq!(shown["available"], 7);
    assert_eq!(shown["name"], "Teapot");
    assert_eq!(shown["shard"], app.shards.for_product(4242).index);
    let missing = app.cli(&["product", "get", "4243"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("orders product add --id 4243"),
        "the error says what to do"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_cancel_undoes_a_pending_saga_and_returns_a_confirmed_orders_stock_and_credit() {
    let mut app = TestApp::spawn_without_worker().await;
    // ReserveCredit fails every attempt (its shard "down"): the saga waits in its credit step
    // until the cancellation reaches it. Two-phase orders do not use that step.
    app.start_worker(Some("reserve_credit.before=fail"));
    let customer = app.add_customer("Ken Thompson", "500.00").await;
    let (input, products) = three_shard_order(&app, customer, Consistency::Saga);
    let workflow_id = app.start_order(input).await;
    let order_id = wait_for_order_id(&app, &workflow_id).await;

    app.cli_ok(&["cancel", &order_id.to_string()]);

    assert_eq!(app.outcome(&workflow_id).await, OrderOutcome::Cancelled);
    assert_eq!(app.stock(products[0]).await.reserved, 0, "stock released");
    assert_eq!(app.credit_used(customer).await, Decimal::ZERO);

    // A confirmed two-phase order: cancelled through its lifecycle.
    let (input, products) = three_shard_order(&app, customer, Consistency::TwoPhase);
    let (_, placed): (String, PlacedOrder) = app.place_confirmed_order(input).await;
    assert_eq!(app.stock(products[0]).await.reserved, 2);
    let cancelled = app.cli_ok(&["cancel", &placed.order_id.to_string()]);
    assert!(String::from_utf8_lossy(&cancelled.stdout).contains("credit and stock returned"));
    assert_eq!(app.stock(products[0]).await.reserved, 0);
    assert_eq!(app.stock(products[1]).await.reserved, 0);
    assert_eq!(app.credit_used(customer).await, Decimal::ZERO);
    assert_audit_clean(&app);
}

/// Waits until PlaceOrder has published its order id (search attribute `OrderId`, where
/// `orders cancel` finds it), and returns it.
pub(crate) async fn wait_for_order_id(app: &TestApp, workflow_id: &str) -> i64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let described = app
            .client
            .get_workflow_handle::<orders_workflows::PlaceOrderWorkflow>(workflow_id)
            .describe(temporalio_client::WorkflowDescribeOptions::default())
            .await;
        if let Ok(described) = described
            && let Some(order_id) = described
                .search_attributes()
                .get(&orders_workflows::search_attributes::ORDER_ID)
            && orders_worker::client::running_placement(&app.client, order_id)
                .await
                .ok()
                .flatten()
                .is_some()
        {
            return order_id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{workflow_id} never published its order id"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_echoes_two_phase_and_cancelling_a_pending_two_phase_order_rolls_it_back() {
    let mut app = TestApp::spawn_without_worker().await;
    // Each PREPARE is followed by a pause longer than the workflow task's heartbeat (4 s of
    // its 5 s timeout), so the order is caught between its parts: its steps run as local
    // activities inside the task, and a cancellation reaches the workflow with the next one.
    app.start_worker(Some("prepare_part.after_prepare=sleep:6000"));
    let customer = app.add_customer("Jim Gray", "500.00").await;
    let (input, products) = three_shard_order(&app, customer, Consistency::TwoPhase);

    // The same lines as `--item PRODUCT:QUANTITY:UNIT_PRICE`, read from their JSON.
    let item_arg = |i: usize| {
        let line = serde_json::to_value(&input.items[i]).unwrap();
        format!(
            "{}:{}:{}",
            line["product_id"],
            line["quantity"],
            line["unit_price"].as_str().unwrap()
        )
    };
    let submitted = app.cli_ok(&[
        "submit",
        "--customer",
        &customer.to_string(),
        "--item",
        &item_arg(0),
        "--item",
        &item_arg(1),
        "--consistency",
        "two_phase",
        "--wait",
        "--json",
    ]);
    let placed: serde_json::Value = serde_json::from_slice(&submitted.stdout).unwrap();
    assert_eq!(placed["consistency"], "two_phase", "{placed}");
    assert_eq!(placed["status"], "confirmed", "{placed}");
    let held = app.stock(products[0]).await.reserved;

    let workflow_id = app.start_order(input).await;
    let order_id = wait_for_order_id(&app, &workflow_id).await;
    app.cli_ok(&["cancel", &order_id.to_string()]);

    assert_eq!(app.outcome(&workflow_id).await, OrderOutcome::Cancelled);
    assert_eq!(
        app.stock(products[0]).await.reserved,
        held,
        "its stock hold was rolled back"
    );
    assert_eq!(
        app.credit_used(customer).await,
        Decimal::new(2550, 2),
        "only the first order's credit"
    );
    assert!(
        prepared_everywhere(&app).await.is_empty(),
        "nothing left prepared"
    );
    assert!(
        orders_read::find_order(&app.shards, order_id)
            .await
            .unwrap()
            .is_none(),
        "the cancelled order was never visible"
    );
    assert_audit_clean(&app);
}
