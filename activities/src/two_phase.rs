//! The two-phase commit's participants: one activity per phase, run once per shard.
//!
//! The PlaceOrder workflow is the coordinator and its history is the coordinator's log:
//! it prepares every shard's part, records its decision, then commits (or rolls back) every
//! part, retrying until each is done. Each activity is safe to run again at any point:
//! - `PreparePart` returns at once if its gid is already prepared; otherwise it claims the
//!   part's idempotency key inside the transaction it prepares. A duplicate attempt running
//!   meanwhile waits on that key until the shard's `lock_timeout` (5 s, see
//!   [`crate::shards`]) fails it; its retry then finds the part prepared or committed.
//! - `CommitPart` commits the prepared gid, or finds the part's key committed: already done.
//! - `RollbackPart` rolls the gid back if prepared, then tombstones the key, so an attempt
//!   of `PreparePart` still in flight cannot prepare the part afterwards.

use std::sync::Arc;

use sea_orm::{ConnectionTrait, DbErr, TransactionTrait};
use serde::{Deserialize, Serialize};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use crate::failpoints;
use crate::failure::{Rejection, non_retryable};
use crate::order_cache::OrderCache;
use crate::order_input::ValidOrder;
use crate::shards::{Shard, Shards};
use crate::stock::{StockLine, stock_rejection, wanted};
use crate::store::idempotency::{self, Claim};
use crate::store::{credit, customers, inventory, orders, two_phase};

/// Failure type of a rollback that found its part already committed.
pub const PART_ALREADY_COMMITTED: &str = "PartAlreadyCommitted";

/// One shard's part of a two-phase order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TwoPhasePart {
    /// The prepared transaction's id (see [`two_phase::gid`]).
    pub gid: String,
    /// `<workflow key>/two-phase/shard-<n>`.
    pub idempotency_key: String,
    pub shard: usize,
    pub order_id: i64,
    /// On the customer's shard: the order, written `confirmed`, with its total held on the
    /// customer's credit.
    pub order: Option<ValidOrder>,
    /// The order's products this shard stocks.
    pub stock: Vec<StockLine>,
}

/// The two-phase activities' shared state.
pub struct TwoPhaseActivities {
    shards: Shards,
    cache: Arc<OrderCache>,
}

impl TwoPhaseActivities {
    pub fn new(shards: Shards, cache: Arc<OrderCache>) -> Self {
        Self { shards, cache }
    }
}

/// Writes the part's rows inside `txn`; a rejection means nothing may be kept.
async fn write_part(
    txn: &impl ConnectionTrait,
    shard: &Shard,
    part: &TwoPhasePart,
) -> Result<Option<Rejection>, DbErr> {
    if let Some(order) = &part.order {
        if customers::find(txn, order.customer_id).await?.is_none() {
            return Ok(Some(Rejection::UnknownCustomer {
                customer_id: order.customer_id,
                shard: shard.index,
            }));
        }
        orders::create_confirmed_with_id(txn, order, part.order_id).await?;
        let total = order.total();
        match credit::reserve(txn, part.order_id, order.customer_id, total).await? {
            credit::Reserve::Reserved | credit::Reserve::AlreadyHeld => {}
            credit::Reserve::Declined { available } => {
                return Ok(Some(Rejection::PaymentDeclined {
                    customer_id: order.customer_id,
                    total,
                    available,
                }));
            }
            credit::Reserve::UnknownCustomer => {
                return Ok(Some(Rejection::UnknownCustomer {
                    customer_id: order.customer_id,
                    shard: shard.index,
                }));
            }
            credit::Reserve::AlreadyReleased => {
                return Ok(Some(Rejection::AlreadyCompensated {
                    step: "PreparePart",
                    what: format!("the credit hold of order {}", part.order_id),
                }));
            }
        }
    }
    if part.stock.is_empty() {
        return Ok(None);
    }
    let outcome = inventory::reserve(txn, part.order_id, &wanted(&part.stock)).await?;
    Ok(stock_rejection(outcome))
}

