//! One shard as a pg_auto_failover formation: a monitor, a primary and a synchronous standby
//! on loopback, for failover tests and `orders dev`.
//!
//! - A commit the primary acknowledged is on the standby: [`HaShard::start`] returns only once
//!   replication is synchronous, so losing the primary loses no acknowledged commit and no
//!   prepared transaction.
//! - Nothing outlives its handle: each `pg_autoctl` leads its own process group, which holds
//!   its sub-processes and the postgres it starts, and that whole group is killed when the
//!   handle is dropped, when a node is [lost](FailoverNode::lose), and, by a watchdog, when
//!   this process dies. (`PR_SET_PDEATHSIG` reaches only `pg_autoctl` itself: measured, its
//!   sub-processes and postgres kept running without it.)
//!
//! As in [`crate::postgres`]: trust authentication on 127.0.0.1 only, and clusters owned by an
//! unprivileged OS user when we are root. Each service (the monitor, each node) has its own
//! directory: `pgdata/`, `pg_autoctl.log`, and pg_autoctl's XDG directories `config/`,
//! `data/` and `run/`.

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
};
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{DevError, Result, io, sql};
use crate::postgres::{
    OsUser, append_to_postgresql_conf, as_cluster_owner, cluster_settings, initdb, os_user,
    pg_binary,
};
use crate::process::{ChildService, log_output_to};
use crate::{DEV_DATABASE, SUPERUSER, port_is_open, shard_url};

/// Where pg_autoctl and its postgres keep Unix sockets: Debian's default, /var/run/postgresql,
/// is not writable by the cluster owner.
const SOCKET_DIR: &str = "/tmp";
/// Appended to the first node's `postgresql.conf`, which every later node copies. After a
/// primary restarts, its standby reconnects only after `wal_retrieve_retry_interval`, and
/// synchronous commits wait until it has: 5 s by default.
const REPLICATION_SETTINGS: &str = "\n# Added by orders: a standby reconnects to a restarted primary \
     within half a second; full-page writes stay on, even where fsync is off, since pg_rewind \
     needs them to turn a lost primary back into a standby.\nwal_retrieve_retry_interval = '500ms'\nfull_page_writes = on\n";
/// What to install when pg_auto_failover is missing.
const INSTALL_HINT: &str = "install pg_auto_failover: apt-get install pg-auto-failover-cli postgresql-15-auto-failover (the server package of your PostgreSQL major version)";
/// States in which a node serves writes as its formation's primary.
const PRIMARY_STATES: [&str; 5] = [
    "single",
    "wait_primary",
    "primary",
    "join_primary",
    "apply_settings",
];
/// How often waits look at the monitor or a process again.
const POLL: Duration = Duration::from_millis(100);
/// Up to here waits for the monitor's postgres and extension (measured: ~1.5 s).
const MONITOR_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Up to here `pg_autoctl create postgres` may take: for a standby it includes pg_basebackup.
const CREATE_TIMEOUT: Duration = Duration::from_secs(300);
/// Up to here a new primary may take to reach `single` (measured: ~1 s).
const PRIMARY_TIMEOUT: Duration = Duration::from_secs(60);
/// Up to here a new standby may take to become a synchronous secondary (measured: ~3 s).
const STANDBY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stopping pg_autoctl gets to shut its postgres down before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// How quickly pg_auto_failover declares a primary lost and promotes its standby. All but
/// the last are settings of the monitor (`pgautofailover.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverTimings {
    /// How often the monitor checks each node (`health_check_period`).
    pub health_check_period: Duration,
    /// How long one check may take before it counts as failed (`health_check_timeout`).
    pub health_check_timeout: Duration,
    /// Failed checks retried before a node is unhealthy (`health_check_max_retries`).
    pub health_check_max_retries: u32,
    /// The pause between those retries (`health_check_retry_delay`).
    pub health_check_retry_delay: Duration,
    /// How long a node may go without reporting to the monitor before it is unhealthy
    /// (`node_considered_unhealthy_timeout`).
    pub node_considered_unhealthy_timeout: Duration,
    /// How long the monitor waits for an unhealthy primary to demote itself before it
    /// promotes the standby (`primary_demote_timeout`).
    pub primary_demote_timeout: Duration,
    /// Keeper side (`timeout.network_partition_timeout` of each node): how long a primary that
    /// reaches neither the monitor nor a standby keeps serving before it demotes itself. Keep
    /// it below `primary_demote_timeout`, so that a cut-off primary has stopped taking writes
    /// before its standby is promoted.
    pub network_partition_timeout: Duration,
}

