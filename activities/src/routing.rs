//! Which shard owns a customer, and how ids stay unique across shards.
//!
//! Routing is the article's modulo scheme over the customer id's *tag*: the low bits of every
//! id this project allocates name the shard that allocated it. Ids are
//! `sequence_value * ID_STRIDE + tag`, so two shards can never hand out the same id, and an
//! order id alone tells which shard created it.

/// Ids are spaced this far apart; the remainder is the allocating shard's tag.
/// It bounds the number of shards a deployment can ever have.
pub const ID_STRIDE: i64 = 1024;

/// The shard (0-based) that owns `customer_id` among `shard_count` shards.
///
/// Customers created by `orders customer add` carry their shard in their tag, so they route
/// back to where they were written. Externally chosen ids route by the same rule.
pub fn shard_for_customer(customer_id: i64, shard_count: usize) -> usize {
    assert!(shard_count > 0, "there must be at least one shard");
    let tag = customer_id.rem_euclid(ID_STRIDE) as usize;
    tag % shard_count
}

/// The shard that allocated `id` (see [`tagged_id`]).
pub fn allocating_shard(id: i64, shard_count: usize) -> usize {
    shard_for_customer(id, shard_count)
}

/// Builds the id whose sequence part is `sequence_value` and whose tag is `shard`.
pub fn tagged_id(sequence_value: i64, shard: usize) -> i64 {
    sequence_value * ID_STRIDE + shard as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_tagged_by_a_shard_routes_back_to_that_shard() {
        for shard in 0..4 {
            for seq in [1, 2, 77, 1_000_000] {
                assert_eq!(shard_for_customer(tagged_id(seq, shard), 4), shard);
            }
        }
    }

    #[test]
    fn ids_allocated_by_different_shards_never_collide() {
        let mut seen = std::collections::HashSet::new();
        for shard in 0..4 {
            for seq in 1..1000 {
                assert!(seen.insert(tagged_id(seq, shard)));
            }
        }
    }

    #[test]
    fn external_ids_spread_evenly_over_the_shards() {
        let mut per_shard = [0usize; 4];
        for id in 1..=4000 {
            per_shard[shard_for_customer(id, 4)] += 1;
        }
        assert_eq!(per_shard, [1000; 4]);
    }

    #[test]
    fn negative_ids_still_route_to_a_valid_shard() {
        assert!(shard_for_customer(-5, 4) < 4);
    }
}
