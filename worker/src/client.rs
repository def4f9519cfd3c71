//! Client-side operations: connecting to Temporal, submitting PlaceOrder, reading results.

use anyhow::Context;
use orders_activities::PlacedOrder;
use orders_core::OrderRequest;
use orders_workflows::order_lifecycle::LifecycleInput;
use orders_workflows::progress::Acceptance;
use orders_workflows::{OrderLifecycleWorkflow, PlaceOrderWorkflow};
use temporalio_client::{
    Client, ClientOptions, WorkflowGetResultOptions, WorkflowIdConflictPolicy,
    WorkflowIdReusePolicy, WorkflowStartOptions, WorkflowUpdateWithStartOptions,
    errors::{WorkflowGetResultError, WorkflowUpdateError, WorkflowUpdateWithStartError},
};
use temporalio_common::error::IncomingError;

use crate::config::TemporalSettings;

/// Connects to the configured Temporal frontend (over TLS and with an API key when
/// configured; see `temporal_connection`).
pub async fn connect(settings: &TemporalSettings) -> anyhow::Result<Client> {
    let connection = crate::temporal_connection::connect(settings).await?;
    Ok(Client::new(
        connection,
        ClientOptions::new(settings.namespace.clone()).build(),
    )?)
}

/// The workflow task timeout of the orders this client starts: how long Temporal waits for a
/// worker that took a task and died before it gives the task to another (the server's
/// default is 10 s). A two-phase order's steps run inside its workflow task, and its prepared
/// parts hold their rows until the task is done, so a dead worker's task should move soon.
/// A live worker that needs longer (a shard slow to answer) heartbeats the task itself.
pub const ORDER_TASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How a PlaceOrder run ended, in the terms clients care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderOutcome {
    Placed(PlacedOrder),
    /// Failed with this application failure type (`PaymentDeclined`, …) and message.
    Failed {
        failure_type: String,
        message: String,
    },
    Cancelled,
    /// Terminated, timed out, or anything else that is not a business outcome.
    Other(String),
}

/// Starts PlaceOrder for `request` under `workflow_id`.
pub async fn start_order(
    client: &Client,
    task_queue: &str,
    workflow_id: &str,
    request: &OrderRequest,
) -> anyhow::Result<()> {
    start_order_raw(client, task_queue, workflow_id, input_of(request)?).await
}

/// Starts PlaceOrder with `input` as it is, valid or not: what a client in another language
/// may send. The workflow validates it and fails with `InvalidOrder` if it must.
pub async fn start_order_raw(
    client: &Client,
    task_queue: &str,
    workflow_id: &str,
    input: serde_json::Value,
) -> anyhow::Result<()> {
    client
        .start_workflow(
            PlaceOrderWorkflow::run,
            input,
            WorkflowStartOptions::new(task_queue, workflow_id)
                .task_timeout(ORDER_TASK_TIMEOUT)
                .build(),
        )
        .await
        .with_context(|| format!("failed to start PlaceOrder {workflow_id}"))?;
    Ok(())
}

/// Starts PlaceOrder and, in the same request (update-with-start), asks it whether the order
/// was accepted: written on its shard, or refused (invalid input, unknown customer). Returns
/// as soon as that is known, long before payment and confirmation finish.
pub async fn submit_order(
    client: &Client,
    task_queue: &str,
    workflow_id: &str,
    request: &OrderRequest,
) -> anyhow::Result<Acceptance> {
    client
        .execute_update_with_start_workflow(
            PlaceOrderWorkflow::run,
            input_of(request)?,
            PlaceOrderWorkflow::accepted,
            (),
            WorkflowUpdateWithStartOptions::new(
                task_queue,
                workflow_id,
                WorkflowIdConflictPolicy::Fail,
            )
            .task_timeout(ORDER_TASK_TIMEOUT)
            .build(),
        )
        .await
        .with_context(|| format!("failed to submit PlaceOrder {workflow_id}"))
}

/// PlaceOrder's input: the request's documented JSON.
fn input_of(request: &OrderRequest) -> anyhow::Result<serde_json::Value> {
    serde_json::to_value(request).context("an order request is always JSON")
}

/// Waits for PlaceOrder `workflow_id` to finish.
pub async fn order_outcome(client: &Client, workflow_id: &str) -> anyhow::Result<OrderOutcome> {
    let handle = client.get_workflow_handle::<PlaceOrderWorkflow>(workflow_id);
    match handle.get_result(WorkflowGetResultOptions::default()).await {
        Ok(placed) => Ok(OrderOutcome::Placed(placed)),
        Err(WorkflowGetResultError::Failed(failure)) => Ok(match *failure {
            IncomingError::Application(app) => OrderOutcome::Failed {
                failure_type: app.type_name().unwrap_or("ApplicationFailure").to_owned(),
                message: app.to_string(),
            },
            other => OrderOutcome::Other(other.to_string()),
        }),
        Err(WorkflowGetResultError::Cancelled { .. }) => Ok(OrderOutcome::Cancelled),
        // The server could not be asked: the order's outcome is unknown, not "other".
        Err(e @ WorkflowGetResultError::Rpc(_)) => {
            Err(anyhow::Error::new(e).context(format!("cannot learn how {workflow_id} ended")))
        }
        Err(other) => Ok(OrderOutcome::Other(other.to_string())),
    }
}

