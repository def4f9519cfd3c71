//! The SQL of one shard: each function runs one statement or one transaction, takes the
//! connection or transaction first, and returns `Result<_, DbErr>`. Routing and retries
//! happen above this layer.

pub mod audit;
pub mod batch;
pub mod connections;
pub mod credit;
pub mod customers;
pub mod idempotency;
pub mod inventory;
pub mod listing;
pub mod orders;
pub mod plans;
pub mod shard_map;
pub mod synthetic;
pub mod two_phase;
