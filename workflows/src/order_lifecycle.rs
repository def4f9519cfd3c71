//! `OrderLifecycle`: a placed order's status changes after confirmation, until it is
//! delivered or cancelled.
//!
//! Its workflow id is `order-<order id>`. Order ids are unique within a deployment, and a
//! deployment owns its Temporal namespace, so the id finds the order's lifecycle from the
//! order id alone. Clients move the order on with the `SetStatus` update, which refuses
//! transitions the order's lifecycle does not allow before anything is written (its
//! validator, or for the change that started the lifecycle, its handler once the order is
//! read):
//!
//! ```text
//! confirmed ──► shipped ──► delivered
//!     └───────► cancelled (credit and stock returned)
//! ```
//!
//! Since the `lazy-lifecycle` patch PlaceOrder no longer starts it: the first status change
//! does, with update-with-start (`orders set-status`, or any client: the input is
//! `{"order_id": N}`). Such a lifecycle reads the order from its shard first, the shard being
//! where an order's status lives, and runs its steps as local activities. An order nobody
//! ships or cancels then costs Temporal no second workflow, and its first change costs one
//! workflow task instead of a start, an empty first task and the change's own. A lifecycle
//! started on an order that is not confirmed or shipped (still pending, or already delivered
//! or cancelled) refuses the change and ends; a later change starts a new one. One started
//! on an id no shard holds, or on an imported order, refuses it and fails. Lifecycles that
//! PlaceOrder started with the confirmed order (before the patch) run as they did.

use orders_activities::stock::{OrderStockRef, StockActivities};
use orders_activities::{CreditInput, OrderActivities, PlacedOrder, StatusChange};
use orders_entities::order::OrderStatus;
use serde::{Deserialize, Serialize};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{WorkflowContext, WorkflowContextView, WorkflowResult};

use crate::failures::{describe, workflow_failure};
use crate::search_attributes::ORDER_STATUS;
use crate::steps::{Phase, Steps};
use orders_activities::search_attributes::{lifecycle_attributes, status_name};

/// Patch guarding the release of stock when an order is cancelled.
pub const RELEASE_STOCK_PATCH: &str = "release-stock";

/// The lifecycle workflow's id for an order.
pub fn workflow_id(order_id: i64) -> String {
    format!("order-{order_id}")
}

/// Whether an order may move from `from` to `to`.
pub fn allowed(from: OrderStatus, to: OrderStatus) -> bool {
    use OrderStatus::*;
    matches!(
        (from, to),
        (Confirmed, Shipped) | (Confirmed, Cancelled) | (Shipped, Delivered)
    )
}

/// What a lifecycle starts with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LifecycleInput {
    /// The confirmed order, from PlaceOrder (before the `lazy-lifecycle` patch).
    Placed(PlacedOrder),
    /// The order id alone, from a client's update-with-start: the order is read from its
    /// shard.
    ById { order_id: i64 },
}

/// Whether a refused change's `message` says the order is still pending: PlaceOrder has not
/// confirmed it yet (a client cancelling it should cancel PlaceOrder instead).
pub fn refused_as_pending(message: &str) -> bool {
    message.contains(&format!(" is {};", status_name(OrderStatus::Pending)))
}

/// Why a status change is refused, in the words the validator and the handler share.
fn refusal(order: &PlacedOrder, to: OrderStatus) -> String {
    format!(
        "order {} is {}; it cannot become {} (allowed: confirmed → shipped → delivered, confirmed → cancelled)",
        order.order_id,
        status_name(order.status),
        status_name(to)
    )
}

#[workflow]
#[derive(Default)]
pub struct OrderLifecycleWorkflow {
    order_id: i64,
    /// The order as it stands; `None` until a lifecycle started by id has read it.
    order: Option<PlacedOrder>,
    /// Why reading the order failed (no such order, an imported one): every change is
    /// refused with it.
    unreadable: Option<String>,
    /// Where its steps run: as activities for a lifecycle PlaceOrder started (so those
    /// histories replay), in the workflow task for one started by id.
    steps: Option<Steps>,
    /// A `SetStatus` update is running; another one is refused until it ends, so the
    /// validator always judges against the status the order really has.
    changing: bool,
}

#[workflow_methods]
impl OrderLifecycleWorkflow {
    #[init]
    fn new(_ctx: &WorkflowContextView, input: LifecycleInput) -> Self {
        match input {
            LifecycleInput::Placed(order) => Self {
                order_id: order.order_id,
                order: Some(order),
                steps: Some(Steps::Remote),
                ..Self::default()
            },
            LifecycleInput::ById { order_id } => Self {
                order_id,
                steps: Some(Steps::Local),
                ..Self::default()
            },
        }
    }

