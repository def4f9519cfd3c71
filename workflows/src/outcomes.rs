//! Counting how orders end, from the workflow that knows.
//!
//! The worker installs its metrics once at start-up. Workflow code records an outcome only
//! when it is not replaying, so a query or a cache eviction that replays a finished order
//! does not count it again. (A worker that dies between recording and completing its
//! workflow task may count an outcome twice: metrics are at-least-once.)

use std::sync::{Arc, OnceLock};

use orders_core::metrics::OrderMetrics;
use temporalio_sdk::WorkflowContext;

static METRICS: OnceLock<Arc<OrderMetrics>> = OnceLock::new();

/// Sends outcomes to `metrics` from now on. Later calls are ignored.
pub fn install(metrics: Arc<OrderMetrics>) {
    let _ = METRICS.set(metrics);
}

/// Records an outcome unless the workflow is replaying history.
pub(crate) fn record<W>(ctx: &WorkflowContext<W>, outcome: impl FnOnce(&OrderMetrics)) {
    if ctx.is_replaying() {
        return;
    }
    if let Some(metrics) = METRICS.get() {
        outcome(metrics);
    }
}
