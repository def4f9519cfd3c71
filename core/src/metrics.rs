//! The order service's own metrics, recorded through the Temporal SDK's meter so they are
//! served on the same Prometheus endpoint as the SDK's metrics (`temporal_*`).
//!
//! | metric | labels | meaning |
//! |---|---|---|
//! | `orders_placed` | | orders confirmed |
//! | `orders_failed` | `reason` | orders that ended failed, by failure type |
//! | `orders_cancelled` | | orders cancelled (and compensated) |
//! | `orders_compensated` | | orders whose compensations all ran |
//! | `orders_compensation_failed` | | orders left needing repair |
//! | `orders_shard_call_duration` | `shard`, `activity` | time an activity spent on its shard |
//! | `orders_shard_pool_connections` | `shard`, `state` (`in_use`, `idle`) | pool use |
//! | `orders_cache_lookups` | `result` (`hit`, `miss`) | order cache lookups; hit ratio = hit / all |
//! | `orders_step_failures` | `operation`, `step` | failed attempts of an operation's step (a reshard phase, an import chunk) |
//! | `orders_shard_hosts` | `shard` | hosts the shard is given as (a primary and its standbys) |
//! | `orders_shard_role` | `shard`, `host`, `role` | 1 for each host's current role (`primary`, `standby`, `down`), 0 for the others (a single host is primary while it answers) |
//! | `orders_shard_sync_standbys` | `shard` | standbys the primary waits for at commit (0 for a single host) |
//! | `orders_replication_lag_seconds` | `shard`, `host` | how far a standby's replay is behind its primary |
//! | `orders_shard_failovers` | `shard` | times the worker followed the shard's primary to another host |

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::shards::Shard;
use temporalio_common::telemetry::metrics::{
    CoreMeter, Counter, Gauge, GaugeF64, HistogramDuration, MetricKeyValue, MetricParameters,
    NewAttributes, NoOpCoreMeter,
};

/// The steps whose failures are served from the start (at zero), so an alert on their
/// increase sees the series before the first failure: the bucket mover's phases and the
/// import's steps.
const STEPS_WATCHED: [(&str, &str); 9] = [
    ("reshard", "PlanReshard"),
    ("reshard", "BeginBucketMove"),
    ("reshard", "CopyBucket"),
    ("reshard", "CatchUpBucket"),
    ("reshard", "FreezeAndCutOver"),
    ("reshard", "CleanUpBucket"),
    ("reshard", "AbortBucketMove"),
    ("import", "InspectImportFile"),
    ("import", "ImportSegment"),
];

/// Handles to every metric; cheap to share.
pub struct OrderMetrics {
    meter: Arc<dyn CoreMeter>,
    placed: Counter,
    failed: Counter,
    cancelled: Counter,
    compensated: Counter,
    compensation_failed: Counter,
    shard_call: HistogramDuration,
    pool_connections: Gauge,
    cache_lookups: Counter,
    shard_up: Gauge,
    prepared_parts: Gauge,
    prepared_oldest_age: Gauge,
    recovery_actions: Counter,
    import_rows: Counter,
    step_failures: Counter,
    shard_hosts: Gauge,
    shard_role: Gauge,
    sync_standbys: Gauge,
    replication_lag: GaugeF64,
    failovers: Counter,
    restore_point_taken: Gauge,
}

