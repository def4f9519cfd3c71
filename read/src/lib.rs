//! The read side: what the HTTP read API and the CLI show, never what an order step writes.
//!
//! - [`lookup`]: an order by id alone, from whichever shard holds it;
//! - [`pages`]: all orders (or one customer's) newest first, by keyset across every shard,
//!   and counts that name the shards that did not answer;
//! - [`cache`]: a bounded, time-limited cache of orders in front of [`lookup`], which the
//!   activities keep honest by dropping the orders they change.
//!
//! Reads never take locks an order step waits for, and a shard that is down fails only the
//! reads that need it, naming it.

pub mod cache;
pub mod lookup;
pub mod pages;

pub use cache::{CacheSettings, FoundOrder, OrderCache};
pub use lookup::find_order;
pub use pages::{ListError, ListedOrder, OrderPage, StatusCounts};
