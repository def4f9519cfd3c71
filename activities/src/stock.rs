//! Stock across shards: which shard each product of an order lives on, and the saga's steps
//! that reserve and release it there.
//!
//! An order touches its customer's shard and the shard of every product it names. The
//! routing happens in an activity ([`StockActivities::plan_order`]), never in workflow code:
//! the shard map can change while a workflow runs, and the plan recorded in history is what
//! every later step (and every replay) follows.
//!
//! `ReserveStock` runs once per idempotency key ([`idempotency::run_once`]): the key commits
//! with the holds, so a retry after a crash writes nothing again; `ReleaseStock` tombstones
//! that key first, so a late reserve cannot hold stock for an order already undone.

use std::collections::BTreeMap;
use std::sync::Arc;

use sea_orm::TransactionTrait;
use serde::{Deserialize, Serialize};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use orders_core::failpoints;
use orders_core::failure::{Rejection, StepError};
use orders_core::metrics::OrderMetrics;
use orders_core::order_input::OrderLine;
use orders_core::shards::{Shard, Shards};
use orders_core::store::idempotency::{self, Once};
use orders_core::store::inventory::{self, Wanted};
use orders_core::store::orders;
use orders_read::OrderCache;

/// A quantity of one product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLine {
    pub product_id: i64,
    pub quantity: i32,
}

/// The products of an order that one shard stocks, each once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockPart {
    pub shard: usize,
    pub lines: Vec<StockLine>,
}

/// Input of [`StockActivities::plan_order`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanInput {
    pub customer_id: i64,
    pub items: Vec<OrderLine>,
    /// Take an order id now (two-phase: every shard's part needs it before any commits).
    pub allocate_order_id: bool,
    /// `<workflow key>/plan`: a run that repeats the plan (a retry, a reset) gets the same id.
    #[serde(default)]
    pub idempotency_key: String,
    /// Read the newest shard map before planning: a two-phase order planning again because
    /// a bucket moved under its first plan must not plan on the old map a second time.
    /// Left out of the payload when false, so first plans record what they always did.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub newest_map: bool,
}

/// Where an order's writes go, fixed once and recorded in the workflow's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlan {
    pub customer_shard: usize,
    pub order_id: Option<i64>,
    /// One part per shard stocking some of the order's products, in shard order.
    pub stock: Vec<StockPart>,
}

/// Input of the saga's stock steps: one order's products on one shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StockInput {
    /// `<workflow key>/reserve-stock/shard-<n>`: shared by the reserve and its release.
    pub idempotency_key: String,
    pub order_id: i64,
    pub part: StockPart,
}

/// Input of [`StockActivities::release_order_stock`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderStockRef {
    pub order_id: i64,
}

/// Sums the quantities of each product (an order may name one product on several lines).
pub fn wanted(lines: &[StockLine]) -> Wanted {
    let mut wanted = BTreeMap::new();
    for line in lines {
        *wanted.entry(line.product_id).or_insert(0) += line.quantity;
    }
    wanted
}

/// An order's stock parts on the map in use: its products grouped by the shard stocking
/// them, one part per shard, in shard order.
pub(crate) fn stock_plan(shards: &Shards, items: &[OrderLine]) -> Vec<StockPart> {
    let lines = items.iter().map(|item| StockLine {
        product_id: item.product_id,
        quantity: item.quantity,
    });
    parts(shards, lines)
}

/// Groups `items` by the shard stocking each product, summing per product.
fn parts(shards: &Shards, items: impl IntoIterator<Item = StockLine>) -> Vec<StockPart> {
    let mut by_shard: BTreeMap<usize, Vec<StockLine>> = BTreeMap::new();
    for line in items {
        by_shard
            .entry(shards.for_product(line.product_id).index)
            .or_default()
            .push(line);
    }
    by_shard
        .into_iter()
        .map(|(shard, lines)| StockPart {
            shard,
            lines: wanted(&lines)
                .into_iter()
                .map(|(product_id, quantity)| StockLine {
                    product_id,
                    quantity,
                })
                .collect(),
        })
        .collect()
}

/// The rejection for an [`inventory::reserve`] that did not reserve.
pub(crate) fn stock_rejection(outcome: inventory::Reserve) -> Option<Rejection> {
    match outcome {
        inventory::Reserve::Reserved => None,
        inventory::Reserve::OutOfStock {
            product_id,
            requested,
            available,
        } => Some(Rejection::OutOfStock {
            product_id,
            requested,
            available,
        }),
        inventory::Reserve::UnknownProduct { product_id } => {
            Some(Rejection::UnknownProduct { product_id })
        }
    }
}

/// Takes an order id for `input`'s key, or returns the one taken before under it.
async fn allocate_once(shard: &Shard, input: &PlanInput) -> Result<i64, ActivityError> {
    orders::next_id_once::<StepError>(&shard.conn, &input.idempotency_key, input.customer_id)
        .await
        .map_err(|e| e.on(shard))
}

/// The stock activities' shared state.
pub struct StockActivities {
    shards: Shards,
    metrics: Arc<OrderMetrics>,
    cache: Arc<OrderCache>,
}

impl StockActivities {
    pub fn new(shards: Shards, metrics: Arc<OrderMetrics>, cache: Arc<OrderCache>) -> Self {
        Self {
            shards,
            metrics,
            cache,
        }
    }
}

