//! Planning a reshard: the moves a request makes, after settling what earlier runs left.

use super::*;

impl ReshardActivities {
    pub(super) async fn plan(&self, input: &PlanInput) -> Result<Vec<BucketMove>, ActivityError> {
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
            return Err(ActivityError::application(ApplicationFailure::new(
                format!(
                    "shard {} must answer before the moves that involve it can be planned: {down}",
                    down.shard
                ),
            )));
        }
        Ok(moves)
    }
}
