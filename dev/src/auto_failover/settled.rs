//! Judging a formation from its monitor's states when those may be old. The monitor keeps
//! each node's last report across its own restarts: run again on its directories, it shows
//! the formation as it was at the stop (settled, or halfway through a failover) until the
//! keepers report again. So:
//!
//! - a formation is settled only on reports its keepers sent since they started, with
//!   postgres running ([`is_settled`]);
//! - a formation run again starts first the node the monitor means to be primary
//!   ([`first_to_run`]), and the other only once that one reports postgres running
//!   ([`reports_running`]). A keeper's first report may say postgres is not running yet, and
//!   the monitor fails a primary over at once on such a report if its standby is healthy.

use std::time::SystemTime;

use super::monitor::NodeState;

/// One of our nodes as these judgements need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct KeeperRun {
    /// The node's PostgreSQL port, which names it on the monitor.
    pub(super) port: u16,
    /// When its keeper started; `None` while the node is lost.
    pub(super) started: Option<SystemTime>,
}

impl KeeperRun {
    /// Whether `state` is this node's, from a report its keeper sent since it started.
    fn reported_in(&self, state: &NodeState) -> bool {
        state.port == self.port && self.started.is_some_and(|t| state.reported_since(t))
    }
}

/// Whether `states` show one primary and one secondary, each in the state assigned, with
/// postgres running, as reported by `keepers` since they started.
pub(super) fn is_settled(states: &[NodeState], keepers: &[KeeperRun]) -> bool {
    let settled_as = |role: &str| {
        states
            .iter()
            .filter(|s| s.reported == role && s.is_settled() && s.pg_is_running)
            .filter(|s| keepers.iter().any(|k| k.reported_in(s)))
            .count()
    };
    states.len() == 2 && settled_as("primary") == 1 && settled_as("secondary") == 1
}

/// Whether `keeper` has reported postgres running since it started.
pub(super) fn reports_running(states: &[NodeState], keeper: KeeperRun) -> bool {
    states
        .iter()
        .any(|s| keeper.reported_in(s) && s.pg_is_running)
}

/// Which of the nodes on `ports` to run first when a formation runs again, going by the
/// states the monitor kept from before the stop: the node it means to be primary (even
/// halfway through promoting it), else the one that last reported serving as primary, else
/// the first.
pub(super) fn first_to_run(stored: &[NodeState], ports: [u16; 2]) -> usize {
    let index_of = |state: &NodeState| ports.iter().position(|&p| p == state.port);
    stored
        .iter()
        .filter(|s| s.is_meant_to_be_primary())
        .chain(stored.iter().filter(|s| s.is_primary()))
        .find_map(index_of)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const PORTS: [u16; 2] = [5432, 5433];

    fn node(port: u16, reported: &str, assigned: &str, reported_at: SystemTime) -> NodeState {
        NodeState {
            name: format!("node{}", port - PORTS[0]),
            port,
            reported: reported.into(),
            assigned: assigned.into(),
            pg_is_running: true,
            reported_at,
        }
    }

    fn keepers(started: SystemTime) -> [KeeperRun; 2] {
        PORTS.map(|port| KeeperRun {
            port,
            started: Some(started),
        })
    }

    #[test]
    fn a_primary_and_a_secondary_reporting_since_their_keepers_started_are_settled() {
        let started = SystemTime::now();
        let now = started + Duration::from_secs(1);
        let states = [
            node(PORTS[0], "primary", "primary", now),
            node(PORTS[1], "secondary", "secondary", now),
        ];
        assert!(is_settled(&states, &keepers(started)));
    }

    #[test]
    fn states_kept_from_before_the_keepers_started_are_not_settled() {
        let before = SystemTime::now();
        let started = before + Duration::from_secs(5);
        let states = [
            node(
                PORTS[0],
                "primary",
                "primary",
                started + Duration::from_secs(1),
            ),
            node(PORTS[1], "secondary", "secondary", before),
        ];
        assert!(!is_settled(&states, &keepers(started)));
    }

    #[test]
    fn a_node_reporting_postgres_down_is_not_settled() {
        let started = SystemTime::now();
        let now = started + Duration::from_secs(1);
        let mut standby = node(PORTS[1], "secondary", "secondary", now);
        standby.pg_is_running = false;
        let states = [node(PORTS[0], "primary", "primary", now), standby.clone()];
        assert!(!is_settled(&states, &keepers(started)));
        assert!(!reports_running(&states, keepers(started)[1]));
        assert!(reports_running(&states, keepers(started)[0]));
    }

    #[test]
    fn a_lost_node_is_never_settled() {
        let started = SystemTime::now();
        let now = started + Duration::from_secs(1);
        let states = [
            node(PORTS[0], "primary", "primary", now),
            node(PORTS[1], "secondary", "secondary", now),
        ];
        let mut keepers = keepers(started);
        keepers[1].started = None;
        assert!(!is_settled(&states, &keepers));
    }

    #[test]
    fn a_formation_stopped_during_a_failover_runs_the_promoted_standby_first() {
        let then = SystemTime::now();
        let stored = [
            node(PORTS[0], "primary", "demote_timeout", then),
            node(PORTS[1], "prepare_promotion", "stop_replication", then),
        ];
        assert_eq!(first_to_run(&stored, PORTS), 1);
    }

    #[test]
    fn a_settled_formation_runs_its_primary_first_wherever_it_is() {
        let then = SystemTime::now();
        let stored = [
            node(PORTS[0], "secondary", "secondary", then),
            node(PORTS[1], "primary", "primary", then),
        ];
        assert_eq!(first_to_run(&stored, PORTS), 1);
        let stored = [
            node(PORTS[0], "primary", "primary", then),
            node(PORTS[1], "secondary", "secondary", then),
        ];
        assert_eq!(first_to_run(&stored, PORTS), 0);
    }

    #[test]
    fn without_any_primary_in_sight_the_first_node_runs_first() {
        assert_eq!(first_to_run(&[], PORTS), 0);
    }
}