impl OrderMetrics {
    /// Metrics recorded on `meter`.
    pub fn new(meter: Arc<dyn CoreMeter>) -> Self {
        let counter = |name: &'static str, description: &'static str| {
            meter.counter(
                MetricParameters::builder()
                    .name(name)
                    .description(description)
                    .build(),
            )
        };
        let metrics = Self {
            placed: counter("orders_placed", "Orders confirmed"),
            failed: counter("orders_failed", "Orders that ended failed, by failure type"),
            cancelled: counter("orders_cancelled", "Orders cancelled and compensated"),
            compensated: counter("orders_compensated", "Orders whose compensations all ran"),
            compensation_failed: counter(
                "orders_compensation_failed",
                "Orders whose compensation failed; repair needed",
            ),
            shard_call: meter.histogram_duration(
                MetricParameters::builder()
                    .name("orders_shard_call_duration")
                    .description("Time an activity spent on its shard")
                    .build(),
            ),
            pool_connections: meter.gauge(
                MetricParameters::builder()
                    .name("orders_shard_pool_connections")
                    .description("Connections of each shard pool, by state")
                    .build(),
            ),
            cache_lookups: counter(
                "orders_cache_lookups",
                "Order cache lookups, by result (hit or miss)",
            ),
            shard_up: meter.gauge(
                MetricParameters::builder()
                    .name("orders_shard_up")
                    .description("1 when the shard answered the worker's last sample, 0 when not")
                    .build(),
            ),
            prepared_parts: meter.gauge(
                MetricParameters::builder()
                    .name("orders_prepared_parts")
                    .description("Two-phase parts prepared and not yet decided, per shard")
                    .build(),
            ),
            prepared_oldest_age: meter.gauge(
                MetricParameters::builder()
                    .name("orders_prepared_oldest_age_seconds")
                    .description(
                        "Age of the oldest prepared two-phase part, per shard (0 when none)",
                    )
                    .build(),
            ),
            recovery_actions: counter(
                "orders_recovery_actions",
                "Prepared parts the in-doubt recovery resolved, by action (committed or rolled_back)",
            ),
            import_rows: counter(
                "orders_import_rows",
                "Bulk-import lines, by outcome (imported or rejected)",
            ),
            step_failures: counter(
                "orders_step_failures",
                "Failed attempts of an operation's step, by operation and step",
            ),
            shard_hosts: meter.gauge(
                MetricParameters::builder()
                    .name("orders_shard_hosts")
                    .description("Hosts the shard is given as: a primary and its standbys")
                    .build(),
            ),
            shard_role: meter.gauge(
                MetricParameters::builder()
                    .name("orders_shard_role")
                    .description(
                        "1 for each host's current role (primary, standby, down), 0 for the others",
                    )
                    .build(),
            ),
            sync_standbys: meter.gauge(
                MetricParameters::builder()
                    .name("orders_shard_sync_standbys")
                    .description("Standbys the shard's primary waits for at commit")
                    .build(),
            ),
            replication_lag: meter.gauge_f64(
                MetricParameters::builder()
                    .name("orders_replication_lag_seconds")
                    .description("How far a standby's replay is behind its primary")
                    .build(),
            ),
            failovers: counter(
                "orders_shard_failovers",
                "Times the worker followed a shard's primary to another host",
            ),
            restore_point_taken: meter.gauge(
                MetricParameters::builder()
                    .name("orders_restore_point_timestamp_seconds")
                    .description(
                        "When the shard's newest consistent restore point (orders backup point) was written",
                    )
                    .build(),
            ),
            meter,
        };
        metrics.start_at_zero();
        metrics
    }

    /// Counters that alerts and panels watch are exported from the start, at zero: an alert
    /// on `increase(...)` must see the series before its first event, not only after.
    fn start_at_zero(&self) {
        for counter in [
            &self.placed,
            &self.cancelled,
            &self.compensated,
            &self.compensation_failed,
        ] {
            counter.add(0, &self.labels([]));
        }
        for reason in crate::failure::FailureType::ALL {
            self.failed
                .add(0, &self.labels([("reason", reason.as_str().to_owned())]));
        }
        for action in ["committed", "rolled_back"] {
            self.recovery_actions
                .add(0, &self.labels([("action", action.to_owned())]));
        }
        for (operation, step) in STEPS_WATCHED {
            self.step_failures.add(
                0,
                &self.labels([
                    ("operation", operation.to_owned()),
                    ("step", step.to_owned()),
                ]),
            );
        }
        for outcome in ["imported", "rejected"] {
            self.import_rows
                .add(0, &self.labels([("outcome", outcome.to_owned())]));
        }
    }

    /// Metrics that go nowhere, for code paths without an exporter.
    pub fn disabled() -> Self {
        Self::new(Arc::new(NoOpCoreMeter))
    }

