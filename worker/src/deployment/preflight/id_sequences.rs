//! Every shard's id sequences must issue only values of its own class (see
//! [`orders_core::store::id_sequences`]): otherwise an order id taken on a bucket's old owner
//! by a worker on a stale map can be issued again by the new owner, and that order's insert
//! fails on the unique id for ever.

use futures::future::join_all;
use orders_core::store::id_sequences::{self, STRIDE};
use orders_core::store::shard_identity;
use orders_core::{Shard, Shards};
use sea_orm::DbErr;

use crate::deployment::Problem;

/// Checks every shard that answers and has an identity and sequences (without them the
/// schema check already asks for `orders migrate up`).
pub(super) async fn check(shards: &Shards) -> Vec<Problem> {
    join_all(shards.iter().map(|shard| async move {
        check_shard(shard).await.unwrap_or_else(|e| {
            tracing::debug!(shard = shard.index, error = %e, "id sequences not checked");
            None
        })
    }))
    .await
    .into_iter()
    .flatten()
    .collect()
}

async fn check_shard(shard: &Shard) -> Result<Option<Problem>, DbErr> {
    let Some(identity) = shard_identity::read(&shard.conn).await? else {
        return Ok(None);
    };
    let Some(states) = id_sequences::read(&shard.conn).await? else {
        return Ok(None);
    };
    let outside: Vec<String> = states
        .iter()
        .filter(|s| !s.is_in_class_of(identity.index))
        .map(|s| {
            format!(
                "{}: INCREMENT BY {}, next value {}",
                s.name, s.increment, s.next
            )
        })
        .collect();
    if outside.is_empty() {
        return Ok(None);
    }
    Ok(Some(Problem {
        what: format!(
            "shard {} ({}) has id sequences that can issue values another shard issues ({}; its own class is INCREMENT BY {STRIDE} with values ≡ {} mod {STRIDE}), so an order id taken on a bucket's old owner could be issued again by its new one",
            shard.index,
            shard.url,
            outside.join("; "),
            identity.index
        ),
        fix: "orders migrate up (with the same ORDERS_SHARDS as this worker; every shard must answer)".into(),
    }))
}
