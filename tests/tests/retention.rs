//! Idempotency keys do not grow forever: the retention loop every worker keeps running
//! deletes old keys of workflows that are no longer running, keeps those of a running
//! workflow however old (until it ends), and never touches keys of another shape.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DbBackend, Statement};

use orders_workflows::InDoubtRecoveryWorkflow;
use orders_workflows::in_doubt_recovery::{self, RecoverySchedule};
use temporalio_client::{
    UntypedWorkflow, WorkflowDescribeOptions, WorkflowStartOptions, WorkflowTerminateOptions,
};

use crate::helpers::{BuildOrder, TestApp, eventually, order};

/// Keys on every shard whose key starts with `prefix`.
async fn keys_of(app: &TestApp, prefix: &str) -> i64 {
    let mut total = 0;
    for shard in app.shards.iter() {
        let row = shard
            .conn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT count(*) AS n FROM idempotency_keys WHERE starts_with(key, $1)",
                [prefix.into()],
            ))
            .await
            .expect("keys count")
            .expect("a row");
        total += row.try_get::<i64>("", "n").unwrap();
    }
    total
}

/// Makes every key on every shard 60 days old.
async fn age_every_key(app: &TestApp) {
    for shard in app.shards.iter() {
        shard
            .conn
            .execute_raw(Statement::from_string(
                DbBackend::Postgres,
                "UPDATE idempotency_keys SET created_at = now() - interval '60 days'",
            ))
            .await
            .expect("keys age");
    }
}

/// Writes `key` on shard 0, as a step would have.
async fn write_key(app: &TestApp, key: &str) {
    app.shards
        .get(0)
        .conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO idempotency_keys (key, result) VALUES ($1, '{}'::jsonb)",
            [key.into()],
        ))
        .await
        .expect("the key is written");
}

#[tokio::test(flavor = "multi_thread")]
async fn old_keys_of_finished_workflows_go_while_a_running_workflows_and_odd_keys_stay() {
    let mut app = TestApp::spawn_without_worker().await;
    app.worker_env
        .push(("ORDERS_RETENTION_EVERY_SECS", "1".into()));
    app.worker_env
        .push(("ORDERS_IDEMPOTENCY_RETENTION_DAYS", "30".into()));
    app.start_worker(None);
    let customer = app.add_customer("Tony Hoare", "500.00").await;
    let order = order(customer).item(6, 1, "2.00");
    let finished = app.place_confirmed_order(order).await.0;

    // A step key of a workflow that keeps running: the in-doubt recovery loop the worker
    // started in this namespace.
    let recovery = app
        .client
        .get_workflow_handle::<UntypedWorkflow>(in_doubt_recovery::WORKFLOW_ID);
    let described = recovery
        .describe(WorkflowDescribeOptions::default())
        .await
        .expect("the recovery loop runs");
    let first_run = described
        .raw()
        .workflow_execution_info
        .as_ref()
        .expect("execution info")
        .first_run_id
        .clone();
    let running_key = format!("{}/{first_run}/probe", in_doubt_recovery::WORKFLOW_ID);
    write_key(&app, &running_key).await;
    let odd_key = "not-a-step-key";
    write_key(&app, odd_key).await;
    assert!(keys_of(&app, &format!("{finished}/")).await > 0);
    age_every_key(&app).await;

    eventually(
        "the finished order's keys to go",
        Duration::from_secs(20),
        async || (keys_of(&app, &format!("{finished}/")).await == 0).then_some(()),
    )
    .await;
    assert_eq!(
        keys_of(&app, &running_key).await,
        1,
        "a running workflow's key went"
    );
    assert_eq!(
        keys_of(&app, odd_key).await,
        1,
        "a key of another shape went"
    );

    recovery
        .terminate(WorkflowTerminateOptions::builder().reason("test").build())
        .await
        .expect("the recovery loop ends");
    eventually(
        "the ended workflow's key to go",
        Duration::from_secs(20),
        async || (keys_of(&app, &running_key).await == 0).then_some(()),
    )
    .await;
    assert_eq!(
        keys_of(&app, odd_key).await,
        1,
        "a key of another shape stays"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_workflow_whose_id_holds_a_uuid_keeps_its_keys() {
    let mut app = TestApp::spawn_without_worker().await;
    app.worker_env
        .push(("ORDERS_RETENTION_EVERY_SECS", "1".into()));
    app.worker_env
        .push(("ORDERS_IDEMPOTENCY_RETENTION_DAYS", "30".into()));
    app.start_worker(None);

    // Ids like `order/<uuid>` are what clients choose; the run id follows the workflow id's
    // own UUID. A queue nobody polls keeps the workflow running for as long as the test needs.
    let workflow_id = format!("order/{}", uuid::Uuid::new_v4());
    app.client
        .start_workflow(
            InDoubtRecoveryWorkflow::run,
            RecoverySchedule::default(),
            WorkflowStartOptions::new(
                format!("nobody-polls-{}", uuid::Uuid::new_v4()),
                &workflow_id,
            )
            .build(),
        )
        .await
        .expect("the workflow starts");
    let running = app
        .client
        .get_workflow_handle::<UntypedWorkflow>(workflow_id.clone());
    let first_run = running
        .describe(WorkflowDescribeOptions::default())
        .await
        .expect("the workflow is described")
        .raw()
        .workflow_execution_info
        .as_ref()
        .expect("execution info")
        .first_run_id
        .clone();
    let running_key = format!("{workflow_id}/{first_run}/create-order");
    write_key(&app, &running_key).await;
    // A key of a workflow Temporal does not know: its going shows a pass judged both.
    let ended_key = format!(
        "ended-{}/{}/create-order",
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4()
    );
    write_key(&app, &ended_key).await;
    age_every_key(&app).await;

    eventually(
        "the unknown workflow's key to go",
        Duration::from_secs(20),
        async || (keys_of(&app, &ended_key).await == 0).then_some(()),
    )
    .await;
    assert_eq!(
        keys_of(&app, &running_key).await,
        1,
        "the key of running workflow {workflow_id} went"
    );

    running
        .terminate(WorkflowTerminateOptions::builder().reason("test").build())
        .await
        .expect("the workflow ends");
    eventually(
        "the ended workflow's key to go",
        Duration::from_secs(20),
        async || (keys_of(&app, &running_key).await == 0).then_some(()),
    )
    .await;
}
