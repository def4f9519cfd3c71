//! The `orders` binary's library: the worker's wiring and the command line. `main.rs` only
//! parses the command line, sets up logging and calls [`cli::run`]; the integration tests use
//! the same functions.
//!
//! Start at [`cli`] (every command, one module per group, each owning its report),
//! [`worker`] (what `orders worker` runs: the Temporal worker, the read [`api`], the
//! [`deployment`] checks), [`client`] (how a client starts and follows orders, over the
//! connection `temporal_connection` opens: TLS, API keys) and [`config`] (every setting).

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod deployment;
mod temporal_connection;
pub mod worker;