impl StockActivities {
    /// The part's lines grouped by the shard owning each product under the map in use now,
    /// in shard order: the planned shard alone unless a bucket moved since the plan.
    fn owners_now(&self, part: &StockPart) -> Vec<(&Shard, Vec<StockLine>)> {
        parts(&self.shards, part.lines.iter().copied())
            .into_iter()
            .map(|now| (self.shards.get(now.shard), now.lines))
            .collect()
    }
}

#[activities]
impl StockActivities {
    /// Routes the order: its customer's shard, and its products grouped by the shard that
    /// stocks them. Takes an order id too when asked, once per idempotency key.
    #[activity(name = "PlanOrder")]
    pub async fn plan_order(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: PlanInput,
    ) -> Result<OrderPlan, ActivityError> {
        if input.newest_map
            && let Err(e) = self.shards.refresh_map().await
        {
            // The map in use is no worse than the first plan's: at most one more round.
            tracing::warn!(error = %e, "planning on the shard map in use");
        }
        let customer_shard = self.shards.for_customer(input.customer_id);
        let _timer = self.metrics.time(customer_shard, "PlanOrder");
        let order_id = if input.allocate_order_id {
            Some(allocate_once(customer_shard, &input).await?)
        } else {
            None
        };
        Ok(OrderPlan {
            customer_shard: customer_shard.index,
            order_id,
            stock: stock_plan(&self.shards, &input.items),
        })
    }

    /// Holds the part's products for the order on their shard; declined with `OutOfStock`
    /// or `UnknownProduct` (nothing written on that shard) when it cannot.
    ///
    /// Each product is held on the shard that owns it when the attempt runs, which is the
    /// planned one unless its bucket moved since: then the part is split, one transaction per
    /// owner, each under the part's key on that shard. A hold row is also its product's own
    /// proof (a repeat never holds it twice, a released one is never held again), so a part
    /// half written before a move is finished, not doubled, after it.
    #[activity(name = "ReserveStock")]
    pub async fn reserve_stock(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: StockInput,
    ) -> Result<(), ActivityError> {
        let key = &input.idempotency_key;
        for (shard, lines) in self.owners_now(&input.part) {
            let _timer = self.metrics.time(shard, "ReserveStock");
            let wanted = wanted(&lines);
            let reserved = idempotency::run_once(&shard.conn, key, async |txn| {
                let outcome = inventory::reserve(txn, input.order_id, &wanted).await?;
                match stock_rejection(outcome) {
                    Some(rejection) => Err(StepError::from(rejection)),
                    None => Ok(()),
                }
            })
            .await
            .map_err(|e| e.on(shard))?;
            if let Once::AlreadyRan(()) = reserved {
                tracing::info!(%key, shard = shard.index, "reserve_stock already ran");
                continue;
            }
            failpoints::hit("reserve_stock.after_commit").await?;
            tracing::info!(
                order_id = input.order_id,
                shard = shard.index,
                products = lines.len(),
                "stock reserved"
            );
        }
        Ok(())
    }

    /// Compensation of `ReserveStock`: tombstones its key, then gives back what the order
    /// holds, on the planned shard and on every shard owning one of the part's products now.
    #[activity(name = "ReleaseStock")]
    pub async fn release_stock(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: StockInput,
    ) -> Result<(), ActivityError> {
        let mut shards: Vec<&Shard> = self
            .owners_now(&input.part)
            .into_iter()
            .map(|(shard, _)| shard)
            .collect();
        if !shards.iter().any(|s| s.index == input.part.shard) {
            shards.push(self.shards.get(input.part.shard));
        }
        for shard in shards {
            let _timer = self.metrics.time(shard, "ReleaseStock");
            let on = |e| shard.error(e);
            let txn = shard.conn.begin().await.map_err(on)?;
            idempotency::mark_compensated(&txn, &input.idempotency_key)
                .await
                .map_err(on)?;
            let released = inventory::release(&txn, input.order_id, &[])
                .await
                .map_err(on)?;
            txn.commit().await.map_err(on)?;
            tracing::info!(
                order_id = input.order_id,
                shard = shard.index,
                ?released,
                "stock released (compensation)"
            );
        }
        Ok(())
    }

    /// Gives back the stock a placed order holds, on every shard: cancelling a confirmed
    /// order. Holds are found by order id, so this needs no routing (and stays right after
    /// the shard map changes), and each shard's release happens once however often this runs.
    ///
    /// A two-phase order is confirmed once its home part commits, just before its stock
    /// parts: a lifecycle started by a client in between must not miss their holds, so each
    /// shard's release first waits for whatever still locks the order's products.
    #[activity(name = "ReleaseOrderStock")]
    pub async fn release_order_stock(
        self: Arc<Self>,
        _ctx: ActivityContext,
        order: OrderStockRef,
    ) -> Result<(), ActivityError> {
        let ordered: Vec<i64> = orders_read::find_order(&self.shards, order.order_id)
            .await?
            .map(|(_, found)| found.items.iter().map(|item| item.product_id).collect())
            .unwrap_or_default();
        for shard in self.shards.iter() {
            let _timer = self.metrics.time(shard, "ReleaseOrderStock");
            let on = |e| shard.error(e);
            let txn = shard.conn.begin().await.map_err(on)?;
            let released = inventory::release(&txn, order.order_id, &ordered)
                .await
                .map_err(on)?;
            txn.commit().await.map_err(on)?;
            if !released.is_empty() {
                tracing::info!(
                    order_id = order.order_id,
                    shard = shard.index,
                    ?released,
                    "stock released (order cancelled)"
                );
            }
        }
        self.cache.invalidate(order.order_id).await;
        Ok(())
    }
}