/// Moves a confirmed order on (shipped, delivered, cancelled) through its lifecycle
/// workflow's `SetStatus` update, starting the lifecycle on `task_queue` if it is not
/// running (update-with-start): PlaceOrder leaves it to the first change. A transition the
/// lifecycle does not allow is refused, and the error says why.
pub async fn set_order_status(
    client: &Client,
    task_queue: &str,
    order_id: i64,
    status: orders_entities::order::OrderStatus,
) -> anyhow::Result<PlacedOrder> {
    let workflow_id = orders_workflows::order_lifecycle::workflow_id(order_id);
    let options = WorkflowUpdateWithStartOptions::new(
        task_queue,
        &workflow_id,
        // A running lifecycle takes the change; a closed one leaves the order delivered or
        // cancelled, which the new one reads from the shard and refuses to change.
        WorkflowIdConflictPolicy::UseExisting,
    )
    .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicate)
    .build();
    client
        .execute_update_with_start_workflow(
            OrderLifecycleWorkflow::run,
            LifecycleInput::ById { order_id },
            OrderLifecycleWorkflow::set_status,
            status,
            options,
        )
        .await
        .map_err(|e| match e {
            WorkflowUpdateWithStartError::Update(WorkflowUpdateError::Failed(failure)) => {
                anyhow::anyhow!("order {order_id} was not changed: {}", failure.message)
            }
            other => anyhow::Error::new(other).context(format!(
                "cannot change order {order_id} through its lifecycle workflow {workflow_id}"
            )),
        })
}

/// How `orders cancel` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// PlaceOrder was still running; it stopped and undid what it wrote (compensations, or
    /// the rollback of every prepared part).
    CancelledWhilePending { workflow_id: String },
    /// The order was confirmed; its lifecycle cancelled it and returned credit and stock.
    CancelledAfterConfirmation(PlacedOrder),
}

/// The running PlaceOrder that is placing `order_id`, found by its `OrderId` search attribute.
pub async fn running_placement(client: &Client, order_id: i64) -> anyhow::Result<Option<String>> {
    use futures::StreamExt;
    let query = format!(
        "WorkflowType = 'PlaceOrder' AND OrderId = {order_id} AND ExecutionStatus = 'Running'"
    );
    let mut found = client.list_workflows(
        query,
        temporalio_client::WorkflowListOptions::builder()
            .limit(1)
            .build(),
    );
    match found.next().await {
        Some(execution) => Ok(Some(
            execution
                .context("cannot list PlaceOrder workflows")?
                .id()
                .to_owned(),
        )),
        None => Ok(None),
    }
}

/// Cancels order `order_id` wherever it stands: a pending order through its PlaceOrder
/// workflow (Temporal cancellation), a confirmed one through its lifecycle (`SetStatus`).
pub async fn cancel_order(
    client: &Client,
    task_queue: &str,
    order_id: i64,
) -> anyhow::Result<CancelOutcome> {
    // The search index can lag behind a PlaceOrder that just started (or just published its
    // order id): while the lifecycle finds the order pending, look for it again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(workflow_id) = running_placement(client, order_id).await?
            && let Some(cancelled) = cancel_placement(client, order_id, workflow_id).await?
        {
            return Ok(cancelled);
        }
        match set_order_status(
            client,
            task_queue,
            order_id,
            orders_entities::order::OrderStatus::Cancelled,
        )
        .await
        {
            Ok(cancelled) => return Ok(CancelOutcome::CancelledAfterConfirmation(cancelled)),
            Err(e)
                if orders_workflows::order_lifecycle::refused_as_pending(&e.to_string())
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Cancels the running PlaceOrder `workflow_id` of `order_id`. Returns `None` when the
/// order was confirmed meanwhile: it is to be cancelled through its lifecycle.
async fn cancel_placement(
    client: &Client,
    order_id: i64,
    workflow_id: String,
) -> anyhow::Result<Option<CancelOutcome>> {
    let requested = client
        .get_workflow_handle::<PlaceOrderWorkflow>(&workflow_id)
        .cancel(
            temporalio_client::WorkflowCancelOptions::builder()
                .reason(format!("orders cancel {order_id}"))
                .build(),
        )
        .await;
    // The search index can lag: the workflow may have just ended. Its outcome says.
    if let Err(e) = requested {
        tracing::debug!(%workflow_id, error = %e, "cancel request refused; reading the outcome");
    }
    match order_outcome(client, &workflow_id).await? {
        OrderOutcome::Cancelled => Ok(Some(CancelOutcome::CancelledWhilePending { workflow_id })),
        // The commit (or confirmation) was already under way: cancel the confirmed order.
        OrderOutcome::Placed(_) => Ok(None),
        other => anyhow::bail!(
            "order {order_id} was not placed ({workflow_id} ended {other:?}); there is nothing to cancel"
        ),
    }
}
