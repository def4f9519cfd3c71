//! Migrations on every shard: up → down → up keeps data; failures name the shard.

use orders_migration::{Migrator, MigratorTrait};
use orders_worker::deployment::migrate::{self, Plan};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::helpers::{BuildOrder, TestApp, order};

/// How many migrations this build has.
fn migration_count() -> usize {
    Migrator::migrations().len()
}

/// How many migrations there are from the customer-name split (the 5th) on.
fn since_name_split() -> usize {
    migration_count() - 4
}

async fn names(app: &TestApp, column_sql: &str) -> Vec<Vec<String>> {
    let mut all = Vec::new();
    for shard in app.shards.iter() {
        let rows = shard
            .conn
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                format!("SELECT {column_sql} AS n FROM customers ORDER BY id"),
            ))
            .await
            .expect("customer names can be read");
        all.push(
            rows.iter()
                .map(|r| r.try_get::<String>("", "n").unwrap())
                .collect(),
        );
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn down_then_up_on_every_shard_keeps_customers_orders_and_split_names() {
    let app = TestApp::spawn().await;
    for name in [
        "Ada King Lovelace",
        "Grace Hopper",
        "Cher",
        "Alan Turing",
        "Donald Ervin Knuth",
    ] {
        app.add_customer(name, "100.00").await;
    }
    let customer = app.add_customer("Niklaus Wirth", "100.00").await;
    let placed = app.place_order(order(customer).item(1, 1, "9.99")).await;
    assert!(
        matches!(placed, orders_worker::client::OrderOutcome::Placed(_)),
        "{placed:?}"
    );
    let split_before = names(&app, "first_name || '|' || last_name").await;

    // Roll back everything from the name split on: full names come back.
    let versions = migrate::run(&app.shards, Plan::Down(since_name_split() as u32))
        .await
        .expect("down works on every shard");
    assert!(
        versions
            .iter()
            .all(|v| v.applied == migration_count() - since_name_split()),
        "{versions:?}"
    );
    let joined = names(&app, "name").await.concat();
    for full in [
        "Ada King Lovelace",
        "Grace Hopper",
        "Cher",
        "Alan Turing",
        "Donald Ervin Knuth",
        "Niklaus Wirth",
    ] {
        assert!(
            joined.contains(&full.to_owned()),
            "{full} survives the down migration: {joined:?}"
        );
    }

    let versions = migrate::run(&app.shards, Plan::Up(None))
        .await
        .expect("up works again");
    assert!(
        versions
            .iter()
            .all(|v| v.applied == migration_count() && v.pending == 0),
        "{versions:?}"
    );
    assert_eq!(
        names(&app, "first_name || '|' || last_name").await,
        split_before,
        "the split round-trips"
    );
    let rows = app.rows_everywhere().await;
    assert_eq!(
        rows.iter()
            .map(|r| (r.orders, r.items))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1)),
        (1, 1),
        "the order survived"
    );
    let home = app.shards.for_customer(customer);
    let copied = home
        .conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT customer_name || '|' || customer_email AS n FROM orders WHERE customer_id = $1",
            [customer.into()],
        ))
        .await
        .unwrap()
        .expect("the order is on its customer's shard")
        .try_get::<String>("", "n")
        .unwrap();
    assert_eq!(
        copied, "Niklaus Wirth|niklaus@example.com",
        "up backfills the customer's name and email onto the order"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_migration_goes_down_to_an_empty_schema_and_back_up() {
    let app = TestApp::with_empty_databases().await;
    migrate::run(&app.shards, Plan::Up(None)).await.expect("up");
    let down = migrate::run(&app.shards, Plan::Down(migration_count() as u32))
        .await
        .expect("down all");
    assert!(
        down.iter().all(|v| v.applied == 0 && v.version.is_none()),
        "{down:?}"
    );
    let tables = app.shards.get(0).conn
        .query_one_raw(Statement::from_string(DbBackend::Postgres,
            "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = 'public' AND table_name <> 'seaql_migrations'"))
        .await.unwrap().unwrap().try_get::<i64>("", "n").unwrap();
    assert_eq!(tables, 0, "down removes every table");
    let up = migrate::run(&app.shards, Plan::Up(None))
        .await
        .expect("up again");
    assert!(up.iter().all(|v| v.applied == migration_count()), "{up:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_that_cannot_migrate_is_named_and_the_others_complete() {
    let app = TestApp::with_empty_databases().await;
    let (_, shards) = app.shards_with_shard_down(2).await;

    let error = migrate::run(&shards, Plan::Up(None))
        .await
        .expect_err("shard 2 is down")
        .to_string();

    assert!(
        error.contains("shard 2"),
        "the error names the shard: {error}"
    );
    assert!(
        !error.contains("shard 0") && !error.contains("shard 1") && !error.contains("shard 3"),
        "{error}"
    );
    for shard in [0, 1, 3] {
        let status = migrate::run(&app.shards, Plan::Status).await.unwrap();
        assert_eq!(
            status[shard].applied,
            migration_count(),
            "shard {shard} completed"
        );
    }
}