impl Default for FailoverTimings {
    /// pg_auto_failover's own defaults: a lost primary is replaced after about 50 s.
    fn default() -> Self {
        Self {
            health_check_period: Duration::from_millis(5000),
            health_check_timeout: Duration::from_millis(5000),
            health_check_max_retries: 2,
            health_check_retry_delay: Duration::from_millis(2000),
            node_considered_unhealthy_timeout: Duration::from_millis(20_000),
            primary_demote_timeout: Duration::from_millis(30_000),
            network_partition_timeout: Duration::from_secs(20),
        }
    }
}

impl FailoverTimings {
    /// Failover in seconds rather than a minute, for tests and `orders dev`. A postmaster that
    /// crashed and is restarted by its keeper must not look lost: under load that restart
    /// took over a second here, and with one health-check retry 500 ms apart the monitor
    /// failed the primary over; three checks a second apart ride it out.
    pub fn fast() -> Self {
        Self {
            health_check_period: Duration::from_millis(1000),
            health_check_timeout: Duration::from_millis(1000),
            health_check_max_retries: 2,
            health_check_retry_delay: Duration::from_millis(1000),
            node_considered_unhealthy_timeout: Duration::from_millis(3000),
            primary_demote_timeout: Duration::from_millis(5000),
            network_partition_timeout: Duration::from_secs(3),
        }
    }

    /// The monitor's settings, as `pgautofailover.<name>` takes them (milliseconds, a count).
    fn monitor_settings(&self) -> [(&'static str, u128); 6] {
        [
            ("health_check_period", self.health_check_period.as_millis()),
            (
                "health_check_timeout",
                self.health_check_timeout.as_millis(),
            ),
            (
                "health_check_max_retries",
                self.health_check_max_retries.into(),
            ),
            (
                "health_check_retry_delay",
                self.health_check_retry_delay.as_millis(),
            ),
            (
                "node_considered_unhealthy_timeout",
                self.node_considered_unhealthy_timeout.as_millis(),
            ),
            (
                "primary_demote_timeout",
                self.primary_demote_timeout.as_millis(),
            ),
        ]
    }

    /// `timeout.network_partition_timeout`, which pg_autoctl takes in whole seconds.
    fn network_partition_seconds(&self) -> String {
        self.network_partition_timeout.as_secs().max(1).to_string()
    }
}

impl fmt::Display for FailoverTimings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "health checks every {:?} (timeout {:?}, {} retries {:?} apart), \
             unhealthy after {:?} silent, primary demote timeout {:?}, \
             network partition timeout {:?}",
            self.health_check_period,
            self.health_check_timeout,
            self.health_check_max_retries,
            self.health_check_retry_delay,
            self.node_considered_unhealthy_timeout,
            self.primary_demote_timeout,
            self.network_partition_timeout,
        )
    }
}

/// One node as its monitor sees it (a row of `pgautofailover.node`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// The node's name within its formation.
    pub name: String,
    /// Its PostgreSQL port on 127.0.0.1.
    pub port: u16,
    /// The state the node's keeper last reported (`reportedstate`).
    pub reported: String,
    /// The state the monitor wants it in (`goalstate`).
    pub assigned: String,
}

impl NodeState {
    /// Serving writes as primary, in the keeper's report and in the monitor's plan alike: a
    /// lost primary still reports `primary` while the monitor already demotes it.
    pub fn is_primary(&self) -> bool {
        PRIMARY_STATES.contains(&self.reported.as_str())
            && PRIMARY_STATES.contains(&self.assigned.as_str())
    }

    /// Whether the node has reached the state the monitor assigned it.
    pub fn is_settled(&self) -> bool {
        self.reported == self.assigned
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (port {}) reported {}, assigned {}",
            self.name, self.port, self.reported, self.assigned
        )
    }
}

/// The monitor of one or more formations: it health-checks their nodes and decides which
/// one is primary. Several shards may share one.
#[derive(Debug)]
pub struct FailoverMonitor {
    port: u16,
    timings: FailoverTimings,
    sql: DatabaseConnection,
    dir: ServiceDir,
    service: AutoctlService,
}

