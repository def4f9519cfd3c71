//! The shards `orders dev` runs: four single PostgreSQL clusters, or with `--standbys` four
//! pg_auto_failover formations (one monitor, a primary and a synchronous standby per shard),
//! each given to the worker as a multi-host URL. Single clusters stay the default: the first
//! run is quicker, and pg_auto_failover need not be installed.

use std::path::Path;

use orders_dev::auto_failover::{FailoverMonitor, FailoverTimings, HaShard};
use orders_dev::{
    DEV_DATABASE, DEV_SHARD_BASE_PORT, DEV_SHARD_COUNT, PostgresCluster, PostgresOptions,
};

/// A shard's standby listens this far above its primary's dev port.
const STANDBY_PORT_OFFSET: u16 = 10;
/// The monitor listens this far above the first shard's dev port.
const MONITOR_PORT_OFFSET: u16 = 20;

/// What `orders dev` started for its shards; dropping it stops them.
pub enum DevShards {
    Single(Vec<PostgresCluster>),
    Replicated {
        shards: Vec<HaShard>,
        // Dropped after the shards: the keepers report to it until they stop.
        monitor: Box<FailoverMonitor>,
    },
}

impl DevShards {
    /// Starts (or reuses) the shards under `state_dir`, each with an `orders` database.
    pub async fn start(state_dir: &Path, standbys: bool) -> anyhow::Result<Self> {
        if standbys {
            return Self::start_replicated(state_dir).await;
        }
        let mut clusters = Vec::new();
        for shard in 0..DEV_SHARD_COUNT {
            let port = DEV_SHARD_BASE_PORT + shard as u16;
            eprintln!("▶ PostgreSQL shard {shard} on 127.0.0.1:{port}");
            let cluster = tokio::task::block_in_place(|| {
                PostgresCluster::start(PostgresOptions {
                    data_dir: state_dir.join(format!("shard-{shard}")),
                    port,
                    ephemeral: false,
                })
            })?;
            cluster.create_database(DEV_DATABASE).await?;
            clusters.push(cluster);
        }
        Ok(Self::Single(clusters))
    }

    async fn start_replicated(state_dir: &Path) -> anyhow::Result<Self> {
        let dir = state_dir.join("ha");
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let timings = FailoverTimings::fast();
        let monitor_port = DEV_SHARD_BASE_PORT + MONITOR_PORT_OFFSET;
        eprintln!("▶ pg_auto_failover monitor on 127.0.0.1:{monitor_port} ({timings})");
        let monitor = FailoverMonitor::start(&dir.join("monitor"), monitor_port, timings).await?;
        // Side by side: each formation waits mostly on its keepers.
        let shards = futures::future::try_join_all((0..DEV_SHARD_COUNT).map(|shard| {
            let primary = DEV_SHARD_BASE_PORT + shard as u16;
            let standby = primary + STANDBY_PORT_OFFSET;
            eprintln!(
                "▶ PostgreSQL shard {shard}: a primary and a synchronous standby on 127.0.0.1:{primary} and :{standby}"
            );
            let formation = format!("shard{shard}");
            let dir = dir.join(&formation);
            let monitor = &monitor;
            async move {
                HaShard::start(monitor, &formation, &dir, [primary, standby], false).await
            }
        }))
        .await?;
        Ok(Self::Replicated {
            shards,
            monitor: Box::new(monitor),
        })
    }

    /// Each shard's URL, in shard order (multi-host for formations).
    pub fn urls(&self) -> Vec<String> {
        match self {
            Self::Single(_) => orders_dev::dev_shard_urls(),
            Self::Replicated { shards, .. } => shards.iter().map(HaShard::url).collect(),
        }
    }
}
