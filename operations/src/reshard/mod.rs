//! The bucket mover's steps: one activity per phase of moving one bucket between shards,
//! each safe to run again at any point. The `Reshard` workflow runs them in order, and its
//! history is the mover's log (see docs/operations.md, "Growing and shrinking a deployment").
//!
//! Per bucket: [`ReshardActivities::begin_bucket_move`] fences the target (`incoming`) and
//! the source (`copying`: every change from now on is logged), `copy_bucket` copies the rows
//! with COPY in heartbeated chunks, `catch_up_bucket` applies the logged changes while
//! writes go on, and `freeze_and_cut_over` compares both sides table by table while writes
//! still go on, then makes the write pause: it stops every write on the source and waits out
//! the transactions that began before (prepared two-phase parts included), applies the last
//! changes, compares only the rows they rewrote, stores the next map version on both shards
//! and opens the bucket on the target, all in one activity so the pause costs one round trip
//! to Temporal and does not grow with the bucket. `clean_up_bucket` deletes the source's rows
//! once every worker has had time to read the new map; `abort_bucket_move` undoes a move
//! not cut over.

mod copy;
mod plan;
mod settle;
mod switch;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sea_orm::{DbErr, RuntimeErr};
use serde::{Deserialize, Serialize};
use temporalio_macros::activities;
use temporalio_sdk::ApplicationFailure;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use orders_core::metrics::OrderMetrics;
use orders_core::shard_map::ShardMap;
use orders_core::shards::{Shard, ShardError, Shards};
use orders_core::step_failures::StepFailures;
use orders_core::store::bucket_checks;
use orders_core::store::bucket_rows::{self, TABLES, Touched};
use orders_core::store::fences::{self, FenceState};
use orders_core::{FailureType, failpoints};

/// One move: buckets going from one shard to another together, so the copy, the checks and
/// the round trips to Temporal are paid once for all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketMove {
    pub buckets: Vec<u16>,
    pub from: usize,
    pub to: usize,
    /// The Reshard run moving it, recorded in the fences.
    pub move_id: String,
}

impl std::fmt::Display for BucketMove {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "buckets {:?} from shard {} to shard {}",
            self.buckets, self.from, self.to
        )
    }
}

/// What `orders reshard` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReshardRequest {
    /// Spread the buckets over the first `shards` configured shards: grow onto new ones, or
    /// drain the last ones onto the others.
    Shards { shards: usize },
    /// Move one bucket to one shard.
    Bucket { bucket: u16, to: usize },
}

/// Input of [`ReshardActivities::plan_reshard`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanInput {
    pub request: ReshardRequest,
    pub move_id: String,
    /// At most this many buckets per move (each move's buckets share a source and a target).
    #[serde(default = "one")]
    pub buckets_per_move: usize,
}

fn one() -> usize {
    1
}

/// Input of [`ReshardActivities::copy_bucket`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyInput {
    pub bucket_move: BucketMove,
    /// Rows per COPY chunk (and per heartbeat).
    pub chunk_rows: u32,
}

/// Where a copy stands; also its heartbeat, so a retried copy resumes after the last chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyProgress {
    /// Index into [`TABLES`] of the table being copied.
    pub table: usize,
    /// The last key copied in that table.
    pub after: Option<String>,
    pub rows: u64,
    /// Time spent copying, over every attempt (ms).
    #[serde(default)]
    pub copy_ms: u64,
}

/// Input of [`ReshardActivities::catch_up_bucket`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatchUpInput {
    pub bucket_move: BucketMove,
    /// The last change applied before.
    pub after: i64,
}

/// What a catch-up applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUp {
    pub last_change: i64,
    pub changes: u64,
}

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// Rows compared, both sides (equal when `mismatch` is `None`).
    pub rows: u64,
    pub mismatch: Option<Mismatch>,
}

/// What [`ReshardActivities::freeze_and_cut_over`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switched {
    /// When the bucket froze and when it opened on the target (ms since the epoch, the
    /// worker's clock); `opened_at` is `None` when verification found a mismatch.
    pub frozen_at: i64,
    pub opened_at: Option<i64>,
    pub caught_up: CatchUp,
    pub verification: Verification,
}

/// The first table whose rows differ between source and target. The check during the
/// pause compares only the rows written since the one before it, and counts none (0 and 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    pub table: String,
    pub source_rows: i64,
    pub target_rows: i64,
    /// The first key, in key order, whose rows differ (or exist on one side only).
    pub first_key: Option<String>,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.source_rows == 0 && self.target_rows == 0 {
            // Found by the check during the pause, which counts no rows.
            write!(
                f,
                "table {}: rows written during the copy differ",
                self.table
            )?;
        } else {
            write!(
                f,
                "table {}: {} rows on the source, {} on the target",
                self.table, self.source_rows, self.target_rows
            )?;
        }
        if let Some(key) = &self.first_key {
            write!(f, ", first differing key {key}")?;
        }
        Ok(())
    }
}