impl FailoverMonitor {
    /// Creates a monitor in `dir` (or starts the one already there) listening on `port`, and
    /// gives it `timings`.
    pub async fn start(dir: &Path, port: u16, timings: FailoverTimings) -> Result<Self> {
        require_monitor_extension()?;
        if port_is_open(port) {
            return Err(DevError::PortTaken(port));
        }
        if timings.network_partition_timeout >= timings.primary_demote_timeout {
            tracing::warn!(%timings, "a cut-off primary may still take writes when its standby is promoted");
        }
        let owner = os_user()?;
        let dir = ServiceDir::create(dir, &owner)?;
        // `create … --run` on an existing monitor just runs it.
        let mut command = dir.pg_autoctl(&owner, &["create", "monitor"])?;
        command
            .args(["--pgport", &port.to_string()])
            .args(["--hostname", "127.0.0.1", "--listen", "127.0.0.1"])
            .args(["--auth", "trust", "--no-ssl", "--run"]);
        let service = AutoctlService::spawn(
            &format!("pg_auto_failover monitor on port {port}"),
            command,
            &dir.log(),
        )?;
        let url = format!(
            "postgres://{}@127.0.0.1:{port}/pg_auto_failover",
            cluster_role(&owner)?
        );
        let sql = wait_for(
            &service,
            MONITOR_START_TIMEOUT,
            "the monitor to accept connections",
            async || {
                let conn = connect(&url).await.ok()?;
                conn.query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT 1 FROM pgautofailover.formation LIMIT 1",
                ))
                .await
                .ok()?;
                Some(conn)
            },
        )
        .await?;
        let monitor = Self {
            port,
            timings,
            sql,
            dir,
            service,
        };
        monitor.apply_timings().await?;
        Ok(monitor)
    }

    async fn apply_timings(&self) -> Result<()> {
        for (name, value) in self.timings.monitor_settings() {
            self.sql
                .execute_unprepared(&format!("ALTER SYSTEM SET pgautofailover.{name} = {value}"))
                .await
                .map_err(sql(format!("setting pgautofailover.{name} on the monitor")))?;
        }
        self.sql
            .execute_unprepared("SELECT pg_reload_conf()")
            .await
            .map_err(sql("reloading the monitor's settings"))?;
        Ok(())
    }

    /// The monitor's PostgreSQL port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The timings it was started with.
    pub fn timings(&self) -> &FailoverTimings {
        &self.timings
    }

    /// Its log (pg_autoctl's; the monitor's postgres logs under `pgdata/log/`).
    pub fn log(&self) -> PathBuf {
        self.dir.log()
    }

    /// What nodes connect to.
    fn node_url(&self) -> String {
        format!(
            "postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover",
            self.port
        )
    }

    /// Creates formation `name` unless it exists: the nodes of one shard, of which one is
    /// primary. Nodes join it by name.
    pub async fn create_formation(&self, name: &str) -> Result<()> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(DevError::InvalidName(format!(
                "formation names are limited to [A-Za-z0-9_], got {name:?}"
            )));
        }
        self.sql
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pgautofailover.create_formation($1, 'pgsql', $2::name, true, 0) \
                 WHERE NOT EXISTS \
                 (SELECT 1 FROM pgautofailover.formation WHERE formationid = $1)",
                [name.into(), DEV_DATABASE.into()],
            ))
            .await
            .map_err(sql(format!("creating formation {name} on the monitor")))?;
        Ok(())
    }

    /// The nodes of `formation` as the monitor sees them, oldest first.
    pub async fn states(&self, formation: &str) -> Result<Vec<NodeState>> {
        let rows = self
            .sql
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT nodename, nodeport, reportedstate::text AS reported, \
                 goalstate::text AS assigned \
                 FROM pgautofailover.node WHERE formationid = $1 ORDER BY nodeid",
                [formation.into()],
            ))
            .await
            .map_err(sql(format!("reading the states of formation {formation}")))?;
        rows.iter()
            .map(|row| {
                Ok(NodeState {
                    name: row.try_get("", "nodename")?,
                    port: u16::try_from(row.try_get::<i32>("", "nodeport")?).unwrap_or(0),
                    reported: row.try_get("", "reported")?,
                    assigned: row.try_get("", "assigned")?,
                })
            })
            .collect::<Result<_, DbErr>>()
            .map_err(sql(format!("reading the states of formation {formation}")))
    }
}

