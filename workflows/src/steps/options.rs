//! The options each [`Phase`] of a step runs with, as a local activity or as an activity.
//!
//! They live beside [`Steps`](super::Steps), which picks them; the saga and the workflows only
//! name a phase.

use std::time::Duration;

use temporalio_common::{ActivityCloseTimeouts, RetryPolicy};
use temporalio_sdk::{
    ActivityCancellationType, ActivityOptions, LocalActivityOptions, WorkflowCancellationToken,
};

use super::Phase;

/// Options of forward steps: retried until they succeed or reject, and on cancellation the
/// workflow waits until the running attempt has really stopped before compensating. An older
/// attempt that timed out may still be running; the compensations leave tombstones (see the
/// activities) that such a late attempt respects.
///
/// The steps are short database transactions, so their start-to-close is short too: it is
/// how long Temporal waits before it retries a step whose worker died (a step blocked on a
/// row lock fails by itself sooner, see `orders_core::shards::LOCK_TIMEOUT`). Retries
/// come back within two seconds at most: a step that met a busy row or a shard restarting
/// should try again soon, not after a long back-off.
pub fn forward_options() -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(5))
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_millis(200))
                .maximum_interval(Duration::from_secs(2))
                .build(),
        )
        .cancellation_type(ActivityCancellationType::WaitCancellationCompleted)
        .build()
}

/// How long phase one of a two-phase order retries before it gives up (and the order rolls
/// back what it prepared, waits and tries again): long enough for a shard restarting, short
/// enough that prepared rows of healthy shards are not held for long.
pub const PREPARE_FOR_AT_MOST: Duration = Duration::from_secs(15);

/// Options of compensations: immune to workflow cancellation, retried with backoff for
/// about two minutes, then reported as failed.
pub(super) fn compensation_options() -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(10))
        .retry_policy(compensation_retry())
        .cancellation_token(WorkflowCancellationToken::new())
        .build()
}

/// How compensations retry, as activities or local activities: with backoff for about two
/// minutes, then they are reported as failed.
fn compensation_retry() -> RetryPolicy {
    RetryPolicy::builder()
        .initial_interval(Duration::from_secs(1))
        .maximum_interval(Duration::from_secs(15))
        .maximum_attempts(12)
        .build()
}

/// A local step's options. Steps are short transactions, so the start-to-close is short (a
/// worker that dies mid-step costs at most that long), and retries come back quickly: a step
/// that met a row lock of another order finds it released within milliseconds, not after an
/// exponential back-off.
pub(super) fn local_options(phase: Phase) -> LocalActivityOptions {
    let quick = RetryPolicy::builder()
        .initial_interval(Duration::from_millis(50))
        .backoff_coefficient(2.0)
        .maximum_interval(Duration::from_secs(1))
        .build();
    let options = LocalActivityOptions::builder();
    match phase {
        Phase::Forward => options
            .start_to_close_timeout(Duration::from_secs(5))
            .retry_policy(quick)
            .cancel_type(ActivityCancellationType::WaitCancellationCompleted)
            .build(),
        Phase::Prepare => options
            .start_to_close_timeout(Duration::from_secs(5))
            .schedule_to_close_timeout(PREPARE_FOR_AT_MOST)
            .retry_policy(quick)
            .cancel_type(ActivityCancellationType::WaitCancellationCompleted)
            .build(),
        Phase::Compensate | Phase::AfterConfirmation => options
            .start_to_close_timeout(Duration::from_secs(10))
            .retry_policy(compensation_retry())
            .cancellation_token(WorkflowCancellationToken::new())
            .build(),
        Phase::Resolve => options
            .start_to_close_timeout(Duration::from_secs(5))
            .retry_policy(quick)
            .cancellation_token(WorkflowCancellationToken::new())
            .build(),
    }
}

/// A step's options as an activity of its own.
pub(super) fn remote_options(phase: Phase) -> ActivityOptions {
    match phase {
        Phase::Forward => forward_options(),
        Phase::Prepare => {
            let mut options = forward_options();
            options.close_timeouts = ActivityCloseTimeouts::ScheduleAndStartToClose {
                schedule_to_close: PREPARE_FOR_AT_MOST,
                start_to_close: Duration::from_secs(5),
            };
            options
        }
        Phase::Compensate | Phase::AfterConfirmation => compensation_options(),
        Phase::Resolve => resolve_options(),
    }
}

/// Phase two's options as activities: retried until done, and never cancelled.
fn resolve_options() -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(10))
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_millis(200))
                .maximum_interval(Duration::from_secs(10))
                .build(),
        )
        .cancellation_token(WorkflowCancellationToken::new())
        .build()
}