/// How [`ReshardActivities::settle`] ended a stopped move, bucket by bucket.
struct Settled {
    finished: Vec<u16>,
    rolled_back: Vec<u16>,
}

/// Milliseconds since the Unix epoch, on the worker's clock: when a bucket froze and when it
/// opened again, for the write pause the workflow reports.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Attempts after which a phase failing with both its shards answering gives up: the error
/// is the move's, not an outage's, and retrying it forever would hold the move (and its
/// fences) in silence. The move is then settled (see [`ReshardActivities::settle`]) and the
/// run fails, naming the step and its error. A shard that is down holds the move instead.
pub const GIVE_UP_AFTER_ATTEMPTS: u32 = 12;

/// The mover's activities' shared state.
pub struct ReshardActivities {
    shards: Shards,
    failures: StepFailures,
}

impl ReshardActivities {
    pub fn new(shards: Shards, metrics: Arc<OrderMetrics>) -> Self {
        Self {
            shards,
            failures: StepFailures::new("reshard", metrics),
        }
    }

    /// Runs one attempt of `step`, a phase of the move `subject` on `involved` shards: a
    /// failure is counted and logged (once per distinct error), and after
    /// [`GIVE_UP_AFTER_ATTEMPTS`] it is made final unless one of the shards is down.
    async fn attempt<T>(
        &self,
        ctx: &ActivityContext,
        step: &'static str,
        subject: &str,
        involved: &[usize],
        work: impl Future<Output = Result<T, ActivityError>>,
    ) -> Result<T, ActivityError> {
        let attempt = ctx.info().attempt;
        let result = work.await;
        self.failures.record(step, subject, attempt, &result);
        let failure = match result {
            Err(ActivityError::Application(failure))
                if !failure.is_non_retryable() && attempt >= GIVE_UP_AFTER_ATTEMPTS =>
            {
                failure
            }
            other => return other,
        };
        if !self.down(involved).await.is_empty() {
            return Err(ActivityError::Application(failure));
        }
        Err(ActivityError::application(FailureType::ReshardFailed.failure(
            format!(
                "{step} of {subject} failed {attempt} times with its shards answering; last error: {failure}"
            ),
        )))
    }

    /// [`Self::attempt`] of a phase of `mv`, which involves its source and target.
    async fn attempt_on<T>(
        &self,
        ctx: &ActivityContext,
        step: &'static str,
        mv: &BucketMove,
        work: impl Future<Output = Result<T, ActivityError>>,
    ) -> Result<T, ActivityError> {
        self.attempt(ctx, step, &mv.to_string(), &[mv.from, mv.to], work)
            .await
    }

    /// Which of `shards` do not answer a ping.
    async fn down(&self, shards: &[usize]) -> Vec<usize> {
        let mut down = Vec::new();
        for &index in shards {
            if !self.shards.get(index).answers().await {
                down.push(index);
            }
        }
        down
    }

    /// A pooled connection to `shard`, for the mover's sqlx statements.
    async fn connection(
        &self,
        shard: &Shard,
    ) -> Result<sea_orm::sqlx::pool::PoolConnection<sea_orm::sqlx::Postgres>, ShardError> {
        shard
            .conn
            .get_postgres_connection_pool()
            .acquire()
            .await
            .map_err(sql_error(shard))
    }

