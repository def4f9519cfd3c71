//! Finding an order by id alone, whichever shard holds it.
//!
//! An order id carries its bucket, so the shard the map gives that bucket holds the order;
//! the one exception is a bucket being moved (or a map not yet re-read after a move), and
//! then the shard asked knows it from its fence, which names the other shard of the move. A
//! lookup therefore asks one shard, and another only when a move says to: an order that does
//! not exist costs one shard, never every shard, and a shard that is down fails only the
//! lookups of orders homed on it.

use orders_core::routing::bucket_of;
use orders_core::shards::{Shard, ShardError, Shards};
use orders_core::store::fences::{self, FenceState};
use orders_core::store::orders::{self, OrderWithItems};

/// The order with `order_id` and the shard holding it.
pub async fn find_order(
    shards: &Shards,
    order_id: i64,
) -> Result<Option<(usize, OrderWithItems)>, ShardError> {
    let mut asked = Vec::new();
    let mut shard = shards.for_order(order_id);
    loop {
        if let Some(order) = orders::find_with_items(&shard.conn, order_id)
            .await
            .map_err(|e| shard.error(e))?
        {
            return Ok(Some((shard.index, order)));
        }
        asked.push(shard.index);
        match moved_to(shard, order_id).await? {
            Some(peer) if peer < shards.len() && !asked.contains(&peer) => {
                shard = shards.get(peer);
            }
            _ => return Ok(None),
        }
    }
}

/// The other shard of a move of `order_id`'s bucket that leaves `shard` without the order's
/// final rows: `moved` (it went there) or `incoming` (it is still there, being copied here).
/// While `shard` is the source of a move in progress, its rows are the order's.
async fn moved_to(shard: &Shard, order_id: i64) -> Result<Option<usize>, ShardError> {
    let bucket = bucket_of(order_id);
    let fences = fences::list(&shard.conn)
        .await
        .map_err(|e| shard.error(e))?;
    Ok(fences
        .into_iter()
        .find(|fence| fence.bucket == bucket)
        .filter(|fence| matches!(fence.state, FenceState::Moved | FenceState::Incoming))
        .map(|fence| fence.peer))
}
