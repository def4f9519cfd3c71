//! A shard as a formation of two nodes, and the waits on the monitor that tell when it is
//! ready, settled or failed over. [`HaShard::start`] on directories that hold nodes already
//! runs those nodes again rather than creating new ones.

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use std::path::Path;
use std::time::{Duration, Instant};

use super::POLL;
use super::connection::{cluster_role, connect};
use super::monitor::{FailoverMonitor, NodeState};
use super::node::{FailoverNode, Seed};
use crate::error::{DevError, Result, sql};
use crate::postgres::os_user;
use crate::{DEV_DATABASE, SUPERUSER};

/// Up to here a new primary may take to reach `single` (measured: ~1 s).
const PRIMARY_TIMEOUT: Duration = Duration::from_secs(60);
/// Up to here a new standby may take to become a synchronous secondary (measured: ~3 s).
const STANDBY_TIMEOUT: Duration = Duration::from_secs(120);

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
            .map(|n| format!("127.0.0.1:{}", n.port()))
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
                    primary.name()
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
                        primary.name()
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
            .filter_map(|s| self.nodes.iter().position(|n| n.port() == s.port))
            .find(|&i| Some(i) != except)
    }

    /// Nodes whose keeper should be running: a wait fails at once if one exits.
    fn running_nodes(&self) -> Vec<&FailoverNode> {
        self.nodes.iter().filter(|n| n.keeper().is_some()).collect()
    }
}

/// Creates the `orders` role the project's URLs use (trust: no password), and forces a
/// checkpoint, without which the standby's pg_basebackup waits for a spread checkpoint:
/// minutes on an idle primary.
async fn open_to_clients(primary: &FailoverNode) -> Result<()> {
    let url = format!(
        "postgres://{}@127.0.0.1:{}/{DEV_DATABASE}",
        cluster_role(&os_user()?)?,
        primary.port()
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
            if let Some(keeper) = node.keeper()
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
