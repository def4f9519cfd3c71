//! Named fault-injection points for crash and cancellation tests.
//!
//! `ORDERS_FAILPOINTS` holds a comma-separated list of armed points:
//! - `create_order.after_commit` aborts the process there, the way a SIGKILL would: after
//!   the database committed, before Temporal hears about it. Tests use it to prove a retried
//!   activity neither duplicates nor loses rows.
//! - `reserve_credit.before=sleep:3000` sleeps 3000 ms there, holding the step open so a test
//!   can cancel the workflow mid-saga.
//!
//! Unset (the normal case), every point is a no-op costing one slice lookup.

use std::sync::OnceLock;
use std::time::Duration;

/// Environment variable holding the armed points.
pub const ENV_VAR: &str = "ORDERS_FAILPOINTS";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Abort,
    Sleep(Duration),
}

fn parse(spec: &str) -> Vec<(String, Action)> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| match entry.split_once("=sleep:") {
            Some((point, ms)) => (
                point.to_owned(),
                Action::Sleep(Duration::from_millis(ms.parse().unwrap_or(1000))),
            ),
            None => (entry.to_owned(), Action::Abort),
        })
        .collect()
}

fn armed() -> &'static [(String, Action)] {
    static ARMED: OnceLock<Vec<(String, Action)>> = OnceLock::new();
    ARMED.get_or_init(|| parse(&std::env::var(ENV_VAR).unwrap_or_default()))
}

/// Performs the action armed at `point`, if any.
pub async fn hit(point: &str) {
    for (armed_point, action) in armed() {
        if armed_point != point {
            continue;
        }
        match action {
            Action::Abort => {
                tracing::error!(point, "failpoint reached: aborting the process");
                std::process::abort();
            }
            Action::Sleep(duration) => {
                tracing::warn!(point, ?duration, "failpoint reached: sleeping");
                tokio::time::sleep(*duration).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_into_abort_and_sleep_actions() {
        assert_eq!(
            parse("create_order.after_commit, reserve_credit.before=sleep:250"),
            vec![
                ("create_order.after_commit".to_owned(), Action::Abort),
                (
                    "reserve_credit.before".to_owned(),
                    Action::Sleep(Duration::from_millis(250))
                ),
            ]
        );
        assert!(parse("").is_empty());
    }
}
