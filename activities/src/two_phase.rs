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
use crate::failure::{Rejection, already_done, non_retryable};
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
        let claim = idempotency::claim(&txn, &part.idempotency_key)
            .await
            .map_err(on)?;
        if already_done(claim, "PreparePart", &part.gid)?.is_some() {
            tracing::info!(gid = %part.gid, "part already committed");
            return Ok(());
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
        if !commit_on(shard, &part.gid, &part.idempotency_key)
            .await
            .map_err(|e| shard.error(e))?
        {
            return Err(Rejection::PreparedPartMissing {
                gid: part.gid.clone(),
                shard: shard.index,
            }
            .into_activity_error());
        }
        tracing::info!(gid = %part.gid, order_id = part.order_id, "part committed");
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
        if !roll_back_on(shard, &part.gid, &part.idempotency_key)
            .await
            .map_err(|e| shard.error(e))?
        {
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
        tracing::info!(gid = %part.gid, "part rolled back");
        Ok(())
    }
}

/// Phase two's commit of one part (`gid`, whose idempotency key is `key`), for the workflow
/// and for `orders recover` alike: COMMIT PREPARED if it is prepared. Returns whether the part
/// is committed now; `false` means it is neither prepared nor committed (it was rolled back
/// outside its coordinator). Safe to run twice, and alongside another resolver.
pub(crate) async fn commit_on(shard: &Shard, gid: &str, key: &str) -> Result<bool, DbErr> {
    if !two_phase::is_prepared(&shard.conn, gid).await? {
        return key_committed(shard, key).await;
    }
    match two_phase::commit_prepared(&shard.conn, gid).await {
        Ok(()) => Ok(true),
        // Someone else (a duplicate attempt, `orders recover`) may have just done it.
        Err(e) if !key_committed(shard, key).await? => Err(e),
        Err(_) => Ok(true),
    }
}

/// Phase two's rollback of one part: ROLLBACK PREPARED if it is prepared, then a tombstone on
/// its key, so an attempt of `PreparePart` still in flight cannot prepare it again. Returns
/// `false`, changing nothing, if the part had committed.
pub(crate) async fn roll_back_on(shard: &Shard, gid: &str, key: &str) -> Result<bool, DbErr> {
    if two_phase::is_prepared(&shard.conn, gid).await?
        && let Err(e) = two_phase::rollback_prepared(&shard.conn, gid).await
        && two_phase::is_prepared(&shard.conn, gid).await?
    {
        return Err(e);
    }
    let txn = shard.conn.begin().await?;
    if idempotency::mark_compensated(&txn, key).await?.is_some() {
        // Only a committed part leaves its result visible.
        txn.rollback().await?;
        return Ok(false);
    }
    txn.commit().await?;
    Ok(true)
}

/// Whether the part whose key is `key` committed: the key is there with a result.
async fn key_committed(shard: &Shard, key: &str) -> Result<bool, DbErr> {
    let found = idempotency::lookup(&shard.conn, key).await?;
    Ok(matches!(found, Some(Claim::Done(_))))
}
