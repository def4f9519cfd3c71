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
            write!(f, "table {}: rows written during the copy differ", self.table)?;
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
        let failure = match work.await {
            Ok(done) => {
                self.failures.succeeded(step, subject, attempt);
                return Ok(done);
            }
            Err(ActivityError::Application(failure)) => failure,
            Err(other) => return Err(other),
        };
        self.failures.failed(step, subject, attempt, &failure);
        if failure.is_non_retryable() || attempt < GIVE_UP_AFTER_ATTEMPTS {
            return Err(ActivityError::Application(failure));
        }
        let down = self.down(involved).await;
        if !down.is_empty() {
            return Err(ActivityError::Application(failure));
        }
        Err(ActivityError::application(FailureType::ReshardFailed.failure(
            format!(
                "{step} of {subject} failed {attempt} times with its shards answering; last error: {failure}"
            ),
        )))
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

/// Runs `work`, heartbeating every five seconds meanwhile: a checksum of a large bucket is
/// one long statement.
async fn heartbeating<T>(ctx: &ActivityContext, work: impl Future<Output = T>) -> T {
    tokio::pin!(work);
    let mut beat = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = beat.tick() => ctx.record_heartbeat(()).await.ok().unwrap_or_default(),
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
        let subject = mv.to_string();
        self.attempt(&ctx, "BeginBucketMove", &subject, &[mv.from, mv.to], self.begin(&ctx, &mv))
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
        let subject = mv.to_string();
        self.attempt(&ctx, "CopyBucket", &subject, &[mv.from, mv.to], self.copy(&ctx, &input))
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
        let subject = mv.to_string();
        let work = self.catch_up(&ctx, mv, input.after);
        self.attempt(&ctx, "CatchUpBucket", &subject, &[mv.from, mv.to], work)
            .await
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
        let subject = mv.to_string();
        let work = self.switch(&ctx, &input);
        self.attempt(&ctx, "FreezeAndCutOver", &subject, &[mv.from, mv.to], work)
            .await
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
        let subject = mv.to_string();
        self.attempt(&ctx, "CleanUpBucket", &subject, &[mv.from, mv.to], self.clean_up(&mv))
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
        let subject = mv.to_string();
        let work = async {
            let settled = self.settle(&mv).await?;
            Ok(!settled.rolled_back.is_empty())
        };
        self.attempt(&ctx, "AbortBucketMove", &subject, &[mv.from, mv.to], work)
            .await
    }
}

