//! Named fault-injection points for crash and cancellation tests.
//!
//! `ORDERS_FAILPOINTS` holds a comma-separated list of armed points:
//! - `create_order.after_commit` aborts the process there, the way a SIGKILL would: after
//!   the database committed, before Temporal hears about it. Tests use it to prove a retried
//!   activity neither duplicates nor loses rows.
//! - `reserve_credit_and_confirm.after_commit` aborts there: the credit hold and the
//!   confirmation committed together, and Temporal has not heard of it.
//! - `delete_order.after_commit` aborts there: a compensation has left its tombstone, and the
//!   workflow task that ran it has not completed.
//! - `reserve_credit.before=sleep:3000` sleeps 3000 ms there, holding the step open so a test
//!   can cancel the workflow mid-saga.
//! - `delete_order.before=fail` makes every attempt there fail with a retryable error, the
//!   way a shard that stays down would, so a test can watch a compensation give up. Tests
//!   arm `prepare_part.before=fail` and `commit_part.before=fail` the same way, to hold a
//!   two-phase order between its plan and its prepare, or with its parts prepared
//!   (`rollback_part.before=fail`: prepared, its decision rollback recorded).
//!   `commit_stock_part.before=sleep:N` holds only the parts without the order: the order is
//!   committed and confirmed, its stock parts still prepared.
//!
//! - The bucket mover's points: `copy_bucket.before` (armed `=fail`: a copy that keeps
//!   failing with both shards up), `copy_bucket.after_chunk` (after each heartbeated COPY
//!   chunk), `copy_bucket.in_order_items` (after each chunk of order items: the heartbeats
//!   the server holds are then older than the orders copied), `freeze_bucket.after_freeze`, `cut_over_bucket.after_source` (the source fenced
//!   `moved`, the map not yet published), `cut_over_bucket.after_publish` (the map published
//!   on both shards, the target not yet opened), and `verify_bucket.corrupt_target=fail`, which
//!   changes one customer of the bucket on the target before the checksums, as a broken copy
//!   would.
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
    Fail,
}

/// The error an armed `=fail` point returns.
#[derive(Debug, thiserror::Error)]
#[error("failpoint {0} is armed to fail")]
pub struct InjectedFailure(String);

fn parse(spec: &str) -> Vec<(String, Action)> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| match entry.split_once('=') {
            Some((point, "fail")) => (point.to_owned(), Action::Fail),
            Some((point, action)) => {
                let ms = action
                    .strip_prefix("sleep:")
                    .and_then(|ms| ms.parse().ok())
                    .unwrap_or(1000);
                (point.to_owned(), Action::Sleep(Duration::from_millis(ms)))
            }
            None => (entry.to_owned(), Action::Abort),
        })
        .collect()
}

fn armed() -> &'static [(String, Action)] {
    static ARMED: OnceLock<Vec<(String, Action)>> = OnceLock::new();
    ARMED.get_or_init(|| parse(&std::env::var(ENV_VAR).unwrap_or_default()))
}

/// Performs the action armed at `point`, if any; an armed `=fail` returns an error.
pub async fn hit(point: &str) -> Result<(), InjectedFailure> {
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
            Action::Fail => {
                tracing::warn!(point, "failpoint reached: failing");
                return Err(InjectedFailure(point.to_owned()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_parse_into_abort_sleep_and_fail_actions() {
        assert_eq!(
            parse(
                "create_order.after_commit, reserve_credit.before=sleep:250,delete_order.before=fail"
            ),
            vec![
                ("create_order.after_commit".to_owned(), Action::Abort),
                (
                    "reserve_credit.before".to_owned(),
                    Action::Sleep(Duration::from_millis(250))
                ),
                ("delete_order.before".to_owned(), Action::Fail),
            ]
        );
        assert!(parse("").is_empty());
    }
}
