//! PlaceOrder as a worker started with `ORDERS_STEPS=remote` runs it ([`Version::Remote`]):
//! every step an activity of its own, scheduled and completed by the server (see
//! [`crate::steps`]). That worker declines the local-step patches, so its orders take the
//! shape they had before those patches, a supported setting and not a legacy one:
//!
//! - the saga step by step: plan → create the order → reserve stock (one shard after
//!   another) → reserve credit → confirm;
//! - two-phase commit with a step per part;
//! - search attributes sent as they change;
//! - once confirmed, the `order` memo, then the order's lifecycle as a child workflow.

use orders_activities::stock::{PlanInput, StockActivities};
use orders_activities::{CreatedOrder, OrderActivities, PlacedOrder};
use orders_core::{Consistency, ValidOrder};
use temporalio_sdk::{
    ActivityExecutionError, ChildWorkflowOptions, ParentClosePolicy, WorkflowCancellationToken,
    WorkflowContext, WorkflowResult,
};

use super::two_phase::{self, PartSteps};
use super::version::{ORDER_LIFECYCLE_PATCH, ORDER_MEMO_PATCH, Version};
use super::with_saga::{self, create_order, credit, stock_inputs};
use super::{
    PlaceOrderWorkflow, idempotency_key, record_confirmed, record_order_memo, set_step, show_order,
};
use crate::order_lifecycle::{self, LifecycleInput, OrderLifecycleWorkflow};
use crate::saga::Saga;
use crate::steps::{Phase, Steps};

/// Places `order` with every step an activity, then records the memo and starts its
/// lifecycle.
pub(super) async fn place(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    order: ValidOrder,
) -> WorkflowResult<PlacedOrder> {
    show_order(ctx, &order, order.consistency);
    let key = idempotency_key(ctx);
    let placed = match order.consistency {
        Consistency::Saga => place_step_by_step(ctx, order, &key, Steps::Remote).await?,
        Consistency::TwoPhase => {
            let part_steps = match Version::remote_two_phase_steps(ctx) {
                Steps::Local => PartSteps::LocalUnderLocalStepsPatch,
                Steps::Remote => PartSteps::OnePerPart(Steps::Remote),
            };
            two_phase::place(ctx, order, &key, part_steps).await?
        }
    };
    record_confirmed(ctx);
    Version::mark_remote(ctx, ORDER_MEMO_PATCH);
    record_order_memo(ctx, &placed)?;
    Version::mark_remote(ctx, ORDER_LIFECYCLE_PATCH);
    start_child_lifecycle(ctx, &placed).await;
    Ok(placed)
}

/// The saga step by step, its steps run as `steps` say, compensated as in
/// [`with_saga::undo`] if one fails.
pub(super) async fn place_step_by_step(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    order: ValidOrder,
    key: &str,
    steps: Steps,
) -> WorkflowResult<PlacedOrder> {
    let mut saga = Saga::new(ctx, steps);
    match forward(ctx, &mut saga, order, key, steps).await {
        Ok(placed) => Ok(placed),
        Err(err) => Err(with_saga::undo(ctx, saga, steps, err).await),
    }
}

/// The forward path. Each step registers its compensation before it runs.
async fn forward(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    saga: &mut Saga<PlaceOrderWorkflow>,
    order: ValidOrder,
    key: &str,
    steps: Steps,
) -> Result<PlacedOrder, ActivityExecutionError> {
    set_step(ctx, "PlanOrder");
    let plan = PlanInput {
        customer_id: order.customer_id,
        items: order.items.clone(),
        allocate_order_id: false,
        idempotency_key: format!("{key}/plan"),
        newest_map: false,
    };
    let stock = steps
        .run(ctx, StockActivities::plan_order, plan, Phase::Forward)
        .await?
        .stock;
    let created = create_order(ctx, saga, order, key, false).await?;
    for input in stock_inputs(ctx, key, created.order_id, stock) {
        saga.step(
            StockActivities::reserve_stock,
            input.clone(),
            StockActivities::release_stock,
            input,
        )
        .await?;
    }
    credit_then_confirm(ctx, saga, created).await
}

/// Reserves the order's credit, then confirms it: two steps.
pub(super) async fn credit_then_confirm(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    saga: &mut Saga<PlaceOrderWorkflow>,
    created: CreatedOrder,
) -> Result<PlacedOrder, ActivityExecutionError> {
    let credit = credit(&created);
    set_step(ctx, "ReserveCredit");
    saga.step(
        OrderActivities::reserve_credit,
        credit.clone(),
        OrderActivities::release_credit,
        credit,
    )
    .await?;
    set_step(ctx, "ConfirmOrder");
    let confirmed = saga
        .final_step(OrderActivities::confirm_order, created)
        .await?;
    Ok(confirmed.placed(Consistency::Saga))
}

/// Starts the confirmed order's lifecycle as a child workflow and leaves it running on its
/// own. The order is confirmed whatever happens here, so a failure to start is logged, not
/// raised.
pub(super) async fn start_child_lifecycle(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    placed: &PlacedOrder,
) {
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
