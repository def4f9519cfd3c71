//! sea-orm entities for one order shard, matching the latest migration.
//!
//! These are plain models: behaviour lives in `orders-activities`, next to the SQL that uses
//! them. Every shard has the same tables.

pub mod credit_hold;
pub mod customer;
pub mod idempotency_key;
pub mod order;
pub mod order_item;
