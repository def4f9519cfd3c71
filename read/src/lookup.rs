//! Finding an order by id alone, whichever shard holds it.

use futures::future::join_all;

use orders_core::shards::{ShardError, Shards};
use orders_core::store::orders::{self, OrderWithItems};

/// The order with `order_id` and the shard holding it.
///
/// The shard the id's bucket maps to is asked first, which is where the order lives unless
/// its bucket is being moved; if it is not there, the other shards are asked concurrently.
pub async fn find_order(
    shards: &Shards,
    order_id: i64,
) -> Result<Option<(usize, OrderWithItems)>, ShardError> {
    let home = shards.for_order(order_id);
    if let Some(order) = orders::find_with_items(&home.conn, order_id)
        .await
        .map_err(|e| home.error(e))?
    {
        return Ok(Some((home.index, order)));
    }
    let others = shards
        .iter()
        .filter(|s| s.index != home.index)
        .map(|shard| async move {
            orders::find_with_items(&shard.conn, order_id)
                .await
                .map(|found| found.map(|o| (shard.index, o)))
                .map_err(|e| shard.error(e))
        });
    for found in join_all(others).await {
        if let Some(hit) = found? {
            return Ok(Some(hit));
        }
    }
    Ok(None)
}
