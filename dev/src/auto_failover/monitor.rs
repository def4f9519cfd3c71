//! The monitor: the one service that knows every node's state and decides which is primary.
//! Everything else asks it, through SQL on its `pgautofailover` schema.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::connection::{cluster_role, connect};
use super::postmaster::kill_stray_postmaster;
use super::service::{AutoctlService, STOP_GRACE, wait_for};
use super::service_dir::ServiceDir;
use super::{FailoverTimings, INSTALL_HINT};
use crate::error::{DevError, Result, io, sql};
use crate::postgres::{os_user, pg_binary};
use crate::{DEV_DATABASE, port_is_open};

/// States in which a node serves writes as its formation's primary.
const PRIMARY_STATES: [&str; 5] = [
    "single",
    "wait_primary",
    "primary",
    "join_primary",
    "apply_settings",
];
/// States the monitor assigns a standby on its way to primary, before it serves writes.
const PROMOTION_STATES: [&str; 3] = ["prepare_promotion", "stop_replication", "fast_forward"];
/// Up to here waits for the monitor's postgres and extension (measured: ~1.5 s).
const MONITOR_START_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Whether its keeper last reported postgres running (`reportedpgisrunning`).
    pub pg_is_running: bool,
    /// When its keeper last reported (`reporttime`). The monitor keeps this across its own
    /// restarts: a report older than the keeper's start is from before a stop.
    pub reported_at: SystemTime,
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

    /// Whether the monitor means this node to serve writes: it assigned it a primary's
    /// state, or a step of promoting it.
    pub fn is_meant_to_be_primary(&self) -> bool {
        PRIMARY_STATES.contains(&self.assigned.as_str())
            || PROMOTION_STATES.contains(&self.assigned.as_str())
    }

    /// Whether its keeper has reported since `time` (a keeper's start, say).
    pub fn reported_since(&self, time: SystemTime) -> bool {
        self.reported_at > time
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (port {}) reported {}, assigned {}",
            self.name, self.port, self.reported, self.assigned
        )?;
        if !self.pg_is_running {
            write!(f, ", postgres not running")?;
        }
        match SystemTime::now().duration_since(self.reported_at) {
            Ok(age) => write!(f, ", {:.1} s ago", age.as_secs_f64()),
            Err(_) => Ok(()),
        }
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
    pub(super) fn node_url(&self) -> String {
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
                 goalstate::text AS assigned, \
                 coalesce(reportedpgisrunning, false) AS pg_is_running, \
                 extract(epoch FROM reporttime)::float8 AS reported_at \
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
                    pg_is_running: row.try_get("", "pg_is_running")?,
                    reported_at: from_unix_seconds(row.try_get("", "reported_at")?),
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

/// A time given as seconds since the Unix epoch, as `extract(epoch …)` returns it.
fn from_unix_seconds(seconds: f64) -> SystemTime {
    UNIX_EPOCH + Duration::try_from_secs_f64(seconds).unwrap_or_default()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state(reported: &str, assigned: &str) -> NodeState {
        NodeState {
            name: "node0".into(),
            port: 5432,
            reported: reported.into(),
            assigned: assigned.into(),
            pg_is_running: true,
            reported_at: SystemTime::now(),
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
    fn a_standby_being_promoted_is_meant_to_be_primary_and_the_old_primary_is_not() {
        assert!(state("secondary", "prepare_promotion").is_meant_to_be_primary());
        assert!(state("prepare_promotion", "stop_replication").is_meant_to_be_primary());
        assert!(state("stop_replication", "wait_primary").is_meant_to_be_primary());
        assert!(!state("primary", "demote_timeout").is_meant_to_be_primary());
        assert!(!state("secondary", "secondary").is_meant_to_be_primary());
    }

    #[test]
    fn epoch_seconds_from_the_monitor_become_the_same_instant() {
        let time = from_unix_seconds(1_700_000_000.25);
        assert_eq!(
            time.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_millis(1_700_000_000_250)
        );
    }
}
