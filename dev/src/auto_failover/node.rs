//! One node of a formation: created once (seeded by initdb or from the primary), run again
//! from its directory on every later start, and lost, crashed or rejoined by tests.

use nix::sys::signal::{Signal, kill};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::SOCKET_DIR;
use super::monitor::FailoverMonitor;
use super::postmaster::{kill_stray_postmaster, postmaster_pid};
use super::service::AutoctlService;
use super::service_dir::ServiceDir;
use super::settled::KeeperRun;
use crate::error::{DevError, Result};
use crate::postgres::{OsUser, append_to_postgresql_conf, cluster_settings, initdb, os_user};
use crate::{DEV_DATABASE, port_is_open, shard_url};

/// Appended to the first node's `postgresql.conf`, which every later node copies. After a
/// primary restarts, its standby reconnects only after `wal_retrieve_retry_interval`, and
/// synchronous commits wait until it has: 5 s by default.
const REPLICATION_SETTINGS: &str = "\n# Added by orders: a standby reconnects to a restarted primary \
     within half a second; full-page writes stay on, even where fsync is off, since pg_rewind \
     needs them to turn a lost primary back into a standby.\nwal_retrieve_retry_interval = '500ms'\nfull_page_writes = on\n";
/// Up to here `pg_autoctl create postgres` may take: for a standby it includes pg_basebackup.
const CREATE_TIMEOUT: Duration = Duration::from_secs(300);

/// How a node that never ran gets its data.
pub(super) enum Seed {
    /// `initdb`: the formation's first node.
    InitDb { ephemeral: bool },
    /// pg_basebackup from the primary, which pg_autoctl does: every later node.
    BaseBackup,
}

/// One node of a formation: a pg_autoctl keeper and the postgres it manages. Dropping it
/// stops both.
#[derive(Debug)]
pub struct FailoverNode {
    name: String,
    port: u16,
    dir: ServiceDir,
    keeper: Option<AutoctlService>,
    /// When `keeper` was started: only its reports tell how the node is now.
    keeper_started: SystemTime,
}

impl FailoverNode {
    /// Creates the node in `dir` unless that was done before, then runs its keeper.
    pub(super) async fn start(
        monitor: &FailoverMonitor,
        formation: &str,
        dir: &Path,
        name: &str,
        port: u16,
        seed: Seed,
    ) -> Result<Self> {
        if port_is_open(port) {
            return Err(DevError::PortTaken(port));
        }
        let owner = os_user()?;
        let dir = ServiceDir::create(dir, &owner)?;
        let pgdata = dir.pgdata();
        if !dir.keeper_initialized() {
            if let Seed::InitDb { ephemeral } = seed
                && !pgdata.join("PG_VERSION").exists()
            {
                // pg_autoctl connects as initdb's default superuser (the OS user's name),
                // through a socket in SOCKET_DIR; the `orders` role comes later.
                initdb(&pgdata, &owner, None)?;
                append_to_postgresql_conf(&pgdata, &cluster_settings(ephemeral, SOCKET_DIR))?;
                append_to_postgresql_conf(&pgdata, REPLICATION_SETTINGS)?;
            }
            let mut create = dir.pg_autoctl(&owner, &["create", "postgres"])?;
            create
                .args(["--pgport", &port.to_string(), "--name", name])
                .args(["--hostname", "127.0.0.1", "--listen", "127.0.0.1"])
                .args(["--auth", "trust", "--no-ssl", "--dbname", DEV_DATABASE])
                .args(["--formation", formation, "--monitor", &monitor.node_url()]);
            AutoctlService::spawn(
                &format!("pg_autoctl create postgres for node {name}"),
                create,
                &dir.log(),
            )?
            .finish(CREATE_TIMEOUT)
            .await?;
        }
        // Set before every run, so the node follows the monitor it runs with.
        let mut partition_timeout = dir.pg_autoctl(&owner, &["config", "set"])?;
        partition_timeout.args([
            "timeout.network_partition_timeout",
            &monitor.timings().network_partition_seconds(),
        ]);
        AutoctlService::spawn(
            &format!("pg_autoctl config set for node {name}"),
            partition_timeout,
            &dir.log(),
        )?
        .finish(Duration::from_secs(30))
        .await?;
        let mut node = Self {
            name: name.to_owned(),
            port,
            dir,
            keeper: None,
            keeper_started: SystemTime::now(),
        };
        node.run(&owner)?;
        Ok(node)
    }

