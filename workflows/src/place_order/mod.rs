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
//! [`orders_core::OrderRequest`]), so any Temporal client can start it. The input is
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

use orders_activities::PlacedOrder;
use orders_activities::lifecycle::{LifecycleActivities, LifecycleStart};
use orders_core::metrics::OrderMetrics;
use orders_core::{Consistency, FailureType, ValidOrder};
use temporalio_common::WorkflowDefinition;
use temporalio_common::search_attributes::SearchAttributeUpdate;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ApplicationFailure, ChildWorkflowOptions, MemoValue, ParentClosePolicy,
    WorkflowCancellationToken, WorkflowContext, WorkflowContextView, WorkflowResult,
    WorkflowTermination,
};

use crate::order_lifecycle::{self, LifecycleInput, OrderLifecycleWorkflow};
use crate::outcomes;
use crate::progress::{Acceptance, Progress, Stage};
use crate::search_attributes::{CONSISTENCY, CUSTOMER_ID, HeldAttributes, ORDER_STATUS};
use crate::steps::{Phase, Steps};

/// Patch under which an order costs the server one workflow task: every step runs as a local
/// activity (see [`crate::steps`]), search attributes go out together when a client may look
/// for them (see [`publish`]), and a local activity starts the lifecycle (see
/// [`orders_activities::lifecycle`]). It implies every patch below, which such histories do
/// not mark one by one.
pub const ONE_TASK_PATCH: &str = "one-task-order";

/// The patches a worker started with `ORDERS_STEPS=remote` declines for new orders, so that
/// they run every step as an activity of its own, as orders did before these patches.
/// Histories follow what they recorded either way.
pub const LOCAL_STEP_PATCHES: [&str; 5] = [
    two_phase::GROUPED_STEPS_PATCH,
    LAZY_LIFECYCLE_PATCH,
    with_saga::LEAN_SAGA_PATCH,
    ONE_TASK_PATCH,
    two_phase::LOCAL_STEPS_PATCH,
];

/// Patch under which PlaceOrder leaves the order's lifecycle to its first status change,
/// which starts it with update-with-start (see [`crate::order_lifecycle`]): a placed order
/// costs the server one workflow, not two. It implies [`with_saga::LEAN_SAGA_PATCH`] and so
/// every patch that one implies.
pub const LAZY_LIFECYCLE_PATCH: &str = "lazy-lifecycle";

/// Patch guarding the `order` memo (the placed order, shown in the Web UI), which confirmed
/// orders carry since this change. Histories recorded before it replay without the memo.
pub const ORDER_MEMO_PATCH: &str = "order-memo";

/// Patch guarding the start of the order's [`OrderLifecycleWorkflow`] (as a child workflow,
/// before [`ONE_TASK_PATCH`]).
pub const ORDER_LIFECYCLE_PATCH: &str = "order-lifecycle";

/// Patch guarding stock (the `PlanOrder` and `ReserveStock` steps, the `OrderId` search
/// attribute) and two-phase commit. Histories recorded before it replay as they ran.
pub const INVENTORY_PATCH: &str = "inventory";

#[workflow]
#[derive(Default)]
pub struct PlaceOrderWorkflow {
    pub(crate) progress: Progress,
    attributes: HeldAttributes,
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
        // Newest first: a history carries at most one of these markers.
        let grouped = ctx.patched(two_phase::GROUPED_STEPS_PATCH);
        let lazy_lifecycle = grouped || ctx.patched(LAZY_LIFECYCLE_PATCH);
        let lean = lazy_lifecycle || ctx.patched(with_saga::LEAN_SAGA_PATCH);
        let one_task = lean || ctx.patched(ONE_TASK_PATCH);
        if one_task {
            ctx.state_mut(|s| s.attributes.hold());
        }
        let order = match ValidOrder::from_json(&input) {
            Ok(order) => order,
            Err(invalid) => {
                let failure = FailureType::InvalidOrder.failure(invalid.to_string());
                return Err(fail(ctx, Stage::Failed, failure).into());
            }
        };
        let with_stock = one_task || ctx.patched(INVENTORY_PATCH);
        let consistency = if with_stock {
            order.consistency
        } else {
            Consistency::Saga
        };
        set_attributes(
            ctx,
            [
                CUSTOMER_ID.value_set(order.customer_id),
                CONSISTENCY.value_set(consistency.as_str().to_owned()),
            ],
        );
        let key = format!(
            "{}/{}",
            ctx.workflow_id(),
            ctx.info().first_execution_run_id()
        );
        // Two-phase steps were local before the one-task patch, behind a patch of their own.
        let steps = match consistency {
            _ if one_task => Steps::Local,
            Consistency::TwoPhase if ctx.patched(two_phase::LOCAL_STEPS_PATCH) => Steps::Local,
            _ => Steps::Remote,
        };
        let shape = match (lean, with_stock) {
            (true, _) => with_saga::Shape::Lean,
            (false, true) => with_saga::Shape::WithStock,
            (false, false) => with_saga::Shape::WithoutStock,
        };
        let placed = match consistency {
            Consistency::Saga => with_saga::place(ctx, order, &key, shape, steps).await?,
            Consistency::TwoPhase => two_phase::place(ctx, order, &key, steps, grouped).await?,
        };
        set_stage(ctx, Stage::Confirmed);
        outcomes::record(ctx, OrderMetrics::order_placed);
        // Added after the first histories were recorded: guarded so those replay.
        if one_task || ctx.patched(ORDER_MEMO_PATCH) {
            ctx.upsert_memo([("order", Some(MemoValue::new(placed.clone())))])?;
        }
        if lazy_lifecycle {
            // Its first status change starts it.
        } else if one_task {
            start_lifecycle_here(ctx, &placed).await;
        } else if ctx.patched(ORDER_LIFECYCLE_PATCH) {
            start_lifecycle(ctx, &placed).await;
        }
        Ok(placed)
    }
}

