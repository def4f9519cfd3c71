//! `orders fill`: synthetic customers and orders at volume on every shard, for
//! `orders explain` and the benchmarks (the SQL is [`orders_core::store::synthetic`]).
//! Meant for development and load-test databases, not for production.

use futures::future::try_join_all;
use orders_core::Shards;
use orders_core::shards::{Shard, ShardError};
use orders_core::store::synthetic;

/// How much to make on each shard (`orders fill`'s flags).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Volume {
    #[arg(long, default_value_t = 1_000)]
    pub customers_per_shard: u32,
    #[arg(long, default_value_t = 100_000)]
    pub orders_per_shard: u32,
}

/// Fills every shard concurrently, then refreshes planner statistics.
pub async fn fill(shards: &Shards, volume: Volume) -> Result<(), ShardError> {
    let map = shards.map();
    try_join_all(shards.iter().map(|shard| {
        let buckets: Vec<i32> = map
            .buckets_of(shard.index)
            .into_iter()
            .map(i32::from)
            .collect();
        async move {
            fill_shard(shard, &buckets, volume)
                .await
                .map_err(|e| shard.error(e))
        }
    }))
    .await?;
    Ok(())
}

async fn fill_shard(shard: &Shard, buckets: &[i32], volume: Volume) -> Result<(), sea_orm::DbErr> {
    let customers =
        synthetic::make_customers(&shard.conn, buckets, volume.customers_per_shard).await?;
    tracing::info!(
        shard = shard.index,
        customers = customers.len(),
        "customers made; making orders"
    );
    synthetic::make_orders(&shard.conn, &customers, volume.orders_per_shard).await?;
    synthetic::analyze(&shard.conn).await?;
    tracing::info!(
        shard = shard.index,
        orders = volume.orders_per_shard,
        "shard filled"
    );
    Ok(())
}
