//! The core of the order service: what an order is, where its rows live, and the SQL that
//! touches them. Every crate above `entities` builds on it (`migration` and `dev` stand
//! apart); it knows nothing of Temporal workflows.
//!
//! Read in this order: [`order_input`] (what a client sends and what a valid order is),
//! [`routing`], [`shard_map`] and [`shards`] (which shard owns what, and its connections),
//! [`store`] (one function per statement or transaction, the only place SQL lives, and
//! [`store::idempotency::run_once`], which makes a step retry-safe), [`failure`] (the failure
//! types clients see), then [`metrics`] and [`failpoints`] (how steps show themselves and how
//! tests crash them).

pub(crate) mod copy_text;
pub mod failpoints;
pub mod failure;
pub mod metrics;
pub mod order_input;
pub mod primary;
pub mod read_pools;
pub mod routing;
pub mod shard_map;
pub mod shard_url;
pub mod shards;
pub mod step_failures;
pub mod store;

pub use failure::{FailureType, Rejection};
pub use order_input::{
    Consistency, InvalidOrder, OrderLine, OrderRequest, RequestedItem, ValidOrder, WrittenPrice,
};
pub use shards::{Shard, ShardError, Shards};
