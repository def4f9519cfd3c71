//! The store's retry-safety guarantees under real concurrency, on a real shard: what happens
//! when a late attempt of a step runs at the same time as its retry or its compensation.

use std::time::Duration;

use orders_activities::ValidOrder;
use orders_activities::store::credit::{self, Release, Reserve};
use orders_activities::store::{idempotency, orders};
use orders_entities::order::OrderStatus;
use rust_decimal::Decimal;
use sea_orm::TransactionTrait;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn a_release_racing_an_uncommitted_reserve_waits_for_it_and_gives_the_credit_back() {
    let app = TestApp::spawn_without_worker().await;
    let customer = app.add_customer("Leslie Lamport", "100.00").await;
    let shard = app.shards.for_customer(customer).clone();
    let order_id = 7_000_001;

    // A late ReserveCredit attempt holds its transaction open…
    let late_reserve = shard.conn.begin().await.unwrap();
    let reserved = credit::reserve(&late_reserve, order_id, customer, Decimal::new(2500, 2))
        .await
        .unwrap();
    assert_eq!(reserved, Reserve::Reserved);

    // …while the compensation runs.
    let conn = shard.conn.clone();
    let release = tokio::spawn(async move {
        let txn = conn.begin().await.unwrap();
        let outcome = credit::release(&txn, order_id, customer).await.unwrap();
        txn.commit().await.unwrap();
        outcome
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !release.is_finished(),
        "the release waits for the reserve in flight"
    );
    late_reserve.commit().await.unwrap();

    assert_eq!(
        release.await.unwrap(),
        Release::Released {
            amount: Decimal::new(2500, 2)
        }
    );
    assert_eq!(
        app.credit_used(customer).await,
        Decimal::ZERO,
        "the credit came back"
    );

    // Any further attempt of either step changes nothing.
    let txn = shard.conn.begin().await.unwrap();
    assert_eq!(
        credit::reserve(&txn, order_id, customer, Decimal::new(2500, 2))
            .await
            .unwrap(),
        Reserve::AlreadyReleased
    );
    assert_eq!(
        credit::release(&txn, order_id, customer).await.unwrap(),
        Release::NothingHeld
    );
    txn.commit().await.unwrap();
    assert_eq!(app.credit_used(customer).await, Decimal::ZERO);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_status_change_racing_its_own_earlier_attempt_reports_the_committed_status() {
    let app = TestApp::spawn_without_worker().await;
    let customer = app.add_customer("Barbara Liskov", "100.00").await;
    let shard = app.shards.for_customer(customer).clone();
    let order = ValidOrder::from_json(&json!({"customer_id": customer, "items": [{"product_id": 1, "quantity": 1, "unit_price": "5.00"}]})).unwrap();
    let txn = shard.conn.begin().await.unwrap();
    let order_id = orders::create_with_items(&txn, &order).await.unwrap();
    txn.commit().await.unwrap();

    // The first ConfirmOrder attempt has moved the order but not committed yet…
    let first = shard.conn.begin().await.unwrap();
    let moved = orders::transition(
        &first,
        order_id,
        &[OrderStatus::Pending],
        OrderStatus::Confirmed,
    )
    .await
    .unwrap();
    assert_eq!(moved, Some(OrderStatus::Confirmed));

    // …when its retry runs.
    let conn = shard.conn.clone();
    let retry = tokio::spawn(async move {
        orders::transition(
            &conn,
            order_id,
            &[OrderStatus::Pending],
            OrderStatus::Confirmed,
        )
        .await
        .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!retry.is_finished(), "the retry waits on the row lock");
    first.commit().await.unwrap();

    assert_eq!(
        retry.await.unwrap(),
        Some(OrderStatus::Confirmed),
        "the retry sees the committed confirmation, not the stale pending"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_claimed_twice_returns_the_first_result_and_a_compensated_key_stays_compensated() {
    let app = TestApp::spawn_without_worker().await;
    let shard = app.shards.get(0).clone();
    let key = "wf-1/run-1/create-order";

    let first = shard.conn.begin().await.unwrap();
    assert_eq!(
        idempotency::claim(&first, key).await.unwrap(),
        idempotency::Claim::New
    );
    idempotency::record_result(&first, key, &json!({"order_id": 1}))
        .await
        .unwrap();

    // A concurrent duplicate blocks on the key until the first attempt commits.
    let conn = shard.conn.clone();
    let duplicate = tokio::spawn(async move {
        let txn = conn.begin().await.unwrap();
        let claim = idempotency::claim(&txn, key).await.unwrap();
        txn.rollback().await.unwrap();
        claim
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !duplicate.is_finished(),
        "the duplicate waits for the first attempt"
    );
    first.commit().await.unwrap();
    assert_eq!(
        duplicate.await.unwrap(),
        idempotency::Claim::Done(json!({"order_id": 1}))
    );

    let txn = shard.conn.begin().await.unwrap();
    assert_eq!(
        idempotency::mark_compensated(&txn, key).await.unwrap(),
        Some(json!({"order_id": 1}))
    );
    assert_eq!(
        idempotency::claim(&txn, key).await.unwrap(),
        idempotency::Claim::Compensated
    );
    txn.commit().await.unwrap();
}