    fn labels(
        &self,
        pairs: impl IntoIterator<Item = (&'static str, String)>,
    ) -> temporalio_common::telemetry::metrics::MetricAttributes {
        self.meter.new_attributes(NewAttributes::from(
            pairs.into_iter().map(|(k, v)| MetricKeyValue::new(k, v)),
        ))
    }

    pub fn order_placed(&self) {
        self.placed.add(1, &self.labels([]));
    }

    pub fn order_failed(&self, reason: &str) {
        self.failed
            .add(1, &self.labels([("reason", reason.to_owned())]));
    }

    pub fn order_cancelled(&self) {
        self.cancelled.add(1, &self.labels([]));
    }

    pub fn order_compensated(&self) {
        self.compensated.add(1, &self.labels([]));
    }

    pub fn compensation_failed(&self) {
        self.compensation_failed.add(1, &self.labels([]));
    }

    /// Records how long `activity` spent on `shard`.
    pub fn shard_call(&self, shard: usize, activity: &'static str, elapsed: Duration) {
        self.shard_call.record(
            elapsed,
            &self.labels([
                ("shard", shard.to_string()),
                ("activity", activity.to_owned()),
            ]),
        );
    }

    /// Records one order cache lookup.
    pub fn cache_lookup(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.cache_lookups
            .add(1, &self.labels([("result", result.to_owned())]));
    }

    /// Records the current size of `shard`'s pool.
    pub fn pool_connections(&self, shard: usize, in_use: u64, idle: u64) {
        let shard = shard.to_string();
        self.pool_connections.record(
            in_use,
            &self.labels([("shard", shard.clone()), ("state", "in_use".to_owned())]),
        );
        self.pool_connections.record(
            idle,
            &self.labels([("shard", shard), ("state", "idle".to_owned())]),
        );
    }

    /// Starts timing `activity` on `shard`; the time is recorded when the guard drops,
    /// whichever way the activity ends.
    pub fn time(&self, shard: &Shard, activity: &'static str) -> ShardTimer<'_> {
        ShardTimer {
            metrics: self,
            shard: shard.index,
            activity,
            started: Instant::now(),
        }
    }

    /// Records what the last probe saw of `shard`'s hosts, and the failovers followed since
    /// the last call (`new_failovers`). A single-host shard is its own primary while it
    /// answers (`up`), so dashboards and alerts read every shard the same way.
    pub fn shard_hosts(
        &self,
        shard: usize,
        hosts: &[crate::primary::HostState],
        new_failovers: u64,
        up: bool,
    ) {
        use crate::primary::Role;
        let shard_label = ("shard", shard.to_string());
        let labels = self.labels([shard_label.clone()]);
        self.shard_hosts.record(hosts.len() as u64, &labels);
        self.failovers.add(new_failovers, &labels);
        let sync = hosts.iter().find_map(|h| h.sync_standbys).unwrap_or(0);
        self.sync_standbys.record(u64::from(sync), &labels);
        for host in hosts {
            let current = match (hosts.len(), up) {
                (1, true) => Role::Primary,
                (1, false) => Role::Down,
                _ => host.role,
            };
            for role in [Role::Primary, Role::Standby, Role::Down] {
                self.shard_role.record(
                    u64::from(current == role),
                    &self.labels([
                        shard_label.clone(),
                        ("host", host.address.clone()),
                        ("role", role.as_str().to_owned()),
                    ]),
                );
            }
            let lag = match current {
                Role::Primary => Some(0.0),
                _ => host.replay_lag.map(|lag| lag.as_secs_f64()),
            };
            if let Some(lag) = lag {
                self.replication_lag.record(
                    lag,
                    &self.labels([shard_label.clone(), ("host", host.address.clone())]),
                );
            }
        }
    }

    /// Records whether `shard` answered the last sample.
    pub fn shard_up(&self, shard: usize, up: bool) {
        self.shard_up
            .record(u64::from(up), &self.labels([("shard", shard.to_string())]));
    }

    /// Records `shard`'s prepared two-phase parts: how many, and the oldest one's age.
    pub fn prepared_parts(&self, shard: usize, count: u64, oldest_age_secs: u64) {
        let labels = self.labels([("shard", shard.to_string())]);
        self.prepared_parts.record(count, &labels);
        self.prepared_oldest_age.record(oldest_age_secs, &labels);
    }

    /// Records when `shard`'s newest restore point was written (seconds since the epoch).
    pub fn restore_point_taken(&self, shard: usize, unix_secs: u64) {
        self.restore_point_taken
            .record(unix_secs, &self.labels([("shard", shard.to_string())]));
    }

    /// Records one part the in-doubt recovery committed (or else rolled back).
    pub fn recovery_action(&self, committed: bool) {
        let action = if committed {
            "committed"
        } else {
            "rolled_back"
        };
        self.recovery_actions
            .add(1, &self.labels([("action", action.to_owned())]));
    }

    /// Records one failed attempt of `step` of `operation`.
    pub fn step_failed(&self, operation: &'static str, step: &'static str) {
        self.step_failures.add(
            1,
            &self.labels([
                ("operation", operation.to_owned()),
                ("step", step.to_owned()),
            ]),
        );
    }

    /// Records bulk-import lines written and refused.
    pub fn import_rows(&self, imported: u64, rejected: u64) {
        self.import_rows
            .add(imported, &self.labels([("outcome", "imported".to_owned())]));
        self.import_rows
            .add(rejected, &self.labels([("outcome", "rejected".to_owned())]));
    }
}

/// Records an activity's time on its shard when dropped (see [`OrderMetrics::time`]).
pub struct ShardTimer<'a> {
    metrics: &'a OrderMetrics,
    shard: usize,
    activity: &'static str,
    started: Instant,
}

impl Drop for ShardTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .shard_call(self.shard, self.activity, self.started.elapsed());
    }
}
