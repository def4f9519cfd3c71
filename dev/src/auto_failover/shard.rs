//! A shard as a formation of two nodes, and the waits on the monitor that tell when it is
//! ready, settled or failed over. [`HaShard::start`] on directories that hold nodes already
//! runs those nodes again rather than creating new ones.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use std::path::Path;
use std::time::{Duration, Instant};

use super::POLL;
use super::connection::{cluster_role, connect};
use super::monitor::{FailoverMonitor, NodeState};
use super::node::{FailoverNode, Seed};
use super::settled::{KeeperRun, first_to_run, is_settled, reports_running};
use crate::error::{DevError, Result, sql};
use crate::postgres::os_user;
use crate::{DEV_DATABASE, SUPERUSER};

/// Up to here a new primary may take to reach `single` (measured: ~1 s).
const PRIMARY_TIMEOUT: Duration = Duration::from_secs(60);
/// Up to here a new standby may take to become a synchronous secondary (measured: ~3 s),
/// and a formation run again to settle (measured: under 1 s to 20 s with a failover).
const STANDBY_TIMEOUT: Duration = Duration::from_secs(120);
/// Up to here the first node of a formation run again may take to report postgres running
/// (measured: ~1 s) before the other is started anyway.
const FIRST_NODE_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// a synchronous secondary, whichever node that is (a formation run again may fail over
    /// on the way). `ephemeral` as in [`crate::PostgresOptions`].
    pub async fn start(
        monitor: &FailoverMonitor,
        formation: &str,
        dir: &Path,
        ports: [u16; 2],
        ephemeral: bool,
    ) -> Result<Self> {
        monitor.create_formation(formation).await?;
        let stored = monitor.states(formation).await?;
        let began = Instant::now();
        let (nodes, startup) = if stored.is_empty() {
            create_nodes(monitor, formation, dir, ports, ephemeral, began).await?
        } else {
            let nodes = run_nodes_again(monitor, formation, dir, ports, &stored).await?;
            (nodes, StartupTimes::default())
        };
        let mut shard = Self {
            formation: formation.to_owned(),
            nodes,
            startup,
        };
        shard.wait_ready(monitor, STANDBY_TIMEOUT).await?;
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
            async |states| self.primary_in(states, Some(old)),
        )
        .await
    }

    /// Waits until one node is `primary` and the other `secondary`, both as assigned and
    /// with postgres running, in reports their keepers sent since they started.
    pub async fn wait_settled(&self, monitor: &FailoverMonitor, timeout: Duration) -> Result<()> {
        let keepers = self.keeper_runs();
        wait_for_states(
            monitor,
            &self.formation,
            &self.running_nodes(),
            timeout,
            "one primary and one secondary",
            async |states| is_settled(states, &keepers).then_some(()),
        )
        .await
    }

    /// Waits until the formation is settled and its primary confirms each commit with the
    /// standby: pg_auto_failover turns synchronous replication on only once the standby has
    /// caught up. The primary is looked up again on every poll, since a formation run again
    /// may fail over meanwhile, and a node whose postgres restarts under the connection is
    /// simply asked again.
    async fn wait_ready(&self, monitor: &FailoverMonitor, timeout: Duration) -> Result<()> {
        let keepers = self.keeper_runs();
        let mut asking: Option<(usize, DatabaseConnection)> = None;
        wait_for_states(
            monitor,
            &self.formation,
            &self.running_nodes(),
            timeout,
            "one primary and one secondary, replicating synchronously",
            async |states| {
                if !is_settled(states, &keepers) {
                    return None;
                }
                let primary = self.primary_in(states, None)?;
                match self.replicates_synchronously(primary, &mut asking).await {
                    Ok(synchronous) => synchronous.then_some(()),
                    Err(e) => {
                        tracing::debug!(node = primary, error = %e, "asking again");
                        None
                    }
                }
            },
        )
        .await?;
        if let Some((_, conn)) = asking {
            conn.close().await.map_err(sql("closing a connection"))?;
        }
        Ok(())
    }

    /// Whether node `primary` waits for a standby on each commit, asked over the connection
    /// in `asking` if it is to that node. The connection is kept there for the next poll
    /// unless asking failed.
    async fn replicates_synchronously(
        &self,
        primary: usize,
        asking: &mut Option<(usize, DatabaseConnection)>,
    ) -> Result<bool> {
        let node = &self.nodes[primary];
        let conn = match asking.take() {
            Some((i, conn)) if i == primary => conn,
            _ => connect(&node.url()).await?,
        };
        let what = || format!("reading replication state on node {}", node.name());
        let synchronous = conn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT current_setting('synchronous_standby_names') <> '' \
                 AND EXISTS (SELECT 1 FROM pg_stat_replication \
                 WHERE sync_state IN ('sync', 'quorum')) AS synchronous",
            ))
            .await
            .map_err(sql(what()))?
            .map(|row| row.try_get::<bool>("", "synchronous"))
            .transpose()
            .map_err(sql(what()))?;
        *asking = Some((primary, conn));
        Ok(synchronous == Some(true))
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

    fn keeper_runs(&self) -> [KeeperRun; 2] {
        self.nodes.each_ref().map(FailoverNode::keeper_run)
    }
}

