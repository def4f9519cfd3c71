//! Any Temporal client can place an order and move it on: here, the official `temporal` CLI.

use std::process::Command;

use orders_dev::temporal::temporal_cli;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test(flavor = "multi_thread")]
async fn place_order_started_by_the_temporal_cli_with_json_input_completes() {
    let app = TestApp::spawn().await;
    let customer = app.add_customer("Edsger Dijkstra", "100.00").await;
    // Written by hand, as a client with none of our types would write the documented JSON.
    let input = json!({"customer_id": customer, "items": [{"product_id": 9, "quantity": 3, "unit_price": "2.50"}]});

    let output = tokio::task::spawn_blocking({
        let (address, namespace, task_queue) = (
            app.temporal_address.clone(),
            app.namespace.clone(),
            app.task_queue.clone(),
        );
        move || {
            Command::new(temporal_cli().expect("temporal CLI is installed"))
                .args([
                    "workflow",
                    "execute",
                    "--type",
                    "PlaceOrder",
                    "--task-queue",
                    &task_queue,
                ])
                .args(["--namespace", &namespace])
                .args([
                    "--address",
                    &address,
                    "--input",
                    &input.to_string(),
                    "--output",
                    "json",
                ])
                .output()
                .expect("temporal CLI runs")
        }
    })
    .await
    .unwrap();

    assert!(
        output.status.success(),
        "temporal workflow execute failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the CLI prints JSON");
    let result = &printed["result"];
    assert_eq!(result["customer_id"], customer);
    assert_eq!(result["shard"], app.shards.for_customer(customer).index);
    assert_eq!(result["status"], "confirmed");
    assert_eq!(result["total_amount"], "7.50");
    let order_id = result["order_id"].as_i64().expect("an order id");
    assert!(order_id > 0, "{result}");

    // The command docs/contract.md gives: the first status change starts the order's lifecycle.
    let shipped = Command::new(temporal_cli().expect("temporal CLI is installed"))
        .args(["workflow", "execute-update-with-start"])
        .args(["--workflow-id", &format!("order-{order_id}")])
        .args(["--type", "OrderLifecycle", "--task-queue", &app.task_queue])
        .args(["--id-conflict-policy", "UseExisting"])
        .args(["--input", &json!({ "order_id": order_id }).to_string()])
        .args([
            "--update-name",
            "SetStatus",
            "--update-input",
            "\"shipped\"",
        ])
        .args([
            "--namespace",
            &app.namespace,
            "--address",
            &app.temporal_address,
        ])
        .args(["--output", "json"])
        .output()
        .expect("temporal CLI runs");
    assert!(
        shipped.status.success(),
        "temporal workflow execute-update-with-start failed: {}",
        String::from_utf8_lossy(&shipped.stderr)
    );
    let printed: serde_json::Value =
        serde_json::from_slice(&shipped.stdout).expect("the CLI prints JSON");
    assert_eq!(printed["updateResult"]["status"], "shipped", "{printed}");
    let (_, stored) = orders_read::find_order(&app.shards, order_id)
        .await
        .unwrap()
        .expect("the order exists");
    assert_eq!(stored.status, orders_entities::order::OrderStatus::Shipped);
}