    /// Waits until every transaction running on `shard` now has ended, heartbeating. A
    /// prepared two-phase part is waited for, never skipped: it ends when its order's
    /// workflow (or `orders recover`) resolves it.
    async fn wait_for_transactions(
        &self,
        ctx: &ActivityContext,
        shard: &Shard,
        buckets: &[u16],
    ) -> Result<(), ActivityError> {
        let on = |e| shard.error(e);
        let snapshot = fences::transactions_now(&shard.conn).await.map_err(on)?;
        let started = Instant::now();
        let mut warned = Duration::ZERO;
        loop {
            let (running, prepared) = fences::still_running(&shard.conn, &snapshot)
                .await
                .map_err(on)?;
            if running == 0 {
                return Ok(());
            }
            let waited = started.elapsed();
            if waited >= warned + Duration::from_secs(10) {
                warned = waited;
                tracing::warn!(
                    shard = shard.index,
                    ?buckets,
                    running,
                    ?prepared,
                    waited_secs = waited.as_secs(),
                    "waiting for transactions that began before the fence; a prepared part whose order's workflow is gone needs `orders recover`"
                );
            }
            ctx.record_heartbeat(running).await.ok();
            if ctx.is_cancelled() {
                return Err(ActivityError::cancelled());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Tags a sqlx error with `shard`, keeping its SQLSTATE visible.
fn sql_error(shard: &Shard) -> impl Fn(sea_orm::sqlx::Error) -> ShardError + '_ {
    |e| shard.error(DbErr::Exec(RuntimeErr::SqlxError(Arc::new(e))))
}

/// A request the deployment cannot carry out, with what to do instead.
fn refused(message: String) -> ActivityError {
    ActivityError::application(FailureType::ReshardRefused.failure(message))
}

#[activities]
impl ReshardActivities {
    /// Reads the current map and lists the buckets the request moves, in bucket order.
    /// Buckets left mid-move by an earlier run that ended without finishing are settled
    /// first: finished if the newest map gives them to their target, else rolled back.
    #[activity(name = "PlanReshard")]
    pub async fn plan_reshard(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: PlanInput,
    ) -> Result<Vec<BucketMove>, ActivityError> {
        let every: Vec<usize> = (0..self.shards.len()).collect();
        let subject = format!("{:?}", input.request);
        self.attempt(&ctx, "PlanReshard", &subject, &every, self.plan(&input))
            .await
    }

    /// Fences the bucket on both shards, clears the target of any rows of it, and waits
    /// until every write on the source is logged. Returns the source's row count.
    #[activity(name = "BeginBucketMove")]
    pub async fn begin_bucket_move(
        self: Arc<Self>,
        ctx: ActivityContext,
        mv: BucketMove,
    ) -> Result<u64, ActivityError> {
        self.attempt_on(&ctx, "BeginBucketMove", &mv, self.begin(&ctx, &mv))
            .await
    }

    /// Copies the bucket's rows, table by table in key order, a chunk per COPY, heartbeating
    /// after each; a retry resumes after the last chunk it heartbeated.
    #[activity(name = "CopyBucket")]
    pub async fn copy_bucket(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: CopyInput,
    ) -> Result<CopyProgress, ActivityError> {
        let mv = &input.bucket_move;
        self.attempt_on(&ctx, "CopyBucket", mv, self.copy(&ctx, &input))
            .await
    }

    /// Applies the changes logged on the source, until none are left.
    #[activity(name = "CatchUpBucket")]
    pub async fn catch_up_bucket(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: CatchUpInput,
    ) -> Result<CatchUp, ActivityError> {
        let mv = &input.bucket_move;
        let work = self.catch_up(&ctx, mv, input.after);
        self.attempt_on(&ctx, "CatchUpBucket", mv, work).await
    }

    /// The write stop and the switch, in one activity so the pause costs one round trip to
    /// Temporal: freezes the bucket on the source and waits out the transactions that began
    /// before, applies the changes still logged, verifies, and cuts over. A mismatch leaves
    /// the bucket frozen for the workflow to roll back. Safe to repeat: once the map gives the
    /// bucket to the target, a retry only finishes the cut-over.
    #[activity(name = "FreezeAndCutOver")]
    pub async fn freeze_and_cut_over(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: CatchUpInput,
    ) -> Result<Switched, ActivityError> {
        let mv = &input.bucket_move;
        let work = self.switch(&ctx, &input);
        self.attempt_on(&ctx, "FreezeAndCutOver", mv, work).await
    }

    /// Deletes the bucket's rows on its old owner. Its `moved` fence stays: a worker that
    /// still routes there is refused rather than finding nothing. Refused, deleting nothing,
    /// when the newest map still names the old owner: those rows would be the last copy.
    #[activity(name = "CleanUpBucket")]
    pub async fn clean_up_bucket(
        self: Arc<Self>,
        ctx: ActivityContext,
        mv: BucketMove,
    ) -> Result<u64, ActivityError> {
        self.attempt_on(&ctx, "CleanUpBucket", &mv, self.clean_up(&mv))
            .await
    }

    /// Settles a move that stopped: rolls it back (the source serves the bucket again and
    /// the target's copy is deleted), or, if the newest map already gives the bucket to the
    /// target, finishes its cut-over instead and returns `false`.
    #[activity(name = "AbortBucketMove")]
    pub async fn abort_bucket_move(
        self: Arc<Self>,
        ctx: ActivityContext,
        mv: BucketMove,
    ) -> Result<bool, ActivityError> {
        let work = async {
            let settled = self.settle(&mv).await?;
            Ok(!settled.rolled_back.is_empty())
        };
        self.attempt_on(&ctx, "AbortBucketMove", &mv, work).await
    }
}
