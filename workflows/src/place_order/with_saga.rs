//! PlaceOrder's saga: one local transaction per step, each on the shard it writes.
//!
//! create the order (pending, customer's shard; it also plans the stock, on the map that
//! routed the order) → reserve stock (each product's shard, side by side: none depends on
//! another) → reserve credit and confirm (one transaction on the customer's shard: the order
//! is confirmed exactly when its total is held). Each step's compensation is registered
//! before the step runs (see [`crate::saga`]); a failure, or a cancellation, runs them newest
//! first. The result says `saga`, the mode the order ran in.
//!
//! The steps are local activities: three in a row whatever the number of stock shards. The
//! step-by-step saga of `ORDERS_STEPS=remote` is in `remote_steps`; the helpers here
//! are shared with it.

use orders_activities::stock::{StockActivities, StockInput, StockPart};
use orders_activities::{
    CreateOrderInput, CreatedOrder, CreditInput, OrderActivities, OrderRef, PlacedOrder,
};
use orders_core::metrics::OrderMetrics;
use orders_core::{Consistency, FailureType, ValidOrder};
use temporalio_sdk::{
    ActivityExecutionError, WorkflowContext, WorkflowResult, WorkflowTermination,
};

use super::{
    PlaceOrderWorkflow, cancelled_order, fail, publish, set_attributes, set_stage, set_step,
};
use crate::failures::{self, workflow_failure};
use crate::outcomes;
use crate::progress::Stage;
use crate::saga::Saga;
use crate::search_attributes::{ORDER_ID, SHARD};
use crate::steps::Steps;

/// Places `order` as a saga: forward steps, and compensations in reverse if one fails.
/// `key` is `<workflow id>/<first run id>`.
pub(super) async fn place(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    order: ValidOrder,
    key: &str,
) -> WorkflowResult<PlacedOrder> {
    let mut saga = Saga::new(ctx, Steps::Local);
    match forward(ctx, &mut saga, order, key).await {
        Ok(placed) => Ok(placed),
        Err(err) => Err(undo(ctx, saga, Steps::Local, err).await),
    }
}

/// The forward path. Each step registers its compensation before it runs.
async fn forward(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    saga: &mut Saga<PlaceOrderWorkflow>,
    order: ValidOrder,
    key: &str,
) -> Result<PlacedOrder, ActivityExecutionError> {
    let mut created = create_order(ctx, saga, order, key, true).await?;
    let stock = created.stock.take().unwrap_or_default();
    let inputs = stock_inputs(ctx, key, created.order_id, stock)
        .map(|input| (input.clone(), input))
        .collect();
    saga.steps_side_by_side(
        || StockActivities::reserve_stock,
        inputs,
        || StockActivities::release_stock,
    )
    .await?;
    set_step(ctx, "ReserveCreditAndConfirm");
    let credit = credit(&created);
    let confirmed = saga
        .step(
            OrderActivities::reserve_credit_and_confirm,
            created,
            OrderActivities::release_credit,
            credit,
        )
        .await?;
    Ok(confirmed.placed(Consistency::Saga))
}

/// Writes the order, pending, on the customer's shard (and, with `plan_stock`, plans its
/// stock), then shows its id and shard.
pub(super) async fn create_order(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    saga: &mut Saga<PlaceOrderWorkflow>,
    order: ValidOrder,
    key: &str,
    plan_stock: bool,
) -> Result<CreatedOrder, ActivityExecutionError> {
    let create_key = format!("{key}/create-order");
    let customer_id = order.customer_id;
    set_step(ctx, "CreateOrder");
    let created = saga
        .step(
            OrderActivities::create_order,
            CreateOrderInput {
                idempotency_key: create_key.clone(),
                order,
                plan_stock,
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
    Ok(created)
}

/// The stock steps' inputs, one per shard. Their order id is now known, so it is published
/// first: a client may look for the order by it (`orders cancel ORDER_ID`).
pub(super) fn stock_inputs(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    key: &str,
    order_id: i64,
    stock: Vec<StockPart>,
) -> impl Iterator<Item = StockInput> {
    set_attributes(ctx, [ORDER_ID.value_set(order_id)]);
    publish(ctx);
    set_step(ctx, "ReserveStock");
    let key = key.to_owned();
    stock.into_iter().map(move |part| StockInput {
        idempotency_key: format!("{key}/reserve-stock/shard-{}", part.shard),
        order_id,
        part,
    })
}

/// The credit the order holds: its total, on its customer.
pub(super) fn credit(created: &CreatedOrder) -> CreditInput {
    CreditInput {
        order_id: created.order_id,
        customer_id: created.customer_id,
        amount: created.total_amount,
    }
}

/// Runs the compensations of a forward path that failed or was cancelled (`err`), and
/// returns what the workflow ends with. A refusal is recorded first (see
/// [`Steps::record_before_undoing`]); a compensation that fails is reported with the rest.
pub(super) async fn undo(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    saga: Saga<PlaceOrderWorkflow>,
    steps: Steps,
    err: ActivityExecutionError,
) -> WorkflowTermination {
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
        return fail(ctx, Stage::Failed, failure).into();
    }
    if !report.succeeded.is_empty() {
        outcomes::record(ctx, OrderMetrics::order_compensated);
    }
    if cancelled {
        return cancelled_order(ctx);
    }
    fail(ctx, Stage::Failed, workflow_failure(&err)).into()
}
