//! The bucket mover's steps: one activity per phase of moving one bucket between shards,
//! each safe to run again at any point. The `Reshard` workflow runs them in order, and its
//! history is the mover's log (see docs/operations.md, "Growing and shrinking a deployment").
//!
//! Per bucket: [`ReshardActivities::begin_bucket_move`] fences the target (`incoming`) and
//! the source (`copying`: every change from now on is logged), `copy_bucket` copies the rows
//! with COPY in heartbeated chunks, `catch_up_bucket` applies the logged changes while
//! writes go on, and `freeze_and_cut_over` is the write pause: it stops every write on the
//! source and waits out the transactions that began before (prepared two-phase parts
//! included), applies the last changes, compares both sides table by table, and stores the
//! next map version everywhere and opens the bucket on the target, all in one activity so
//! the pause costs one round trip to Temporal. `clean_up_bucket` deletes the source's rows
//! once every worker has had time to read the new map; `abort_bucket_move` undoes a move
//! not cut over.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sea_orm::{DbErr, RuntimeErr};
use serde::{Deserialize, Serialize};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use orders_core::shard_map::ShardMap;
use orders_core::shards::{Shard, ShardError, Shards};
use orders_core::store::bucket_rows::{self, TABLES};
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

/// The first table whose rows differ between source and target.
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
        write!(
            f,
            "table {}: {} rows on the source, {} on the target",
            self.table, self.source_rows, self.target_rows
        )?;
        if let Some(key) = &self.first_key {
            write!(f, ", first differing key {key}")?;
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch, on the worker's clock: when a bucket froze and when it
/// opened again, for the write pause the workflow reports.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The mover's activities' shared state.
pub struct ReshardActivities {
    shards: Shards,
}

impl ReshardActivities {
    pub fn new(shards: Shards) -> Self {
        Self { shards }
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
    /// Buckets left mid-move by an earlier run that ended without finishing are rolled back
    /// first.
    #[activity(name = "PlanReshard")]
    pub async fn plan_reshard(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: PlanInput,
    ) -> Result<Vec<BucketMove>, ActivityError> {
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
        for shard in self.shards.iter() {
            let left = fences::list(&shard.conn)
                .await
                .map_err(|e| shard.error(e))?;
            for fence in left.into_iter().filter(|f| f.state != FenceState::Moved) {
                if fence.move_id == input.move_id {
                    continue;
                }
                let (from, to) = match fence.state {
                    FenceState::Incoming => (fence.peer, shard.index),
                    _ => (shard.index, fence.peer),
                };
                tracing::warn!(bucket = fence.bucket, from, to, move_id = %fence.move_id, "rolling back a bucket move an earlier run left unfinished");
                self.roll_back(&BucketMove {
                    buckets: vec![fence.bucket],
                    from,
                    to,
                    move_id: fence.move_id,
                })
                .await?;
            }
        }
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
        Ok(moves)
    }

    /// Fences the bucket on both shards, clears the target of any rows of it, and waits
    /// until every write on the source is logged. Returns the source's row count.
    #[activity(name = "BeginBucketMove")]
    pub async fn begin_bucket_move(
        self: Arc<Self>,
        ctx: ActivityContext,
        mv: BucketMove,
    ) -> Result<u64, ActivityError> {
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
        self.wait_for_transactions(&ctx, source, &mv.buckets)
            .await?;
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

    /// Copies the bucket's rows, table by table in key order, a chunk per COPY, heartbeating
    /// after each; a retry resumes after the last chunk it heartbeated.
    #[activity(name = "CopyBucket")]
    pub async fn copy_bucket(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: CopyInput,
    ) -> Result<CopyProgress, ActivityError> {
        let mv = &input.bucket_move;
        let (source, target) = (self.shards.get(mv.from), self.shards.get(mv.to));
        let mut progress: CopyProgress = ctx
            .heartbeat_details()
            .deserialize()
            .ok()
            .flatten()
            .unwrap_or_default();
        if progress != CopyProgress::default() {
            tracing::info!(buckets = ?mv.buckets, ?progress, "copy resumed");
        }
        let mut on_target = self.connection(target).await?;
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
            if ctx.is_cancelled() {
                return Err(ActivityError::cancelled());
            }
        }
        tracing::info!(buckets = ?mv.buckets, rows = progress.rows, "buckets copied");
        Ok(progress)
    }

    /// Applies the changes logged on the source, until none are left.
    #[activity(name = "CatchUpBucket")]
    pub async fn catch_up_bucket(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: CatchUpInput,
    ) -> Result<CatchUp, ActivityError> {
        self.catch_up(&ctx, &input.bucket_move, input.after).await
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
        self.shards
            .refresh_map()
            .await
            .map_err(|e| refused(e.to_string()))?;
        let frozen_at = now_ms();
        if !self.owned_by_target(mv) {
            self.freeze(&ctx, mv).await?;
            let last = self.catch_up(&ctx, mv, input.after).await?;
            let verified = self.verify(mv).await?;
            if verified.mismatch.is_some() {
                return Ok(Switched {
                    frozen_at,
                    opened_at: None,
                    caught_up: last,
                    verification: verified,
                });
            }
            let opened_at = self.cut_over(mv).await?;
            return Ok(Switched {
                frozen_at,
                opened_at: Some(opened_at),
                caught_up: last,
                verification: verified,
            });
        }
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

    /// Deletes the bucket's rows on its old owner. Its `moved` fence stays: a worker that
    /// still routes there is refused rather than finding nothing.
    #[activity(name = "CleanUpBucket")]
    pub async fn clean_up_bucket(
        self: Arc<Self>,
        _ctx: ActivityContext,
        mv: BucketMove,
    ) -> Result<u64, ActivityError> {
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

    /// Undoes a move that has not cut over: the source serves the bucket again and the
    /// target's copy is deleted. Returns `false`, changing nothing, if the map already gives
    /// the bucket to the target (the cut-over happened: the move is finished instead).
    #[activity(name = "AbortBucketMove")]
    pub async fn abort_bucket_move(
        self: Arc<Self>,
        _ctx: ActivityContext,
        mv: BucketMove,
    ) -> Result<bool, ActivityError> {
        self.shards
            .refresh_map()
            .await
            .map_err(|e| refused(e.to_string()))?;
        if self.owned_by_target(&mv) {
            return Ok(false);
        }
        self.roll_back(&mv).await?;
        Ok(true)
    }
}

impl ReshardActivities {
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
        let (source, target) = (self.shards.get(mv.from), self.shards.get(mv.to));
        let mut on_source = self.connection(source).await?;
        let mut on_target = self.connection(target).await?;
        let mut done = CatchUp {
            last_change: after,
            changes: 0,
        };
        loop {
            let batch = bucket_rows::catch_up(&mut on_source, &mut on_target, &mv.buckets, 5_000)
                .await
                .map_err(sql_error(target))?;
            if batch.changes == 0 {
                return Ok(done);
            }
            done.last_change = done.last_change.max(batch.last_change);
            done.changes += batch.changes;
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

    /// Compares the bucket's rows on both shards, table by table: row count and a checksum
    /// of the rows in key order; on a difference, finds the first key that differs.
    async fn verify(&self, mv: &BucketMove) -> Result<Verification, ActivityError> {
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
        let mut rows = 0;
        for table in &TABLES {
            let left = bucket_rows::checksum(&mut on_source, table, &mv.buckets)
                .await
                .map_err(sql_error(source))?;
            let right = bucket_rows::checksum(&mut on_target, table, &mv.buckets)
                .await
                .map_err(sql_error(target))?;
            if left != right {
                let first_key = bucket_rows::first_difference(
                    &mut on_source,
                    &mut on_target,
                    table,
                    &mv.buckets,
                )
                .await
                .map_err(sql_error(source))?;
                return Ok(Verification {
                    rows,
                    mismatch: Some(Mismatch {
                        table: table.name.to_owned(),
                        source_rows: left.rows,
                        target_rows: right.rows,
                        first_key,
                    }),
                });
            }
            rows += left.rows as u64;
        }
        Ok(Verification {
            rows,
            mismatch: None,
        })
    }

    /// Hands the bucket to the target: its id sequences past the source's, the source fenced
    /// `moved`, the next map version stored on every shard, the target open. Returns when the
    /// target opened (ms since the epoch). Safe to repeat.
    async fn cut_over(&self, mv: &BucketMove) -> Result<i64, ActivityError> {
        let (source, target) = (self.shards.get(mv.from), self.shards.get(mv.to));
        let mut on_source = self.connection(source).await?;
        let mut on_target = self.connection(target).await?;
        let sequences = bucket_rows::id_sequences(&mut on_source)
            .await
            .map_err(sql_error(source))?;
        bucket_rows::advance_id_sequences(&mut on_target, &sequences)
            .await
            .map_err(sql_error(target))?;
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
        Ok(now_ms())
    }

    /// Stores on every shard a map giving `mv.bucket` to `mv.to`, unless the newest one does.
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
        self.shards.publish_next(next).await?;
        Ok(())
    }

    /// The source's fence lifted and its change log dropped, then the target's copy and
    /// fence removed.
    async fn roll_back(&self, mv: &BucketMove) -> Result<(), ActivityError> {
        let (source, target) = (self.shards.get(mv.from), self.shards.get(mv.to));
        fences::clear_all(
            &source.conn,
            &mv.buckets,
            &[FenceState::Frozen, FenceState::Copying],
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
