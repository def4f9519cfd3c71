//! PlaceOrder's saga: one local transaction per step, each on the shard it writes.
//!
//! plan → create the order (pending, customer's shard) → reserve stock (each product's
//! shard) → reserve credit → confirm. Each step's compensation is registered before the step
//! runs (see [`crate::saga`]); a failure, or a cancellation, runs them newest first. The
//! result says `saga`, the mode the order ran in.
//!
//! Under [`LEAN_SAGA_PATCH`] CreateOrder also plans the stock (PlanOrder's routing, on the map
//! that routed the order), the stock parts are reserved side by side (one shard each, none
//! depending on another), and credit is reserved and the order confirmed in one transaction
//! on the customer's shard (`ReserveCreditAndConfirm`): the order is confirmed exactly when
//! its total is held. Two steps and two history markers fewer, and the steps in a row go
//! from 6 + k to 4 whatever the number k of stock shards.

use orders_activities::stock::{PlanInput, StockActivities, StockInput};
use orders_activities::{CreateOrderInput, CreditInput, OrderActivities, OrderRef, PlacedOrder};
use orders_core::metrics::OrderMetrics;
use orders_core::{Consistency, FailureType, ValidOrder};
use temporalio_sdk::{ActivityExecutionError, WorkflowContext, WorkflowResult};

use super::{
    PlaceOrderWorkflow, cancelled_order, fail, publish, set_attributes, set_stage, set_step,
};
use crate::failures::{self, workflow_failure};
use crate::outcomes;
use crate::progress::Stage;
use crate::saga::Saga;
use crate::search_attributes::{ORDER_ID, SHARD};
use crate::steps::{Phase, Steps};

/// Places `order` as a saga: forward steps, and compensations in reverse if one fails.
/// `key` is `<workflow id>/<first run id>`; `with_stock` is the `inventory` patch; `steps`
/// says how steps and compensations run.
pub(super) async fn place(
    ctx: &mut WorkflowContext<PlaceOrderWorkflow>,
    order: ValidOrder,
    key: &str,
    shape: Shape,
    steps: Steps,
) -> WorkflowResult<PlacedOrder> {
    let mut saga = Saga::new(ctx, steps);
    let err = match forward(ctx, &mut saga, order, key, shape, steps).await {
        Ok(placed) => return Ok(placed),
        Err(err) => err,
    };
    let cancelled = ctx.cancellation_token().is_cancelled();
    if !cancelled {
        steps.record_before_undoing(ctx).await;
    }
    let report = saga.compensate().await;
    ctx.state_mut(|s| s.progress.compensations_run = report.succeeded.clone());
    if !report.failed.is_empty() {
        outcomes::record(ctx, OrderMetrics::compensation_failed);
        let detail = report
            .failed
            .iter()
            .map(|f| format!("{}: {}", f.activity, f.error))
            .collect::<Vec<_>>()
            .join("; ");
        if !ctx.is_replaying() {
            tracing::error!(workflow_id = ctx.workflow_id(), %detail, "compensation failed; manual repair needed");
        }
        let failure = FailureType::CompensationFailed.failure(format!(
            "order failed ({}) and compensation did not complete: {detail}",
            failures::describe(&err)
        ));
        return Err(fail(ctx, Stage::Failed, failure).into());
    }
    if !report.succeeded.is_empty() {
        outcomes::record(ctx, OrderMetrics::order_compensated);
    }
    if cancelled {
        return Err(cancelled_order(ctx));
    }
    Err(fail(ctx, Stage::Failed, workflow_failure(&err)).into())
}

/// Patch under which a saga reserves its stock parts side by side and reserves credit and
/// confirms in one step (see the module docs). It implies [`super::ONE_TASK_PATCH`] and
/// every patch before it, which such histories do not mark.
pub const LEAN_SAGA_PATCH: &str = "lean-saga";

/// Which saga a history ran, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// [`LEAN_SAGA_PATCH`].
    Lean,
    /// Stock steps one after another, credit and confirmation apart.
    WithStock,
    /// Histories before the `inventory` patch: no stock steps.
    WithoutStock,
}

/// The forward path. Each step registers its compensation before it runs.
async fn forward(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    saga: &mut Saga<PlaceOrderWorkflow>,
    order: ValidOrder,
    key: &str,
    shape: Shape,
    steps: Steps,
) -> Result<PlacedOrder, ActivityExecutionError> {
    let create_key = format!("{key}/create-order");
    let customer_id = order.customer_id;
    let plan = if shape == Shape::WithStock {
        set_step(ctx, "PlanOrder");
        let input = PlanInput {
            customer_id,
            items: order.items.clone(),
            allocate_order_id: false,
            idempotency_key: format!("{key}/plan"),
            newest_map: false,
        };
        let plan = steps.run(ctx, StockActivities::plan_order, input, Phase::Forward);
        Some(plan.await?.stock)
    } else {
        None
    };
    set_step(ctx, "CreateOrder");
    let mut created = saga
        .step(
            OrderActivities::create_order,
            CreateOrderInput {
                idempotency_key: create_key.clone(),
                order,
                plan_stock: shape == Shape::Lean,
            },
            OrderActivities::delete_order,
            OrderRef {
                idempotency_key: create_key,
                customer_id,
            },
        )
        .await?;
    ctx.state_mut(|s| {
        s.progress.order_id = Some(created.order_id);
        s.progress.shard = Some(created.shard);
    });
    set_attributes(ctx, [SHARD.value_set(created.shard as i64)]);
    set_stage(ctx, Stage::Pending);
    // The lean saga's CreateOrder planned the stock too.
    let stock = match shape {
        Shape::Lean => Some(created.stock.take().unwrap_or_default()),
        Shape::WithStock | Shape::WithoutStock => plan,
    };
    if let Some(stock) = stock {
        set_attributes(ctx, [ORDER_ID.value_set(created.order_id)]);
        publish(ctx);
        set_step(ctx, "ReserveStock");
        let parts = stock.into_iter().map(|part| StockInput {
            idempotency_key: format!("{key}/reserve-stock/shard-{}", part.shard),
            order_id: created.order_id,
            part,
        });
        if shape == Shape::Lean {
            let inputs = parts.map(|input| (input.clone(), input)).collect();
            saga.steps_side_by_side(
                || StockActivities::reserve_stock,
                inputs,
                || StockActivities::release_stock,
            )
            .await?;
        } else {
            for input in parts {
                saga.step(
                    StockActivities::reserve_stock,
                    input.clone(),
                    StockActivities::release_stock,
                    input,
                )
                .await?;
            }
        }
    }
    let credit = CreditInput {
        order_id: created.order_id,
        customer_id,
        amount: created.total_amount,
    };
    if shape == Shape::Lean {
        set_step(ctx, "ReserveCreditAndConfirm");
        let confirmed = saga
            .step(
                OrderActivities::reserve_credit_and_confirm,
                created,
                OrderActivities::release_credit,
                credit,
            )
            .await?;
        return Ok(confirmed.placed(Consistency::Saga));
    }
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
