//! A deployment configured by hand: what the `orders` binary does when a setting is missing,
//! wrong, or secret.

use std::process::Command;

use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::helpers::{TestApp, orders_binary};

#[test]
fn without_orders_shards_every_shard_command_refuses_and_says_how_to_set_it() {
    for args in [
        &["worker"][..],
        &["counts"],
        &["get", "1025"],
        &["migrate", "up"],
    ] {
        let output = Command::new(orders_binary())
            .args(args)
            .env_remove("ORDERS_SHARDS")
            // Nothing listens here: the command must stop before it needs Temporal.
            .env("TEMPORAL_ADDRESS", "127.0.0.1:9")
            .output()
            .expect("orders runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "orders {args:?}: {stderr}");
        assert!(
            stderr.contains("ORDERS_SHARDS is not set")
                && stderr.contains("export ORDERS_SHARDS=postgres://"),
            "orders {args:?} says what to set: {stderr}"
        );
    }
}

#[test]
fn help_never_prints_the_shards_password() {
    for args in [
        &["worker", "--help"][..],
        &["counts", "--help"],
        &["customer", "add", "--help"],
        &["help", "recover"],
    ] {
        let output = Command::new(orders_binary())
            .args(args)
            .env(
                "ORDERS_SHARDS",
                "postgres://orders:hunter2-secret@db.example:5432/orders",
            )
            .output()
            .expect("orders runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "orders {args:?}");
        assert!(
            stdout.contains("ORDERS_SHARDS"),
            "orders {args:?}: {stdout}"
        );
        assert!(
            !stdout.contains("hunter2-secret"),
            "orders {args:?} prints the password: {stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_shards_listed_out_of_order_no_command_writes_or_reads_and_each_says_what_to_fix() {
    let mut app = TestApp::spawn_without_worker().await;
    let customer = app.add_customer("Ada Lovelace", "100.00").await.to_string();
    let recorded = app.shard_urls.clone();
    let rows = app.rows_everywhere().await;
    app.shard_urls.swap(0, 3);
    for args in [
        &["product", "add", "--id", "4242", "--stock", "5"][..],
        &[
            "customer",
            "add",
            "--name",
            "Grace Hopper",
            "--email",
            "grace@example.com",
            "--credit-limit",
            "10.00",
        ],
        &["customer", "update", &customer, "--name", "Ada King"],
        &["product", "get", "7"],
        &["get", "1025"],
        &["list"],
        &["counts"],
        &["recover", "--grace", "0"],
        &["audit", "--grace", "0"],
        &["load", "--orders", "1"],
        &[
            "fill",
            "--customers-per-shard",
            "1",
            "--orders-per-shard",
            "1",
        ],
        &["explain"],
    ] {
        let output = app.cli(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "orders {args:?}: {stderr}");
        assert!(
            stderr.contains("position 0 in ORDERS_SHARDS holds the deployment's shard 3")
                && stderr.contains("list the shards in their recorded order"),
            "orders {args:?} says what is wrong and what to do: {stderr}"
        );
    }
    app.shard_urls = recorded;
    assert_eq!(app.rows_everywhere().await, rows, "nothing was written");
    let product = orders_worker::cli::catalog::products::get(&app.shards, 4242)
        .await
        .unwrap();
    assert_eq!(product, None, "product 4242 was stocked nowhere");
    let mut customers = 0;
    for shard in app.shards.iter() {
        let row = shard
            .conn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT count(*) AS n FROM customers",
            ))
            .await
            .unwrap()
            .unwrap();
        customers += row.try_get::<i64>("", "n").unwrap();
    }
    assert_eq!(customers, 1, "only Ada, added before the swap");
    let shown = app.cli_ok(&[
        "customer", "update", &customer, "--name", "Ada King", "--json",
    ]);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("Ada"),
        "in their recorded order the shards serve again"
    );
}
