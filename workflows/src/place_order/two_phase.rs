//! PlaceOrder's two-phase path: the workflow is the coordinator, its history the log.
//!
//! 1. `PlanOrder` takes the order id and groups the products by shard (recorded, so replays
//!    and retries follow the same plan whatever the shard map does meanwhile).
//! 2. Every shard's part is prepared (`PreparePart`), one shard after another in shard order:
//!    the customer's shard writes the order (`confirmed`, invisible until commit) and holds
//!    the credit; each product shard holds the stock. Any refusal (`OutOfStock`,
//!    `PaymentDeclined`, …) or a cancellation stops the phase and means rollback.
//!
//!    Why in order: a prepared part keeps its row locks until phase two. Two orders preparing
//!    their parts at once could each hold, prepared, a row the other waits for on another
//!    shard, a deadlock no single PostgreSQL can see. Taking shards in one global order (and
//!    rows in id order within a shard) makes such a cycle impossible, at the price of
//!    preparing parts one after another instead of side by side.
//! 3. The decision goes into the memo ([`DECISION_MEMO`]), which `orders recover` reads. The
//!    steps run as local activities (see [`crate::steps`]), inside the workflow task, so the memo
//!    reaches the history when the task completes (or heartbeats), possibly after parts
//!    committed: until then, the home part's committed key (point 4) is the decision.
//! 4. Every part is committed (or rolled back), retried until done, immune to cancellation:
//!    once decided, the decision is carried out. The home part (the customer's shard) commits
//!    first and the others after it, so its committed key is the order's durable commit
//!    record: if it is committed, the decision was commit; if it is not, no part committed.
//!    `orders recover` relies on that when the workflow itself can no longer be asked.

use futures::future::join_all;
use orders_activities::metrics::OrderMetrics;
use orders_activities::recovery::{DECISION_MEMO, Decision};
use orders_activities::stock::{PlanInput, StockActivities, StockLine};
use orders_activities::store::two_phase::{GidParts, GidTooLong};
use orders_activities::two_phase::{TwoPhaseActivities, TwoPhasePart};
use orders_activities::{Consistency, FailureType, PlacedOrder, ValidOrder};
use orders_entities::order::OrderStatus;
use temporalio_common::ActivityDefinition;
use temporalio_sdk::{ActivityExecutionError, MemoValue, WorkflowContext, WorkflowResult};

use super::{
    PlaceOrderWorkflow, cancelled_order, fail, publish, set_attributes, set_stage, set_step,
};
use crate::failures::{self, workflow_failure};
use crate::outcomes;
use crate::progress::Stage;
use crate::search_attributes::{ORDER_ID, SHARD};
use crate::steps::{Phase, Steps};

/// Patch under which the two-phase steps run as local activities (see [`crate::steps`]),
/// implied by [`super::ONE_TASK_PATCH`]. Histories recorded before it replay with the steps
/// as activities.
pub const LOCAL_STEPS_PATCH: &str = "two-phase-local-steps";

