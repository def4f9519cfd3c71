//! The saga's steps as Temporal activities, each safe to run more than once.
//!
//! Crash semantics: a worker can die after a step's transaction commits and before Temporal
//! records the completion; Temporal then runs the step again. Every step is written so the
//! second run changes nothing and returns what the first run returned:
//! - `CreateOrder` runs once per idempotency key `<workflow id>/<run id>/create-order`
//!   ([`idempotency::run_once`]): the key, the order and the result commit together;
//! - `ReserveCredit` / `ReleaseCredit` go through the order's credit hold row;
//! - `ConfirmOrder` is a conditional status change that reports the status either way;
//! - `DeleteOrder` (the compensation) tombstones the create key, then deletes by order id.

use std::sync::Arc;

use orders_entities::order::OrderStatus;
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, DbErr, TransactionTrait};
use serde::{Deserialize, Serialize};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use crate::stock::{StockPart, stock_plan};
use orders_core::failpoints;
use orders_core::failure::{Rejection, StepError};
use orders_core::metrics::{OrderMetrics, ShardTimer};
use orders_core::order_input::{Consistency, ValidOrder};
use orders_core::routing::bucket_of;
use orders_core::shards::{Shard, ShardError, Shards};
use orders_core::store::idempotency::{self, Once};
use orders_core::store::{credit, orders};
use orders_read::OrderCache;

/// Input of [`OrderActivities::create_order`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateOrderInput {
    /// Unique per workflow run and step; see the module docs.
    pub idempotency_key: String,
    pub order: ValidOrder,
    /// Also plan the order's stock parts, on the map that routed the order (the lean saga's
    /// CreateOrder does PlanOrder's work, one step fewer). Left out of the payload when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plan_stock: bool,
}

/// What `CreateOrder` wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedOrder {
    pub order_id: i64,
    pub customer_id: i64,
    pub shard: usize,
    pub total_amount: Decimal,
    /// The stock parts, when asked for ([`CreateOrderInput::plan_stock`]); stored with the
    /// step's result, so a retry or a replay follows the same plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stock: Option<Vec<StockPart>>,
}

/// Which order a compensation undoes: the create step's key and the customer routing it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderRef {
    pub idempotency_key: String,
    pub customer_id: i64,
}

/// Input of the credit steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreditInput {
    pub order_id: i64,
    pub customer_id: i64,
    pub amount: Decimal,
}

/// What `ConfirmOrder` found: the order, confirmed on its shard. (Results recorded before
/// this type existed also carry a `consistency`, which is ignored: the workflow knows.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmedOrder {
    pub order_id: i64,
    pub customer_id: i64,
    pub shard: usize,
    pub status: OrderStatus,
    pub total_amount: Decimal,
}

/// PlaceOrder's result, as documented in docs/contract.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacedOrder {
    pub order_id: i64,
    pub customer_id: i64,
    pub shard: usize,
    pub status: OrderStatus,
    pub total_amount: Decimal,
    /// How it was placed; absent (saga) in results recorded before two-phase commit existed.
    #[serde(default)]
    pub consistency: Consistency,
}

impl ConfirmedOrder {
    /// The workflow's result for this order, placed in `consistency` mode.
    pub fn placed(self, consistency: Consistency) -> PlacedOrder {
        PlacedOrder {
            order_id: self.order_id,
            customer_id: self.customer_id,
            shard: self.shard,
            status: self.status,
            total_amount: self.total_amount,
            consistency,
        }
    }
}

/// Input of [`OrderActivities::set_order_status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusChange {
    pub order_id: i64,
    pub customer_id: i64,
    /// The statuses the order may be in for the change to apply.
    pub from: Vec<OrderStatus>,
    pub to: OrderStatus,
}

/// The activities' shared state: a pool per shard, the metrics, and the order cache the
/// activities keep honest by dropping the orders they change.
pub struct OrderActivities {
    shards: Shards,
    metrics: Arc<OrderMetrics>,
    cache: Arc<OrderCache>,
}

