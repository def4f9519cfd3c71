//! The shards `orders dev` runs: four single PostgreSQL clusters, or with `--standbys` four
//! pg_auto_failover formations (one monitor, a primary and a synchronous standby per shard),
//! each given to the worker as a multi-host URL. Single clusters stay the default: the first
//! run is quicker, and pg_auto_failover need not be installed. With `--backups`, the single
//! clusters archive their WAL into a pgBackRest repository under the state directory.

use std::path::{Path, PathBuf};

use anyhow::Context;
use orders_backup::pgbackrest::{LocalShard, Repository};
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
    /// `backups` (single clusters only) archives them into a repository whose config is [`Self::backups_config`].
    pub async fn start(state_dir: &Path, standbys: bool, backups: bool) -> anyhow::Result<Self> {
        if standbys {
            anyhow::ensure!(
                !backups,
                "--backups runs with single clusters, not with --standbys: a formation's archiving is set through pg_auto_failover (docs/operations.md, \"Backups and restores\")"
            );
            return Self::start_replicated(state_dir).await;
        }
        let sockets = socket_dir(state_dir);
        let shards: Vec<LocalShard> = (0..DEV_SHARD_COUNT)
            .map(|shard| LocalShard {
                data_dir: state_dir.join(format!("shard-{shard}")),
                port: DEV_SHARD_BASE_PORT + shard as u16,
                socket_dir: sockets.clone(),
            })
            .collect();
        let repository = if backups {
            let dir = backups_dir(state_dir);
            eprintln!("▶ pgBackRest repository in {}", dir.display());
            Some(Repository::write_local(&dir, &shards).context(
                "--backups needs pgBackRest (Debian: pgbackrest; scripts/dev.sh installs it)",
            )?)
        } else {
            None
        };
        let mut clusters = Vec::new();
        for (i, shard) in shards.into_iter().enumerate() {
            let options = PostgresOptions {
                data_dir: shard.data_dir,
                port: shard.port,
                ephemeral: false,
            };
            eprintln!("▶ PostgreSQL shard {i} on 127.0.0.1:{}", shard.port);
            let cluster = match &repository {
                Some(repository) => {
                    let archive = repository.wal_archive(i)?;
                    tokio::task::block_in_place(|| {
                        PostgresCluster::start_archiving(options, &archive)
                    })?
                }
                None => tokio::task::block_in_place(|| PostgresCluster::start(options))?,
            };
            cluster.create_database(DEV_DATABASE).await?;
            clusters.push(cluster);
        }
        if let Some(repository) = &repository {
            // Now, not at the first `orders backup`: until its stanza exists, a cluster's
            // WAL cannot be archived, and piles up.
            for shard in 0..clusters.len() {
                repository.create_stanza(shard).await?;
            }
        }
        Ok(Self::Single(clusters))
    }

    /// The pgBackRest config `--backups` writes under `state_dir`.
    pub fn backups_config(state_dir: &Path) -> PathBuf {
        backups_dir(state_dir).join("pgbackrest.conf")
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

fn backups_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("backups")
}

/// Where the archiving clusters put their Unix sockets (pgBackRest connects through them):
/// in the state directory, unless its path would make a socket's path longer than the
/// kernel's 107 bytes.
fn socket_dir(state_dir: &Path) -> PathBuf {
    let in_state = state_dir.join("sockets");
    if in_state.join(".s.PGSQL.65535").as_os_str().len() <= 107 {
        in_state
    } else {
        std::env::temp_dir().join("orders-dev-sockets")
    }
}
