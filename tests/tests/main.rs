//! Integration tests against the real services: a Temporal dev server and four PostgreSQL
//! clusters, started once for this test binary by `helpers`, on free loopback ports.
//! Each test gets its own databases on every shard, its own task queue and its own
//! `orders worker` process.

mod helpers;
#[path = "../support/nested_cargo.rs"]
mod nested_cargo;

mod backup;
mod certificates;
mod chaos;
mod compose;
mod configuration;
mod consistency;
mod crash_recovery;
mod docs;
mod failover;
mod id_sequences;
mod import;
mod in_doubt;
mod lifecycle;
mod listing;
mod load_process;
mod metrics;
mod migrations;
mod observability;
mod order_cache;
mod outage_rates;
mod preflight;
mod query_plans;
mod read_api;
mod replay;
mod reshard_faults;
mod resharding;
mod retention;
mod retry_safety;
mod saga;
mod secured_shards;
mod secured_temporal;
mod shard_map;
mod shard_outage;
mod step_paths;
mod submit;
mod temporal_cli;
mod validation;
mod visibility;
mod web_ui;
