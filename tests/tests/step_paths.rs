//! Where an order's steps run: by default as local activities, in one workflow task; with
//! `ORDERS_STEPS=remote`, as activities of their own. Either history replays on the current
//! workflows, whichever setting the replaying worker has.

use std::process::Command;

use orders_core::Consistency;
use orders_dev::temporal::temporal_cli;
use rust_decimal::Decimal;
use serde_json::Value;

use crate::consistency::three_shard_order;
use crate::helpers::{TestApp, expect_failure, orders_binary};

/// What a PlaceOrder history shows of its cost.
#[derive(Debug)]
pub(crate) struct Shape {
    pub(crate) activity_tasks: usize,
    local_activities: usize,
    workflow_tasks: usize,
    /// Upserts of PlaceOrder's own search attributes.
    upserts: usize,
    child_starts: usize,
}

/// Saves `workflow_id`'s history the way users do (`temporal workflow show --output json`)
/// and returns the file and its shape.
pub(crate) fn recorded(
    app: &TestApp,
    workflow_id: &str,
    dir: &std::path::Path,
) -> (std::path::PathBuf, Shape) {
    let output = Command::new(temporal_cli().expect("temporal CLI is installed"))
        .args(["workflow", "show", "--output", "json"])
        .args(["--workflow-id", workflow_id])
        .args(["--address", &app.temporal_address])
        .args(["--namespace", &app.namespace])
        .output()
        .expect("temporal workflow show runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let file = dir.join(format!("{workflow_id}.json"));
    std::fs::write(&file, &output.stdout).unwrap();
    let history: Value = serde_json::from_slice(&output.stdout).unwrap();
    let events = history["events"].as_array().expect("events");
    let count = |kind: &str| events.iter().filter(|e| e["eventType"] == kind).count();
    // Core adds an upsert of its own for each patch marker (`TemporalChangeVersion`).
    let upserts = events
        .iter()
        .filter(|e| {
            e["upsertWorkflowSearchAttributesEventAttributes"]["searchAttributes"]["indexedFields"]
                .as_object()
                .is_some_and(|fields| !fields.contains_key("TemporalChangeVersion"))
        })
        .count();
    let local_activities = events
        .iter()
        .filter(|e| e["markerRecordedEventAttributes"]["markerName"] == "core_local_activity")
        .count();
    let shape = Shape {
        activity_tasks: count("EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"),
        local_activities,
        workflow_tasks: count("EVENT_TYPE_WORKFLOW_TASK_COMPLETED"),
        upserts,
        child_starts: count("EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED"),
    };
    (file, shape)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_costs_one_workflow_task_and_orders_steps_remote_keeps_the_activity_path() {
    let mut app = TestApp::spawn().await;
    let dir = tempfile_dir(&app);
    let customer = app.add_customer("Barbara Liskov", "500.00").await;

    // Default worker: a three-shard saga (create and plan in one, two reservations side by
    // side, credit and confirmation in one), all local activities in the order's one
    // workflow task, and no lifecycle until the order's status changes.
    let (input, _) = three_shard_order(&app, customer, Consistency::Saga);
    let (local_id, placed) = app.place_confirmed_order(input).await;
    let (local_file, local) = recorded(&app, &local_id, &dir);
    assert_eq!(local.activity_tasks, 0, "{local:?}");
    assert_eq!(local.local_activities, 4, "four steps: {local:?}");
    assert_eq!(local.workflow_tasks, 1, "{local:?}");
    assert_eq!(
        local.upserts, 2,
        "order id known, then confirmed: {local:?}"
    );
    assert_eq!(local.child_starts, 0, "{local:?}");
    // The first change starts the lifecycle (update-with-start): one workflow task reads the
    // order and ships it, and the lifecycle is found by its search attributes.
    app.cli_ok(&["set-status", &placed.order_id.to_string(), "shipped"]);
    let lifecycle_id = orders_workflows::order_lifecycle::workflow_id(placed.order_id);
    let (lifecycle_file, lifecycle) = recorded(&app, &lifecycle_id, &dir);
    assert_eq!(lifecycle.workflow_tasks, 1, "{lifecycle:?}");
    assert_eq!(lifecycle.activity_tasks, 0, "{lifecycle:?}");
    assert_eq!(
        lifecycle.local_activities, 2,
        "read the order, change its status: {lifecycle:?}"
    );
    let query = format!(
        "WorkflowType = 'OrderLifecycle' AND CustomerId = {customer} AND OrderStatus = 'shipped' AND Shard = {} AND Consistency = 'saga'",
        placed.shard
    );
    assert_eq!(listed(&app, &query).await, vec![lifecycle_id]);

    // A declined payment: the refusal is recorded, then ReleaseStock twice and DeleteOrder.
    let (mut input, products) = three_shard_order(&app, customer, Consistency::Saga);
    input.items[0].unit_price = "9999.00".parse::<Decimal>().unwrap().into();
    let declined_id = app.start_order(input).await;
    expect_failure(&app.outcome(&declined_id).await, "PaymentDeclined");
    let (declined_file, declined) = recorded(&app, &declined_id, &dir);
    assert_eq!(declined.activity_tasks, 0, "{declined:?}");
    assert_eq!(
        declined.local_activities, 7,
        "create, two reservations, the declined credit, three compensations: {declined:?}"
    );
    assert_eq!(
        declined.workflow_tasks, 2,
        "the refusal is recorded (a 1 ms timer ends the task) before anything is undone: {declined:?}"
    );
    assert_eq!(
        app.stock(products[0]).await.reserved,
        2,
        "only the confirmed order's"
    );

    let (input, _) = three_shard_order(&app, customer, Consistency::TwoPhase);
    let (two_phase_id, _) = app.place_confirmed_order(input).await;
    let (two_phase_file, two_phase) = recorded(&app, &two_phase_id, &dir);
    assert_eq!(two_phase.activity_tasks, 0, "{two_phase:?}");
    assert_eq!(two_phase.workflow_tasks, 1, "{two_phase:?}");
    assert_eq!(
        two_phase.local_activities, 3,
        "plan, the three parts prepared in one step, committed in one: {two_phase:?}"
    );

    // A worker set to the old path: every step is an activity, the lifecycle a child.
    app.terminate_worker();
    app.worker_env.push(("ORDERS_STEPS", "remote".to_owned()));
    app.start_worker(None);
    let (input, _) = three_shard_order(&app, customer, Consistency::Saga);
    let (remote_id, placed) = app.place_confirmed_order(input).await;
    let (remote_file, remote) = recorded(&app, &remote_id, &dir);
    assert_eq!(remote.activity_tasks, 6, "{remote:?}");
    assert_eq!(remote.local_activities, 0, "{remote:?}");
    assert_eq!(remote.child_starts, 1, "{remote:?}");
    assert!(
        remote.workflow_tasks >= 7,
        "one task after each step: {remote:?}"
    );
    app.cli_ok(&["set-status", &placed.order_id.to_string(), "shipped"]);

    // Replay follows the history, not the replaying worker's setting.
    for steps in ["local", "remote"] {
        let output = Command::new(orders_binary())
            .arg("replay")
            .args([
                &local_file,
                &lifecycle_file,
                &declined_file,
                &two_phase_file,
                &remote_file,
            ])
            .env("ORDERS_STEPS", steps)
            .env("ORDERS_LOG", "error")
            .output()
            .expect("orders replay runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "replay with ORDERS_STEPS={steps}: {stdout}"
        );
        assert_eq!(stdout.matches("ok    ").count(), 5, "{stdout}");
    }
}

/// Workflow ids matching `query`, once the visibility store has caught up (up to 10 s).
async fn listed(app: &TestApp, query: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let ids = app.workflow_ids(query).await;
        if !ids.is_empty() || std::time::Instant::now() > deadline {
            return ids;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn tempfile_dir(app: &TestApp) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("orders-step-paths-{}", app.task_queue));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
