//! The store's retry-safety guarantees under real concurrency, on a real shard: what happens
//! when a late attempt of a step runs at the same time as its retry or its compensation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use orders_core::failure::StepError;
use orders_core::store::credit::{self, Release, Reserve};
use orders_core::store::two_phase::{self, PrepareOnce};
use orders_core::store::{idempotency, orders};
use orders_core::{Rejection, routing};
use orders_entities::order::OrderStatus;
use rust_decimal::Decimal;
use sea_orm::TransactionTrait;
use serde_json::json;

use crate::helpers::{BuildOrder, TestApp, order};

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
    let order = order(customer).item(1, 1, "5.00").validate().unwrap();
    let txn = shard.conn.begin().await.unwrap();
    let order_id = orders::create_with_items(&txn, &order)
        .await
        .unwrap()
        .expect("the customer is on its shard");
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

#[tokio::test(flavor = "multi_thread")]
async fn a_part_prepared_once_is_found_prepared_then_committed_and_is_written_once() {
    let app = TestApp::spawn_without_worker().await;
    let customer = app.add_customer("Jim Gray", "100.00").await;
    let shard = app.shards.for_customer(customer).clone();
    let names = |workflow_id: &str| two_phase::GidParts {
        workflow_id: workflow_id.to_owned(),
        run_id: uuid::Uuid::new_v4().to_string(),
        shard: shard.index,
        home_shard: shard.index,
        round: two_phase::FIRST_ROUND,
    };
    let part = names("retried-prepare");
    let (gid, key) = (part.gid().unwrap(), part.part_key());
    let order_id = 7_000_101;
    let runs = AtomicUsize::new(0);
    let prepare = || {
        two_phase::prepare_once::<StepError>(&shard.conn, &key, &gid, async |txn| {
            runs.fetch_add(1, Ordering::SeqCst);
            credit::reserve(txn, order_id, customer, Decimal::new(2500, 2)).await?;
            Ok(())
        })
    };

    assert_eq!(prepare().await.unwrap(), PrepareOnce::Prepared);
    assert_eq!(app.credit_used(customer).await, Decimal::ZERO, "invisible");
    // A retry finds the part prepared at once, instead of waiting on its locked key.
    assert_eq!(prepare().await.unwrap(), PrepareOnce::AlreadyPrepared);
    two_phase::commit_prepared(&shard.resolver, &gid)
        .await
        .unwrap();
    assert_eq!(prepare().await.unwrap(), PrepareOnce::AlreadyCommitted);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the body ran once");
    assert_eq!(app.credit_used(customer).await, Decimal::new(2500, 2));

    // A part whose key a rollback tombstoned is never prepared afterwards.
    let rolled_back = names("rolled-back-prepare");
    let (gid, key) = (rolled_back.gid().unwrap(), rolled_back.part_key());
    let txn = shard.conn.begin().await.unwrap();
    idempotency::mark_compensated(&txn, &key).await.unwrap();
    txn.commit().await.unwrap();
    let refused = two_phase::prepare_once::<StepError>(&shard.conn, &key, &gid, async |_| {
        panic!("a compensated part's body must not run")
    })
    .await;
    assert!(
        matches!(
            refused,
            Err(StepError::Rejected(Rejection::AlreadyCompensated { .. }))
        ),
        "{refused:?}"
    );
    assert!(
        !two_phase::is_prepared(&shard.conn, &gid).await.unwrap(),
        "nothing prepared"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_id_taken_under_a_key_is_the_one_every_repeat_gets_even_concurrently() {
    let app = TestApp::spawn_without_worker().await;
    let customer = app.add_customer("Pat Helland", "100.00").await;
    let shard = app.shards.for_customer(customer).clone();
    let take = |key: &'static str| {
        let conn = shard.conn.clone();
        tokio::spawn(async move {
            orders::next_id_once::<StepError>(&conn, key, customer)
                .await
                .unwrap()
        })
    };

    let (first, racing) = tokio::join!(take("wf/run/plan"), take("wf/run/plan"));
    let first = first.unwrap();
    assert_eq!(racing.unwrap(), first, "both attempts get one id");
    assert_eq!(
        take("wf/run/plan").await.unwrap(),
        first,
        "so does a repeat"
    );
    assert_eq!(
        routing::bucket_of(first),
        routing::bucket_of(customer),
        "the id carries the customer's bucket"
    );
    let other = take("wf/run/plan/round-2").await.unwrap();
    assert_ne!(other, first, "another key, another id");

    let txn = shard.conn.begin().await.unwrap();
    idempotency::mark_compensated(&txn, "wf/cancelled/plan")
        .await
        .unwrap();
    txn.commit().await.unwrap();
    let refused =
        orders::next_id_once::<StepError>(&shard.conn, "wf/cancelled/plan", customer).await;
    assert!(
        matches!(
            refused,
            Err(StepError::Rejected(Rejection::AlreadyCompensated { .. }))
        ),
        "{refused:?}"
    );
}
