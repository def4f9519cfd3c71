//! `orders customer add`: creating a customer on the shard its id routes to.

use anyhow::{Context, ensure};
use futures::future::try_join_all;
use orders_activities::Shards;
use orders_activities::order_input::{MAX_TOTAL, check_money};
use orders_activities::routing;
use orders_activities::store::customers::{self, NewCustomer};
use orders_entities::customer;

/// Creates `new` and returns it. Without an explicit id, the customer goes to the shard with
/// the fewest customers and gets an id tagged with that shard.
pub async fn add(shards: &Shards, new: NewCustomer) -> anyhow::Result<customer::Model> {
    ensure!(!new.first_name.is_empty(), "a customer needs a name");
    ensure!(
        new.email.contains('@'),
        "email {:?} is not an email address",
        new.email
    );
    // credit_limit is NUMERIC(12,2), like an order total.
    check_money("credit limit", new.credit_limit, MAX_TOTAL).map_err(anyhow::Error::msg)?;
    let shard = match new.id {
        Some(id) => shards.get(routing::shard_for_customer(id, shards.len())),
        None => least_loaded(shards).await?,
    };
    customers::insert(&shard.conn, shard.index, &new)
        .await
        .map_err(|e| shard.error(e))
        .context("failed to add the customer")
}

async fn least_loaded(shards: &Shards) -> anyhow::Result<&orders_activities::shards::Shard> {
    let counts = try_join_all(shards.iter().map(|shard| async move {
        customers::count(&shard.conn)
            .await
            .map(|n| (n, shard))
            .map_err(|e| shard.error(e))
    }))
    .await?;
    Ok(counts
        .into_iter()
        .min_by_key(|(n, shard)| (*n, shard.index))
        .map(|(_, s)| s)
        .expect("at least one shard"))
}
