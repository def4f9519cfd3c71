//! Named crash points for fault-injection tests.
//!
//! `ORDERS_FAILPOINTS=create_order.after_commit` makes the process abort the moment it reaches
//! that point, the way a SIGKILL would: after the database committed, before Temporal hears
//! about it. Tests use it to prove a retried activity neither duplicates nor loses rows.
//! Unset (the normal case), every point is a no-op.

use std::sync::OnceLock;

/// Environment variable holding a comma-separated list of armed points.
pub const ENV_VAR: &str = "ORDERS_FAILPOINTS";

fn armed() -> &'static [String] {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var(ENV_VAR)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

/// Aborts the process if `point` is armed.
pub fn crash_if_armed(point: &str) {
    if armed().iter().any(|p| p == point) {
        tracing::error!(point, "failpoint reached: aborting the process");
        std::process::abort();
    }
}