impl OrderActivities {
    pub fn new(shards: Shards, metrics: Arc<OrderMetrics>, cache: Arc<OrderCache>) -> Self {
        Self {
            shards,
            metrics,
            cache,
        }
    }

    /// Starts timing `activity` on `shard` (see [`OrderMetrics::time`]).
    fn time(&self, shard: &Shard, activity: &'static str) -> ShardTimer<'_> {
        self.metrics.time(shard, activity)
    }
}

/// Tags a database error with its shard; it stays retryable.
fn on(shard: &Shard) -> impl Fn(DbErr) -> ShardError + '_ {
    move |e| shard.error(e)
}

#[activities]
impl OrderActivities {
    /// Inserts the order and its items (status `pending`) on the customer's shard, in one
    /// transaction with the step's idempotency key.
    #[activity(name = "CreateOrder")]
    pub async fn create_order(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: CreateOrderInput,
    ) -> Result<CreatedOrder, ActivityError> {
        let order = &input.order;
        let shard = self.shards.for_customer(order.customer_id);
        let _timer = self.time(shard, "CreateOrder");
        let key = &input.idempotency_key;
        let created = idempotency::run_once(&shard.conn, key, async |txn| {
            idempotency::assign_bucket(txn, key, bucket_of(order.customer_id)).await?;
            let Some(order_id) = orders::create_with_items(txn, order).await? else {
                return Err(StepError::from(Rejection::UnknownCustomer {
                    customer_id: order.customer_id,
                    shard: shard.index,
                }));
            };
            Ok(CreatedOrder {
                order_id,
                customer_id: order.customer_id,
                shard: shard.index,
                total_amount: order.total(),
                stock: input
                    .plan_stock
                    .then(|| stock_plan(&self.shards, &order.items)),
            })
        })
        .await
        .map_err(|e| e.on(shard))?;
        let created = match created {
            Once::AlreadyRan(created) => {
                tracing::info!(%key, "create_order already ran; returning its result");
                return Ok(created);
            }
            Once::Ran(created) => created,
        };
        failpoints::hit("create_order.after_commit").await?;
        tracing::info!(
            order_id = created.order_id,
            shard = shard.index,
            "order created (pending)"
        );
        Ok(created)
    }

    /// Compensation of `CreateOrder`: deletes the order and its items, and tombstones the
    /// create key so a late duplicate of the create cannot bring them back.
    #[activity(name = "DeleteOrder")]
    pub async fn delete_order(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: OrderRef,
    ) -> Result<(), ActivityError> {
        failpoints::hit("delete_order.before").await?;
        let shard = self.shards.for_customer(input.customer_id);
        let _timer = self.time(shard, "DeleteOrder");
        let txn = shard.conn.begin().await.map_err(on(shard))?;
        let created = idempotency::mark_compensated(&txn, &input.idempotency_key)
            .await
            .map_err(on(shard))?;
        idempotency::assign_bucket(&txn, &input.idempotency_key, bucket_of(input.customer_id))
            .await
            .map_err(on(shard))?;
        if let Some(created) = created {
            let created: CreatedOrder = serde_json::from_value(created)?;
            let deleted = orders::delete_with_items(&txn, created.order_id)
                .await
                .map_err(on(shard))?;
            txn.commit().await.map_err(on(shard))?;
            // After the commit: a read that starts now sees the order gone.
            self.cache.invalidate(created.order_id).await;
            failpoints::hit("delete_order.after_commit").await?;
            tracing::info!(
                order_id = created.order_id,
                shard = shard.index,
                deleted,
                "order deleted (compensation)"
            );
            return Ok(());
        }
        txn.commit().await.map_err(on(shard))?;
        Ok(())
    }