impl Drop for FailoverMonitor {
    fn drop(&mut self) {
        self.service.stop(STOP_GRACE);
        kill_stray_postmaster(&self.dir.pgdata());
    }
}

/// How a node that never ran gets its data.
enum Seed {
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
}

impl FailoverNode {
    /// Creates the node in `dir` unless that was done before, then runs its keeper.
    async fn start(
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
            &monitor.timings.network_partition_seconds(),
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
        };
        node.run(&owner)?;
        Ok(node)
    }

    fn run(&mut self, owner: &Option<OsUser>) -> Result<()> {
        let command = self.dir.pg_autoctl(owner, &["run"])?;
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

/// How long [`HaShard::start`] took to bring each node up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StartupTimes {
    /// Until the first node served as primary (zero when the formation existed before).
    pub primary: Duration,
    /// From then until the standby was a synchronous secondary.
    pub standby: Duration,
}

/// One shard as a formation of two nodes on loopback: a primary and its synchronous standby,
/// either of which the monitor may promote.
#[derive(Debug)]
pub struct HaShard {
    formation: String,
    nodes: [FailoverNode; 2],
    startup: StartupTimes,
}

impl HaShard {
    /// Creates formation `formation` on `monitor` with nodes in `dir/node0` and `dir/node1`
    /// on `ports`, or runs the nodes already there; returns once one is primary and the other
    /// a synchronous secondary. `ephemeral` as in [`crate::PostgresOptions`].
    pub async fn start(
        monitor: &FailoverMonitor,
        formation: &str,
        dir: &Path,
        ports: [u16; 2],
        ephemeral: bool,
    ) -> Result<Self> {
        monitor.create_formation(formation).await?;
        let fresh = monitor.states(formation).await?.is_empty();
        let began = Instant::now();
        let mut startup = StartupTimes::default();
        let seed = if fresh {
            Seed::InitDb { ephemeral }
        } else {
            Seed::BaseBackup
        };
        let first = FailoverNode::start(
            monitor,
            formation,
            &dir.join("node0"),
            "node0",
            ports[0],
            seed,
        )
        .await?;
        if fresh {
            wait_for_states(
                monitor,
                formation,
                &[&first],
                PRIMARY_TIMEOUT,
                "node0 to serve as primary",
                |states| {
                    states
                        .iter()
                        .any(|s| s.port == ports[0] && s.is_settled() && s.is_primary())
                        .then_some(())
                },
            )
            .await?;
            open_to_clients(&first).await?;
            startup.primary = began.elapsed();
        }
        let second = FailoverNode::start(
            monitor,
            formation,
            &dir.join("node1"),
            "node1",
            ports[1],
            Seed::BaseBackup,
        )
        .await?;
        let mut shard = Self {
            formation: formation.to_owned(),
            nodes: [first, second],
            startup,
        };
        shard.wait_settled(monitor, STANDBY_TIMEOUT).await?;
        shard.wait_synchronous(monitor, STANDBY_TIMEOUT).await?;
        shard.startup.standby = began.elapsed() - shard.startup.primary;
        Ok(shard)
    }

    /// The formation's name on the monitor.
    pub fn formation(&self) -> &str {
        &self.formation
    }

