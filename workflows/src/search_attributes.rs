//! Search attributes PlaceOrder keeps up to date, so users find orders in the Web UI and with
//! `temporal workflow list --query 'CustomerId=42'`.
//!
//! The namespace must know them before a workflow sets them, or the server rejects the
//! workflow task: the worker registers missing ones at start where the server allows it,
//! and otherwise refuses to start, listing the
//! `temporal operator search-attribute create --name CustomerId --type Int` commands (one for
//! each entry of [`REGISTRATION`]).

use temporalio_common::protos::temporal::api::enums::v1::IndexedValueType;
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

/// Name and Temporal type of every attribute above.
pub const REGISTRATION: [(&str, IndexedValueType); 5] = [
    ("CustomerId", IndexedValueType::Int),
    ("OrderStatus", IndexedValueType::Keyword),
    ("Shard", IndexedValueType::Int),
    ("Consistency", IndexedValueType::Keyword),
    ("OrderId", IndexedValueType::Int),
];

/// A type as the `temporal` CLI spells it (`--type Int`).
pub fn cli_type_name(kind: IndexedValueType) -> &'static str {
    match kind {
        IndexedValueType::Text => "Text",
        IndexedValueType::Keyword => "Keyword",
        IndexedValueType::Int => "Int",
        IndexedValueType::Double => "Double",
        IndexedValueType::Bool => "Bool",
        IndexedValueType::Datetime => "Datetime",
        IndexedValueType::KeywordList => "KeywordList",
        IndexedValueType::Unspecified => "Unspecified",
    }
}
