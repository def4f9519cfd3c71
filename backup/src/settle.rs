//! What a restore point caught half-way, settled on the restored shards so they hold exactly
//! the orders that were whole at the point.
//!
//! - A two-phase part caught prepared commits if its order's round decided commit before the
//!   point: a decision key (written through the backup gate before any part commits) or a
//!   committed part of the round is on some restored shard. Otherwise it rolls back: the
//!   order decided after the point, or rolled back.
//! - A saga caught mid-flight (an order still `pending` that a saga wrote) is undone the way
//!   its compensations undo it: stock holds released on every shard, its credit released,
//!   the order and its items deleted.
//! - A stock hold whose order is not on its home shard is released.

use std::collections::{BTreeMap, BTreeSet};

use futures::future::try_join_all;
use orders_core::Shards;
use orders_core::shards::Shard;
use orders_core::store::idempotency::{self, Claim};
use orders_core::store::two_phase::{self, Gid, GidParts, part_key};
use orders_core::store::{credit, inventory, orders};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, TransactionTrait};

/// What [`settle`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settled {
    /// Prepared parts committed: their orders decided commit before the point.
    pub committed: Vec<String>,
    /// Prepared parts rolled back.
    pub rolled_back: Vec<String>,
    /// Sagas undone: the ids of orders that were still pending.
    pub sagas_undone: Vec<i64>,
    /// Orders whose stray stock holds were released (their order is not on its shard).
    pub stray_holds_released: Vec<i64>,
}

/// Settles every restored shard (see the module). Safe to run again.
pub async fn settle(shards: &Shards) -> Result<Settled, DbErr> {
    let mut settled = Settled::default();
    settle_prepared(shards, &mut settled).await?;
    undo_pending_sagas(shards, &mut settled).await?;
    release_stray_holds(shards, &mut settled).await?;
    Ok(settled)
}

/// One order's round, as its gids name it.
type Round = (String, String, u32);

fn round_of(parts: &GidParts) -> Round {
    (parts.workflow_id.clone(), parts.run_id.clone(), parts.round)
}

async fn settle_prepared(shards: &Shards, settled: &mut Settled) -> Result<(), DbErr> {
    let mut prepared: BTreeMap<Round, Vec<Gid>> = BTreeMap::new();
    for shard in shards.iter() {
        for found in two_phase::in_doubt(&shard.conn).await? {
            prepared
                .entry(round_of(found.gid.parts()))
                .or_default()
                .push(found.gid);
        }
    }
    for (round, gids) in prepared {
        let commit = decided_commit(shards, &round).await?;
        for gid in gids {
            let shard = shards.get(gid.parts().shard);
            if commit {
                two_phase::commit_prepared(&shard.resolver, &gid).await?;
                settled.committed.push(gid.to_string());
            } else {
                two_phase::rollback_prepared(&shard.resolver, &gid).await?;
                settled.rolled_back.push(gid.to_string());
            }
        }
    }
    Ok(())
}

/// Whether `round` decided commit before the point: its decision key, or one of its parts
/// committed, is on some shard.
async fn decided_commit(shards: &Shards, round: &Round) -> Result<bool, DbErr> {
    let (workflow_id, run_id, number) = round;
    let decision = two_phase::decision_key(workflow_id, run_id, *number);
    for shard in shards.iter() {
        let part = part_key(workflow_id, run_id, shard.index, *number);
        for key in [&decision, &part] {
            if matches!(
                idempotency::lookup(&shard.conn, key).await?,
                Some(Claim::Done(_))
            ) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

async fn undo_pending_sagas(shards: &Shards, settled: &mut Settled) -> Result<(), DbErr> {
    for shard in shards.iter() {
        let rows = shard
            .conn
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT id, customer_id FROM orders
                 WHERE status = 'pending' AND consistency = 'saga' ORDER BY id",
            ))
            .await?;
        for row in rows {
            let order_id: i64 = row.try_get("", "id")?;
            let customer_id: i64 = row.try_get("", "customer_id")?;
            release_stock_everywhere(shards, order_id).await?;
            let txn = shard.conn.begin().await?;
            credit::release(&txn, order_id, customer_id).await?;
            orders::delete_with_items(&txn, order_id).await?;
            txn.commit().await?;
            tracing::info!(
                order_id,
                shard = shard.index,
                "saga caught mid-flight undone"
            );
            settled.sagas_undone.push(order_id);
        }
    }
    Ok(())
}

async fn release_stock_everywhere(shards: &Shards, order_id: i64) -> Result<(), DbErr> {
    try_join_all(shards.iter().map(|shard| release_stock(shard, order_id))).await?;
    Ok(())
}

async fn release_stock(shard: &Shard, order_id: i64) -> Result<(), DbErr> {
    let txn = shard.conn.begin().await?;
    inventory::release(&txn, order_id, &[]).await?;
    txn.commit().await
}

async fn release_stray_holds(shards: &Shards, settled: &mut Settled) -> Result<(), DbErr> {
    let mut stray = BTreeSet::new();
    for shard in shards.iter() {
        let rows = shard
            .conn
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT DISTINCT order_id FROM stock_holds WHERE status = 'held'",
            ))
            .await?;
        let mut by_home: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
        for row in rows {
            let order_id: i64 = row.try_get("", "order_id")?;
            by_home
                .entry(shards.for_order(order_id).index)
                .or_default()
                .push(order_id);
        }
        for (home, ids) in by_home {
            let present = existing_orders(shards.get(home), &ids).await?;
            for order_id in ids.into_iter().filter(|id| !present.contains(id)) {
                release_stock(shard, order_id).await?;
                stray.insert(order_id);
            }
        }
    }
    settled.stray_holds_released = stray.into_iter().collect();
    Ok(())
}

async fn existing_orders(shard: &Shard, ids: &[i64]) -> Result<BTreeSet<i64>, DbErr> {
    let rows = shard
        .conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id FROM orders WHERE id = ANY($1)",
            [sea_orm::Value::from(ids.to_vec())],
        ))
        .await?;
    rows.iter().map(|row| row.try_get("", "id")).collect()
}