/// A new formation: node0 from initdb, primary once it is `single`, then node1 from its
/// base backup.
async fn create_nodes(
    monitor: &FailoverMonitor,
    formation: &str,
    dir: &Path,
    ports: [u16; 2],
    ephemeral: bool,
    began: Instant,
) -> Result<([FailoverNode; 2], StartupTimes)> {
    let mut startup = StartupTimes::default();
    let first = start_node(
        monitor,
        formation,
        dir,
        ports,
        0,
        Seed::InitDb { ephemeral },
    )
    .await?;
    wait_for_states(
        monitor,
        formation,
        &[&first],
        PRIMARY_TIMEOUT,
        "node0 to serve as primary",
        async |states| {
            states
                .iter()
                .any(|s| s.port == ports[0] && s.is_settled() && s.is_primary())
                .then_some(())
        },
    )
    .await?;
    open_to_clients(&first).await?;
    startup.primary = began.elapsed();
    let second = start_node(monitor, formation, dir, ports, 1, Seed::BaseBackup).await?;
    Ok(([first, second], startup))
}

/// A formation that ran before: first the node the monitor means to be primary, then, once
/// that one reports postgres running, the other (see [`super::settled`] for why).
async fn run_nodes_again(
    monitor: &FailoverMonitor,
    formation: &str,
    dir: &Path,
    ports: [u16; 2],
    stored: &[NodeState],
) -> Result<[FailoverNode; 2]> {
    let first = first_to_run(stored, ports);
    let first_node = start_node(monitor, formation, dir, ports, first, Seed::BaseBackup).await?;
    let keeper = first_node.keeper_run();
    let running = wait_for_states(
        monitor,
        formation,
        &[&first_node],
        FIRST_NODE_TIMEOUT,
        &format!("node{first} to report postgres running"),
        async |states| reports_running(states, keeper).then_some(()),
    )
    .await;
    if let Err(e) = running {
        if first_node.is_running() {
            // It may wait for the other node; the wait for the whole formation decides.
            tracing::warn!(error = %e, "starting the other node anyway");
        } else {
            return Err(e);
        }
    }
    let other = start_node(monitor, formation, dir, ports, 1 - first, Seed::BaseBackup).await?;
    Ok(if first == 0 {
        [first_node, other]
    } else {
        [other, first_node]
    })
}

/// Starts node `i` (`dir/node{i}` on `ports[i]`).
async fn start_node(
    monitor: &FailoverMonitor,
    formation: &str,
    dir: &Path,
    ports: [u16; 2],
    i: usize,
    seed: Seed,
) -> Result<FailoverNode> {
    let name = format!("node{i}");
    FailoverNode::start(monitor, formation, &dir.join(&name), &name, ports[i], seed).await
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
    mut ready: impl AsyncFnMut(&[NodeState]) -> Option<T>,
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
                if let Some(found) = ready(&states).await {
                    return Ok(found);
                }
                describe(&states)
            }
            Err(e) => format!("(could not ask: {e})"),
        };
        if Instant::now() >= deadline {
            let logs: Vec<String> = nodes
                .iter()
                .map(|n| n.log().display().to_string())
                .collect();
            return Err(DevError::Formation {
                formation: formation.to_owned(),
                what: format!(
                    "timed out after {timeout:?} waiting for {what} (the keepers' logs say why: {})",
                    logs.join(", ")
                ),
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
