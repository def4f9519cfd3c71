//! With a realistic volume on every shard (100k orders, 200k items, 2k customers each), the
//! hot lookups run on their indexes, never a sequential scan; `orders explain` shows it.

use crate::helpers::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn at_100k_orders_per_shard_every_hot_lookup_uses_its_index() {
    let app = TestApp::spawn_without_worker().await;
    app.cli_ok(&[
        "fill",
        "--customers-per-shard",
        "2000",
        "--orders-per-shard",
        "100000",
    ]);
    let counts = app.cli(&["counts", "--json"]);
    let counts: serde_json::Value = serde_json::from_slice(&counts.stdout).unwrap();
    assert_eq!(counts["total"], 400_000, "{counts}");

    let output = app.cli_ok(&["explain", "--json"]);
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
