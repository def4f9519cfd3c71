//! PlaceOrder's two-phase path: the workflow is the coordinator, its history the log.
//!
//! 1. `PlanOrder` takes the order id and groups the products by shard (recorded, so replays
//!    and retries follow the same plan whatever the shard map does meanwhile). If a bucket
//!    of the order moves to another shard before its part is prepared, the part is refused
//!    (`ShardMapChanged`): the round's parts are rolled back and the order planned again
//!    (see `place`), so it lands on the new owner.
//! 2. Every shard's part is prepared, one shard after another in shard order (one
//!    `PrepareParts` step today; a `PreparePart` step per part under `ORDERS_STEPS=remote`):
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
//!    steps run as local activities (see [`crate::steps`]; `PartSteps` for
//!    `ORDERS_STEPS=remote`), inside the workflow task, so the memo
//!    reaches the history when the task completes (or heartbeats), possibly after parts
//!    committed: until then, the home part's committed key (point 4) is the decision.
//! 4. Every part is committed (or rolled back), retried until done, immune to cancellation:
//!    once decided, the decision is carried out. The home part (the customer's shard) commits
//!    first and the others after it, so its committed key is the order's durable commit
//!    record: if it is committed, the decision was commit; if it is not, no part committed.
//!    `orders recover` relies on that when the workflow itself can no longer be asked.

use futures::future::join_all;
use orders_activities::PlacedOrder;
use orders_activities::stock::{OrderPlan, PlanInput, StockActivities, StockLine};
use orders_activities::two_phase::{TwoPhaseActivities, TwoPhasePart};
use orders_core::metrics::OrderMetrics;
use orders_core::store::two_phase::{FIRST_ROUND, GidParts, GidTooLong};
use orders_core::{Consistency, FailureType, ValidOrder};
use orders_entities::order::OrderStatus;
use orders_operations::recovery::{DECISION_MEMO, Decision, ROUND_MEMO};
use std::time::Duration;
use temporalio_common::ActivityDefinition;

use temporalio_sdk::{
    ActivityExecutionError, MemoValue, TimerOptions, WorkflowContext, WorkflowResult,
};

use super::version::Version;
use super::{
    PlaceOrderWorkflow, cancelled_order, fail, publish, set_attributes, set_stage, set_step,
};
use crate::failures::{self, workflow_failure};
use crate::outcomes;
use crate::progress::Stage;
use crate::search_attributes::{ORDER_ID, SHARD};
use crate::steps::{Phase, Steps};

/// How a round's parts are prepared and committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PartSteps {
    /// In one local activity each: `PrepareParts` (still one shard after another) and
    /// `CommitParts` (the home part, then the others side by side). Every order today.
    Grouped,
    /// A step per part, run as the [`Steps`] say: orders of `ORDERS_STEPS=remote`, and
    /// histories recorded before [`super::version::GROUPED_STEPS_PATCH`].
    OnePerPart(Steps),
    /// A local step per part, as histories recorded under
    /// [`super::version::LOCAL_STEPS_PATCH`] ran them: their builds rolled a refused order
    /// back in the same workflow task, before [`Steps::record_before_undoing`] existed.
    LocalUnderLocalStepsPatch,
}

impl PartSteps {
    /// How the plan, the rollbacks and each part's step run.
    fn steps(self) -> Steps {
        match self {
            PartSteps::Grouped | PartSteps::LocalUnderLocalStepsPatch => Steps::Local,
            PartSteps::OnePerPart(steps) => steps,
        }
    }

    /// Whether a refusal is recorded before its parts roll back (see
    /// [`Steps::record_before_undoing`]).
    fn records_refusal_first(self) -> bool {
        self != PartSteps::LocalUnderLocalStepsPatch
    }
}

/// How many plans an order makes before it fails with `ShardMapChanged`. Each new plan means
/// one of the order's buckets moved between a plan and its prepare; a reshard moves a
/// bucket once, so more than a few rounds means buckets keep moving under the order.
const MAX_ROUNDS: u32 = 8;

/// How many times an order waits for a shard that did not answer during phase one before it
/// fails with `ShardUnavailable`: with [`wait_before_round`]'s pauses, about five minutes.
const MAX_WAITS: u32 = 24;

/// The pause before the next round after phase one found a shard not answering: 1 s,
/// doubling up to 15 s.
fn wait_before_round(waits: u32) -> Duration {
    Duration::from_secs(1u64 << waits.min(4)).min(Duration::from_secs(15))
}

/// Whether phase one stopped because a shard did not answer, not for a business reason: the
/// step said so (`ShardUnavailable`), or ran out of its [`crate::steps::PREPARE_FOR_AT_MOST`].
fn shard_did_not_answer(err: &ActivityExecutionError) -> bool {
    match failures::rejection(err) {
        Some(rejected) => rejected.failure_type == FailureType::ShardUnavailable.as_str(),
        None => true,
    }
}

