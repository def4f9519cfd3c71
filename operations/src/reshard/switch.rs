//! The switch: every row compared while writes go on, then the write pause (freeze, last
//! catch-up, a check of the rows it rewrote) and the cut-over.

use super::*;
use crate::heartbeat::{Progress, while_heartbeating};

impl ReshardActivities {
    pub(super) async fn switch(
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

    /// Whether the map in use (refreshed first by the caller) gives the move's buckets to its
    /// target: the cut-over stored it.
    pub(super) fn owned_by_target(&self, mv: &BucketMove) -> bool {
        let map = self.shards.map();
        mv.buckets.iter().all(|&b| map.shard_of_bucket(b) == mv.to)
    }

    /// Stops every write to the bucket on the source, and waits until the transactions that
    /// began before are over. Returns when it froze (ms since the epoch).
    pub(super) async fn freeze(
        &self,
        ctx: &ActivityContext,
        mv: &BucketMove,
    ) -> Result<(), ActivityError> {
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
    pub(super) async fn verify_live(
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
        // A checksum of a large bucket is one long statement: heartbeat meanwhile.
        let (left, pending) = while_heartbeating(
            ctx,
            &Progress::default(),
            bucket_checks::source_checksums(&mut on_source, &mv.buckets),
        )
        .await?
        .map_err(sql_error(source))?;
        let right = while_heartbeating(
            ctx,
            &Progress::default(),
            bucket_checks::target_checksums(&mut on_target, &mv.buckets, &pending),
        )
        .await?
        .map_err(sql_error(target))?;
        let mut rows = 0;
        for (index, (table, (left, right))) in
            TABLES.iter().zip(left.iter().zip(&right)).enumerate()
        {
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
                return Ok((
                    caught_up,
                    Verification {
                        rows,
                        mismatch: Some(mismatch),
                    },
                ));
            }
            rows += left.rows as u64;
        }
        Ok((
            caught_up,
            Verification {
                rows,
                mismatch: None,
            },
        ))
    }

    /// During the pause: compares, on both shards, only the rows the last catch-up rewrote
    /// (everything else was compared by [`Self::verify_live`] and has not changed since).
    pub(super) async fn verify_touched(
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
    pub(super) async fn cut_over(&self, mv: &BucketMove) -> Result<i64, ActivityError> {
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
    pub(super) async fn finish(&self, mv: &BucketMove) -> Result<(), ActivityError> {
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
    pub(super) async fn publish_owner(&self, mv: &BucketMove) -> Result<(), ActivityError> {
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
}
