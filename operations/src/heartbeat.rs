//! Heartbeating while an activity waits on one long piece of work: an import reading its file
//! on a blocking thread, a bucket move checksumming a large bucket.
//!
//! Hashing a file of gigabytes, or reading a segment of long lines, can outlast the activity's
//! heartbeat timeout; without a heartbeat meanwhile Temporal takes the worker for dead and
//! retries the activity, which then never finishes. The read reports how far it got in a
//! [`Progress`], which the heartbeats carry, and stops early when the activity is cancelled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use temporalio_sdk::activities::{ActivityContext, ActivityError};

/// How often a long read heartbeats: well inside the import's 20 s heartbeat timeout.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// How far a blocking read got, and whether it should stop.
#[derive(Debug, Default)]
pub struct Progress {
    bytes: AtomicU64,
    stop: AtomicBool,
}

impl Progress {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Adds `bytes` read.
    pub fn advance(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether the activity was cancelled, so the read should give up.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Awaits `work`, heartbeating `progress` every [`HEARTBEAT_EVERY`] until it ends. If the
/// activity is cancelled first, `progress` is told to stop and the activity reports the
/// cancellation without waiting for `work`.
pub async fn while_heartbeating<T>(
    ctx: &ActivityContext,
    progress: &Progress,
    work: impl Future<Output = T>,
) -> Result<T, ActivityError> {
    tokio::pin!(work);
    let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
    loop {
        tokio::select! {
            done = &mut work => return Ok(done),
            _ = beat.tick() => {
                ctx.record_heartbeat(progress.bytes()).await.ok();
            }
            () = ctx.cancelled() => {
                progress.stop.store(true, Ordering::Relaxed);
                return Err(ActivityError::cancelled());
            }
        }
    }
}
