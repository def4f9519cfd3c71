//! The `orders` binary's library: configuration, migrations across shards,
//! the Temporal worker and the client-side commands. `main.rs` only parses the command line
//! and calls [`cli::run`]; the integration tests use the same functions.
//!
//! Start at [`cli`] (every command and what it returns), [`worker`] (what `orders worker`
//! runs), [`client`] (how a client starts and follows orders) and [`config`] (every setting).

pub mod api;
pub mod audit;
pub mod cli;
pub mod client;
pub mod config;
pub mod customers;
#[cfg(feature = "dev")]
pub mod dev;
pub mod explain;
pub mod history_json;
pub mod import;
pub mod load;
pub mod migrate;
pub mod preflight;
pub mod products;
pub mod progress_bar;
pub mod replay;
pub mod shard_identity;
pub mod shard_report;
pub mod synthetic;
pub mod temporal_connection;
pub mod worker;
