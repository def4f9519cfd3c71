//! Ids stay unique when buckets move: no two shards issue the same sequence value, so a
//! worker on a stale map that takes an id on a bucket's old owner never takes one the new
//! owner issues too, and an old deployment's sequences are made so by `orders migrate up`
//! (docs/decisions/disjoint-id-sequences.md).

use orders_core::routing::bucket_of;
use orders_core::store::customers::{self, NewCustomer};
use orders_core::store::{id_sequences, orders};
use orders_worker::deployment::migrate::{self, Plan};
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::helpers::TestApp;

/// A customer id in bucket 8, which shard 0 owns under the first map (bucket mod 4).
const CUSTOMER_ON_SHARD_0: i64 = 8;

/// `count` order ids for `customer` taken on shard `shard`, as a worker routing there would.
async fn take_ids(app: &TestApp, shard: usize, customer: i64, count: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(
            orders::next_id(&app.shards.get(shard).conn, customer)
                .await
                .expect("an order id is taken"),
        );
    }
    ids
}

/// Runs `sql` on shard `shard`.
async fn execute(app: &TestApp, shard: usize, sql: &str) {
    app.shards
        .get(shard)
        .conn
        .execute_unprepared(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql} on shard {shard}: {e}"));
}

/// `sequence`'s increment and the value its next `nextval` returns, on shard `shard`.
async fn sequence_on(app: &TestApp, shard: usize, sequence: &str) -> (i64, i64) {
    let row = app
        .shards
        .get(shard)
        .conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT p.seqincrement AS increment,
                        CASE WHEN s.is_called THEN s.last_value + p.seqincrement
                             ELSE s.last_value END AS next
                 FROM {sequence} s, pg_sequence p
                 WHERE p.seqrelid = '{sequence}'::regclass"
            ),
        ))
        .await
        .expect("the sequence reads")
        .expect("one row");
    (
        row.try_get("", "increment").unwrap(),
        row.try_get("", "next").unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_on_a_stale_map_never_takes_an_id_the_new_owner_issues_after_a_cut_over() {
    let app = TestApp::spawn_without_worker().await;
    let bucket = bucket_of(CUSTOMER_ON_SHARD_0);
    assert_eq!(app.shards.map().owners()[usize::from(bucket)], 0);
    take_ids(&app, 0, CUSTOMER_ON_SHARD_0, 3).await;

    // The cut-over of the bucket from shard 0 to shard 1 copies the sequences.
    let pool = |shard: usize| app.shards.get(shard).conn.get_postgres_connection_pool();
    let mut on_source = pool(0).acquire().await.expect("source connection");
    let mut on_target = pool(1).acquire().await.expect("target connection");
    let values = id_sequences::id_sequences(&mut on_source)
        .await
        .expect("the source's sequences read");
    id_sequences::advance_id_sequences(&mut on_target, &values)
        .await
        .expect("the target's sequences advance");

    // A worker still on the old map plans an order on the old owner (a two-phase re-plan
    // keeps that id on the new owner) while the new owner issues ids in the same bucket.
    let stale = take_ids(&app, 0, CUSTOMER_ON_SHARD_0, 5).await;
    let issued = take_ids(&app, 1, CUSTOMER_ON_SHARD_0, 5).await;
    let reused: Vec<i64> = stale
        .iter()
        .copied()
        .filter(|id| issued.contains(id))
        .collect();
    assert!(
        reused.is_empty(),
        "ids in bucket {bucket} taken on the old owner by a stale worker and issued again by the new owner: {reused:?} (old owner {stale:?}, new owner {issued:?})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_up_starts_every_shard_above_every_value_any_shard_issued_each_in_its_own_class() {
    let app = TestApp::spawn_without_worker().await;
    // Sequences as a deployment of an earlier build has them: plain, wherever each shard got.
    let issued = [(0, 700), (1, 5), (2, 1300), (3, 1)];
    for (shard, value) in issued {
        for sequence in ["customer_id_seq", "order_id_seq"] {
            execute(
                &app,
                shard,
                &format!(
                    "ALTER SEQUENCE {sequence} INCREMENT BY 1; SELECT setval('{sequence}', {value})"
                ),
            )
            .await;
        }
    }

    migrate::run(&app.shards, Plan::Up(None))
        .await
        .expect("migrate up runs");

    let mut first = Vec::new();
    for shard in 0..app.shards.len() {
        for sequence in ["customer_id_seq", "order_id_seq"] {
            let (increment, next) = sequence_on(&app, shard, sequence).await;
            assert_eq!(
                (increment, next.rem_euclid(1024)),
                (1024, shard as i64),
                "shard {shard}'s {sequence} is in its own class (next value {next})"
            );
            assert!(
                next > 1300,
                "shard {shard}'s {sequence} starts above the highest value issued (1300): {next}"
            );
            first.push((shard, sequence, next));
        }
    }

    migrate::run(&app.shards, Plan::Up(None))
        .await
        .expect("migrate up runs again");
    for (shard, sequence, next) in first {
        assert_eq!(
            sequence_on(&app, shard, sequence).await,
            (1024, next),
            "a second migrate up leaves shard {shard}'s {sequence} where it was"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn new_customers_of_a_shard_take_its_buckets_in_turn() {
    let app = TestApp::spawn_without_worker().await;
    let owned = app.shards.map().buckets_of(1);
    let mut buckets = Vec::new();
    for n in 0..4 {
        let customer = customers::insert(
            &app.shards.get(1).conn,
            &owned,
            &NewCustomer {
                id: None,
                first_name: "Customer".into(),
                last_name: n.to_string(),
                email: format!("customer{n}@example.com"),
                credit_limit: Decimal::from(100),
            },
        )
        .await
        .expect("the customer is added");
        buckets.push(bucket_of(customer.id));
    }
    let position = owned
        .iter()
        .position(|&b| b == buckets[0])
        .expect("the first customer is in one of the shard's buckets");
    let expected: Vec<u16> = (0..4)
        .map(|n| owned[(position + n) % owned.len()])
        .collect();
    assert_eq!(buckets, expected, "one bucket after another");
}
