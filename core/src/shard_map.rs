//! The versioned map from buckets to shards.
//!
//! Routing a customer is two steps: id → bucket ([`crate::routing::bucket_of`], fixed
//! forever) and bucket → shard (this map, which changes only when buckets are moved). Growing
//! from N to N+1 shards hands the new shard its fair share of buckets, taken from the fullest
//! shards, so about 1/(N+1) of the customers move instead of the N/(N+1) that
//! `customer_id % shard_count` would move.
//!
//! Each version is stored on every shard (table `shard_map`, see
//! [`crate::store::shard_map`]); a worker reads the highest version any reachable shard holds
//! at start and again every `ORDERS_SHARD_MAP_REFRESH_SECS`.

use crate::routing::{BUCKETS, bucket_of};

/// Which shard owns each bucket, at one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    version: i32,
    /// `owners[bucket]` is the 0-based index of the shard that owns `bucket`.
    owners: Vec<u16>,
}

/// Why a stored map cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidShardMap {
    #[error("shard map v{version} has {found} buckets, expected {BUCKETS}")]
    WrongBucketCount { version: i32, found: usize },
    #[error(
        "shard map v{version} routes to {map_shards} shards but {configured} shard URLs are configured; set ORDERS_SHARDS to the map's shards, in order (a shard is removed only after `orders reshard --to N` drained it)"
    )]
    ShardCountMismatch {
        version: i32,
        map_shards: usize,
        configured: usize,
    },
}

impl ShardMap {
    /// Version 0 for `shard_count` shards: [`Self::initial`] before it is stored anywhere. A
    /// worker routes by it until it reads a stored version, which always supersedes it.
    pub fn unstored(shard_count: usize) -> Self {
        Self {
            version: 0,
            ..Self::initial(shard_count)
        }
    }

    /// Version 1 for `shard_count` shards: bucket `b` on shard `b % shard_count`, which keeps
    /// the article's modulo layout for the ids a fresh deployment hands out.
    pub fn initial(shard_count: usize) -> Self {
        assert!(
            (1..=usize::from(BUCKETS)).contains(&shard_count),
            "between 1 and {BUCKETS} shards are supported"
        );
        Self {
            version: 1,
            owners: (0..BUCKETS)
                .map(|b| (usize::from(b) % shard_count) as u16)
                .collect(),
        }
    }

    /// A map read back from storage, checked against the configured number of shards: it
    /// may route to fewer shards than are configured (a shard just added owns nothing until
    /// `orders reshard` moves buckets onto it; a drained one owns nothing any more), never to
    /// more.
    pub fn from_stored(
        version: i32,
        owners: Vec<u16>,
        configured_shards: usize,
    ) -> Result<Self, InvalidShardMap> {
        if owners.len() != usize::from(BUCKETS) {
            return Err(InvalidShardMap::WrongBucketCount {
                version,
                found: owners.len(),
            });
        }
        let map = Self { version, owners };
        if map.shard_count() > configured_shards {
            return Err(InvalidShardMap::ShardCountMismatch {
                version,
                map_shards: map.shard_count(),
                configured: configured_shards,
            });
        }
        Ok(map)
    }

    /// The map's version; a higher version supersedes a lower one.
    pub fn version(&self) -> i32 {
        self.version
    }

    /// How many shards the map routes to (the highest owner index + 1).
    pub fn shard_count(&self) -> usize {
        self.owners.iter().max().map_or(0, |&s| usize::from(s) + 1)
    }

    /// The owner of every bucket, indexed by bucket.
    pub fn owners(&self) -> &[u16] {
        &self.owners
    }

    /// The shard that owns `bucket`.
    pub fn shard_of_bucket(&self, bucket: u16) -> usize {
        usize::from(self.owners[usize::from(bucket)])
    }

    /// The shard that owns the customer (or order) with `id`.
    pub fn shard_for(&self, id: i64) -> usize {
        self.shard_of_bucket(bucket_of(id))
    }

