//! PlaceOrder's replay-only shapes: what runs started by older builds recorded, kept so their
//! histories (and any such run still open) replay command for command. No worker starts
//! these shapes any more; [`super::version::Version::of`] picks one from a history's patch
//! markers, and [`place`] is the one way in.
//!
//! Removal policy. A shape goes (its branch here, its question in [`super::version`], its
//! histories in `tests/histories/`) once no run that could have started under it can still
//! exist: when the last build that started such runs was replaced longer ago than the
//! namespace's retention period plus the longest such run. A PlaceOrder lasts ~30 ms
//! (seconds if a step retries), so in practice that is the retention period; an
//! OrderLifecycle waits for its order to ship and can run for weeks, so its `release-stock`
//! patch also waits for the longest open lifecycle. The step in between: once only the
//! newest patch's branch is left, its `ctx.patched` becomes `ctx.deprecate_patch` (histories
//! with its marker still match, new runs record a marker that code without the call
//! skips), and after the same wait again the call goes too.

use orders_activities::PlacedOrder;
use orders_activities::lifecycle::{LifecycleActivities, LifecycleStart};
use orders_core::{Consistency, ValidOrder};
use temporalio_common::WorkflowDefinition as _;
use temporalio_sdk::{ActivityExecutionError, WorkflowContext, WorkflowResult};

use super::remote_steps::{self, credit_then_confirm, place_step_by_step};
use super::two_phase::{self, PartSteps};
use super::version::{Shape, Version};
use super::with_saga::{self, create_order};
use super::{PlaceOrderWorkflow, idempotency_key, record_confirmed, record_order_memo, show_order};
use crate::order_lifecycle::{self, OrderLifecycleWorkflow};
use crate::saga::Saga;
use crate::steps::{Phase, Steps};

/// Places `order` as `shape` did.
pub(super) async fn place(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    order: ValidOrder,
    shape: Shape,
) -> WorkflowResult<PlacedOrder> {
    match shape {
        Shape::WithoutStock => place_without_stock(ctx, order).await,
        local => place_with_local_steps(ctx, order, local).await,
    }
}

/// The shapes between `one-task-order` and `two-phase-grouped-steps`: local steps, held
/// search attributes, the memo always.
async fn place_with_local_steps(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    order: ValidOrder,
    shape: Shape,
) -> WorkflowResult<PlacedOrder> {
    show_order(ctx, &order, order.consistency);
    let key = idempotency_key(ctx);
    let placed = match order.consistency {
        Consistency::Saga if shape == Shape::OneTask => {
            place_step_by_step(ctx, order, &key, Steps::Local).await?
        }
        Consistency::Saga => with_saga::place(ctx, order, &key).await?,
        Consistency::TwoPhase => {
            let part_steps = PartSteps::OnePerPart(Steps::Local);
            two_phase::place(ctx, order, &key, part_steps).await?
        }
    };
    record_confirmed(ctx);
    record_order_memo(ctx, &placed)?;
    if shape != Shape::LazyLifecycle {
        start_lifecycle_here(ctx, &placed).await;
    }
    Ok(placed)
}

/// Before `inventory`: create the order, reserve credit, confirm.
async fn place_without_stock(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    order: ValidOrder,
) -> WorkflowResult<PlacedOrder> {
    show_order(ctx, &order, Consistency::Saga);
    let key = idempotency_key(ctx);
    let mut saga = Saga::new(ctx, Steps::Remote);
    let placed = match forward_without_stock(ctx, &mut saga, order, &key).await {
        Ok(placed) => placed,
        Err(err) => return Err(with_saga::undo(ctx, saga, Steps::Remote, err).await),
    };
    record_confirmed(ctx);
    if Version::records_order_memo(ctx) {
        record_order_memo(ctx, &placed)?;
    }
    if Version::starts_child_lifecycle(ctx) {
        remote_steps::start_child_lifecycle(ctx, &placed).await;
    }
    Ok(placed)
}

async fn forward_without_stock(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    saga: &mut Saga<PlaceOrderWorkflow>,
    order: ValidOrder,
    key: &str,
) -> Result<PlacedOrder, ActivityExecutionError> {
    let created = create_order(ctx, saga, order, key, false).await?;
    credit_then_confirm(ctx, saga, created).await
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
