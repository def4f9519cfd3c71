//! Starting a confirmed order's lifecycle workflow from the worker.
//!
//! PlaceOrder runs this as a local activity, in the workflow task that confirms the order.
//! A child workflow would cost the order a second workflow task: Temporal drops a child
//! whose start it has not recorded when the parent closes, even an abandoned one
//! (temporalio/temporal#2829), so the parent has to wait for the started event before it
//! completes. Started from here, the lifecycle exists before PlaceOrder's task completes,
//! and the order needs no second task.
//!
//! The lifecycle starts with its search attributes set, and eagerly: the server hands its
//! first workflow task straight back to this worker, which polls the same task queue.
//!
//! Retry-safe: the lifecycle's workflow id is the order's, and a start that finds it already
//! started (a retried or replayed attempt) has nothing left to do.

use serde::{Deserialize, Serialize};
use temporalio_client::errors::WorkflowStartError;
use temporalio_client::{
    Client, UntypedWorkflow, WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowStartOptions,
};
use temporalio_common::data_converters::{PayloadConverter, RawValue};
use temporalio_common::search_attributes::SearchAttributes;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use crate::PlacedOrder;
use crate::search_attributes::lifecycle_attributes;

/// The lifecycle to start: its workflow type and id (the workflows crate names them), and the
/// confirmed order it starts with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleStart {
    pub workflow_type: String,
    pub workflow_id: String,
    pub order: PlacedOrder,
}

/// Temporal refused or failed the start; retried.
#[derive(Debug, thiserror::Error)]
#[error("cannot start {workflow_id} for order {order_id}: {source}")]
pub struct LifecycleNotStarted {
    workflow_id: String,
    order_id: i64,
    source: WorkflowStartError,
}

pub struct LifecycleActivities {
    client: Client,
}

impl LifecycleActivities {
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

#[activities]
impl LifecycleActivities {
    /// Starts the order's lifecycle on this worker's task queue, once.
    #[activity(name = "StartOrderLifecycle")]
    pub async fn start_lifecycle(
        self: std::sync::Arc<Self>,
        ctx: ActivityContext,
        start: LifecycleStart,
    ) -> Result<(), ActivityError> {
        let input = RawValue::from_value(&start.order, &PayloadConverter::default());
        let options = WorkflowStartOptions::new(ctx.info().task_queue.clone(), &start.workflow_id)
            // An order has one lifecycle, even one that already ended.
            .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
            .id_conflict_policy(WorkflowIdConflictPolicy::Fail)
            // Set at start, the lifecycle's first task has nothing to upsert.
            .search_attributes(SearchAttributes::new(lifecycle_attributes(&start.order)))
            // This worker polls the queue: the server hands it the lifecycle's first task in
            // the reply instead of through matching.
            .enable_eager_workflow_start(true)
            .build();
        let started = self
            .client
            .start_workflow(UntypedWorkflow::new(&start.workflow_type), input, options)
            .await;
        match started {
            Ok(_) | Err(WorkflowStartError::AlreadyStarted { .. }) => Ok(()),
            Err(source) => Err(LifecycleNotStarted {
                workflow_id: start.workflow_id,
                order_id: start.order.order_id,
                source,
            }
            .into()),
        }
    }
}