    /// Reserves the order total on the customer's credit, atomically; declined when
    /// `credit_used + total > credit_limit`.
    #[activity(name = "ReserveCredit")]
    pub async fn reserve_credit(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: CreditInput,
    ) -> Result<(), ActivityError> {
        failpoints::hit("reserve_credit.before").await?;
        let shard = self.shards.for_customer(input.customer_id);
        let _timer = self.time(shard, "ReserveCredit");
        let txn = shard.conn.begin().await.map_err(on(shard))?;
        if let Some(rejection) = hold_credit(&txn, shard, &input).await.map_err(on(shard))? {
            txn.rollback().await.map_err(on(shard))?;
            return Err(rejection.into_activity_error());
        }
        txn.commit().await.map_err(on(shard))?;
        tracing::info!(order_id = input.order_id, amount = %input.amount, "credit reserved");
        Ok(())
    }

    /// `ReserveCredit` and `ConfirmOrder` in one transaction on the customer's shard: the
    /// order is confirmed exactly when its total is held. Declined (`PaymentDeclined`, …)
    /// with nothing written; a retry after it committed finds both done and succeeds.
    /// Compensated by `ReleaseCredit`, like `ReserveCredit`.
    #[activity(name = "ReserveCreditAndConfirm")]
    pub async fn reserve_credit_and_confirm(
        self: Arc<Self>,
        _ctx: ActivityContext,
        created: CreatedOrder,
    ) -> Result<ConfirmedOrder, ActivityError> {
        failpoints::hit("reserve_credit.before").await?;
        let shard = self.shards.for_customer(created.customer_id);
        let _timer = self.time(shard, "ReserveCreditAndConfirm");
        let credit = CreditInput {
            order_id: created.order_id,
            customer_id: created.customer_id,
            amount: created.total_amount,
        };
        let txn = shard.conn.begin().await.map_err(on(shard))?;
        if let Some(rejection) = hold_credit(&txn, shard, &credit).await.map_err(on(shard))? {
            txn.rollback().await.map_err(on(shard))?;
            return Err(rejection.into_activity_error());
        }
        let status = orders::transition(
            &txn,
            created.order_id,
            &[OrderStatus::Pending],
            OrderStatus::Confirmed,
        )
        .await
        .map_err(on(shard))?;
        let confirmed = match confirmed(&created, status) {
            Ok(confirmed) => confirmed,
            Err(rejection) => {
                txn.rollback().await.map_err(on(shard))?;
                return Err(rejection.into_activity_error());
            }
        };
        txn.commit().await.map_err(on(shard))?;
        self.cache.invalidate(created.order_id).await;
        failpoints::hit("reserve_credit_and_confirm.after_commit").await?;
        tracing::info!(order_id = created.order_id, amount = %created.total_amount, "credit reserved, order confirmed");
        Ok(confirmed)
    }

    /// Compensation of `ReserveCredit`: gives the held credit back, at most once.
    #[activity(name = "ReleaseCredit")]
    pub async fn release_credit(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: CreditInput,
    ) -> Result<(), ActivityError> {
        let shard = self.shards.for_customer(input.customer_id);
        let _timer = self.time(shard, "ReleaseCredit");
        let txn = shard.conn.begin().await.map_err(on(shard))?;
        let outcome = credit::release(&txn, input.order_id, input.customer_id)
            .await
            .map_err(on(shard))?;
        txn.commit().await.map_err(on(shard))?;
        tracing::info!(
            order_id = input.order_id,
            ?outcome,
            "credit released (compensation)"
        );
        Ok(())
    }

    /// Moves the order from `pending` to `confirmed`.
    #[activity(name = "ConfirmOrder")]
    pub async fn confirm_order(
        self: Arc<Self>,
        _ctx: ActivityContext,
        created: CreatedOrder,
    ) -> Result<ConfirmedOrder, ActivityError> {
        let shard = self.shards.for_customer(created.customer_id);
        let _timer = self.time(shard, "ConfirmOrder");
        let status = orders::transition(
            &shard.conn,
            created.order_id,
            &[OrderStatus::Pending],
            OrderStatus::Confirmed,
        )
        .await
        .map_err(on(shard))?;
        self.cache.invalidate(created.order_id).await;
        confirmed(&created, status).map_err(Rejection::into_activity_error)
    }

