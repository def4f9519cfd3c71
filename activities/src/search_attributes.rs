//! The search attributes the order workflows set, so users find orders in the Web UI and with
//! `temporal workflow list --query 'CustomerId=42'` (the workflows crate re-exports them and
//! registers them). They live here because an activity sets them too: `StartOrderLifecycle`
//! starts a lifecycle with its attributes already set.

use orders_entities::order::OrderStatus;
use temporalio_common::search_attributes::{SearchAttributeKey, SearchAttributeUpdate};

use crate::PlacedOrder;

/// The customer the order is for.
pub const CUSTOMER_ID: SearchAttributeKey<i64> = SearchAttributeKey::int("CustomerId");
/// Where the order is: pending, confirmed, failed or cancelled; then shipped, delivered.
pub const ORDER_STATUS: SearchAttributeKey<String> = SearchAttributeKey::keyword("OrderStatus");
/// The shard holding the order.
pub const SHARD: SearchAttributeKey<i64> = SearchAttributeKey::int("Shard");
/// The consistency mode (`saga` or `two_phase`).
pub const CONSISTENCY: SearchAttributeKey<String> = SearchAttributeKey::keyword("Consistency");
/// The order's id, once taken: how `orders cancel ORDER_ID` finds a pending order's workflow.
pub const ORDER_ID: SearchAttributeKey<i64> = SearchAttributeKey::int("OrderId");

/// An order status as `OrderStatus` spells it (`confirmed`, `shipped`, …).
pub fn status_name(status: OrderStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// What an order's lifecycle shows from its start: customer, shard, mode and status.
pub fn lifecycle_attributes(order: &PlacedOrder) -> Vec<SearchAttributeUpdate> {
    vec![
        CUSTOMER_ID.value_set(order.customer_id),
        SHARD.value_set(order.shard as i64),
        CONSISTENCY.value_set(order.consistency.as_str().to_owned()),
        ORDER_STATUS.value_set(status_name(order.status)),
    ]
}
