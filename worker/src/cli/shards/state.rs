//! `orders shards`: the state of every shard at a glance, and what growing would move.

use std::fmt;

use futures::future::join_all;
use orders_core::Shards;
use orders_core::shard_map::ShardMap;
use orders_core::shards::Shard;
use orders_core::store::fences::{self, Fence, FenceState};
use orders_core::store::{connections, customers, orders};
use sea_orm::DbErr;
use serde::Serialize;

use crate::deployment::migrate;

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
    /// Buckets being moved from or onto this shard (`orders reshard`), with their phase.
    pub moving: Vec<Fence>,
    /// For a shard given as several hosts: each host's role, sync state and replay lag.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostReport>,
}

/// One host of a shard given as a primary and its standbys.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// `host:port`.
    pub address: String,
    /// `primary`, `standby` or `down`.
    pub role: &'static str,
    /// Primary: standbys it waits for at commit.
    pub sync_standbys: Option<u32>,
    /// Standby: whether it streams WAL from the primary.
    pub streaming: Option<bool>,
    /// Standby: how far behind the primary its replay is.
    pub replay_lag_ms: Option<u128>,
    /// Why the host did not answer.
    pub error: Option<String>,
}

/// Each host's state, probed now (nothing for a single-host shard).
async fn hosts_of(shard: &Shard) -> Vec<HostReport> {
    if !shard.hosts.is_replicated() {
        return Vec::new();
    }
    shard.hosts.probe().await;
    shard
        .hosts
        .states()
        .into_iter()
        .map(|host| HostReport {
            address: host.address,
            role: host.role.as_str(),
            sync_standbys: host.sync_standbys,
            streaming: host.streaming,
            replay_lag_ms: host.replay_lag.map(|lag| lag.as_millis()),
            error: host.error,
        })
        .collect()
}

/// Every shard's report, under the shard map in use. As JSON: the list of shards.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct ShardsReport {
    pub shards: Vec<ShardReport>,
    #[serde(skip)]
    pub map_version: i32,
}

impl ShardsReport {
    /// Whether some shard could not be read.
    pub fn unreachable(&self) -> impl Iterator<Item = &ShardReport> {
        self.shards.iter().filter(|r| !r.reachable)
    }
}

/// The report of every shard, read concurrently; a shard that is down is reported as such.
pub async fn report(shards: &Shards, pool_size: u32) -> ShardsReport {
    let map = shards.map();
    let reports = join_all(shards.iter().map(|shard| {
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
                moving: Vec::new(),
                hosts: hosts_of(shard).await,
            };
            if let Err(e) = fill(shard, &mut report).await {
                report.error = Some(e.to_string());
            }
            report
        }
    }))
    .await;
    ShardsReport {
        shards: reports,
        map_version: map.version(),
    }
}

async fn fill(shard: &Shard, report: &mut ShardReport) -> Result<(), DbErr> {
    let connections = connections::count(&shard.conn).await?;
    report.reachable = true;
    report.connections_open = Some(connections.open);
    report.connections_active = Some(connections.active);
    report.migration = migrate::newest_applied(&shard.conn).await?;
    if report.migration.is_none() {
        return Ok(());
    }
    report.moving = fences::list(&shard.conn)
        .await?
        .into_iter()
        .filter(|f| f.state != FenceState::Moved)
        .collect();
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
    let most = usize::from(orders_core::routing::BUCKETS);
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

impl fmt::Display for ShardsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "shard map v{}", self.map_version)?;
        // As wide as the longest URL: a shard with standbys lists every host.
        let url_width = self
            .shards
            .iter()
            .map(|r| r.url.len())
            .max()
            .unwrap_or(0)
            .max(44);
        writeln!(
            f,
            "{:<5} {:<url_width$} {:<11} {:<40} {:>7} {:>9} {:>9} {:>9}",
            "shard", "url", "state", "migration", "buckets", "orders", "customers", "conns"
        )?;
        let or_dash = |n: Option<String>| n.unwrap_or_else(|| "-".into());
        for r in &self.shards {
            writeln!(
                f,
                "{:<5} {:<url_width$} {:<11} {:<40} {:>7} {:>9} {:>9} {:>9}",
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
            )?;
            if let Some(error) = &r.error {
                writeln!(f, "      {error}")?;
            }
            for host in &r.hosts {
                writeln!(f, "      host {}", host_line(host))?;
            }
            for fence in &r.moving {
                let direction = match fence.state {
                    FenceState::Incoming => format!("arriving from shard {}", fence.peer),
                    _ => format!("moving to shard {}", fence.peer),
                };
                writeln!(
                    f,
                    "      bucket {} {direction} ({})",
                    fence.bucket,
                    fence.state.as_str()
                )?;
            }
        }
        write!(
            f,
            "conns = active/open connections to the shard's database from every client; this command's pool holds at most {} per shard",
            self.shards.first().map_or(0, |r| r.pool_size)
        )
    }
}

/// `127.0.0.1:5432 primary, 1 sync standby` / `… standby, streaming, replay lag 0 ms`.
fn host_line(host: &HostReport) -> String {
    let mut line = format!("{} {}", host.address, host.role);
    if let Some(sync) = host.sync_standbys {
        line.push_str(&format!(
            ", {sync} sync standby{}",
            if sync == 1 { "" } else { "s" }
        ));
        if sync == 0 {
            line.push_str(" (commits are on this host only)");
        }
    }
    if let Some(streaming) = host.streaming {
        line.push_str(if streaming {
            ", streaming"
        } else {
            ", NOT streaming"
        });
    }
    if let Some(lag) = host.replay_lag_ms {
        line.push_str(&format!(", replay lag {lag} ms"));
    }
    if let Some(error) = &host.error {
        line.push_str(&format!(": {error}"));
    }
    line
}

impl fmt::Display for GrowthPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "growing shard map v{} ({} shards) to v{} ({} shards) moves {} of {} buckets ({:.1}%); the modulo scheme would move {:.1}% of customers",
            self.from_version,
            self.from_shards,
            self.to_version,
            self.to_shards,
            self.buckets_moved,
            orders_core::routing::BUCKETS,
            self.fraction_moved * 100.0,
            (1.0 - 1.0 / self.to_shards as f64) * 100.0,
        )?;
        let routes: std::collections::BTreeSet<(usize, usize)> =
            self.moves.iter().map(|&(_, from, to)| (from, to)).collect();
        for (from, to) in routes {
            let buckets: Vec<String> = self
                .moves
                .iter()
                .filter(|m| m.1 == from && m.2 == to)
                .map(|m| m.0.to_string())
                .collect();
            write!(
                f,
                "\n  shard {from} → shard {to}: {} buckets ({})",
                buckets.len(),
                buckets.join(" ")
            )?;
        }
        Ok(())
    }
}
