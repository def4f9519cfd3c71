//! `PlaceOrder`: validate, then place the order across its shards in one of two modes, chosen
//! by the input's `consistency`:
//! - `saga` (default): one local transaction per step, compensated in reverse on failure
//!   (`with_saga`);
//! - `two_phase`: every shard's part is prepared, then all commit or all roll back
//!   (`two_phase`).
//!
//! Which shape a run takes is its `version::Version`, read from its patch markers before
//! its first command: today's shape is the straight path below, `ORDERS_STEPS=remote`'s is
//! `remote_steps`, and the shapes only recorded histories have are in `legacy` (with the
//! policy for deleting them). See `docs/decisions/patch-versioning.md`.
//!
//! This module holds the workflow's definition, its query and update, today's path
//! (`place`), and how a stage, a failure or a cancellation is recorded, which every shape
//! shares: the modes, `remote_steps` and `legacy` call into it.
//!
//! Input and result are plain JSON (see docs/contract.md, "Workflows"; clients build it as an
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

mod legacy;
mod remote_steps;
mod two_phase;
mod version;
mod with_saga;

pub use version::LOCAL_STEP_PATCHES;

use orders_activities::PlacedOrder;
use orders_core::metrics::OrderMetrics;
use orders_core::{Consistency, FailureType, ValidOrder};
use temporalio_common::search_attributes::SearchAttributeUpdate;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ApplicationFailure, MemoValue, WorkflowContext, WorkflowContextView, WorkflowResult,
    WorkflowTermination,
};

use crate::outcomes;
use crate::progress::{Acceptance, Progress, Stage};
use crate::search_attributes::{CONSISTENCY, CUSTOMER_ID, HeldAttributes, ORDER_STATUS};
use two_phase::PartSteps;
use version::Version;

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
    /// Validates the input, reads the run's [`Version`] and places the order in that shape:
    /// today's below, `ORDERS_STEPS=remote`'s in `remote_steps`, replayed ones in
    /// `legacy`.
    async fn process(
        ctx: &mut WorkflowContext<Self>,
        input: serde_json::Value,
    ) -> WorkflowResult<PlacedOrder> {
        let order = ValidOrder::from_json(&input);
        let version = Version::of(ctx, order.is_ok());
        if version.holds_attributes() {
            ctx.state_mut(|s| s.attributes.hold());
        }
        let order = match order {
            Ok(order) => order,
            Err(invalid) => {
                let failure = FailureType::InvalidOrder.failure(invalid.to_string());
                return Err(fail(ctx, Stage::Failed, failure).into());
            }
        };
        match version {
            Version::Current => Self::place(ctx, order).await,
            Version::Remote => remote_steps::place(ctx, order).await,
            Version::Legacy(shape) => legacy::place(ctx, order, shape).await,
        }
    }

    /// Places the order as every worker with local steps does: in the mode it asks for, then
    /// the placed order in the `order` memo. Its lifecycle starts with its first status
    /// change (see [`crate::order_lifecycle`]).
    async fn place(
        ctx: &mut WorkflowContext<Self>,
        order: ValidOrder,
    ) -> WorkflowResult<PlacedOrder> {
        show_order(ctx, &order, order.consistency);
        let key = idempotency_key(ctx);
        let placed = match order.consistency {
            Consistency::Saga => with_saga::place(ctx, order, &key).await?,
            Consistency::TwoPhase => two_phase::place(ctx, order, &key, PartSteps::Grouped).await?,
        };
        record_confirmed(ctx);
        record_order_memo(ctx, &placed)?;
        Ok(placed)
    }
}

/// Shows the order's customer and mode in search attributes. `consistency` is the mode it
/// runs in, which histories from before two-phase commit did not ask.
pub(crate) fn show_order(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    order: &ValidOrder,
    consistency: Consistency,
) {
    set_attributes(
        ctx,
        [
            CUSTOMER_ID.value_set(order.customer_id),
            CONSISTENCY.value_set(consistency.as_str().to_owned()),
        ],
    );
}

/// `<workflow id>/<first run id>`, the prefix of every step's idempotency key (see the
/// module docs).
pub(crate) fn idempotency_key(ctx: &WorkflowContext<PlaceOrderWorkflow>) -> String {
    format!(
        "{}/{}",
        ctx.workflow_id(),
        ctx.info().first_execution_run_id()
    )
}

/// Records that the order is confirmed.
pub(crate) fn record_confirmed(ctx: &WorkflowContext<PlaceOrderWorkflow>) {
    set_stage(ctx, Stage::Confirmed);
    outcomes::record(ctx, OrderMetrics::order_placed);
}

/// Puts the placed order into the `order` memo, which the Web UI shows.
pub(crate) fn record_order_memo(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    placed: &PlacedOrder,
) -> WorkflowResult<()> {
    ctx.upsert_memo([("order", Some(MemoValue::new(placed.clone())))])?;
    Ok(())
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

/// Sets search attributes: held until [`publish`] where the [`Version`] holds them, sent at
/// once otherwise.
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