    /// Both nodes in libpq's multi-host form; clients find the primary among them.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("postgres://{SUPERUSER}@{}/{DEV_DATABASE}", hosts.join(","))
    }

    /// Node `i` (0 or 1; 0 was the first primary).
    pub fn node(&self, i: usize) -> &FailoverNode {
        &self.nodes[i]
    }

    /// Node `i`, to lose, crash or rejoin it.
    pub fn node_mut(&mut self, i: usize) -> &mut FailoverNode {
        &mut self.nodes[i]
    }

    /// How long [`Self::start`] took.
    pub fn startup_times(&self) -> StartupTimes {
        self.startup
    }

    /// The index of the node the monitor has serving as primary now.
    pub async fn primary(&self, monitor: &FailoverMonitor) -> Result<usize> {
        let states = monitor.states(&self.formation).await?;
        self.primary_in(&states, None)
            .ok_or_else(|| DevError::Formation {
                formation: self.formation.clone(),
                what: "no node serves as primary".into(),
                states: describe(&states),
            })
    }

    /// Waits until a node other than `old` serves as primary (a failover); returns its index.
    pub async fn wait_for_primary_other_than(
        &self,
        monitor: &FailoverMonitor,
        old: usize,
        timeout: Duration,
    ) -> Result<usize> {
        wait_for_states(
            monitor,
            &self.formation,
            &self.running_nodes(),
            timeout,
            &format!("a primary other than node{old}"),
            |states| self.primary_in(states, Some(old)),
        )
        .await
    }

    /// Waits until one node is `primary` and the other `secondary`, both as assigned.
    pub async fn wait_settled(&self, monitor: &FailoverMonitor, timeout: Duration) -> Result<()> {
        wait_for_states(
            monitor,
            &self.formation,
            &self.running_nodes(),
            timeout,
            "one primary and one secondary",
            |states| {
                let count = |state: &str| {
                    states
                        .iter()
                        .filter(|s| s.is_settled() && s.reported == state)
                        .count()
                };
                (states.len() == 2 && count("primary") == 1 && count("secondary") == 1)
                    .then_some(())
            },
        )
        .await
    }

    /// Waits until the primary confirms each commit with the standby: pg_auto_failover turns
    /// synchronous replication on only once the standby has caught up.
    async fn wait_synchronous(&self, monitor: &FailoverMonitor, timeout: Duration) -> Result<()> {
        let primary = &self.nodes[self.primary(monitor).await?];
        let conn = connect(&primary.url()).await?;
        let deadline = Instant::now() + timeout;
        loop {
            let synchronous = conn
                .query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT current_setting('synchronous_standby_names') <> '' \
                     AND EXISTS (SELECT 1 FROM pg_stat_replication \
                     WHERE sync_state IN ('sync', 'quorum')) AS synchronous",
                ))
                .await
                .map_err(sql(format!(
                    "reading replication state on node {}",
                    primary.name
                )))?
                .map(|row| row.try_get::<bool>("", "synchronous"))
                .transpose()
                .map_err(sql("reading replication state"))?;
            if synchronous == Some(true) {
                return conn.close().await.map_err(sql("closing a connection"));
            }
            if Instant::now() >= deadline {
                return Err(DevError::Formation {
                    formation: self.formation.clone(),
                    what: format!(
                        "timed out after {timeout:?} waiting for node {} to replicate synchronously",
                        primary.name
                    ),
                    states: describe(&monitor.states(&self.formation).await?),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn primary_in(&self, states: &[NodeState], except: Option<usize>) -> Option<usize> {
        states
            .iter()
            .filter(|s| s.is_primary())
            .filter_map(|s| self.nodes.iter().position(|n| n.port == s.port))
            .find(|&i| Some(i) != except)
    }

    /// Nodes whose keeper should be running: a wait fails at once if one exits.
    fn running_nodes(&self) -> Vec<&FailoverNode> {
        self.nodes.iter().filter(|n| n.keeper.is_some()).collect()
    }
}

/// Creates the `orders` role the project's URLs use (trust: no password), and forces a
/// checkpoint, without which the standby's pg_basebackup waits for a spread checkpoint:
/// minutes on an idle primary.
async fn open_to_clients(primary: &FailoverNode) -> Result<()> {
    let url = format!(
        "postgres://{}@127.0.0.1:{}/{DEV_DATABASE}",
        cluster_role(&os_user()?)?,
        primary.port
    );
    let conn = connect(&url).await?;
    conn.execute_unprepared(&format!(
        "DO $$ BEGIN CREATE ROLE {SUPERUSER} SUPERUSER LOGIN; \
         EXCEPTION WHEN duplicate_object THEN NULL; END $$"
    ))
    .await
    .map_err(sql(format!("creating role {SUPERUSER}")))?;
    conn.execute_unprepared("CHECKPOINT")
        .await
        .map_err(sql("checkpointing the new primary"))?;
    conn.close().await.map_err(sql("closing a connection"))
}

/// Polls the monitor until `ready` picks something out of `formation`'s states. Fails with
/// the last states seen on timeout, and at once if the keeper of one of `nodes` exits.
async fn wait_for_states<T>(
    monitor: &FailoverMonitor,
    formation: &str,
    nodes: &[&FailoverNode],
    timeout: Duration,
    what: &str,
    ready: impl Fn(&[NodeState]) -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        for node in nodes {
            if let Some(keeper) = &node.keeper
                && let Some(status) = keeper.exit_status()
            {
                return Err(keeper.exited(status));
            }
        }
        let last_seen = match monitor.states(formation).await {
            Ok(states) => {
                if let Some(found) = ready(&states) {
                    return Ok(found);
                }
                describe(&states)
            }
            Err(e) => format!("(could not ask: {e})"),
        };
        if Instant::now() >= deadline {
            return Err(DevError::Formation {
                formation: formation.to_owned(),
                what: format!("timed out after {timeout:?} waiting for {what}"),
                states: last_seen,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

fn describe(states: &[NodeState]) -> String {
    if states.is_empty() {
        return "no nodes".into();
    }
    states
        .iter()
        .map(NodeState::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The directory of one pg_autoctl service (the monitor or a node).
#[derive(Debug)]
struct ServiceDir {
    root: PathBuf,
}

impl ServiceDir {
    /// Creates `root` and pg_autoctl's XDG directories in it, all owned by `owner`.
    fn create(root: &Path, owner: &Option<OsUser>) -> Result<Self> {
        for dir in ["", "config", "data", "run"].map(|sub| root.join(sub)) {
            fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
            if let Some(user) = owner {
                std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).map_err(io(
                    format!("give {} to OS user {:?}", dir.display(), user.name),
                ))?;
            }
        }
        let run = root.join("run");
        fs::set_permissions(&run, fs::Permissions::from_mode(0o700))
            .map_err(io(format!("make {} private", run.display())))?;
        // Absolute: pg_autoctl names its files after the data directory's path, and a
        // postmaster is recognised by the `-D` it was started with.
        let root = fs::canonicalize(root).map_err(io(format!("resolve {}", root.display())))?;
        Ok(Self { root })
    }

    fn pgdata(&self) -> PathBuf {
        self.root.join("pgdata")
    }

    fn log(&self) -> PathBuf {
        self.root.join("pg_autoctl.log")
    }

    /// Whether `pg_autoctl create postgres` finished here before: the keeper's state file.
    fn keeper_initialized(&self) -> bool {
        let pgdata = self.pgdata();
        self.root
            .join("data/pg_autoctl")
            .join(pgdata.strip_prefix("/").unwrap_or(&pgdata))
            .join("pg_autoctl.state")
            .is_file()
    }

    /// `pg_autoctl <subcommand> --pgdata <pgdata>` as the cluster owner, in this directory's
    /// environment.
    fn pg_autoctl(&self, owner: &Option<OsUser>, subcommand: &[&str]) -> Result<Command> {
        // pg_autoctl finds pg_ctl on PATH, and the other server programs next to it: the real
        // directory, then, as `pg_ctl` may be a symlink (/usr/local/bin/pg_ctl here).
        let pg_ctl = pg_binary("pg_ctl")?;
        let pg_bin = fs::canonicalize(&pg_ctl)
            .map_err(io(format!("resolve {}", pg_ctl.display())))?
            .parent()
            .map(Path::to_owned)
            .unwrap_or_default();
        // Not our own PATH: pg_autoctl logs an error for each of its directories the cluster
        // owner may not read (root's ~/.cargo/bin and the like).
        let mut path = OsString::from(&pg_bin);
        path.push(":/usr/local/bin:/usr/bin:/bin");
        let mut command = as_cluster_owner(Command::new(pg_autoctl_binary(&pg_bin)?), owner);
        // Our own PGUSER, PGPORT and the like would redirect pg_autoctl's connections.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                command.env_remove(key);
            }
        }
        command
            .args(subcommand)
            .arg("--pgdata")
            .arg(self.pgdata())
            // Our working directory may be unreachable for the cluster owner.
            .current_dir(&self.root)
            .env("PATH", path)
            .env("HOME", &self.root)
            .env("XDG_CONFIG_HOME", self.root.join("config"))
            .env("XDG_DATA_HOME", self.root.join("data"))
            .env("XDG_RUNTIME_DIR", self.root.join("run"))
            .env("PG_REGRESS_SOCK_DIR", SOCKET_DIR)
            .env("PGHOST", SOCKET_DIR);
        Ok(command)
    }
}

fn pg_autoctl_binary(pg_bin: &Path) -> Result<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([pg_bin.to_owned()])
        .map(|dir| dir.join("pg_autoctl"))
        .find(|path| path.is_file())
        .ok_or(DevError::NotInstalled {
            program: "pg_auto_failover's `pg_autoctl`".into(),
            fix: INSTALL_HINT,
        })
}

/// Fails with what to install unless the monitor's extension is there: otherwise
/// `pg_autoctl create monitor` would fail only in its log.
fn require_monitor_extension() -> Result<()> {
    let output = Command::new(pg_binary("pg_config")?)
        .arg("--sharedir")
        .output()
        .map_err(io("run pg_config --sharedir"))?;
    let share = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if share.join("extension/pgautofailover.control").is_file() {
        Ok(())
    } else {
        Err(DevError::NotInstalled {
            program: "the pgautofailover extension".into(),
            fix: INSTALL_HINT,
        })
    }
}

/// The PostgreSQL role pg_autoctl connects as: initdb's default superuser, named after the
/// OS user the clusters run as.
fn cluster_role(owner: &Option<OsUser>) -> Result<String> {
    if let Some(user) = owner {
        return Ok(user.name.clone());
    }
    let uid = nix::unistd::geteuid();
    let action = || format!("look up the name of OS user {uid}");
    nix::unistd::User::from_uid(uid)
        .map_err(|source| DevError::Os {
            action: action(),
            source,
        })?
        .map(|user| user.name)
        .ok_or_else(|| DevError::Os {
            action: action(),
            source: nix::Error::ENOENT,
        })
}

/// One connection to a local cluster, without sqlx's statement logging.
async fn connect(url: &str) -> Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(1)
        .connect_timeout(Duration::from_secs(2))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    Database::connect(options)
        .await
        .map_err(sql(format!("connecting to {url}")))
}

/// Polls `probe` until it yields, failing early, with a pointer to the log, if `service`
/// exits.
async fn wait_for<T>(
    service: &AutoctlService,
    timeout: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = service.exit_status() {
            return Err(service.exited(status));
        }
        if let Some(found) = probe().await {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            return Err(DevError::DidNotStart {
                name: service.name.clone(),
                log: service.log.clone(),
                source: Box::new(DevError::TimedOut {
                    what: what.to_owned(),
                    timeout,
                }),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A `pg_autoctl` process and everything it starts (its sub-processes, postgres), all in the
/// process group it leads: killing that group is the only way to be sure none survive.
#[derive(Debug)]
struct AutoctlService {
    name: String,
    log: PathBuf,
    process: Option<ChildService>,
    /// Kills the group if this process dies without dropping us; see [`arm_watchdog`].
    watchdog: Option<Child>,
}

impl AutoctlService {
    fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self> {
        log_output_to(&mut command, log)?;
        let process = ChildService::spawn(name, command, Signal::SIGINT)?;
        let mut service = Self {
            name: name.to_owned(),
            log: log.to_owned(),
            process: Some(process),
            watchdog: None,
        };
        let group = service.group().unwrap_or(Pid::from_raw(0));
        service.watchdog = Some(arm_watchdog(group).map_err(|source| DevError::Spawn {
            name: format!("the watchdog of {name}"),
            source,
        })?);
        Ok(service)
    }

    /// ChildService starts each child as the leader of a new process group.
    fn group(&self) -> Option<Pid> {
        let pid = self.process.as_ref()?.pid();
        (pid != 0).then(|| Pid::from_raw(pid as i32))
    }

    /// How pg_autoctl exited, if it has. It stays unreaped, so its group id cannot be
    /// reused before [`Self::kill`] signals the group.
    fn exit_status(&self) -> Option<ExitStatus> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.group()?), flags) {
            Ok(WaitStatus::Exited(_, code)) => Some(ExitStatus::from_raw(code << 8)),
            Ok(WaitStatus::Signaled(_, signal, _)) => Some(ExitStatus::from_raw(signal as i32)),
            _ => None,
        }
    }

    /// The error for pg_autoctl having exited with `status` when it should not have.
    fn exited(&self, status: ExitStatus) -> DevError {
        DevError::DidNotStart {
            name: self.name.clone(),
            log: self.log.clone(),
            source: Box::new(DevError::ExitedEarly {
                name: self.name.clone(),
                status,
            }),
        }
    }

    /// Waits for a one-shot pg_autoctl command; fails with the end of its log unless it
    /// succeeded.
    async fn finish(mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.exit_status() {
                break status;
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(DevError::TimedOut {
                    what: format!("{} (output in {})", self.name, self.log.display()),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.kill();
        if status.success() {
            return Ok(());
        }
        Err(DevError::CommandFailed {
            what: format!(
                "{} ({status}; full output in {})",
                self.name,
                self.log.display()
            ),
            output: format!("\n{}", log_tail(&self.log, 20)),
        })
    }

    /// SIGKILL to the whole group at once: what losing the machine looks like.
    fn kill(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        if let Some(group) = self.group() {
            let _ = killpg(group, Signal::SIGKILL);
        }
        if let Some(mut process) = self.process.take() {
            process.kill(); // Reaps the leader, which the group kill ended.
        }
    }

    /// Asks pg_autoctl to stop (SIGINT: a fast shutdown of its postgres), then kills whatever
    /// is left of its group.
    fn stop(&mut self, grace: Duration) {
        if let Some(group) = self.group()
            && self.exit_status().is_none()
        {
            let _ = kill(group, Signal::SIGINT);
            let deadline = Instant::now() + grace;
            while self.exit_status().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.exit_status().is_none() {
                tracing::warn!(service = %self.name, "did not stop in time; killing it");
            }
        }
        self.kill();
    }
}

impl Drop for AutoctlService {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

/// Starts a process that kills process group `group` once this process is gone, however it
/// went: it blocks reading a pipe whose only writer is us. [`AutoctlService::kill`] ends it
/// before ending the group, so it never signals a group id that may have been reused.
fn arm_watchdog(group: Pid) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    Command::new("/bin/sh")
        .args(["-c", "read -r _line; kill -KILL -\"$1\"", "orders-watchdog"])
        .arg(group.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group: Ctrl-C at a terminal must not take it down with us.
        .process_group(0)
        .spawn()
}

/// The postmaster serving `pgdata`, if one runs. A stale `postmaster.pid` may name a pid
/// that now belongs to another process: only one started with `-D pgdata` counts.
fn postmaster_pid(pgdata: &Path) -> Option<Pid> {
    let pid_file = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: i32 = pid_file.lines().next()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let pgdata = pgdata.as_os_str().as_encoded_bytes();
    cmdline
        .split(|&b| b == 0)
        .any(|arg| arg == pgdata)
        .then(|| Pid::from_raw(pid))
}

/// Kills a postmaster still serving `pgdata` after its keeper's group is gone (one that
/// escaped the group), and waits for it to go.
fn kill_stray_postmaster(pgdata: &Path) {
    let Some(pid) = postmaster_pid(pgdata) else {
        return;
    };
    tracing::warn!(%pid, pgdata = %pgdata.display(), "killing a postmaster its keeper left behind");
    let _ = kill(pid, Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while postmaster_pid(pgdata) == Some(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `lines` lines of `log`.
fn log_tail(log: &Path, lines: usize) -> String {
    let text = fs::read(log)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(reported: &str, assigned: &str) -> NodeState {
        NodeState {
            name: "node0".into(),
            port: 5432,
            reported: reported.into(),
            assigned: assigned.into(),
        }
    }

    #[test]
    fn a_lost_primary_being_demoted_is_not_primary() {
        assert!(!state("primary", "demote_timeout").is_primary());
        assert!(!state("primary", "demoted").is_primary());
    }

    #[test]
    fn a_promoted_standby_is_primary_once_it_reports_so() {
        assert!(!state("stop_replication", "wait_primary").is_primary());
        assert!(state("wait_primary", "wait_primary").is_primary());
        assert!(state("single", "single").is_primary());
    }

    #[test]
    fn fast_timings_let_a_cut_off_primary_demote_itself_before_its_standby_is_promoted() {
        let fast = FailoverTimings::fast();
        assert!(fast.network_partition_timeout < fast.primary_demote_timeout);
        let default = FailoverTimings::default();
        assert!(default.network_partition_timeout < default.primary_demote_timeout);
    }
}
