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
//! - A cancellation caught mid-flight (an order `cancelled` whose credit or stock is still
//!   held) gets its credit and stock back, as its lifecycle's next steps would give them.
//! - A stock hold whose order is not on its home shard is released.
//!
//! Only a bucket's owner under the restored shard map is settled: the rows a bucket move
//! left on its old shard (fenced `moved`) are not the order's.

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
    /// Cancelled orders whose credit or stock was still held, now given back.
    pub cancellations_finished: Vec<i64>,
    /// Orders whose stray stock holds were released (their order is not on its shard).
    pub stray_holds_released: Vec<i64>,
}

/// Settles every restored shard (see the module). Safe to run again.
pub async fn settle(shards: &Shards) -> Result<Settled, DbErr> {
    let mut settled = Settled::default();
    settle_prepared(shards, &mut settled).await?;
    undo_pending_sagas(shards, &mut settled).await?;
    finish_cancellations(shards, &mut settled).await?;
    release_stray_holds(shards, &mut settled).await?;
    Ok(settled)
}

/// One order's round, as its gids name it.
type Round = (String, String, u32);

fn round_of(parts: &GidParts) -> Round {
    (parts.workflow_id.clone(), parts.run_id.clone(), parts.round)
}

async fn settle_prepared(shards: &Shards, settled: &mut Settled) -> Result<(), DbErr> {
    let mut prepared: BTreeMap<Round, Vec<(usize, Gid)>> = BTreeMap::new();
    for shard in shards.iter() {
        for found in two_phase::in_doubt(&shard.conn).await? {
            prepared
                .entry(round_of(found.gid.parts()))
                .or_default()
                .push((shard.index, found.gid));
        }
    }
    for (round, gids) in prepared {
        let commit = decided_commit(shards, &round).await?;
        for (found_on, gid) in gids {
            let shard = shards.get(found_on);
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
    // A part tombstoned by a rollback (the workflow's, after finding the home part gone, or
    // recovery's) means the round was undone, whatever decision key was written before.
    for shard in shards.iter() {
        let part = part_key(workflow_id, run_id, shard.index, *number);
        if matches!(
            idempotency::lookup(&shard.conn, &part).await?,
            Some(Claim::Compensated)
        ) {
            return Ok(false);
        }
    }
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
    let pending = owned_orders(
        shards,
        "SELECT id, customer_id FROM orders
         WHERE status = 'pending' AND consistency = 'saga' ORDER BY id",
    )
    .await?;
    for (shard, order_id, customer_id) in pending {
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
    Ok(())
}

async fn finish_cancellations(shards: &Shards, settled: &mut Settled) -> Result<(), DbErr> {
    let cancelled = owned_orders(
        shards,
        "SELECT o.id, o.customer_id FROM orders o
         JOIN credit_holds c ON c.order_id = o.id
         WHERE o.status = 'cancelled' AND c.status = 'held' ORDER BY o.id",
    )
    .await?;
    for (shard, order_id, customer_id) in cancelled {
        let txn = shard.conn.begin().await?;
        credit::release(&txn, order_id, customer_id).await?;
        txn.commit().await?;
        release_stock_everywhere(shards, order_id).await?;
        tracing::info!(
            order_id,
            shard = shard.index,
            "cancellation caught mid-flight finished"
        );
        settled.cancellations_finished.push(order_id);
    }
    Ok(())
}

/// The orders (`id`, `customer_id`) `query` finds on each shard, with that shard, keeping
/// only those the shard owns under the restored map (not a moved bucket's old copy).
async fn owned_orders<'a>(
    shards: &'a Shards,
    query: &str,
) -> Result<Vec<(&'a Shard, i64, i64)>, DbErr> {
    let mut found = Vec::new();
    for shard in shards.iter() {
        let rows = shard
            .conn
            .query_all_raw(Statement::from_string(DbBackend::Postgres, query))
            .await?;
        for row in rows {
            let order_id: i64 = row.try_get("", "id")?;
            if shards.for_order(order_id).index == shard.index {
                found.push((shard, order_id, row.try_get("", "customer_id")?));
            }
        }
    }
    Ok(found)
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
                "SELECT DISTINCT order_id, product_id FROM stock_holds WHERE status = 'held'",
            ))
            .await?;
        let mut by_home: BTreeMap<usize, BTreeSet<i64>> = BTreeMap::new();
        for row in rows {
            let order_id: i64 = row.try_get("", "order_id")?;
            let product_id: i64 = row.try_get("", "product_id")?;
            if shards.for_product(product_id).index != shard.index {
                continue;
            }
            by_home
                .entry(shards.for_order(order_id).index)
                .or_default()
                .insert(order_id);
        }
        for (home, ids) in by_home {
            let ids: Vec<i64> = ids.into_iter().collect();
            let present = live_orders(shards.get(home), &ids).await?;
            for order_id in ids.into_iter().filter(|id| !present.contains(id)) {
                release_stock(shard, order_id).await?;
                stray.insert(order_id);
            }
        }
    }
    settled.stray_holds_released = stray.into_iter().collect();
    Ok(())
}

/// Which of `ids` are orders on `shard` that may hold stock: present, and not cancelled.
async fn live_orders(shard: &Shard, ids: &[i64]) -> Result<BTreeSet<i64>, DbErr> {
    let rows = shard
        .conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id FROM orders WHERE id = ANY($1) AND status <> 'cancelled'",
            [sea_orm::Value::from(ids.to_vec())],
        ))
        .await?;
    rows.iter().map(|row| row.try_get("", "id")).collect()
}
