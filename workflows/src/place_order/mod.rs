//! `PlaceOrder`: validate, then place the order across its shards in one of two modes, chosen
//! by the input's `consistency`:
//! - `saga` (default): one local transaction per step, compensated in reverse on failure
//!   ([`with_saga`]);
//! - `two_phase`: every shard's part is prepared, then all commit or all roll back
//!   ([`two_phase`]).
//!
//! This module holds what both modes share: the workflow's definition, its query and update,
//! and how a stage, a failure or a cancellation is recorded. The modes are its children and
//! only they call into it.
//!
//! Input and result are plain JSON (see README, "Public contract"; clients build it as an
//! [`orders_activities::OrderRequest`]), so any Temporal client can start it. The input is
//! taken as raw JSON and validated here, so malformed input fails the workflow with
//! `InvalidOrder` instead of failing workflow tasks forever.
//!
//! The activities' idempotency key is `<workflow id>/<first run id>/<step>`: stable across
//! worker crashes, activity retries and resets of one execution chain (a reset keeps the
//! first run id, so a reset saga finds what it already wrote), distinct for a new start that
//! reuses the workflow id.
//!
//! Progress is visible three ways: the `progress` query, the search attributes of
//! [`crate::search_attributes`], and the history itself.

pub mod two_phase;
pub mod with_saga;

use orders_activities::metrics::OrderMetrics;
use orders_activities::{Consistency, FailureType, PlacedOrder, ValidOrder};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ApplicationFailure, ChildWorkflowOptions, MemoValue, ParentClosePolicy,
    WorkflowCancellationToken, WorkflowContext, WorkflowContextView, WorkflowResult,
    WorkflowTermination,
};

use crate::order_lifecycle::{self, OrderLifecycleWorkflow};
use crate::outcomes;
use crate::progress::{Acceptance, Progress, Stage};
use crate::search_attributes::{CONSISTENCY, CUSTOMER_ID, ORDER_STATUS};

/// Patch guarding the `order` memo (the placed order, shown in the Web UI), which confirmed
/// orders carry since this change. Histories recorded before it replay without the memo.
pub const ORDER_MEMO_PATCH: &str = "order-memo";

/// Patch guarding the start of the order's [`OrderLifecycleWorkflow`].
pub const ORDER_LIFECYCLE_PATCH: &str = "order-lifecycle";

/// Patch guarding stock (the `PlanOrder` and `ReserveStock` steps, the `OrderId` search
/// attribute) and two-phase commit. Histories recorded before it replay as they ran.
pub const INVENTORY_PATCH: &str = "inventory";

#[workflow]
#[derive(Default)]
pub struct PlaceOrderWorkflow {
    pub(crate) progress: Progress,
}

#[workflow_methods]
impl PlaceOrderWorkflow {
    #[run(name = "PlaceOrder")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: serde_json::Value,
    ) -> WorkflowResult<PlacedOrder> {
        let outcome = Self::process(ctx, input).await;
        // Let an `Accepted` update that is still waiting see the outcome before the run ends.
        let view = ctx.clone();
        let _ = ctx
            .wait_condition(move |_| view.all_handlers_finished())
            .await;
        outcome
    }

    /// Answers as soon as the order is written (accepted) or refused, whichever comes first.
    /// `orders submit` sends it with update-with-start, so it learns at once whether the
    /// input was valid and the customer known, without waiting for payment and confirmation.
    #[update(name = "Accepted")]
    pub async fn accepted(ctx: &mut WorkflowContext<Self>) -> Acceptance {
        let _ = ctx
            .wait_condition(|s| s.progress.stage != Stage::Received)
            .await;
        ctx.state(|s| Acceptance::of(&s.progress))
    }

    /// Where the order stands: stage, current step, order id and shard once known, and the
    /// compensations that ran.
    #[query]
    pub fn progress(&self, _ctx: &WorkflowContextView) -> Progress {
        self.progress.clone()
    }
}

