//! `Reshard`: moves buckets between shards while orders keep flowing, one bucket at a time,
//! each through the phases of [`orders_operations::reshard`]. The history is the mover's log:
//! a worker that dies mid-move is replaced by another that resumes the phase in flight (a
//! copy resumes after its last heartbeated chunk).
//!
//! Cancelling it stops cleanly: buckets already cut over stay moved (and their old copies
//! are still cleaned up), and the move in flight is settled by the newest shard map: finished
//! if the map already gives it to the target, else rolled back (its partial copy deleted). A
//! checksum mismatch, or a phase that gives up, does the same for that move and fails the
//! run, naming the table and first differing key, or the phase and its error.
//!
//! One runs at a time per deployment: `orders reshard` starts it as [`WORKFLOW_ID`].

use std::time::Duration;

use orders_operations::reshard::{
    BucketMove, CatchUp, CatchUpInput, CopyInput, Mismatch, PlanInput, ReshardActivities,
    ReshardRequest,
};
use serde::{Deserialize, Serialize};
use temporalio_common::RetryPolicy;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityCancellationType, ActivityExecutionError, ActivityOptions, ApplicationFailure,
    TimerOptions, WorkflowCancellationToken, WorkflowContext, WorkflowContextView, WorkflowResult,
    WorkflowTermination,
};

use orders_core::FailureType;

use crate::failures::describe;

/// The workflow id every `orders reshard` uses, so a second one finds the first running.
pub const WORKFLOW_ID: &str = "orders-reshard";

/// Rows per COPY chunk when the input does not say.
pub const DEFAULT_CHUNK_ROWS: u32 = 5_000;

/// What to move, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReshardInput {
    pub request: ReshardRequest,
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: u32,
    /// At most this many buckets per move: they are copied, frozen and cut over together.
    #[serde(default = "default_buckets_per_move")]
    pub buckets_per_move: usize,
    /// How long after a bucket's cut-over its old copy is deleted: long enough for every
    /// worker to have read the new map (at least twice `ORDERS_SHARD_MAP_REFRESH_SECS`).
    pub clean_up_after_secs: u64,
}

fn default_chunk_rows() -> u32 {
    DEFAULT_CHUNK_ROWS
}

/// Buckets per move when the input does not say: enough to spread a move's fixed costs
/// (seven COPYs, four activities) over many buckets' rows, few enough that its write pause
/// stays short.
pub const DEFAULT_BUCKETS_PER_MOVE: usize = 16;

fn default_buckets_per_move() -> usize {
    DEFAULT_BUCKETS_PER_MOVE
}

/// The phase a run is in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Planning,
    Copying,
    CatchingUp,
    /// The write pause: the last catch-up, the verification and the cut-over.
    Frozen,
    WaitingToCleanUp,
    CleaningUp,
    Done,
    Cancelled,
    Failed,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Planning => "planning",
            Phase::Copying => "copying",
            Phase::CatchingUp => "catching up",
            Phase::Frozen => "frozen: catching up, verifying, cutting over",
            Phase::WaitingToCleanUp => "waiting to clean up",
            Phase::CleaningUp => "cleaning up",
            Phase::Done => "done",
            Phase::Cancelled => "cancelled",
            Phase::Failed => "failed",
        }
    }
}

/// Where a run stands: the `progress` query, and the run's result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReshardProgress {
    pub phase: Phase,
    /// The move in flight.
    pub current: Option<BucketMove>,
    /// Buckets to move, and buckets cut over.
    pub buckets_total: usize,
    pub buckets_moved: usize,
    /// Moves cut over.
    pub moved: Vec<BucketMove>,
    /// Buckets whose old copy is deleted.
    pub cleaned: usize,
    /// Rows copied so far, and rows the begun buckets held when their copy began.
    pub rows_copied: u64,
    pub rows_planned: u64,
    /// Time spent in the copies (ms): `rows_copied` over it is the copy rate.
    pub copy_ms: u64,
    /// Changes applied by catch-ups.
    pub changes_applied: u64,
    /// Per move cut over: milliseconds from its buckets' freeze to their opening on the
    /// target.
    pub pauses_ms: Vec<i64>,
    /// Why the run stopped early, if it did.
    pub stopped: Option<String>,
}

/// Why one bucket's move stopped.
enum Stop {
    Cancelled,
    Mismatch(Mismatch),
    Failed(Box<ActivityExecutionError>),
}

#[workflow]
#[derive(Default)]
pub struct ReshardWorkflow {
    progress: ReshardProgress,
}

