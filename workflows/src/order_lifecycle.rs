//! `OrderLifecycle`: a confirmed order, alive until it is delivered or cancelled.
//!
//! PlaceOrder starts it (workflow id `order-<order id>`) once the order is confirmed and does
//! not wait for it. Order ids are unique within a deployment, and a deployment owns its
//! Temporal namespace, so the id finds the order's lifecycle from the order id alone. Clients move the order on with the `SetStatus` update;
//! its validator refuses transitions the order's lifecycle does not allow before anything is
//! written:
//!
//! ```text
//! confirmed ──► shipped ──► delivered
//!     └───────► cancelled (credit and stock returned)
//! ```

use orders_activities::stock::{OrderStockRef, StockActivities};
use orders_activities::{CreditInput, OrderActivities, PlacedOrder, StatusChange};
use orders_entities::order::OrderStatus;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{WorkflowContext, WorkflowContextView, WorkflowResult};

use crate::saga::forward_options;
use crate::search_attributes::ORDER_STATUS;
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

#[workflow]
#[derive(Default)]
pub struct OrderLifecycleWorkflow {
    order: Option<PlacedOrder>,
    /// A `SetStatus` update is running; another one is refused until it ends, so the
    /// validator always judges against the status the order really has.
    changing: bool,
}

#[workflow_methods]
impl OrderLifecycleWorkflow {
    #[init]
    fn new(_ctx: &WorkflowContextView, order: PlacedOrder) -> Self {
        Self {
            order: Some(order),
            changing: false,
        }
    }

    #[run(name = "OrderLifecycle")]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<PlacedOrder> {
        let order = ctx.state(|s| s.order.clone()).expect("set by init");
        // Started by `StartOrderLifecycle`, it carries them from its start (recorded in its
        // first event, so replay decides the same); started as a child, it sets them now.
        if ctx.search_attributes().get(&ORDER_STATUS).is_none() {
            ctx.upsert_search_attributes(lifecycle_attributes(&order));
        }
        ctx.wait_condition(|s| {
            s.order.as_ref().is_some_and(|o| {
                matches!(o.status, OrderStatus::Delivered | OrderStatus::Cancelled)
            })
        })
        .await?;
        let view = ctx.clone();
        ctx.wait_condition(move |_| view.all_handlers_finished())
            .await?;
        Ok(ctx.state(|s| s.order.clone()).expect("set by init"))
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
        let order = self.order.as_ref().ok_or("the order is not known yet")?;
        if self.changing {
            return Err(format!(
                "order {} is already changing status; retry in a moment",
                order.order_id
            )
            .into());
        }
        if allowed(order.status, *to) {
            Ok(())
        } else {
            Err(format!(
                "order {} is {}; it cannot become {} (allowed: confirmed → shipped → delivered, confirmed → cancelled)",
                order.order_id,
                status_name(order.status),
                status_name(*to)
            )
            .into())
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
    async fn change_status(
        ctx: &mut WorkflowContext<Self>,
        to: OrderStatus,
    ) -> Result<PlacedOrder, Box<dyn std::error::Error + Send + Sync>> {
        let order = ctx
            .state(|s| s.order.clone())
            .ok_or("the order is not known yet")?;
        let change = StatusChange {
            order_id: order.order_id,
            customer_id: order.customer_id,
            from: vec![order.status],
            to,
        };
        ctx.execute_activity(OrderActivities::set_order_status, change, forward_options())
            .await?;
        if to == OrderStatus::Cancelled {
            let credit = CreditInput {
                order_id: order.order_id,
                customer_id: order.customer_id,
                amount: order.total_amount,
            };
            ctx.execute_activity(OrderActivities::release_credit, credit, forward_options())
                .await?;
            // Stock exists since this patch; lifecycles recorded before it replay without.
            if ctx.patched(RELEASE_STOCK_PATCH) {
                let stock = OrderStockRef {
                    order_id: order.order_id,
                };
                ctx.execute_activity(
                    StockActivities::release_order_stock,
                    stock,
                    forward_options(),
                )
                .await?;
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
