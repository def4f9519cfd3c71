//! Which bucket an id belongs to, and how ids stay unique across shards.
//!
//! Every customer belongs to one of [`BUCKETS`] virtual buckets, and a versioned
//! [`ShardMap`](crate::shard_map::ShardMap) says which shard owns each bucket. A customer's
//! orders live in the customer's bucket, so they move with the customer when a bucket moves.
//!
//! The bucket is the id's remainder modulo [`BUCKETS`]. Ids this project allocates are
//! `sequence_value * BUCKETS + bucket`, with the bucket chosen among those the writing shard
//! owns, so an id names its bucket, and through the map its shard, with no lookup table.
//! An order id carries its customer's bucket, so `orders get ID` finds the order by id alone.
//! Externally chosen customer ids (sequential, as most systems issue them) spread evenly
//! over the buckets by the same rule.

/// How many buckets there are. Fixed for the life of a deployment: it bounds the number of
/// shards, and changing it would re-bucket every id.
pub const BUCKETS: u16 = 1024;

/// Ids are spaced [`BUCKETS`] apart; the remainder is the bucket.
pub const ID_STRIDE: i64 = BUCKETS as i64;

/// The bucket of a customer id, or of an order id (which carries its customer's bucket).
pub fn bucket_of(id: i64) -> u16 {
    id.rem_euclid(ID_STRIDE) as u16
}

/// Builds the id whose sequence part is `sequence_value` and whose bucket is `bucket`.
pub fn tagged_id(sequence_value: i64, bucket: u16) -> i64 {
    debug_assert!(bucket < BUCKETS);
    sequence_value * ID_STRIDE + i64::from(bucket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tagged_id_names_its_bucket() {
        for bucket in [0, 1, 511, BUCKETS - 1] {
            for seq in [1, 2, 77, 1_000_000] {
                assert_eq!(bucket_of(tagged_id(seq, bucket)), bucket);
            }
        }
    }

    #[test]
    fn ids_in_different_buckets_never_collide() {
        let mut seen = std::collections::HashSet::new();
        for bucket in 0..8 {
            for seq in 1..1000 {
                assert!(seen.insert(tagged_id(seq, bucket)));
            }
        }
    }

    #[test]
    fn sequential_external_ids_fill_every_bucket_equally() {
        let mut per_bucket = vec![0usize; usize::from(BUCKETS)];
        for id in 1..=i64::from(BUCKETS) * 10 {
            per_bucket[usize::from(bucket_of(id))] += 1;
        }
        assert!(per_bucket.iter().all(|&n| n == 10));
    }

    #[test]
    fn negative_ids_still_land_in_a_bucket() {
        assert!(bucket_of(-5) < BUCKETS);
    }
}