    #[run(name = "OrderLifecycle")]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<PlacedOrder> {
        let order = match ctx.state(|s| s.order.clone()) {
            Some(order) => {
                // Started by `StartOrderLifecycle`, it carries them from its start (recorded
                // in its first event, so replay decides the same); started as a child, it
                // sets them now.
                if ctx.search_attributes().get(&ORDER_STATUS).is_none() {
                    ctx.upsert_search_attributes(lifecycle_attributes(&order));
                }
                order
            }
            None => match Self::load(ctx).await {
                Ok(order) => order,
                Err(failure) => {
                    Self::let_handlers_finish(ctx).await?;
                    return Err(failure.into());
                }
            },
        };
        if matches!(order.status, OrderStatus::Confirmed | OrderStatus::Shipped) {
            ctx.wait_condition(|s| {
                s.order.as_ref().is_some_and(|o| {
                    matches!(o.status, OrderStatus::Delivered | OrderStatus::Cancelled)
                })
            })
            .await?;
        }
        Self::let_handlers_finish(ctx).await?;
        Ok(ctx.state(|s| s.order.clone()).expect("set by now"))
    }

    /// The order as it stands.
    #[query]
    pub fn order(&self, _ctx: &WorkflowContextView) -> Option<PlacedOrder> {
        self.order.clone()
    }

    #[update_validator(set_status)]
    fn validate_set_status(
        &self,
        _ctx: &WorkflowContextView,
        to: &OrderStatus,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if let Some(why) = &self.unreadable {
            return Err(why.clone().into());
        }
        if self.changing {
            return Err(format!(
                "order {} is already changing status; retry in a moment",
                self.order_id
            )
            .into());
        }
        // A lifecycle started by id judges once it has read the order (in the handler).
        match &self.order {
            Some(order) if !allowed(order.status, *to) => Err(refusal(order, *to).into()),
            _ => Ok(()),
        }
    }

    /// Moves the order to `to` in its shard; cancelling also gives the credit back.
    #[update(name = "SetStatus")]
    pub async fn set_status(
        ctx: &mut WorkflowContext<Self>,
        to: OrderStatus,
    ) -> Result<PlacedOrder, Box<dyn std::error::Error + Send + Sync>> {
        ctx.state_mut(|s| s.changing = true);
        let result = Self::change_status(ctx, to).await;
        ctx.state_mut(|s| s.changing = false);
        result
    }
}

impl OrderLifecycleWorkflow {
    /// Reads the order of a lifecycle started by id, and shows it in search attributes.
    async fn load(
        ctx: &mut WorkflowContext<Self>,
    ) -> Result<PlacedOrder, temporalio_sdk::ApplicationFailure> {
        let order_id = ctx.state(|s| s.order_id);
        let loaded = Steps::Local
            .run(
                ctx,
                OrderActivities::load_placed_order,
                order_id,
                Phase::Resolve,
            )
            .await;
        match loaded {
            Ok(order) => {
                ctx.upsert_search_attributes(lifecycle_attributes(&order));
                ctx.state_mut(|s| s.order = Some(order.clone()));
                Ok(order)
            }
            Err(err) => {
                let failure = workflow_failure(&err);
                ctx.state_mut(|s| s.unreadable = Some(failure.to_string()));
                Err(failure)
            }
        }
    }

    async fn let_handlers_finish(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<()> {
        let view = ctx.clone();
        ctx.wait_condition(move |_| view.all_handlers_finished())
            .await?;
        Ok(())
    }

    async fn change_status(
        ctx: &mut WorkflowContext<Self>,
        to: OrderStatus,
    ) -> Result<PlacedOrder, Box<dyn std::error::Error + Send + Sync>> {
        // Ends with the order read, its reading failed, or the lifecycle cancelled.
        let _ = ctx
            .wait_condition(|s| s.order.is_some() || s.unreadable.is_some())
            .await;
        let (order, unreadable, steps) = ctx.state(|s| {
            (
                s.order.clone(),
                s.unreadable.clone(),
                s.steps.unwrap_or(Steps::Remote),
            )
        });
        let Some(order) = order else {
            let order_id = ctx.state(|s| s.order_id);
            return Err(unreadable
                .unwrap_or_else(|| format!("order {order_id} could not be read; retry"))
                .into());
        };
        if !allowed(order.status, to) {
            return Err(refusal(&order, to).into());
        }
        let step = |err| describe(&err);
        let change = StatusChange {
            order_id: order.order_id,
            customer_id: order.customer_id,
            from: vec![order.status],
            to,
        };
        steps
            .run(
                ctx,
                OrderActivities::set_order_status,
                change,
                Phase::Forward,
            )
            .await
            .map_err(step)?;
        if to == OrderStatus::Cancelled {
            let credit = CreditInput {
                order_id: order.order_id,
                customer_id: order.customer_id,
                amount: order.total_amount,
            };
            steps
                .run(ctx, OrderActivities::release_credit, credit, Phase::Forward)
                .await
                .map_err(step)?;
            // Stock exists since this patch; lifecycles recorded before it replay without.
            if steps == Steps::Local || ctx.patched(RELEASE_STOCK_PATCH) {
                let stock = OrderStockRef {
                    order_id: order.order_id,
                };
                steps
                    .run(
                        ctx,
                        StockActivities::release_order_stock,
                        stock,
                        Phase::Forward,
                    )
                    .await
                    .map_err(step)?;
            }
        }
        ctx.upsert_search_attributes([ORDER_STATUS.value_set(status_name(to))]);
        Ok(ctx.state_mut(|s| {
            let order = s.order.as_mut().expect("checked above");
            order.status = to;
            order.clone()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    #[test]
    fn a_refusal_of_a_pending_order_says_so() {
        let order = PlacedOrder {
            order_id: 7,
            customer_id: 1,
            shard: 0,
            status: Pending,
            total_amount: rust_decimal::Decimal::ONE,
            consistency: Default::default(),
        };
        assert!(refused_as_pending(&refusal(&order, Cancelled)));
        let confirmed = PlacedOrder {
            status: Delivered,
            ..order
        };
        assert!(!refused_as_pending(&refusal(&confirmed, Cancelled)));
    }

    #[test]
    fn only_the_documented_transitions_are_allowed() {
        let all = [Pending, Confirmed, Shipped, Delivered, Cancelled];
        let permitted: Vec<_> = all
            .iter()
            .flat_map(|f| all.iter().map(move |t| (*f, *t)))
            .filter(|(f, t)| allowed(*f, *t))
            .collect();
        assert_eq!(
            permitted,
            [
                (Confirmed, Shipped),
                (Confirmed, Cancelled),
                (Shipped, Delivered)
            ]
        );
    }
}