    fn run(&mut self, owner: &Option<OsUser>) -> Result<()> {
        let command = self.dir.pg_autoctl(owner, &["run"])?;
        self.keeper_started = SystemTime::now();
        self.keeper = Some(AutoctlService::spawn(
            &format!("pg_autoctl node {} on port {}", self.name, self.port),
            command,
            &self.dir.log(),
        )?);
        Ok(())
    }

    /// The node's name in its formation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its PostgreSQL port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `orders` database on this node alone (whatever its role).
    pub fn url(&self) -> String {
        shard_url(self.port, DEV_DATABASE)
    }

    /// Its data directory.
    pub fn pgdata(&self) -> PathBuf {
        self.dir.pgdata()
    }

    /// Its keeper's log (postgres logs under `pgdata/log/`).
    pub fn log(&self) -> PathBuf {
        self.dir.log()
    }

    /// Whether its keeper runs (it restarts postgres by itself).
    pub fn is_running(&self) -> bool {
        self.keeper
            .as_ref()
            .is_some_and(|keeper| keeper.exit_status().is_none())
    }

    /// Its keeper, unless the node was lost: waits watch it to fail at once if it exits.
    pub(super) fn keeper(&self) -> Option<&AutoctlService> {
        self.keeper.as_ref()
    }

    /// Its port and when its keeper was started, unless the node was lost: the monitor
    /// keeps older reports, from before a stop, which say nothing about the node now.
    pub(super) fn keeper_run(&self) -> KeeperRun {
        KeeperRun {
            port: self.port,
            started: self.keeper.as_ref().map(|_| self.keeper_started),
        }
    }

    /// Loses the node as a machine is lost: its keeper and postgres die at once (SIGKILL to
    /// the keeper's process group), with nothing flushed or said to the monitor. Returns once
    /// its port is closed.
    pub fn lose(&mut self) {
        if let Some(mut keeper) = self.keeper.take() {
            keeper.kill();
        }
        kill_stray_postmaster(&self.dir.pgdata());
        let deadline = Instant::now() + Duration::from_secs(10);
        while port_is_open(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if port_is_open(self.port) {
            tracing::warn!(node = %self.name, port = self.port, "the lost node's port is still open");
        }
    }

    /// Kills the node's postmaster alone (SIGKILL), as a postgres crash would: the keeper
    /// restarts it within about a second and the monitor does not fail over.
    pub fn crash_postmaster(&self) -> Result<()> {
        let pid = postmaster_pid(&self.dir.pgdata()).ok_or_else(|| {
            DevError::NotRunning(format!(
                "the postmaster of node {} ({})",
                self.name,
                self.dir.pgdata().display()
            ))
        })?;
        kill(pid, Signal::SIGKILL).map_err(|source| DevError::Os {
            action: format!("kill the postmaster of node {} (pid {pid})", self.name),
            source,
        })
    }

    /// Runs the keeper again after [`Self::lose`]: the node rejoins its formation, as a
    /// secondary if another node was promoted meanwhile (pg_autoctl rewinds it). Does nothing
    /// while the keeper runs.
    pub fn rejoin(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        if let Some(mut exited) = self.keeper.take() {
            exited.kill();
        }
        kill_stray_postmaster(&self.dir.pgdata());
        self.run(&os_user()?)
    }
}

impl Drop for FailoverNode {
    fn drop(&mut self) {
        drop(self.keeper.take());
        kill_stray_postmaster(&self.dir.pgdata());
    }
}
