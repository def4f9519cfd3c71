//! Ending a move that stopped, as the newest shard map says (finished or rolled back), and
//! deleting an old copy only where the map names another owner.

use super::*;

impl ReshardActivities {
    /// Ends a move that stopped, whichever way its map says: buckets the newest map gives to
    /// the target are finished (its cut-over completed), the others rolled back. The map is
    /// read from both shards of the move first, since the cut-over stores it there first; a
    /// move whose shards do not both answer waits.
    pub(super) async fn settle(&self, mv: &BucketMove) -> Result<Settled, ActivityError> {
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
            return Err(ActivityError::application(ApplicationFailure::new(
                format!(
                    "cannot settle {mv} while shard {} does not answer (the newest shard map may be stored there only): {down}",
                    down.shard
                ),
            )));
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

    /// The source's fence lifted and its change log dropped, then the target's copy and
    /// fence removed. Only [`Self::settle`] calls it, once the newest map names the source
    /// the owner: the source's `moved` fence, set by a cut-over stopped before it published,
    /// goes too.
    pub(super) async fn roll_back(&self, mv: &BucketMove) -> Result<(), ActivityError> {
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

    pub(super) async fn clean_up(&self, mv: &BucketMove) -> Result<u64, ActivityError> {
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
}
