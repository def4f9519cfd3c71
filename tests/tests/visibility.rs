//! What users see in Temporal's own tools: the progress query and search attributes.

use std::process::Command;
use std::time::{Duration, Instant};

use orders_dev::temporal::temporal_cli;
use orders_workflows::PlaceOrderWorkflow;
use orders_workflows::progress::{Progress, Stage};
use temporalio_client::WorkflowQueryOptions;

use crate::helpers::{BuildOrder, TestApp, order};

fn list_workflow_ids(app: &TestApp, query: &str) -> Vec<String> {
    let output = Command::new(temporal_cli().unwrap())
        .args([
            "workflow",
            "list",
            "--query",
            query,
            "--address",
            &app.temporal_address,
            "--output",
            "json",
        ])
        .args(["--namespace", &app.namespace])
        .output()
        .expect("temporal workflow list runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    if stdout.trim().is_empty() {
        return Vec::new();
    }
    let listed: Vec<serde_json::Value> = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("workflow list prints JSON ({e}): {stdout}"));
    listed
        .iter()
        .filter_map(|w| w["execution"]["workflowId"].as_str().map(str::to_owned))
        .collect()
}

async fn progress_of(app: &TestApp, workflow_id: &str) -> Progress {
    app.client
        .get_workflow_handle::<PlaceOrderWorkflow>(workflow_id)
        .query(
            PlaceOrderWorkflow::progress,
            (),
            WorkflowQueryOptions::default(),
        )
        .await
        .expect("the progress query answers")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_placed_order_is_found_by_its_search_attributes_and_reports_its_progress() {
    let app = TestApp::spawn().await;
    let customer = app.add_customer("Frances Allen", "100.00").await;
    let (workflow_id, placed) = app
        .place_confirmed_order(order(customer).item(4, 1, "3.00"))
        .await;

    let progress = progress_of(&app, &workflow_id).await;
    assert_eq!(progress.stage, Stage::Confirmed);
    assert_eq!(progress.step.as_deref(), Some("ReserveCreditAndConfirm"));
    assert_eq!(progress.order_id, Some(placed.order_id));
    assert_eq!(
        progress.shard,
        Some(app.shards.for_customer(customer).index)
    );

    let home = app.shards.for_customer(customer).index;
    let query = format!(
        "WorkflowType = 'PlaceOrder' AND CustomerId = {customer} AND OrderStatus = 'confirmed' AND Shard = {home} AND Consistency = 'saga' AND TaskQueue = '{}'",
        app.task_queue
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let found = list_workflow_ids(&app, &query);
        if found == [workflow_id.clone()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "visibility never showed {workflow_id} for {query}: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declined_order_reports_failure_and_the_compensations_that_ran() {
    let app = TestApp::spawn().await;
    let customer = app.add_customer("Jean Sammet", "1.00").await;
    let workflow_id = app.start_order(order(customer).item(4, 1, "3.00")).await;
    app.outcome(&workflow_id).await;

    let progress = progress_of(&app, &workflow_id).await;
    assert_eq!(progress.stage, Stage::Failed);
    assert!(
        progress
            .failure
            .as_deref()
            .is_some_and(|f| f.starts_with("PaymentDeclined")),
        "{progress:?}"
    );
    assert_eq!(
        progress.compensations_run,
        ["ReleaseStock", "DeleteOrder"],
        "newest first; the declined credit step needs no release"
    );
}