/// Starts the confirmed order's lifecycle from this worker, inside the workflow task (see
/// [`orders_activities::lifecycle`]). The order is confirmed whatever happens here, so a
/// start that still fails after its retries is logged, not raised.
async fn start_lifecycle_here(ctx: &WorkflowContext<PlaceOrderWorkflow>, placed: &PlacedOrder) {
    let start = LifecycleStart {
        workflow_type: OrderLifecycleWorkflow::run.name().to_owned(),
        workflow_id: order_lifecycle::workflow_id(placed.order_id),
        order: placed.clone(),
    };
    let started = Steps::Local
        .run(
            ctx,
            LifecycleActivities::start_lifecycle,
            start,
            Phase::AfterConfirmation,
        )
        .await;
    if let Err(err) = started
        && !ctx.is_replaying()
    {
        tracing::warn!(order_id = placed.order_id, %err, "could not start the order's lifecycle workflow");
    }
}

/// Starts the confirmed order's lifecycle as a child workflow and leaves it running on its
/// own (histories before [`ONE_TASK_PATCH`]). The
/// order is confirmed whatever happens here, so a failure to start is logged, not raised.
async fn start_lifecycle(ctx: &WorkflowContext<PlaceOrderWorkflow>, placed: &PlacedOrder) {
    let options = ChildWorkflowOptions::builder()
        .workflow_id(order_lifecycle::workflow_id(placed.order_id))
        .parent_close_policy(ParentClosePolicy::Abandon)
        // The order is confirmed: a cancellation arriving now must not stop its lifecycle.
        .cancellation_token(WorkflowCancellationToken::new())
        .build();
    let started = ctx
        .start_child_workflow(
            OrderLifecycleWorkflow::run,
            LifecycleInput::Placed(placed.clone()),
            options,
        )
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

/// Records `stage` in the query state and the `OrderStatus` search attribute. A final stage
/// is published at once: the run is about to end.
pub(crate) fn set_stage(ctx: &WorkflowContext<PlaceOrderWorkflow>, stage: Stage) {
    ctx.state_mut(|s| s.progress.stage = stage);
    set_attributes(ctx, [ORDER_STATUS.value_set(stage.as_str().to_owned())]);
    if stage.is_final() {
        publish(ctx);
    }
}

/// Sets search attributes: held until [`publish`] under [`ONE_TASK_PATCH`], sent at once in
/// histories recorded before it.
pub(crate) fn set_attributes(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    updates: impl IntoIterator<Item = SearchAttributeUpdate>,
) {
    let updates = updates.into_iter().collect();
    let now = ctx.state_mut(|s| s.attributes.add(updates));
    if !now.is_empty() {
        ctx.upsert_search_attributes(now);
    }
}

/// Sends the held search attributes in one upsert. PlaceOrder publishes when a client may
/// look for the order while it runs (its order id is known: `orders cancel ORDER_ID` finds it
/// by `OrderId`) and when it ends. A run whose steps all finish in one workflow task sends
/// both upserts with that task; one that waits longer (a step retrying, a failpoint) shows
/// the first while it waits.
pub(crate) fn publish(ctx: &WorkflowContext<PlaceOrderWorkflow>) {
    let held = ctx.state_mut(|s| s.attributes.take());
    if !held.is_empty() {
        ctx.upsert_search_attributes(held);
    }
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
