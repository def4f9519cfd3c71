//! What the order workflows do to the world: validated order input, shard routing, the SQL
//! that touches each shard, and the Temporal activities that wrap it.
//!
//! Read in this order: [`order_input`] (what a valid order is), [`routing`] (which shard owns
//! what), [`store`] (one function per statement or transaction), [`activities`] (retry-safe
//! steps the workflows call), [`failure`] (how rejections travel back to clients).

pub mod activities;
pub mod copy_text;
pub mod cross_shard;
pub mod failpoints;
pub mod failure;
pub mod import;
pub mod lookup;
pub mod metrics;
pub mod order_cache;
pub mod order_input;
pub mod recovery;
pub mod routing;
pub mod shard_map;
pub mod shards;
pub mod stock;
pub mod store;
pub mod two_phase;

pub use activities::{
    CreateOrderInput, CreatedOrder, CreditInput, OrderActivities, OrderRef, PlacedOrder,
    StatusChange,
};
pub use failure::Rejection;
pub use order_input::{Consistency, InvalidOrder, OrderLine, ValidOrder};
pub use shards::{ShardError, Shards};
