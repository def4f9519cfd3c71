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

use std::sync::Arc;
use std::time::Duration;

use temporalio_common::telemetry::metrics::{
    CoreMeter, Counter, Gauge, HistogramDuration, MetricKeyValue, MetricParameters, NewAttributes,
    NoOpCoreMeter,
};

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
        Self {
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
            meter,
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
}
