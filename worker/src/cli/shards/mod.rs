//! Commands about the shards themselves and their reports: `shards` and `shards plan`
//! ([`state`]), `migrate`, `fill` ([`synthetic`]), `explain` ([`explain`]).

pub mod explain;
pub mod state;
pub mod synthetic;

use std::fmt;
use std::time::{Duration, Instant};

use orders_core::Shards;
use serde::Serialize;

use super::report::Report;
use crate::deployment::migrate::{self, ShardVersion};
use explain::QueryPlans;
use state::{GrowthPlan, ShardsReport};

impl Report for ShardsReport {
    fn failure(&self) -> Option<String> {
        let down: Vec<String> = self.unreachable().map(|r| r.shard.to_string()).collect();
        (!down.is_empty()).then(|| format!("unreachable shards: {}", down.join(", ")))
    }
}

impl Report for GrowthPlan {}

/// Every shard's schema version after `migrate`. As JSON: the list.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(super) struct Migrated(Vec<ShardVersion>);

pub(super) async fn migrate(shards: &Shards, plan: migrate::Plan) -> anyhow::Result<Migrated> {
    Ok(Migrated(migrate::run(shards, plan).await?))
}

impl fmt::Display for Migrated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self
            .0
            .iter()
            .map(|v| {
                format!(
                    "shard {} {}: {} ({} applied, {} pending)",
                    v.shard,
                    v.url,
                    v.version.as_deref().unwrap_or("(empty)"),
                    v.applied,
                    v.pending
                )
            })
            .collect();
        f.write_str(&lines.join("\n"))
    }
}

impl Report for Migrated {}

/// What `orders fill` made.
#[derive(Debug, Serialize)]
pub(super) struct Filled {
    customers_per_shard: u32,
    orders_per_shard: u32,
    shards: usize,
    elapsed_secs: f64,
}

pub(super) async fn fill(shards: &Shards, volume: synthetic::Volume) -> anyhow::Result<Filled> {
    anyhow::ensure!(
        volume.customers_per_shard > 0,
        "--customers-per-shard must be at least 1"
    );
    let started = Instant::now();
    synthetic::fill(shards, volume).await?;
    Ok(Filled {
        customers_per_shard: volume.customers_per_shard,
        orders_per_shard: volume.orders_per_shard,
        shards: shards.len(),
        elapsed_secs: started.elapsed().as_secs_f64(),
    })
}

impl fmt::Display for Filled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "made {} customers and {} orders (2 items each) on each of {} shards in {:.1?}",
            self.customers_per_shard,
            self.orders_per_shard,
            self.shards,
            Duration::from_secs_f64(self.elapsed_secs)
        )
    }
}

impl Report for Filled {}

impl Report for QueryPlans {
    fn failure(&self) -> Option<String> {
        self.first_error().map(str::to_owned)
    }
}
