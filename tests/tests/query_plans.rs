//! With a realistic volume on every shard (100k orders, 200k items, 2k customers each), the
//! hot lookups run on their indexes, never a sequential scan; `orders explain` shows it.

use futures::future::try_join_all;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::helpers::TestApp;

const ORDERS_PER_SHARD: i64 = 100_000;
const CUSTOMERS_PER_SHARD: i64 = 2_000;

/// Fills shard `shard` with customers and orders in bucket `shard` (which it owns under the
/// initial map), orders a second apart going back in time, two items each.
async fn load(app: &TestApp, shard: usize) -> Result<(), sea_orm::DbErr> {
    let conn = &app.shards.get(shard).conn;
    let bucket = shard as i64;
    for sql in [
        "INSERT INTO customers (id, first_name, last_name, email, credit_limit)
         SELECT g * 1024 + $1, 'Customer', g::text, 'c' || g || '@example.com', 1000
         FROM generate_series(1, $2::bigint) g",
        "INSERT INTO orders (id, customer_id, status, total_amount, created_at, updated_at,
                             customer_name, customer_email)
         SELECT g * 1024 + $1, (g % $2 + 1) * 1024 + $1,
                (ARRAY['pending','confirmed','shipped','delivered','cancelled'])[g % 5 + 1],
                30.00, now() - g * interval '1 second', now() - g * interval '1 second',
                'Customer ' || (g % $2 + 1), 'c' || (g % $2 + 1) || '@example.com'
         FROM generate_series(1, $3::bigint) g",
        "INSERT INTO order_items (order_id, product_id, quantity, price)
         SELECT g * 1024 + $1, p, 1, 15.00
         FROM generate_series(1, $3::bigint) g, generate_series(1, 2) p",
        "ANALYZE",
    ] {
        let values: Vec<sea_orm::Value> = match sql.matches('$').count() {
            0 => vec![],
            _ if sql.contains("$3") => vec![
                bucket.into(),
                CUSTOMERS_PER_SHARD.into(),
                ORDERS_PER_SHARD.into(),
            ],
            _ => vec![bucket.into(), CUSTOMERS_PER_SHARD.into()],
        };
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn at_100k_orders_per_shard_every_hot_lookup_uses_its_index() {
    let app = TestApp::spawn_without_worker().await;
    try_join_all((0..app.shards.len()).map(|shard| load(&app, shard)))
        .await
        .expect("the shards are loaded");

    let output = app.cli(&["explain", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let shards: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let expected_indexes = [
        (
            "order with items by id",
            vec!["orders_pkey", "idx_order_items_order_id"],
        ),
        (
            "newest orders (first page)",
            vec!["idx_orders_created_at_id"],
        ),
        (
            "newest orders after a cursor",
            vec!["idx_orders_created_at_id"],
        ),
        (
            "a customer's newest orders",
            vec!["idx_orders_customer_created_at_id"],
        ),
        (
            "a customer's orders after a cursor",
            vec!["idx_orders_customer_created_at_id"],
        ),
    ];
    for shard in shards.as_array().unwrap() {
        let plans = shard["plans"].as_array().unwrap();
        assert_eq!(plans.len(), 6, "{shard}");
        for (query, indexes) in &expected_indexes {
            let plan = plans
                .iter()
                .find(|p| p["query"] == *query)
                .unwrap_or_else(|| panic!("no plan for {query}"));
            assert_eq!(
                plan["seq_scans"],
                serde_json::json!([]),
                "{query} scans sequentially:\n{}",
                plan["plan"].as_str().unwrap()
            );
            for index in indexes {
                assert!(
                    plan["indexes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|i| i == index),
                    "{query} does not use {index}:\n{}",
                    plan["plan"].as_str().unwrap()
                );
            }
            assert!(
                plan["plan"].as_str().unwrap().contains("Buffers:"),
                "ANALYZE, BUFFERS output"
            );
        }
    }

    let text = app.cli(&["explain"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert_eq!(
        text.matches("── a customer's newest orders (indexes: ")
            .count(),
        4,
        "{text}"
    );
}
