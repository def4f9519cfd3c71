//! `PlaceOrder`: validate, then place the order across its shards in one of two modes, chosen
//! by the input's `consistency`:
//! - `saga` (default): plan → create the order (pending, customer's shard) → reserve stock
//!   (each product's shard) → reserve credit → confirm; a failure compensates in reverse.
//! - `two_phase`: every shard's part is prepared, then all commit or all roll back
//!   (see [`crate::two_phase`]).
//!
//! Input and result are plain JSON (see README, "Public contract"), so any Temporal client
//! can start it. The input is taken as raw JSON and validated here, so malformed input fails
//! the workflow with `InvalidOrder` instead of failing workflow tasks forever.
//!
//! The activities' idempotency key is `<workflow id>/<first run id>/<step>`: stable across
//! worker crashes, activity retries and resets of one execution chain (a reset keeps the
//! first run id, so a reset saga finds what it already wrote), distinct for a new start that
//! reuses the workflow id.
//!
//! Progress is visible three ways: the `progress` query, the search attributes of
//! [`crate::search_attributes`], and the history itself.

use orders_activities::failure::{COMPENSATION_FAILED, INVALID_ORDER, non_retryable};
use orders_activities::metrics::OrderMetrics;
use orders_activities::stock::{PlanInput, StockActivities, StockInput};
use orders_activities::{
    Consistency, CreateOrderInput, CreditInput, OrderActivities, OrderRef, PlacedOrder, ValidOrder,
};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityExecutionError, ApplicationFailure, ChildWorkflowOptions, MemoValue, ParentClosePolicy,
    WorkflowCancellationToken, WorkflowContext, WorkflowContextView, WorkflowResult,
    WorkflowTermination,
};

use crate::failures::{self, workflow_failure};
use crate::order_lifecycle::{self, OrderLifecycleWorkflow};
use crate::outcomes;
use crate::progress::{Acceptance, Progress, Stage};
use crate::saga::{Saga, forward_options};
use crate::search_attributes::{CONSISTENCY, CUSTOMER_ID, ORDER_ID, ORDER_STATUS, SHARD};
use crate::two_phase;

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
                let failure = non_retryable(INVALID_ORDER, invalid.0);
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
            Consistency::Saga => Self::place_with_saga(ctx, order, &key, with_stock).await?,
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

    /// The saga: forward steps, and compensations in reverse if one of them fails.
    async fn place_with_saga(
        ctx: &mut WorkflowContext<Self>,
        order: ValidOrder,
        key: &str,
        with_stock: bool,
    ) -> WorkflowResult<PlacedOrder> {
        let mut saga = Saga::new(ctx);
        let err = match place(ctx, &mut saga, order, key, with_stock).await {
            Ok(placed) => return Ok(placed),
            Err(err) => err,
        };
        let cancelled = ctx.cancellation_token().is_cancelled();
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
            let failure = non_retryable(
                COMPENSATION_FAILED,
                format!(
                    "order failed ({}) and compensation did not complete: {detail}",
                    failures::describe(&err)
                ),
            );
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
}

/// The forward path. Each step registers its compensation before it runs.
async fn place(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    saga: &mut Saga<PlaceOrderWorkflow>,
    order: ValidOrder,
    key: &str,
    with_stock: bool,
) -> Result<PlacedOrder, ActivityExecutionError> {
    let create_key = format!("{key}/create-order");
    let customer_id = order.customer_id;
    let plan = if with_stock {
        set_step(ctx, "PlanOrder");
        let input = PlanInput {
            customer_id,
            items: order.items.clone(),
            allocate_order_id: false,
            idempotency_key: format!("{key}/plan"),
        };
        let plan = ctx.execute_activity(StockActivities::plan_order, input, forward_options());
        Some(plan.await?)
    } else {
        None
    };
    set_step(ctx, "CreateOrder");
    let created = saga
        .step(
            OrderActivities::create_order,
            CreateOrderInput {
                idempotency_key: create_key.clone(),
                order,
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
    ctx.upsert_search_attributes([SHARD.value_set(created.shard as i64)]);
    set_stage(ctx, Stage::Pending);
    if let Some(plan) = plan {
        ctx.upsert_search_attributes([ORDER_ID.value_set(created.order_id)]);
        for part in plan.stock {
            set_step(ctx, "ReserveStock");
            let input = StockInput {
                idempotency_key: format!("{key}/reserve-stock/shard-{}", part.shard),
                order_id: created.order_id,
                part,
            };
            saga.step(
                StockActivities::reserve_stock,
                input.clone(),
                StockActivities::release_stock,
                input,
            )
            .await?;
        }
    }
    let credit = CreditInput {
        order_id: created.order_id,
        customer_id,
        amount: created.total_amount,
    };
    set_step(ctx, "ReserveCredit");
    saga.step(
        OrderActivities::reserve_credit,
        credit.clone(),
        OrderActivities::release_credit,
        credit,
    )
    .await?;
    set_step(ctx, "ConfirmOrder");
    saga.final_step(OrderActivities::confirm_order, created)
        .await
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