    /// The buckets `shard` owns, in ascending order.
    pub fn buckets_of(&self, shard: usize) -> Vec<u16> {
        (0..BUCKETS)
            .filter(|&b| self.shard_of_bucket(b) == shard)
            .collect()
    }

    /// The next version, spread over `shard_count` shards (at least as many as now): each
    /// shard below its fair share of buckets gets buckets from the shards above theirs, the
    /// fullest first, highest bucket first. Growing a balanced map therefore moves buckets only
    /// to the new shards, and a growth left half done (a cancelled reshard) is finished by
    /// moving only what is left.
    pub fn grown_to(&self, shard_count: usize) -> Self {
        let current = self.shard_count();
        assert!(
            shard_count >= current && shard_count <= usize::from(BUCKETS),
            "a map can grow from {current} shards to at most {BUCKETS}, not to {shard_count}"
        );
        let fair_share = |shard: usize| {
            let buckets = usize::from(BUCKETS);
            buckets / shard_count + usize::from(shard < buckets % shard_count)
        };
        let mut owned: Vec<Vec<u16>> = (0..shard_count).map(|s| self.buckets_of(s)).collect();
        let mut owners = self.owners.clone();
        for receiver in 0..shard_count {
            while owned[receiver].len() < fair_share(receiver) {
                let donor = (0..shard_count)
                    .filter(|&s| owned[s].len() > fair_share(s))
                    .max_by_key(|&s| (owned[s].len(), std::cmp::Reverse(s)))
                    .expect("a shard below its share means one above");
                let bucket = owned[donor].pop().expect("a donor owns buckets");
                owners[usize::from(bucket)] = receiver as u16;
                owned[receiver].push(bucket);
            }
        }
        Self {
            version: self.version + 1,
            owners,
        }
    }

    /// The next version without the shards from `shard_count` on: each of their buckets goes
    /// to the remaining shard holding the fewest (lowest index first), so the result stays
    /// balanced. No bucket moves between two remaining shards.
    pub fn shrunk_to(&self, shard_count: usize) -> Self {
        assert!(shard_count >= 1, "a map keeps at least one shard");
        let mut owned: Vec<usize> = (0..shard_count).map(|s| self.buckets_of(s).len()).collect();
        let mut owners = self.owners.clone();
        for bucket in 0..BUCKETS {
            if self.shard_of_bucket(bucket) >= shard_count {
                let receiver = (0..shard_count)
                    .min_by_key(|&s| (owned[s], s))
                    .expect("a map keeps at least one shard");
                owners[usize::from(bucket)] = receiver as u16;
                owned[receiver] += 1;
            }
        }
        Self {
            version: self.version + 1,
            owners,
        }
    }

    /// The next version, with `buckets` owned by `shard` and every other bucket unchanged.
    pub fn with_buckets_moved(&self, buckets: &[u16], shard: usize) -> Self {
        let mut owners = self.owners.clone();
        for &bucket in buckets {
            owners[usize::from(bucket)] = shard as u16;
        }
        Self {
            version: self.version + 1,
            owners,
        }
    }