#[activities]
impl TwoPhaseActivities {
    /// Phase one: writes this shard's part and prepares it under the part's gid.
    #[activity(name = "PreparePart")]
    pub async fn prepare_part(
        self: Arc<Self>,
        _ctx: ActivityContext,
        part: TwoPhasePart,
    ) -> Result<(), ActivityError> {
        let shard = self.shards.get(part.shard);
        let on = |e| shard.error(e);
        if two_phase::is_prepared(&shard.conn, &part.gid)
            .await
            .map_err(on)?
        {
            tracing::info!(gid = %part.gid, "part already prepared");
            return Ok(());
        }
        let txn = shard.conn.begin().await.map_err(on)?;
        match idempotency::claim(&txn, &part.idempotency_key)
            .await
            .map_err(on)?
        {
            Claim::Done(_) => {
                tracing::info!(gid = %part.gid, "part already committed");
                return Ok(());
            }
            Claim::Compensated => {
                return Err(Rejection::AlreadyCompensated {
                    step: "PreparePart",
                    what: part.gid.clone(),
                }
                .into_activity_error());
            }
            Claim::New => {}
        }
        if let Some(rejection) = write_part(&txn, shard, &part).await.map_err(on)? {
            txn.rollback().await.map_err(on)?;
            return Err(rejection.into_activity_error());
        }
        idempotency::record_result(
            &txn,
            &part.idempotency_key,
            &serde_json::json!({ "gid": part.gid }),
        )
        .await
        .map_err(on)?;
        two_phase::prepare(txn, &part.gid).await.map_err(on)?;
        failpoints::hit("prepare_part.after_prepare").await?;
        tracing::info!(gid = %part.gid, order_id = part.order_id, "part prepared");
        Ok(())
    }

    /// Phase two, commit: makes the part visible. Retried until it succeeds.
    #[activity(name = "CommitPart")]
    pub async fn commit_part(
        self: Arc<Self>,
        _ctx: ActivityContext,
        part: TwoPhasePart,
    ) -> Result<(), ActivityError> {
        failpoints::hit("commit_part.before").await?;
        let shard = self.shards.get(part.shard);
        let on = |e| shard.error(e);
        if two_phase::is_prepared(&shard.conn, &part.gid)
            .await
            .map_err(on)?
        {
            if let Err(e) = two_phase::commit_prepared(&shard.conn, &part.gid).await {
                // Someone else (a duplicate attempt, `orders recover`) may have just done it.
                if !committed(shard, &part).await? {
                    return Err(on(e).into());
                }
            }
            tracing::info!(gid = %part.gid, order_id = part.order_id, "part committed");
        } else if !committed(shard, &part).await? {
            return Err(Rejection::PreparedPartMissing {
                gid: part.gid.clone(),
                shard: shard.index,
            }
            .into_activity_error());
        }
        if part.order.is_some() {
            self.cache.invalidate(part.order_id).await;
        }
        Ok(())
    }

    /// Phase two, rollback: discards the part, prepared or not, and keeps it discarded.
    #[activity(name = "RollbackPart")]
    pub async fn rollback_part(
        self: Arc<Self>,
        _ctx: ActivityContext,
        part: TwoPhasePart,
    ) -> Result<(), ActivityError> {
        let shard = self.shards.get(part.shard);
        let on = |e| shard.error(e);
        if two_phase::is_prepared(&shard.conn, &part.gid)
            .await
            .map_err(on)?
        {
            if let Err(e) = two_phase::rollback_prepared(&shard.conn, &part.gid).await
                && two_phase::is_prepared(&shard.conn, &part.gid)
                    .await
                    .map_err(on)?
            {
                return Err(on(e).into());
            }
            tracing::info!(gid = %part.gid, "part rolled back");
        }
        let txn = shard.conn.begin().await.map_err(on)?;
        let stored = idempotency::mark_compensated(&txn, &part.idempotency_key)
            .await
            .map_err(on)?;
        if stored.is_some() {
            // Only a committed part leaves its result visible: it cannot be rolled back.
            txn.rollback().await.map_err(on)?;
            let message = format!(
                "part {} on shard {} was already committed; it cannot be rolled back",
                part.gid, shard.index
            );
            tracing::error!(%message);
            return Err(ActivityError::application(non_retryable(
                PART_ALREADY_COMMITTED,
                message,
            )));
        }
        txn.commit().await.map_err(on)?;
        Ok(())
    }
}

/// Whether the part's transaction committed: its key is there with a result.
async fn committed(shard: &Shard, part: &TwoPhasePart) -> Result<bool, ActivityError> {
    let found = idempotency::lookup(&shard.conn, &part.idempotency_key)
        .await
        .map_err(|e| shard.error(e))?;
    Ok(matches!(found, Some(Claim::Done(_))))
}
