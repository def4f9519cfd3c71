//! Moving a bucket's rows while writes go on: the fences, the copy in chunks, the catch-up.

use super::*;

impl ReshardActivities {
    pub(super) async fn begin(
        &self,
        ctx: &ActivityContext,
        mv: &BucketMove,
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

    pub(super) async fn copy(
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
            let cleared =
                bucket_rows::delete_tables_after(&mut on_target, &mv.buckets, progress.table)
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

    /// Applies the changes logged on the source, until none are left (see
    /// [`bucket_rows::catch_up`]); `after` is the newest change an earlier pass reported.
    pub(super) async fn catch_up(
        &self,
        ctx: &ActivityContext,
        mv: &BucketMove,
        after: i64,
    ) -> Result<CatchUp, ActivityError> {
        Ok(self.catch_up_touching(ctx, mv, after).await?.0)
    }

    /// [`Self::catch_up`], and the keys it rewrote.
    pub(super) async fn catch_up_touching(
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
}