#[workflow_methods]
impl ReshardWorkflow {
    #[run(name = "Reshard")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: ReshardInput,
    ) -> WorkflowResult<ReshardProgress> {
        let move_id = format!(
            "{}/{}",
            ctx.workflow_id(),
            ctx.info().first_execution_run_id()
        );
        let plan = ctx
            .execute_activity(
                ReshardActivities::plan_reshard,
                PlanInput {
                    request: input.request.clone(),
                    move_id,
                    buckets_per_move: input.buckets_per_move,
                },
                phase_options(Duration::from_secs(60), &ctx.cancellation_token()),
            )
            .await;
        let plan = match plan {
            Ok(plan) => plan,
            Err(_) if ctx.cancellation_token().is_cancelled() => {
                ctx.state_mut(|s| s.progress.phase = Phase::Cancelled);
                return Err(WorkflowTermination::cancelled());
            }
            Err(e) => return Err(failed(ctx, describe(&e)).into()),
        };
        ctx.state_mut(|s| s.progress.buckets_total = plan.iter().map(|m| m.buckets.len()).sum());
        let mut stop = None;
        for mv in plan {
            if ctx.cancellation_token().is_cancelled() {
                stop = Some(Stop::Cancelled);
                break;
            }
            ctx.state_mut(|s| s.progress.current = Some(mv.clone()));
            match move_bucket(ctx, &input, &mv).await {
                Ok(pause_ms) => ctx.state_mut(|s| {
                    s.progress.buckets_moved += mv.buckets.len();
                    s.progress.moved.push(mv.clone());
                    s.progress.pauses_ms.push(pause_ms);
                }),
                Err(why) => {
                    // Undo the bucket in flight, unless it already cut over.
                    let undone = ctx
                        .execute_activity(
                            ReshardActivities::abort_bucket_move,
                            mv.clone(),
                            phase_options(Duration::from_secs(300), &detached()),
                        )
                        .await;
                    match undone {
                        Ok(false) => ctx.state_mut(|s| {
                            s.progress.buckets_moved += mv.buckets.len();
                            s.progress.moved.push(mv.clone());
                        }),
                        Ok(true) => {}
                        Err(e) => return Err(failed(ctx, describe(&e)).into()),
                    }
                    stop = Some(why);
                    break;
                }
            }
        }
        ctx.state_mut(|s| s.progress.current = None);
        clean_up(ctx, &input).await?;
        match stop {
            None => {
                ctx.state_mut(|s| s.progress.phase = Phase::Done);
                Ok(ctx.state(|s| s.progress.clone()))
            }
            Some(Stop::Cancelled) => {
                ctx.state_mut(|s| {
                    s.progress.phase = Phase::Cancelled;
                    s.progress.stopped = Some("cancelled".into());
                });
                Err(WorkflowTermination::cancelled())
            }
            Some(Stop::Mismatch(m)) => Err(failed(
                ctx,
                format!("verification failed, the bucket's move was rolled back: {m}"),
            )
            .into()),
            Some(Stop::Failed(e)) => Err(failed(ctx, describe(&e)).into()),
        }
    }

    /// Phase, bucket in flight, buckets done of total, rows copied, write pauses.
    #[query]
    pub fn progress(&self, _ctx: &WorkflowContextView) -> ReshardProgress {
        self.progress.clone()
    }
}

/// Moves one bucket, phase by phase. Returns its write pause (freeze to opening, ms).
async fn move_bucket(
    ctx: &mut WorkflowContext<ReshardWorkflow>,
    input: &ReshardInput,
    mv: &BucketMove,
) -> Result<i64, Stop> {
    let cancel = ctx.cancellation_token();
    let stopped = |ctx: &WorkflowContext<ReshardWorkflow>, e: ActivityExecutionError| {
        if ctx.cancellation_token().is_cancelled() {
            Stop::Cancelled
        } else {
            Stop::Failed(Box::new(e))
        }
    };
    set_phase(ctx, Phase::Copying);
    let rows = ctx
        .execute_activity(
            ReshardActivities::begin_bucket_move,
            mv.clone(),
            phase_options(Duration::from_secs(600), &cancel),
        )
        .await
        .map_err(|e| stopped(ctx, e))?;
    ctx.state_mut(|s| s.progress.rows_planned += rows);
    let copied = ctx
        .execute_activity(
            ReshardActivities::copy_bucket,
            CopyInput {
                bucket_move: mv.clone(),
                chunk_rows: input.chunk_rows,
            },
            phase_options(Duration::from_secs(3600), &cancel),
        )
        .await
        .map_err(|e| stopped(ctx, e))?;
    ctx.state_mut(|s| {
        s.progress.rows_copied += copied.rows;
        s.progress.copy_ms += copied.copy_ms;
    });
    set_phase(ctx, Phase::CatchingUp);
    let live = catch_up(ctx, mv, 0, &cancel)
        .await
        .map_err(|e| stopped(ctx, e))?;
    if ctx.cancellation_token().is_cancelled() {
        return Err(Stop::Cancelled);
    }
    // The write pause: one activity, from the freeze to the target's opening. A cancellation
    // stops it while it waits or catches up, never once it cuts over; a mismatch leaves the
    // bucket frozen, for the caller to undo.
    set_phase(ctx, Phase::Frozen);
    let switched = ctx
        .execute_activity(
            ReshardActivities::freeze_and_cut_over,
            CatchUpInput {
                bucket_move: mv.clone(),
                after: live.last_change,
            },
            phase_options(Duration::from_secs(3600), &cancel),
        )
        .await
        .map_err(|e| stopped(ctx, e))?;
    ctx.state_mut(|s| s.progress.changes_applied += switched.caught_up.changes);
    if let Some(mismatch) = switched.verification.mismatch {
        return Err(Stop::Mismatch(mismatch));
    }
    let opened_at = switched.opened_at.expect("a verified bucket is cut over");
    Ok(opened_at - switched.frozen_at)
}

