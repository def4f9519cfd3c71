//! What the order workflows do to the world: validated order input, shard routing, the SQL
//! that touches each shard, the Temporal activities that wrap it, and the read side.
//!
//! Read in this order: [`order_input`] (what a client sends and what a valid order is),
//! [`routing`] and [`shards`] (which shard owns what), [`store`] (one function per statement
//! or transaction, and [`store::idempotency::run_once`], which makes a step retry-safe),
//! [`activities`], [`stock`] and [`two_phase`] (the steps the workflows call),
//! [`failure`] (the failure types clients see), [`recovery`] (in-doubt two-phase parts),
//! [`read`] (lookups, pages and the cache behind the read API).

pub mod activities;
pub mod copy_text;
pub mod failpoints;
pub mod failure;
pub mod import;
pub mod lifecycle;
pub mod metrics;
pub mod order_input;
pub mod read;
pub mod recovery;
pub mod reshard;
pub mod retention;
pub mod routing;
pub mod search_attributes;
pub mod shard_map;
pub mod shards;
pub mod stock;
pub mod store;
pub mod two_phase;

pub use activities::{
    ConfirmedOrder, CreateOrderInput, CreatedOrder, CreditInput, OrderActivities, OrderRef,
    PlacedOrder, StatusChange,
};
pub use failure::{FailureType, Rejection};
pub use order_input::{
    Consistency, InvalidOrder, OrderLine, OrderRequest, RequestedItem, ValidOrder, WrittenPrice,
};
pub use shards::{Shard, ShardError, Shards};
