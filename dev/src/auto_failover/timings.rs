//! How fast a formation gives up on its primary: the monitor's health checks and each node's
//! network-partition timeout, as one value a monitor is started with.

use std::fmt;
use std::time::Duration;

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
    pub(super) fn monitor_settings(&self) -> [(&'static str, u128); 6] {
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
    pub(super) fn network_partition_seconds(&self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_timings_let_a_cut_off_primary_demote_itself_before_its_standby_is_promoted() {
        let fast = FailoverTimings::fast();
        assert!(fast.network_partition_timeout < fast.primary_demote_timeout);
        let default = FailoverTimings::default();
        assert!(default.network_partition_timeout < default.primary_demote_timeout);
    }
}
