//! `orders shards`: the state of every shard at a glance, and what growing would move.

use futures::future::join_all;
use orders_activities::Shards;
use orders_activities::shard_map::ShardMap;
use orders_activities::shards::Shard;
use orders_activities::store::{customers, orders};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};
use serde::Serialize;

use crate::migrate;

/// One shard as `orders shards` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ShardReport {
    pub shard: usize,
    /// Without password.
    pub url: String,
    pub reachable: bool,
    /// Why the shard could not be read, when it could not.
    pub error: Option<String>,
    /// Newest applied migration.
    pub migration: Option<String>,
    /// Buckets the current map gives this shard.
    pub buckets: usize,
    pub orders: Option<u64>,
    pub customers: Option<u64>,
    /// This command's pool bound per shard (each worker has its own pool).
    pub pool_size: u32,
    /// Connections to the shard's database from every client, and how many are running a
    /// statement now (`pg_stat_activity`).
    pub connections_open: Option<i64>,
    pub connections_active: Option<i64>,
}

/// The report of every shard, read concurrently; a shard that is down is reported as such.
pub async fn report(shards: &Shards, pool_size: u32) -> Vec<ShardReport> {
    let map = shards.map();
    join_all(shards.iter().map(|shard| {
        let buckets = map.buckets_of(shard.index).len();
        async move {
            let mut report = ShardReport {
                shard: shard.index,
                url: shard.url.clone(),
                reachable: false,
                error: None,
                migration: None,
                buckets,
                orders: None,
                customers: None,
                pool_size,
                connections_open: None,
                connections_active: None,
            };
            if let Err(e) = fill(shard, &mut report).await {
                report.error = Some(e.to_string());
            }
            report
        }
    }))
    .await
}

async fn fill(shard: &Shard, report: &mut ShardReport) -> Result<(), DbErr> {
    let row = shard
        .conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS open, count(*) FILTER (WHERE state = 'active') AS active
             FROM pg_stat_activity WHERE datname = current_database()",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("pg_stat_activity returned no row".into()))?;
    report.reachable = true;
    report.connections_open = Some(row.try_get("", "open")?);
    report.connections_active = Some(row.try_get("", "active")?);
    report.migration = migrate::newest_applied(&shard.conn).await?;
    if report.migration.is_none() {
        return Ok(());
    }
    report.customers = Some(customers::count(&shard.conn).await?);
    report.orders = Some(orders::count(&shard.conn).await?);
    Ok(())
}

/// What growing the current map to `shard_count` shards would move.
#[derive(Debug, Clone, Serialize)]
pub struct GrowthPlan {
    pub from_version: i32,
    pub to_version: i32,
    pub from_shards: usize,
    pub to_shards: usize,
    pub buckets_moved: usize,
    pub fraction_moved: f64,
    /// (bucket, from shard, to shard) for every bucket that moves.
    pub moves: Vec<(u16, usize, usize)>,
}

pub fn growth_plan(current: &ShardMap, shard_count: usize) -> anyhow::Result<GrowthPlan> {
    let most = usize::from(orders_activities::routing::BUCKETS);
    anyhow::ensure!(
        shard_count <= most,
        "at most {most} shards are possible (one bucket each), not {shard_count}"
    );
    anyhow::ensure!(
        shard_count >= current.shard_count(),
        "the map can only grow: it has {} shards, asked for {shard_count}",
        current.shard_count()
    );
    let grown = current.grown_to(shard_count);
    let moves: Vec<_> = current
        .moved_buckets(&grown)
        .into_iter()
        .map(|b| (b, current.shard_of_bucket(b), grown.shard_of_bucket(b)))
        .collect();
    Ok(GrowthPlan {
        from_version: current.version(),
        to_version: grown.version(),
        from_shards: current.shard_count(),
        to_shards: shard_count,
        buckets_moved: moves.len(),
        fraction_moved: moves.len() as f64 / current.owners().len() as f64,
        moves,
    })
}

/// Prints one line per shard.
pub fn print_reports(map_version: i32, reports: &[ShardReport]) {
    println!("shard map v{map_version}");
    println!(
        "{:<5} {:<44} {:<11} {:<40} {:>7} {:>9} {:>9} {:>9}",
        "shard", "url", "state", "migration", "buckets", "orders", "customers", "conns"
    );
    let or_dash = |n: Option<String>| n.unwrap_or_else(|| "-".into());
    for r in reports {
        println!(
            "{:<5} {:<44} {:<11} {:<40} {:>7} {:>9} {:>9} {:>9}",
            r.shard,
            r.url,
            if r.reachable { "up" } else { "UNREACHABLE" },
            r.migration.as_deref().unwrap_or("-"),
            r.buckets,
            or_dash(r.orders.map(|n| n.to_string())),
            or_dash(r.customers.map(|n| n.to_string())),
            or_dash(
                r.connections_open
                    .zip(r.connections_active)
                    .map(|(open, active)| format!("{active}/{open}"))
            ),
        );
        if let Some(error) = &r.error {
            println!("      {error}");
        }
    }
    println!(
        "conns = active/open connections to the shard's database from every client; this command's pool holds at most {} per shard",
        reports.first().map_or(0, |r| r.pool_size)
    );
}

/// Prints a growth plan: how much moves, and where.
pub fn print_plan(plan: &GrowthPlan) {
    println!(
        "growing shard map v{} ({} shards) to v{} ({} shards) moves {} of {} buckets ({:.1}%); the modulo scheme would move {:.1}% of customers",
        plan.from_version,
        plan.from_shards,
        plan.to_version,
        plan.to_shards,
        plan.buckets_moved,
        orders_activities::routing::BUCKETS,
        plan.fraction_moved * 100.0,
        (1.0 - 1.0 / plan.to_shards as f64) * 100.0,
    );
    for (from, to) in plan
        .moves
        .iter()
        .map(|&(_, from, to)| (from, to))
        .collect::<std::collections::BTreeSet<_>>()
    {
        let buckets: Vec<String> = plan
            .moves
            .iter()
            .filter(|m| m.1 == from && m.2 == to)
            .map(|m| m.0.to_string())
            .collect();
        println!(
            "  shard {from} → shard {to}: {} buckets ({})",
            buckets.len(),
            buckets.join(" ")
        );
    }
}
