//! `orders customer add|update`: a customer created on, or changed on, the shard its id
//! routes to.

use anyhow::{Context, ensure};
use futures::future::try_join_all;
use orders_core::Shards;
use orders_core::order_input::{MAX_TOTAL, check_money};
use orders_core::store::customers::{self, NewCustomer};
use orders_entities::customer;

/// Creates `new` and returns it. Without an explicit id, the customer goes to the shard with
/// the fewest customers and gets an id in one of that shard's buckets.
pub async fn add(shards: &Shards, new: NewCustomer) -> anyhow::Result<customer::Model> {
    ensure!(!new.first_name.is_empty(), "a customer needs a name");
    ensure!(
        new.email.contains('@'),
        "email {:?} is not an email address",
        new.email
    );
    // credit_limit is NUMERIC(12,2), like an order total.
    check_money("credit limit", new.credit_limit, MAX_TOTAL)?;
    let insert = async |shards: &Shards| {
        let shard = match new.id {
            Some(id) => shards.for_customer(id),
            None => least_loaded(shards).await?,
        };
        customers::insert(&shard.conn, &shards.map().buckets_of(shard.index), &new)
            .await
            .map_err(|e| shard.error(e))
    };
    shards
        .through_moves(insert)
        .await
        .context("failed to add the customer")
}

/// The shard with the fewest customers among those owning buckets (a shard just added owns
/// none until `orders reshard` moves some onto it, and a drained one none any more).
async fn least_loaded(
    shards: &Shards,
) -> Result<&orders_core::shards::Shard, orders_core::shards::ShardError> {
    let map = shards.map();
    let owning = shards
        .iter()
        .filter(|shard| !map.buckets_of(shard.index).is_empty());
    let counts = try_join_all(owning.map(|shard| async move {
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

/// Changes `id`'s name and/or email (and the copies on their orders) and returns the
/// customer as it is now.
pub async fn update(
    shards: &Shards,
    id: i64,
    name: Option<&str>,
    email: Option<&str>,
) -> anyhow::Result<customer::Model> {
    ensure!(
        name.is_some() || email.is_some(),
        "nothing to change: pass --name and/or --email"
    );
    let shard = shards.for_customer(id);
    let Some(current) = customers::find(&shard.conn, id)
        .await
        .map_err(|e| shard.error(e))?
    else {
        anyhow::bail!(
            "customer {id} does not exist (it would live on shard {})",
            shard.index
        );
    };
    let (first_name, last_name) = match name {
        Some(name) => NewCustomer::split_name(name),
        None => (current.first_name.clone(), current.last_name.clone()),
    };
    ensure!(!first_name.is_empty(), "a customer needs a name");
    let email = email.unwrap_or(&current.email);
    ensure!(
        email.contains('@'),
        "email {email:?} is not an email address"
    );
    customers::update_contact(&shard.conn, id, &first_name, &last_name, email)
        .await
        .map_err(|e| shard.error(e))?;
    customers::find(&shard.conn, id)
        .await
        .map_err(|e| shard.error(e))?
        .context("the customer vanished during the update")
}