impl PlaceOrderWorkflow {
    async fn process(
        ctx: &mut WorkflowContext<Self>,
        input: serde_json::Value,
    ) -> WorkflowResult<PlacedOrder> {
        let order = match ValidOrder::from_json(&input) {
            Ok(order) => order,
            Err(invalid) => {
                let failure = FailureType::InvalidOrder.failure(invalid.to_string());
                return Err(fail(ctx, Stage::Failed, failure).into());
            }
        };
        let with_stock = ctx.patched(INVENTORY_PATCH);
        let consistency = if with_stock {
            order.consistency
        } else {
            Consistency::Saga
        };
        ctx.upsert_search_attributes([
            CUSTOMER_ID.value_set(order.customer_id),
            CONSISTENCY.value_set(consistency.as_str().to_owned()),
        ]);
        let key = format!(
            "{}/{}",
            ctx.workflow_id(),
            ctx.info().first_execution_run_id()
        );
        let placed = match consistency {
            Consistency::Saga => with_saga::place(ctx, order, &key, with_stock).await?,
            Consistency::TwoPhase => two_phase::place(ctx, order, &key).await?,
        };
        set_stage(ctx, Stage::Confirmed);
        outcomes::record(ctx, OrderMetrics::order_placed);
        // Added after the first histories were recorded: guarded so those replay.
        if ctx.patched(ORDER_MEMO_PATCH) {
            ctx.upsert_memo([("order", Some(MemoValue::new(placed.clone())))])?;
        }
        if ctx.patched(ORDER_LIFECYCLE_PATCH) {
            start_lifecycle(ctx, &placed).await;
        }
        Ok(placed)
    }
}

/// Starts the confirmed order's lifecycle workflow and leaves it running on its own. The
/// order is confirmed whatever happens here, so a failure to start is logged, not raised.
async fn start_lifecycle(ctx: &WorkflowContext<PlaceOrderWorkflow>, placed: &PlacedOrder) {
    let options = ChildWorkflowOptions::builder()
        .workflow_id(order_lifecycle::workflow_id(placed.order_id))
        .parent_close_policy(ParentClosePolicy::Abandon)
        // The order is confirmed: a cancellation arriving now must not stop its lifecycle.
        .cancellation_token(WorkflowCancellationToken::new())
        .build();
    let started = ctx
        .start_child_workflow(OrderLifecycleWorkflow::run, placed.clone(), options)
        .await;
    if let Err(err) = started
        && !ctx.is_replaying()
    {
        tracing::warn!(order_id = placed.order_id, %err, "could not start the order's lifecycle workflow");
    }
}

pub(crate) fn set_step(ctx: &WorkflowContext<PlaceOrderWorkflow>, step: &str) {
    ctx.state_mut(|s| s.progress.step = Some(step.to_owned()));
}

/// Records `stage` in the query state and the `OrderStatus` search attribute.
pub(crate) fn set_stage(ctx: &WorkflowContext<PlaceOrderWorkflow>, stage: Stage) {
    ctx.state_mut(|s| s.progress.stage = stage);
    ctx.upsert_search_attributes([ORDER_STATUS.value_set(stage.as_str().to_owned())]);
}

/// Records the cancellation and returns it, for the workflow to end with.
pub(crate) fn cancelled_order(ctx: &WorkflowContext<PlaceOrderWorkflow>) -> WorkflowTermination {
    set_stage(ctx, Stage::Cancelled);
    outcomes::record(ctx, OrderMetrics::order_cancelled);
    WorkflowTermination::cancelled()
}

/// Records the failure and returns it, for the workflow to end with.
pub(crate) fn fail(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    stage: Stage,
    failure: ApplicationFailure,
) -> ApplicationFailure {
    let failure_type = failure.type_name().unwrap_or("ApplicationFailure");
    outcomes::record(ctx, |m| m.order_failed(failure_type));
    let text = format!("{failure_type}: {failure}");
    ctx.state_mut(|s| s.progress.failure = Some(text));
    set_stage(ctx, stage);
    failure
}