async fn catch_up(
    ctx: &mut WorkflowContext<ReshardWorkflow>,
    mv: &BucketMove,
    after: i64,
    cancel: &WorkflowCancellationToken,
) -> Result<CatchUp, ActivityExecutionError> {
    let done = ctx
        .execute_activity(
            ReshardActivities::catch_up_bucket,
            CatchUpInput {
                bucket_move: mv.clone(),
                after,
            },
            phase_options(Duration::from_secs(3600), cancel),
        )
        .await?;
    ctx.state_mut(|s| s.progress.changes_applied += done.changes);
    Ok(done)
}

/// After the last cut-over, waits until every worker can have read the new map, then
/// deletes the moved buckets' old copies. Runs even when the run was cancelled.
async fn clean_up(
    ctx: &mut WorkflowContext<ReshardWorkflow>,
    input: &ReshardInput,
) -> Result<(), WorkflowTermination> {
    let moved = ctx.state(|s| s.progress.moved.clone());
    if moved.is_empty() {
        return Ok(());
    }
    set_phase(ctx, Phase::WaitingToCleanUp);
    let wait = TimerOptions::builder(Duration::from_secs(input.clean_up_after_secs.max(1)))
        .cancellation_token(detached())
        .build();
    let _ = ctx.timer(wait).await;
    set_phase(ctx, Phase::CleaningUp);
    for mv in moved {
        let mv_buckets = mv.buckets.len();
        ctx.execute_activity(
            ReshardActivities::clean_up_bucket,
            mv,
            phase_options(Duration::from_secs(3600), &detached()),
        )
        .await
        .map_err(|e| failed(ctx, describe(&e)))?;
        ctx.state_mut(|s| s.progress.cleaned += mv_buckets);
    }
    Ok(())
}

fn set_phase(ctx: &WorkflowContext<ReshardWorkflow>, phase: Phase) {
    ctx.state_mut(|s| s.progress.phase = phase);
}

/// Records the failure in the progress and returns it, for the run to end with.
fn failed(ctx: &WorkflowContext<ReshardWorkflow>, message: String) -> ApplicationFailure {
    ctx.state_mut(|s| {
        s.progress.phase = Phase::Failed;
        s.progress.stopped = Some(message.clone());
    });
    FailureType::ReshardFailed.failure(message)
}

/// A token no cancellation reaches: for undoing, cutting over and cleaning up.
fn detached() -> WorkflowCancellationToken {
    WorkflowCancellationToken::new()
}

/// Every phase retries with backoff: a shard that is down holds the move, it does not fail
/// it, while a phase that keeps failing with both its shards up gives up by itself after
/// `GIVE_UP_AFTER_ATTEMPTS` (the activity decides, since it can ask the shards). Long phases
/// heartbeat, so a dead worker is noticed within 20 s and the phase resumes on another.
fn phase_options(start_to_close: Duration, cancel: &WorkflowCancellationToken) -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(start_to_close)
        .heartbeat_timeout(Duration::from_secs(20))
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_millis(500))
                .maximum_interval(Duration::from_secs(10))
                .build(),
        )
        .cancellation_token(cancel.clone())
        // An undo must not start while the phase it undoes still runs.
        .cancellation_type(ActivityCancellationType::WaitCancellationCompleted)
        .build()
}