/// Places `order` with two-phase commit. `key` (`<workflow id>/<first run id>`) names the plan's
/// idempotency key; each part's key is [`GidParts::part_key`], which recovery rebuilds from a gid.
/// `part_steps` says how its steps run.
///
/// A part refused with `ShardMapChanged` (one of its buckets moved to another shard after
/// the plan) ends the round: its parts are rolled back (the rollback decision recorded first,
/// as for any rollback), the order is planned again on the map in use, keeping its order id,
/// and the next round prepares parts with gids and keys of their own ([`GidParts::round`]).
/// Every part of the round that commits is on its bucket's owner at that time.
pub(crate) async fn place(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    order: ValidOrder,
    key: &str,
    part_steps: PartSteps,
) -> WorkflowResult<PlacedOrder> {
    let steps = part_steps.steps();
    let mut plan = make_plan(ctx, steps, &order, key, FIRST_ROUND).await?;
    let order_id = plan.order_id.expect("PlanOrder allocates when asked");
    let mut round = FIRST_ROUND;
    let mut waits = 0;
    let (parts, refusal) = loop {
        let parts = match parts(ctx, &order, order_id, &plan, round) {
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
        let refusal = match part_steps {
            PartSteps::Grouped => prepare_together(ctx, &parts).await,
            one_per_part => prepare_in_shard_order(ctx, one_per_part.steps(), &parts).await,
        };
        let stale_plan = refusal.as_ref().is_some_and(|err| {
            failures::rejection(err)
                .is_some_and(|r| r.failure_type == FailureType::ShardMapChanged.as_str())
        });
        let cancelled = ctx.cancellation_token().is_cancelled();
        let unanswered =
            refusal.as_ref().is_some_and(shard_did_not_answer) && !cancelled && waits < MAX_WAITS;
        // (In this order: `replans` asks a patch, only where histories recorded it.)
        if !unanswered
            && (!stale_plan || cancelled || round >= MAX_ROUNDS || !Version::replans(ctx))
        {
            break (parts, refusal);
        }
        record_decision(ctx, Decision::Rollback, round)?;
        set_step(ctx, "RollbackPart");
        if let Some(problems) =
            resolve(ctx, steps, &parts, || TwoPhaseActivities::rollback_part).await
        {
            outcomes::record(ctx, OrderMetrics::compensation_failed);
            let failure = FailureType::TwoPhaseIncomplete.failure(format!(
                "order {order_id}: its plan went stale (a bucket moved) and round {round} could not be rolled back: {problems}"
            ));
            return Err(fail(ctx, Stage::Failed, failure).into());
        }
        round += 1;
        if unanswered {
            // Its rows on the shards that answered are released; the order waits, then
            // prepares every part again.
            let pause = wait_before_round(waits);
            waits += 1;
            if !ctx.is_replaying() {
                tracing::warn!(
                    workflow_id = ctx.workflow_id(),
                    order_id,
                    round,
                    pause_ms = pause.as_millis() as u64,
                    error = %refusal.as_ref().map(failures::describe).unwrap_or_default(),
                    "a shard of the order did not answer: its prepared parts are rolled back and it tries again"
                );
            }
            let timer = TimerOptions::builder(pause)
                .summary("wait for the shard that did not answer".to_owned())
                .build();
            let _ = ctx.timer(timer).await;
            if ctx.cancellation_token().is_cancelled() {
                return Err(cancelled_order(ctx));
            }
        } else if !ctx.is_replaying() {
            tracing::info!(
                workflow_id = ctx.workflow_id(),
                order_id,
                round,
                "a bucket of the order moved after it was planned: planning again"
            );
        }
        plan = make_plan(ctx, steps, &order, key, round).await?;
    };
    let cancelled = ctx.cancellation_token().is_cancelled();
    let decision = if refusal.is_none() && !cancelled {
        Decision::Commit
    } else {
        Decision::Rollback
    };
    record_decision(ctx, decision, round)?;

    if decision == Decision::Commit {
        ctx.state_mut(|s| {
            s.progress.order_id = Some(order_id);
            s.progress.shard = Some(plan.customer_shard);
        });
        set_stage(ctx, Stage::Pending);
        set_step(ctx, "CommitPart");
        let others = &parts[1..];
        let committed = match part_steps {
            PartSteps::Grouped => commit_together(ctx, &parts).await,
            one_per_part => commit_home_first(ctx, one_per_part.steps(), &parts).await,
        };
        match committed {
            Committed::All => {}
            Committed::NotHome(problems) => {
                // The home part is gone, so no part committed: the decision becomes
                // rollback, recorded before any part is rolled back (recovery reads it).
                record_decision(ctx, Decision::Rollback, round)?;
                let rollback =
                    resolve(ctx, steps, others, || TwoPhaseActivities::rollback_part).await;
                let failure = FailureType::TwoPhaseIncomplete.failure(format!(
                    "order {order_id}: its home part could not commit ({problems}), so the order was rolled back{}",
                    rollback
                        .map(|p| format!("; the rollback failed too: {p}"))
                        .unwrap_or_default()
                ));
                return Err(fail(ctx, Stage::Failed, failure).into());
            }
            Committed::NotOthers(problems) => {
                let failure = FailureType::TwoPhaseIncomplete.failure(format!(
                    "order {order_id}: commit was decided but not carried out: {problems}"
                ));
                return Err(fail(ctx, Stage::Failed, failure).into());
            }
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
    if refusal.is_some() && !cancelled && part_steps.records_refusal_first() {
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
        Some(err) if !cancelled && shard_did_not_answer(&err) => {
            let failure = FailureType::ShardUnavailable.failure(format!(
                "order {order_id}: a shard it needs did not answer through {waits} waits; what was prepared is rolled back and nothing was written, submit it again once the shard is back: {}",
                failures::describe(&err)
            ));
            Err(fail(ctx, Stage::Failed, failure).into())
        }
        Some(err) if !cancelled => Err(fail(ctx, Stage::Failed, workflow_failure(&err)).into()),
        _ => Err(cancelled_order(ctx)),
    }
}

/// Plans round `round` of the order: the first takes the order id, later ones (after a
/// bucket moved) keep it and only group the products by shard again, on the map in use.
/// A failure (or a cancellation) ends the workflow.
async fn make_plan(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    steps: Steps,
    order: &ValidOrder,
    key: &str,
    round: u32,
) -> WorkflowResult<OrderPlan> {
    set_step(ctx, "PlanOrder");
    let input = PlanInput {
        customer_id: order.customer_id,
        items: order.items.clone(),
        allocate_order_id: round == FIRST_ROUND,
        idempotency_key: match round {
            FIRST_ROUND => format!("{key}/plan"),
            later => format!("{key}/plan/round-{later}"),
        },
        newest_map: round != FIRST_ROUND,
    };
    let plan = steps
        .run(ctx, StockActivities::plan_order, input, Phase::Forward)
        .await;
    match plan {
        Ok(plan) => Ok(plan),
        Err(_) if ctx.cancellation_token().is_cancelled() => Err(cancelled_order(ctx)),
        Err(err) => Err(fail(ctx, Stage::Failed, workflow_failure(&err)).into()),
    }
}

/// Prepares every part, one shard after another in shard order (see the module docs), and
/// stops at the first refusal, which it returns.
async fn prepare_in_shard_order(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    steps: Steps,
    parts: &[TwoPhasePart],
) -> Option<ActivityExecutionError> {
    set_step(ctx, "PreparePart");
    for part in in_shard_order(parts) {
        let prepared = steps
            .run(
                ctx,
                TwoPhaseActivities::prepare_part,
                part.clone(),
                Phase::Prepare,
            )
            .await;
        if let Err(err) = prepared {
            return Some(err);
        }
    }
    None
}

/// `parts` in the order they are prepared: shard order (see the module docs).
fn in_shard_order(parts: &[TwoPhasePart]) -> Vec<TwoPhasePart> {
    let mut ordered = parts.to_vec();
    ordered.sort_by_key(|part| part.shard);
    ordered
}

/// [`prepare_in_shard_order`] in one step ([`PartSteps::Grouped`]).
async fn prepare_together(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    parts: &[TwoPhasePart],
) -> Option<ActivityExecutionError> {
    set_step(ctx, "PreparePart");
    Steps::Local
        .run(
            ctx,
            TwoPhaseActivities::prepare_parts,
            in_shard_order(parts),
            Phase::Prepare,
        )
        .await
        .err()
}

/// What phase two's commit left undone.
enum Committed {
    All,
    /// The home part did not commit (what could not be done): no part did.
    NotHome(String),
    /// The home part committed, some others did not.
    NotOthers(String),
}

/// Commits the home part (`parts[0]`), then the others side by side, a step per part.
async fn commit_home_first(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    steps: Steps,
    parts: &[TwoPhasePart],
) -> Committed {
    let (home, others) = parts.split_at(1);
    if let Some(problems) = resolve(ctx, steps, home, || TwoPhaseActivities::commit_part).await {
        return Committed::NotHome(problems);
    }
    match resolve(ctx, steps, others, || TwoPhaseActivities::commit_part).await {
        Some(problems) => Committed::NotOthers(problems),
        None => Committed::All,
    }
}

/// [`commit_home_first`] in one step ([`PartSteps::Grouped`]), unless the home part's shard
/// does not answer: then every part commits side by side, each in an activity of its own.
async fn commit_together(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    parts: &[TwoPhasePart],
) -> Committed {
    let committed = Steps::Local
        .run(
            ctx,
            TwoPhaseActivities::commit_parts,
            parts.to_vec(),
            Phase::Resolve,
        )
        .await;
    let missing = match committed {
        Ok(missing) if missing.is_empty() => return Committed::All,
        Ok(missing) => missing,
        Err(err)
            if failures::rejection(&err).is_some_and(|rejected| {
                rejected.failure_type == FailureType::ShardUnavailable.as_str()
            }) =>
        {
            return commit_around_a_down_home(ctx, parts).await;
        }
        // Retried until done, so only a bug ends here: nothing is known to have committed.
        Err(err) => return Committed::NotOthers(failures::describe(&err)),
    };
    let problems = left_incomplete(
        ctx,
        missing
            .iter()
            .map(|part| format!("shard {}: {part}", part.shard))
            .collect(),
    )
    .unwrap_or_default();
    if missing
        .iter()
        .any(|part| part.gid == parts[0].gid.to_string())
    {
        Committed::NotHome(problems)
    } else {
        Committed::NotOthers(problems)
    }
}

/// Phase two when the home part's shard does not answer (`CommitParts` said so, having
/// committed the home part at most): every part commits at once, each a `CommitPart` activity retried
/// until done, so the parts on healthy shards release their rows now instead of when the
/// home shard is back. Committing them before the home part is safe because scheduling the
/// activities completes this workflow task, which puts the decision's memo in the history
/// first: recovery reads the memo, not the home part's commit record.
///
/// No patch guards this: `CommitParts` never failed with `ShardUnavailable` before, so no
/// recorded history reaches this branch.
async fn commit_around_a_down_home(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    parts: &[TwoPhasePart],
) -> Committed {
    match resolve(ctx, Steps::Remote, parts, || {
        TwoPhaseActivities::commit_part
    })
    .await
    {
        None => Committed::All,
        // Some committed already: what is missing cannot be undone by a rollback.
        Some(problems) => Committed::NotOthers(problems),
    }
}

/// Records `decision` about round `round` in the memo, where `orders recover` reads it. The
/// round goes with it from the second round on, so first rounds keep the memo they had.
fn record_decision(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    decision: Decision,
    round: u32,
) -> WorkflowResult<()> {
    let mut memo = vec![(DECISION_MEMO, Some(MemoValue::new(decision)))];
    if round != FIRST_ROUND {
        memo.push((ROUND_MEMO, Some(MemoValue::new(round))));
    }
    ctx.upsert_memo(memo)?;
    Ok(())
}

/// The order's parts: the home part first (the customer's shard: order, credit and any stock
/// it holds), then every other shard stocking some of its products, in shard order. They are
/// prepared in shard order (see the module docs) and committed home first.
fn parts(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    order: &ValidOrder,
    order_id: i64,
    plan: &OrderPlan,
    round: u32,
) -> Result<Vec<TwoPhasePart>, GidTooLong> {
    let customer_shard = plan.customer_shard;
    let part = |shard: usize, order: Option<ValidOrder>, stock: Vec<StockLine>| {
        let names = GidParts {
            workflow_id: ctx.workflow_id().to_owned(),
            run_id: ctx.info().first_execution_run_id().to_owned(),
            shard,
            home_shard: customer_shard,
            round,
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
    for stock_part in &plan.stock {
        if stock_part.shard == customer_shard {
            home_stock = stock_part.lines.clone();
        } else {
            others.push(part(stock_part.shard, None, stock_part.lines.clone())?);
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
    left_incomplete(ctx, problems)
}

/// What phase two could not do, in one line, logged (once, not on replay) for whoever must
/// run `orders recover`; `None` when it did everything.
fn left_incomplete(
    ctx: &WorkflowContext<PlaceOrderWorkflow>,
    problems: Vec<String>,
) -> Option<String> {
    if problems.is_empty() {
        return None;
    }
    if !ctx.is_replaying() {
        tracing::error!(
            workflow_id = ctx.workflow_id(),
            ?problems,
            "two-phase order left incomplete; run `orders recover` once the cause is fixed"
        );
    }
    Some(problems.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_a_shard_double_up_to_fifteen_seconds_and_total_about_five_minutes() {
        let waits: Vec<u64> = (0..MAX_WAITS)
            .map(|n| wait_before_round(n).as_secs())
            .collect();
        assert_eq!(waits[..6], [1, 2, 4, 8, 15, 15]);
        let total: u64 = waits.iter().sum();
        assert!((240..=360).contains(&total), "{total} s");
    }
}
