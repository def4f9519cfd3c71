//! `orders product add|get`: stock, on the shard that owns each product id.

use anyhow::{Context, ensure};
use futures::future::try_join_all;
use orders_core::Shards;
use orders_core::store::inventory::{self, Stock};

/// Sets product `id`'s stock on hand (creating the product), on the shard owning `id`.
pub async fn add(
    shards: &Shards,
    id: i64,
    name: Option<&str>,
    stock: i32,
) -> anyhow::Result<Stock> {
    ensure!(id > 0, "a product id must be positive, got {id}");
    ensure!(stock >= 0, "stock must not be negative, got {stock}");
    let put = async |shards: &Shards| {
        let shard = shards.for_product(id);
        inventory::put(&shard.conn, id, name, stock)
            .await
            .map_err(|e| shard.error(e))
    };
    shards.through_moves(put).await.with_context(|| {
        format!("cannot set product {id}'s stock to {stock} (it may not go below what is reserved)")
    })
}

/// Product `id`'s stock, from the shard owning it.
pub async fn get(shards: &Shards, id: i64) -> anyhow::Result<Option<Stock>> {
    let shard = shards.for_product(id);
    inventory::find(&shard.conn, id)
        .await
        .map_err(|e| shard.error(e))
        .with_context(|| format!("cannot read product {id}"))
}

/// The lowest product id above every stocked one: where new products can start.
pub async fn next_free_id(shards: &Shards) -> anyhow::Result<i64> {
    let highest = try_join_all(shards.iter().map(|shard| async move {
        inventory::highest_product_id(&shard.conn)
            .await
            .map_err(|e| shard.error(e))
    }))
    .await?;
    Ok(highest.into_iter().max().unwrap_or(0) + 1)
}