impl ReshardActivities {
    async fn plan(&self, input: &PlanInput) -> Result<Vec<BucketMove>, ActivityError> {
        self.shards
            .refresh_map()
            .await
            .map_err(|e| refused(e.to_string()))?;
        let configured = self.shards.len();
        let map = self.shards.map();
        let target: ShardMap = match input.request {
            ReshardRequest::Shards { shards } => {
                if shards == 0 || shards > configured {
                    return Err(refused(format!(
                        "cannot spread the buckets over {shards} shards: {configured} are configured; add the new shard's URL at the end of ORDERS_SHARDS on every worker and run `orders migrate up` first"
                    )));
                }
                if shards >= map.shard_count() {
                    map.grown_to(shards)
                } else {
                    map.shrunk_to(shards)
                }
            }
            ReshardRequest::Bucket { bucket, to } => {
                if usize::from(bucket) >= map.owners().len() || to >= configured {
                    return Err(refused(format!(
                        "bucket {bucket} to shard {to}: buckets are 0..{} and shards 0..{configured}",
                        map.owners().len()
                    )));
                }
                map.with_buckets_moved(&[bucket], to)
            }
        };
        // A shard that does not answer cannot be settled now; a move that involves it waits
        // below, the others go ahead.
        let mut silent = Vec::new();
        for shard in self.shards.iter() {
            let left = match fences::list(&shard.conn).await {
                Ok(left) => left,
                Err(e) => {
                    silent.push(shard.error(e));
                    continue;
                }
            };
            // A `moved` fence is a finished move's, unless the newest map still names this
            // shard the owner: a cut-over stopped before it published.
            let unfinished = |f: &fences::Fence| {
                f.state != FenceState::Moved
                    || self.shards.map().shard_of_bucket(f.bucket) == shard.index
            };
            for fence in left.into_iter().filter(unfinished) {
                if fence.move_id == input.move_id {
                    continue;
                }
                let (from, to) = match fence.state {
                    FenceState::Incoming => (fence.peer, shard.index),
                    _ => (shard.index, fence.peer),
                };
                tracing::warn!(bucket = fence.bucket, from, to, move_id = %fence.move_id, "settling a bucket move an earlier run left unfinished");
                let left = BucketMove {
                    buckets: vec![fence.bucket],
                    from,
                    to,
                    move_id: fence.move_id,
                };
                let settled = self.settle(&left).await?;
                // Its run is gone, and with it the clean-up it would have done.
                if !settled.finished.is_empty() {
                    self.clean_up(&BucketMove {
                        buckets: settled.finished,
                        ..left
                    })
                    .await?;
                }
            }
        }
        // The map may have changed while settling.
        let map = self.shards.map();
        // Buckets with the same source and target, in bucket order, a batch per move.
        let mut by_pair: std::collections::BTreeMap<(usize, usize), Vec<u16>> =
            std::collections::BTreeMap::new();
        for bucket in map.moved_buckets(&target) {
            by_pair
                .entry((map.shard_of_bucket(bucket), target.shard_of_bucket(bucket)))
                .or_default()
                .push(bucket);
        }
        let per_move = input.buckets_per_move.max(1);
        let mut moves: Vec<BucketMove> = by_pair
            .into_iter()
            .flat_map(|((from, to), buckets)| {
                let move_id = input.move_id.clone();
                buckets
                    .chunks(per_move)
                    .map(move |chunk| BucketMove {
                        buckets: chunk.to_vec(),
                        from,
                        to,
                        move_id: move_id.clone(),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        moves.sort_by_key(|m| m.buckets[0]);
        if let Some(down) = silent
            .into_iter()
            .find(|e| moves.iter().any(|m| m.from == e.shard || m.to == e.shard))
        {
            return Err(ActivityError::application(ApplicationFailure::new(format!(
                "shard {} must answer before the moves that involve it can be planned: {down}",
                down.shard
            ))));
        }
        Ok(moves)
    }

    async fn begin(&self, ctx: &ActivityContext, mv: &BucketMove) -> Result<u64, ActivityError> {
        let (source, target) = (self.shards.get(mv.from), self.shards.get(mv.to));
        fences::set_all(
            &target.conn,
            &mv.buckets,
            FenceState::Incoming,
            mv.from,
            &mv.move_id,
        )
        .await
        .map_err(|e| target.error(e))?;
        let mut on_target = self.connection(target).await?;
        bucket_rows::delete_bucket(&mut on_target, &mv.buckets, 5_000)
            .await
            .map_err(sql_error(target))?;
        fences::set_all(
            &source.conn,
            &mv.buckets,
            FenceState::Copying,
            mv.to,
            &mv.move_id,
        )
        .await
        .map_err(|e| source.error(e))?;
        self.wait_for_transactions(ctx, source, &mv.buckets).await?;
        let mut on_source = self.connection(source).await?;
        let rows = bucket_rows::count_rows(&mut on_source, &mv.buckets)
            .await
            .map_err(sql_error(source))?;
        tracing::info!(
            buckets = ?mv.buckets,
            from = mv.from,
            to = mv.to,
            rows,
            "bucket move begun"
        );
        Ok(rows)
    }

    async fn copy(
        &self,
        ctx: &ActivityContext,
        input: &CopyInput,
    ) -> Result<CopyProgress, ActivityError> {
        let mv = &input.bucket_move;
        let (source, target) = (self.shards.get(mv.from), self.shards.get(mv.to));
        let mut progress: CopyProgress = ctx
            .heartbeat_details()
            .deserialize()
            .ok()
            .flatten()
            .unwrap_or_default();
        failpoints::hit("copy_bucket.before").await?;
        let mut on_target = self.connection(target).await?;
        if ctx.info().attempt > 1 {
            // The heartbeat resumed from can be older than the last chunk written (heartbeats
            // are sent at most every few seconds): the tables after it are copied again from
            // their start, and their rows on the target would keep the parents' range from
            // being replaced (order items referencing the orders about to be copied again).
            let cleared = bucket_rows::delete_tables_after(&mut on_target, &mv.buckets, progress.table)
                .await
                .map_err(sql_error(target))?;
            tracing::info!(buckets = ?mv.buckets, ?progress, cleared, "copy resumed");
        }
        let mut since = Instant::now();
        while progress.table < TABLES.len() {
            let table = &TABLES[progress.table];
            let chunk = bucket_rows::copy_chunk(
                source.conn.get_postgres_connection_pool(),
                &mut on_target,
                table,
                &mv.buckets,
                progress.after.as_deref(),
                input.chunk_rows.max(1),
            )
            .await
            .map_err(sql_error(target))?;
            match chunk {
                Some(chunk) => {
                    progress.after = Some(chunk.last_key);
                    progress.rows += chunk.rows;
                }
                None => {
                    progress.table += 1;
                    progress.after = None;
                }
            }
            progress.copy_ms += since.elapsed().as_millis() as u64;
            since = Instant::now();
            ctx.record_heartbeat(progress.clone()).await.ok();
            failpoints::hit("copy_bucket.after_chunk").await?;
            if table.name == "order_items" {
                failpoints::hit("copy_bucket.in_order_items").await?;
            }
            if ctx.is_cancelled() {
                return Err(ActivityError::cancelled());
            }
        }
        tracing::info!(buckets = ?mv.buckets, rows = progress.rows, "buckets copied");
        Ok(progress)
    }

    async fn switch(
        &self,
        ctx: &ActivityContext,
        input: &CatchUpInput,
    ) -> Result<Switched, ActivityError> {
        let mv = &input.bucket_move;
        self.shards
            .refresh_map()
            .await
            .map_err(|e| refused(e.to_string()))?;
        if !self.owned_by_target(mv) {
            // Every row compared before the pause, while writes go on; during it, only the
            // rows written since, so the pause does not grow with the bucket.
            let (live, verified) = self.verify_live(ctx, mv, input.after).await?;
            let frozen_at = now_ms();
            if verified.mismatch.is_some() {
                return Ok(Switched {
                    frozen_at,
                    opened_at: None,
                    caught_up: live,
                    verification: verified,
                });
            }
            self.freeze(ctx, mv).await?;
            let (last, touched) = self.catch_up_touching(ctx, mv, live.last_change).await?;
            let caught_up = CatchUp {
                last_change: last.last_change,
                changes: live.changes + last.changes,
            };
            if let Some(mismatch) = self.verify_touched(mv, &touched).await? {
                return Ok(Switched {
                    frozen_at,
                    opened_at: None,
                    caught_up,
                    verification: Verification {
                        rows: verified.rows,
                        mismatch: Some(mismatch),
                    },
                });
            }
            let opened_at = self.cut_over(mv).await?;
            return Ok(Switched {
                frozen_at,
                opened_at: Some(opened_at),
                caught_up,
                verification: verified,
            });
        }
        let frozen_at = now_ms();
        let opened_at = self.cut_over(mv).await?;
        Ok(Switched {
            frozen_at,
            opened_at: Some(opened_at),
            caught_up: CatchUp {
                last_change: input.after,
                changes: 0,
            },
            verification: Verification {
                rows: 0,
                mismatch: None,
            },
        })
    }

    async fn clean_up(&self, mv: &BucketMove) -> Result<u64, ActivityError> {
        self.shards
            .refresh_map()
            .await
            .map_err(|e| refused(e.to_string()))?;
        let map = self.shards.map();
        let owned: Vec<u16> = mv
            .buckets
            .iter()
            .copied()
            .filter(|&b| map.shard_of_bucket(b) == mv.from)
            .collect();
        if !owned.is_empty() {
            return Err(refused(format!(
                "not deleting buckets {owned:?} on shard {}: the newest shard map (version {}) names that shard their owner, so its rows are the copy in use",
                mv.from,
                map.version()
            )));
        }
        let source = self.shards.get(mv.from);
        let mut on_source = self.connection(source).await?;
        let deleted = bucket_rows::delete_bucket(&mut on_source, &mv.buckets, 5_000)
            .await
            .map_err(sql_error(source))?;
        tracing::info!(
            buckets = ?mv.buckets,
            shard = mv.from,
            deleted,
            "old copy of the bucket deleted"
        );
        Ok(deleted)
    }

    /// Ends a move that stopped, whichever way its map says: buckets the newest map gives to
    /// the target are finished (its cut-over completed), the others rolled back. The map is
    /// read from both shards of the move first, since the cut-over stores it there first; a
    /// move whose shards do not both answer waits.
    async fn settle(&self, mv: &BucketMove) -> Result<Settled, ActivityError> {
        let refresh = self
            .shards
            .refresh_map()
            .await
            .map_err(|e| refused(e.to_string()))?;
        if let Some(down) = refresh
            .unreachable
            .into_iter()
            .find(|e| e.shard == mv.from || e.shard == mv.to)
        {
            return Err(ActivityError::application(ApplicationFailure::new(format!(
                "cannot settle {mv} while shard {} does not answer (the newest shard map may be stored there only): {down}",
                down.shard
            ))));
        }
        let map = self.shards.map();
        let (finished, rolled_back): (Vec<u16>, Vec<u16>) = mv
            .buckets
            .iter()
            .partition(|&&b| map.shard_of_bucket(b) == mv.to);
        if !finished.is_empty() {
            self.finish(&BucketMove {
                buckets: finished.clone(),
                ..mv.clone()
            })
            .await?;
        }
        if !rolled_back.is_empty() {
            self.roll_back(&BucketMove {
                buckets: rolled_back.clone(),
                ..mv.clone()
            })
            .await?;
        }
        Ok(Settled {
            finished,
            rolled_back,
        })
    }

    /// Whether the map in use (refreshed first by the caller) gives the move's buckets to its
    /// target: the cut-over stored it.
    fn owned_by_target(&self, mv: &BucketMove) -> bool {
        let map = self.shards.map();
        mv.buckets.iter().all(|&b| map.shard_of_bucket(b) == mv.to)
    }

    /// Applies the changes logged on the source, until none are left (see
    /// [`bucket_rows::catch_up`]); `after` is the newest change an earlier pass reported.
    async fn catch_up(
        &self,
        ctx: &ActivityContext,
        mv: &BucketMove,
        after: i64,
    ) -> Result<CatchUp, ActivityError> {
        Ok(self.catch_up_touching(ctx, mv, after).await?.0)
    }

    /// [`Self::catch_up`], and the keys it rewrote.
    async fn catch_up_touching(
        &self,
        ctx: &ActivityContext,
        mv: &BucketMove,
        after: i64,
    ) -> Result<(CatchUp, Touched), ActivityError> {
        let (source, target) = (self.shards.get(mv.from), self.shards.get(mv.to));
        let mut on_source = self.connection(source).await?;
        let mut on_target = self.connection(target).await?;
        let mut done = CatchUp {
            last_change: after,
            changes: 0,
        };
        let mut touched = Touched::default();
        loop {
            let batch = bucket_rows::catch_up(&mut on_source, &mut on_target, &mv.buckets, 5_000)
                .await
                .map_err(sql_error(target))?;
            if batch.changes == 0 {
                return Ok((done, touched));
            }
            done.last_change = done.last_change.max(batch.last_change);
            done.changes += batch.changes;
            touched.extend(batch.touched);
            ctx.record_heartbeat(done.changes).await.ok();
            if ctx.is_cancelled() {
                return Err(ActivityError::cancelled());
            }
        }
    }

    /// Stops every write to the bucket on the source, and waits until the transactions that
    /// began before are over. Returns when it froze (ms since the epoch).
    async fn freeze(&self, ctx: &ActivityContext, mv: &BucketMove) -> Result<(), ActivityError> {
        let source = self.shards.get(mv.from);
        fences::set_all(
            &source.conn,
            &mv.buckets,
            FenceState::Frozen,
            mv.to,
            &mv.move_id,
        )
        .await
        .map_err(|e| source.error(e))?;
        self.wait_for_transactions(ctx, source, &mv.buckets).await?;
        failpoints::hit("freeze_bucket.after_freeze").await?;
        Ok(())
    }

    /// Catches up, then compares every row of the bucket on both shards while the source
    /// still takes writes: each table's row count and checksum, from one snapshot of the
    /// source, leaving out the rows its change log still names (the check during the pause
    /// covers those). On a difference, finds the first key that differs.
    async fn verify_live(
        &self,
        ctx: &ActivityContext,
        mv: &BucketMove,
        after: i64,
    ) -> Result<(CatchUp, Verification), ActivityError> {
        let caught_up = self.catch_up(ctx, mv, after).await?;
        let (source, target) = (self.shards.get(mv.from), self.shards.get(mv.to));
        let mut on_source = self.connection(source).await?;
        let mut on_target = self.connection(target).await?;
        if failpoints::hit("verify_bucket.corrupt_target")
            .await
            .is_err()
        {
            bucket_rows::corrupt_one_customer(&mut on_target, mv.buckets[0])
                .await
                .map_err(sql_error(target))?;
        }
        let (left, pending) = heartbeating(
            ctx,
            bucket_checks::source_checksums(&mut on_source, &mv.buckets),
        )
        .await
        .map_err(sql_error(source))?;
        let right = heartbeating(
            ctx,
            bucket_checks::target_checksums(&mut on_target, &mv.buckets, &pending),
        )
        .await
        .map_err(sql_error(target))?;
        let mut rows = 0;
        for (index, (table, (left, right))) in TABLES.iter().zip(left.iter().zip(&right)).enumerate() {
            if left != right {
                let first_key = bucket_checks::first_difference(
                    &mut on_source,
                    &mut on_target,
                    table,
                    &mv.buckets,
                    &pending.keys[index],
                )
                .await
                .map_err(sql_error(source))?;
                let mismatch = Mismatch {
                    table: table.name.to_owned(),
                    source_rows: left.rows,
                    target_rows: right.rows,
                    first_key,
                };
                return Ok((caught_up, Verification { rows, mismatch: Some(mismatch) }));
            }
            rows += left.rows as u64;
        }
        Ok((caught_up, Verification { rows, mismatch: None }))
    }

    /// During the pause: compares, on both shards, only the rows the last catch-up rewrote
    /// (everything else was compared by [`Self::verify_live`] and has not changed since).
    async fn verify_touched(
        &self,
        mv: &BucketMove,
        touched: &Touched,
    ) -> Result<Option<Mismatch>, ActivityError> {
        if touched.is_empty() {
            return Ok(None);
        }
        let (source, target) = (self.shards.get(mv.from), self.shards.get(mv.to));
        let mut on_source = self.connection(source).await?;
        let mut on_target = self.connection(target).await?;
        let differs = bucket_checks::touched_difference(&mut on_source, &mut on_target, touched)
            .await
            .map_err(sql_error(source))?;
        Ok(differs.map(|(table, key)| Mismatch {
            table: table.to_owned(),
            source_rows: 0,
            target_rows: 0,
            first_key: Some(key),
        }))
    }

    /// Hands the bucket to the target: its id sequences past the source's, the source fenced
    /// `moved`, the next map version stored on every shard, the target open. Returns when the
    /// target opened (ms since the epoch). Safe to repeat.
    async fn cut_over(&self, mv: &BucketMove) -> Result<i64, ActivityError> {
        let (source, target) = (self.shards.get(mv.from), self.shards.get(mv.to));
        let mut on_source = self.connection(source).await?;
        let mut on_target = self.connection(target).await?;
        let sequences = orders_core::store::id_sequences::id_sequences(&mut on_source)
            .await
            .map_err(sql_error(source))?;
        orders_core::store::id_sequences::advance_id_sequences(&mut on_target, &sequences)
            .await
            .map_err(sql_error(target))?;
        self.finish(mv).await?;
        Ok(now_ms())
    }

    /// The cut-over proper, also how a stopped move whose map was published is finished:
    /// the source fenced `moved`, the map giving the buckets to the target stored on both
    /// shards (the others get it when they next answer a refresh), the target open.
    async fn finish(&self, mv: &BucketMove) -> Result<(), ActivityError> {
        let (source, target) = (self.shards.get(mv.from), self.shards.get(mv.to));
        fences::set_all(
            &source.conn,
            &mv.buckets,
            FenceState::Moved,
            mv.to,
            &mv.move_id,
        )
        .await
        .map_err(|e| source.error(e))?;
        failpoints::hit("cut_over_bucket.after_source").await?;
        self.publish_owner(mv).await?;
        failpoints::hit("cut_over_bucket.after_publish").await?;
        fences::clear_all(&target.conn, &mv.buckets, &[FenceState::Incoming])
            .await
            .map_err(|e| target.error(e))?;
        tracing::info!(
            buckets = ?mv.buckets,
            from = mv.from,
            to = mv.to,
            version = self.shards.map().version(),
            "bucket cut over"
        );
        Ok(())
    }

    /// Stores a map giving `mv`'s buckets to `mv.to`, unless the newest one does, on both
    /// shards of the move (and on the others that answer).
    async fn publish_owner(&self, mv: &BucketMove) -> Result<(), ActivityError> {
        self.shards
            .refresh_map()
            .await
            .map_err(|e| refused(e.to_string()))?;
        let map = self.shards.map();
        let next = if self.owned_by_target(mv) {
            (*map).clone()
        } else {
            map.with_buckets_moved(&mv.buckets, mv.to)
        };
        self.shards.publish_next(next, &[mv.from, mv.to]).await?;
        Ok(())
    }

    /// The source's fence lifted and its change log dropped, then the target's copy and
    /// fence removed. Only [`Self::settle`] calls it, once the newest map names the source
    /// the owner: the source's `moved` fence, set by a cut-over stopped before it published,
    /// goes too.
    async fn roll_back(&self, mv: &BucketMove) -> Result<(), ActivityError> {
        let (source, target) = (self.shards.get(mv.from), self.shards.get(mv.to));
        fences::clear_all(
            &source.conn,
            &mv.buckets,
            &[FenceState::Frozen, FenceState::Copying, FenceState::Moved],
        )
        .await
        .map_err(|e| source.error(e))?;
        let mut on_target = self.connection(target).await?;
        bucket_rows::delete_bucket(&mut on_target, &mv.buckets, 5_000)
            .await
            .map_err(sql_error(target))?;
        fences::clear_all(&target.conn, &mv.buckets, &[FenceState::Incoming])
            .await
            .map_err(|e| target.error(e))?;
        let mut on_source = self.connection(source).await?;
        bucket_rows::drop_change_log(&mut on_source, &mv.buckets)
            .await
            .map_err(sql_error(source))?;
        tracing::warn!(
            buckets = ?mv.buckets,
            from = mv.from,
            to = mv.to,
            "bucket move rolled back; the source owns it"
        );
        Ok(())
    }
}
