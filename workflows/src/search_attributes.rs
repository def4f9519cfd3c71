//! Search attributes PlaceOrder keeps up to date, so users find orders in the Web UI and with
//! `temporal workflow list --query 'CustomerId=42'`.
//!
//! The namespace must know them before a workflow sets them: `orders dev` and the test
//! harness register them; on another server run, once per namespace:
//! `temporal operator search-attribute create --name CustomerId --type Int` (and so on for
//! each entry of [`REGISTRATION`]).

use temporalio_common::search_attributes::SearchAttributeKey;

/// The customer the order is for.
pub const CUSTOMER_ID: SearchAttributeKey<i64> = SearchAttributeKey::int("CustomerId");
/// Where the order is: pending, confirmed, failed or cancelled.
pub const ORDER_STATUS: SearchAttributeKey<String> = SearchAttributeKey::keyword("OrderStatus");
/// The shard holding the order.
pub const SHARD: SearchAttributeKey<i64> = SearchAttributeKey::int("Shard");
/// The consistency mode (`saga` or `two_phase`).
pub const CONSISTENCY: SearchAttributeKey<String> = SearchAttributeKey::keyword("Consistency");
/// The order's id, once taken: how `orders cancel ORDER_ID` finds a pending order's workflow.
pub const ORDER_ID: SearchAttributeKey<i64> = SearchAttributeKey::int("OrderId");

/// Name and Temporal type of every attribute, as `temporal` CLI flags want them.
pub const REGISTRATION: [(&str, &str); 5] = [
    ("CustomerId", "Int"),
    ("OrderStatus", "Keyword"),
    ("Shard", "Int"),
    ("Consistency", "Keyword"),
    ("OrderId", "Int"),
];