    /// Moves an order to `to` if it is in one of `from`, bumping `updated_at`; a retry finds
    /// the order already moved and succeeds.
    #[activity(name = "SetOrderStatus")]
    pub async fn set_order_status(
        self: Arc<Self>,
        _ctx: ActivityContext,
        change: StatusChange,
    ) -> Result<OrderStatus, ActivityError> {
        let shard = self.shards.for_customer(change.customer_id);
        let _timer = self.time(shard, "SetOrderStatus");
        let status = orders::transition(&shard.conn, change.order_id, &change.from, change.to)
            .await
            .map_err(on(shard))?;
        self.cache.invalidate(change.order_id).await;
        match status {
            Some(status) if status == change.to => {
                tracing::info!(
                    order_id = change.order_id,
                    shard = shard.index,
                    ?status,
                    "order status changed"
                );
                Ok(status)
            }
            found => Err(Rejection::InvalidTransition {
                order_id: change.order_id,
                found,
                allowed: change.from,
            }
            .into_activity_error()),
        }
    }

    /// The order as it stands on its shard, for a lifecycle started by a client's first
    /// status change, which knows only the order id. Reads only, so safe to run again.
    ///
    /// An order placed before migration 16 records no consistency and is reported as a
    /// saga; such orders got their lifecycle from PlaceOrder, so they reach this only if that
    /// start failed.
    #[activity(name = "LoadPlacedOrder")]
    pub async fn load_placed_order(
        self: Arc<Self>,
        _ctx: ActivityContext,
        order_id: i64,
    ) -> Result<PlacedOrder, ActivityError> {
        let Some((shard, order)) = orders_read::find_order(&self.shards, order_id).await? else {
            return Err(Rejection::UnknownOrder { order_id }.into_activity_error());
        };
        let holder = self.shards.get(shard);
        if let Some(import_id) = orders::import_of(&holder.conn, order_id)
            .await
            .map_err(on(holder))?
        {
            return Err(Rejection::ImportedOrder {
                order_id,
                import_id,
            }
            .into_activity_error());
        }
        Ok(PlacedOrder {
            order_id,
            customer_id: order.customer_id,
            shard,
            status: order.status,
            total_amount: order.total_amount,
            consistency: order.consistency.unwrap_or_default(),
        })
    }
}

/// Holds `input`'s amount on the customer's credit inside `txn`, or says why not (the caller
/// rolls back then).
async fn hold_credit(
    txn: &impl ConnectionTrait,
    shard: &Shard,
    input: &CreditInput,
) -> Result<Option<Rejection>, DbErr> {
    let outcome = credit::reserve(txn, input.order_id, input.customer_id, input.amount).await?;
    Ok(match outcome {
        credit::Reserve::Reserved | credit::Reserve::AlreadyHeld => None,
        credit::Reserve::Declined { available } => Some(Rejection::PaymentDeclined {
            customer_id: input.customer_id,
            total: input.amount,
            available,
        }),
        credit::Reserve::UnknownCustomer => Some(Rejection::UnknownCustomer {
            customer_id: input.customer_id,
            shard: shard.index,
        }),
        credit::Reserve::AlreadyReleased => Some(Rejection::AlreadyCompensated {
            step: format!("ReserveCredit of order {}", input.order_id),
        }),
    })
}

/// The confirmed order, if the transition left `created` confirmed (now, or by an earlier
/// attempt).
fn confirmed(
    created: &CreatedOrder,
    status: Option<OrderStatus>,
) -> Result<ConfirmedOrder, Rejection> {
    match status {
        Some(OrderStatus::Confirmed) => Ok(ConfirmedOrder {
            order_id: created.order_id,
            customer_id: created.customer_id,
            shard: created.shard,
            status: OrderStatus::Confirmed,
            total_amount: created.total_amount,
        }),
        found => Err(Rejection::OrderNotPending {
            order_id: created.order_id,
            found,
        }),
    }
}