    /// The buckets whose owner differs between `self` and `other`.
    pub fn moved_buckets(&self, other: &ShardMap) -> Vec<u16> {
        (0..BUCKETS)
            .filter(|&b| self.shard_of_bucket(b) != other.shard_of_bucket(b))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::tagged_id;

    /// What a deployment looks like after a while: customers allocated by the shards
    /// themselves (tagged ids, each shard round-robining over its buckets), plus a block of
    /// sequential ids imported from another system.
    fn realistic_customers(map: &ShardMap) -> Vec<i64> {
        let mut ids = Vec::new();
        for shard in 0..map.shard_count() {
            let buckets = map.buckets_of(shard);
            for seq in 1..=25_000i64 {
                ids.push(tagged_id(seq, buckets[seq as usize % buckets.len()]));
            }
        }
        ids.extend(5_000_000..5_050_000);
        ids
    }

    fn fraction_moved(
        ids: &[i64],
        route_before: impl Fn(i64) -> usize,
        route_after: impl Fn(i64) -> usize,
    ) -> f64 {
        let moved = ids
            .iter()
            .filter(|&&id| route_before(id) != route_after(id))
            .count();
        moved as f64 / ids.len() as f64
    }

    #[test]
    fn growing_from_n_to_n_plus_1_shards_moves_about_one_in_n_plus_1_customers() {
        for n in 1..=8 {
            let before = ShardMap::initial(n);
            let after = before.grown_to(n + 1);
            let ids = realistic_customers(&before);
            let moved = fraction_moved(&ids, |id| before.shard_for(id), |id| after.shard_for(id));
            let ideal = 1.0 / (n + 1) as f64;
            assert!(
                (moved - ideal).abs() < 0.02,
                "{n}→{} shards moved {:.3} of customers, ideal {ideal:.3}",
                n + 1,
                moved
            );
            // The article's modulo scheme, for contrast, moves most customers.
            let modulo = fraction_moved(
                &ids,
                |id| id.rem_euclid(n as i64) as usize,
                |id| id.rem_euclid(n as i64 + 1) as usize,
            );
            assert!(
                modulo > 0.45,
                "modulo moved only {modulo:.3} going {n}→{}",
                n + 1
            );
        }
    }

    #[test]
    fn a_grown_map_is_balanced_and_moves_buckets_only_to_the_new_shard() {
        let before = ShardMap::initial(4);
        let after = before.grown_to(5);
        assert_eq!(after.version(), 2);
        assert_eq!(after.shard_count(), 5);
        let sizes: Vec<usize> = (0..5).map(|s| after.buckets_of(s).len()).collect();
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
        let moved = before.moved_buckets(&after);
        assert_eq!(moved.len(), after.buckets_of(4).len());
        assert!(moved.iter().all(|&b| after.shard_of_bucket(b) == 4));
    }

    #[test]
    fn the_initial_map_keeps_the_modulo_layout() {
        let map = ShardMap::initial(4);
        for id in [1, 2, 3, 4, 1027, tagged_id(9, 6)] {
            assert_eq!(map.shard_for(id), (id % 1024 % 4) as usize);
        }
    }

    #[test]
    fn growing_a_half_grown_map_moves_only_what_is_left() {
        let four = ShardMap::initial(4);
        let planned = four.moved_buckets(&four.grown_to(5));
        // A reshard cancelled after moving the first 52 planned buckets.
        let half = four.with_buckets_moved(&planned[..52], 4);
        let rest = half.moved_buckets(&half.grown_to(5));
        assert_eq!(rest, planned[52..].to_vec());
    }

    #[test]
    fn shrinking_hands_the_drained_shards_buckets_to_the_others_evenly() {
        let five = ShardMap::initial(4).grown_to(5);
        let four = five.shrunk_to(4);
        assert_eq!(four.version(), five.version() + 1);
        assert_eq!(four.shard_count(), 4);
        let moved = five.moved_buckets(&four);
        assert_eq!(moved, five.buckets_of(4));
        let sizes: Vec<usize> = (0..4).map(|s| four.buckets_of(s).len()).collect();
        assert_eq!(sizes, vec![256; 4]);
    }

    #[test]
    fn a_map_may_route_to_fewer_shards_than_are_configured() {
        let owners = ShardMap::initial(4).owners().to_vec();
        let map = ShardMap::from_stored(2, owners, 5).expect("a new fifth shard owns nothing");
        assert!(map.buckets_of(4).is_empty());
    }

    #[test]
    fn a_stored_map_for_another_shard_count_is_refused() {
        let owners = ShardMap::initial(5).owners().to_vec();
        assert_eq!(
            ShardMap::from_stored(3, owners, 4),
            Err(InvalidShardMap::ShardCountMismatch {
                version: 3,
                map_shards: 5,
                configured: 4
            })
        );
    }
}