/// Places `order` with two-phase commit. `key` (`<workflow id>/<first run id>`) names the
/// plan's idempotency key; each part's key is [`GidParts::part_key`], which recovery rebuilds from a gid.
/// `steps` says how its steps run.
pub(crate) async fn place(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    order: ValidOrder,
    key: &str,
    steps: Steps,
) -> WorkflowResult<PlacedOrder> {
    set_step(ctx, "PlanOrder");
    let input = PlanInput {
        customer_id: order.customer_id,
        items: order.items.clone(),
        allocate_order_id: true,
        idempotency_key: format!("{key}/plan"),
    };
    let plan = steps
        .run(ctx, StockActivities::plan_order, input, Phase::Forward)
        .await;
    let plan = match plan {
        Ok(plan) => plan,
        Err(_) if ctx.cancellation_token().is_cancelled() => return Err(cancelled_order(ctx)),
        Err(err) => return Err(fail(ctx, Stage::Failed, workflow_failure(&err)).into()),
    };
    let order_id = plan.order_id.expect("PlanOrder allocates when asked");
    let parts = match parts(ctx, &order, order_id, plan.customer_shard, plan.stock) {
        Ok(parts) => parts,
        Err(too_long) => {
            let failure = FailureType::InvalidOrder.failure(too_long.to_string());
            return Err(fail(ctx, Stage::Failed, failure).into());
        }
    };
    set_attributes(
        ctx,
        [
            ORDER_ID.value_set(order_id),
            SHARD.value_set(plan.customer_shard as i64),
        ],
    );
    publish(ctx);

    set_step(ctx, "PreparePart");
    let mut refusal = None;
    let mut in_shard_order: Vec<&TwoPhasePart> = parts.iter().collect();
    in_shard_order.sort_by_key(|part| part.shard);
    for part in in_shard_order {
        let prepared = steps
            .run(
                ctx,
                TwoPhaseActivities::prepare_part,
                part.clone(),
                Phase::Forward,
            )
            .await;
        if let Err(err) = prepared {
            refusal = Some(err);
            break;
        }
    }
    let cancelled = ctx.cancellation_token().is_cancelled();
    let decision = if refusal.is_none() && !cancelled {
        Decision::Commit
    } else {
        Decision::Rollback
    };
    ctx.upsert_memo([(DECISION_MEMO, Some(MemoValue::new(decision)))])?;

    if decision == Decision::Commit {
        ctx.state_mut(|s| {
            s.progress.order_id = Some(order_id);
            s.progress.shard = Some(plan.customer_shard);
        });
        set_stage(ctx, Stage::Pending);
        set_step(ctx, "CommitPart");
        let (home, others) = parts.split_at(1);
        if let Some(problems) = resolve(ctx, steps, home, || TwoPhaseActivities::commit_part).await
        {
            // The home part is gone, so no part committed: the decision becomes rollback,
            // recorded before any part is rolled back (recovery reads it).
            ctx.upsert_memo([(DECISION_MEMO, Some(MemoValue::new(Decision::Rollback)))])?;
            let rollback = resolve(ctx, steps, others, || TwoPhaseActivities::rollback_part).await;
            let failure = FailureType::TwoPhaseIncomplete.failure(format!(
                "order {order_id}: its home part could not commit ({problems}), so the order was rolled back{}",
                rollback
                    .map(|p| format!("; the rollback failed too: {p}"))
                    .unwrap_or_default()
            ));
            return Err(fail(ctx, Stage::Failed, failure).into());
        }
        let problems = resolve(ctx, steps, others, || TwoPhaseActivities::commit_part).await;
        if let Some(problems) = problems {
            let failure = FailureType::TwoPhaseIncomplete.failure(format!(
                "order {order_id}: commit was decided but not carried out: {problems}"
            ));
            return Err(fail(ctx, Stage::Failed, failure).into());
        }
        return Ok(PlacedOrder {
            order_id,
            customer_id: order.customer_id,
            shard: plan.customer_shard,
            status: OrderStatus::Confirmed,
            total_amount: order.total(),
            consistency: Consistency::TwoPhase,
        });
    }

    set_step(ctx, "RollbackPart");
    if refusal.is_some() && !cancelled {
        steps.record_before_undoing(ctx).await;
    }
    if let Some(problems) = resolve(ctx, steps, &parts, || TwoPhaseActivities::rollback_part).await
    {
        outcomes::record(ctx, OrderMetrics::compensation_failed);
        let failure = FailureType::TwoPhaseIncomplete.failure(format!(
            "order {order_id}: rollback was decided but not carried out: {problems}"
        ));
        return Err(fail(ctx, Stage::Failed, failure).into());
    }
    ctx.state_mut(|s| s.progress.compensations_run = vec!["RollbackPart".to_owned()]);
    match refusal {
        Some(err) if !cancelled => Err(fail(ctx, Stage::Failed, workflow_failure(&err)).into()),
        _ => Err(cancelled_order(ctx)),
    }
}

/// The order's parts: the home part first (the customer's shard: order, credit and any stock
/// it holds), then every other shard stocking some of its products, in shard order. They are
/// prepared in shard order (see the module docs) and committed home first.
fn parts(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    order: &ValidOrder,
    order_id: i64,
    customer_shard: usize,
    stock: Vec<orders_activities::stock::StockPart>,
) -> Result<Vec<TwoPhasePart>, GidTooLong> {
    let part = |shard: usize, order: Option<ValidOrder>, stock: Vec<StockLine>| {
        let names = GidParts {
            workflow_id: ctx.workflow_id().to_owned(),
            run_id: ctx.info().first_execution_run_id().to_owned(),
            shard,
            home_shard: customer_shard,
        };
        Ok::<_, GidTooLong>(TwoPhasePart {
            gid: names.gid()?,
            idempotency_key: names.part_key(),
            shard,
            order_id,
            order,
            stock,
        })
    };
    let mut home_stock = Vec::new();
    let mut others = Vec::new();
    for stock_part in stock {
        if stock_part.shard == customer_shard {
            home_stock = stock_part.lines;
        } else {
            others.push(part(stock_part.shard, None, stock_part.lines)?);
        }
    }
    let mut parts = vec![part(customer_shard, Some(order.clone()), home_stock)?];
    parts.extend(others);
    Ok(parts)
}

/// Runs phase two (`activity` on every part, concurrently). Returns what could not be done.
async fn resolve<A>(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    steps: Steps,
    parts: &[TwoPhasePart],
    activity: impl Fn() -> A,
) -> Option<String>
where
    A: ActivityDefinition<Input = TwoPhasePart, Output = ()>,
{
    let results: Vec<Result<(), ActivityExecutionError>> = join_all(
        parts
            .iter()
            .map(|part| steps.run(ctx, activity(), part.clone(), Phase::Resolve)),
    )
    .await;
    let problems: Vec<String> = parts
        .iter()
        .zip(results)
        .filter_map(|(part, result)| {
            result
                .err()
                .map(|err| format!("shard {}: {}", part.shard, failures::describe(&err)))
        })
        .collect();
    if problems.is_empty() {
        None
    } else {
        if !ctx.is_replaying() {
            tracing::error!(
                workflow_id = ctx.workflow_id(),
                ?problems,
                "two-phase order left incomplete; run `orders recover` once the cause is fixed"
            );
        }
        Some(problems.join("; "))
    }
}
