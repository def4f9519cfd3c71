//! `ImportOrders`: a JSON Lines file of orders imported in segments, durably.
//!
//! The workflow walks the file a segment at a time (`ImportSegment`), keeping the byte offset
//! and the running totals in its state. A worker killed mid-import loses at most the segment
//! in flight, which is retried from its start offset; rows that segment already committed are
//! recognised by their `order_ref` and counted once. The `progress` query serves the totals
//! to `orders import` and `orders import-status` while it runs.
//!
//! Imported orders are history: they are written `confirmed` and skip payment (no credit is
//! reserved) and the order lifecycle.

use std::collections::BTreeMap;
use std::time::Duration;

use orders_operations::import::activities::ImportFile;
use orders_operations::import::{ImportActivities, RejectedLine, SegmentInput};
use serde::{Deserialize, Serialize};
use temporalio_common::RetryPolicy;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{ActivityOptions, WorkflowContext, WorkflowContextView, WorkflowResult};

use crate::failures::workflow_failure;

/// Orders per COPY chunk when the input does not say. Large, because each COPY costs one
/// round trip more than its data (sqlx leaves Nagle's algorithm on, so the final CopyDone
/// waits for the server's delayed ACK: about 40 ms on Linux); a bad row costs a few more
/// COPYs of halving size to isolate.
pub const DEFAULT_CHUNK_SIZE: u32 = 5_000;
/// Chunks' worth of lines read per segment (spread over the shards).
const CHUNKS_PER_SEGMENT: u64 = 4;
/// The fewest lines a segment reads, whatever the chunk size: each segment adds about six
/// events to the history, so this keeps files of millions of lines far from its limits.
const MIN_SEGMENT_LINES: u64 = 2_000;
/// The largest chunk accepted: bounds a segment's memory and its activity's run time.
pub const MAX_CHUNK_SIZE: u32 = 10_000;
/// Rejected lines listed in the result; beyond this they are counted only. Reasons are cut
/// to 300 bytes and refs to 200, so the list stays well under Temporal's 2 MB payload limit,
/// and segments stop listing once it is full, so the history stays small too.
pub const MAX_LISTED_REJECTIONS: usize = 1_000;

/// How long a segment may go without a heartbeat before Temporal retries it.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long checking and hashing the file may take: it heartbeats meanwhile, so this only
/// bounds a read that crawls (a file at `ORDERS_IMPORT_MAX_BYTES`, 8 GiB by default, hashes
/// in a minute or two on a local disk).
const INSPECT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// What to import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportInput {
    /// Path of the JSON Lines file on the worker's machine, inside its `ORDERS_IMPORT_DIR`
    /// (a relative path is taken from there).
    pub path: String,
    #[serde(default)]
    pub chunk_size: Option<u32>,
}

/// Where the import stands; also the shape of its result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportProgress {
    pub path: String,
    pub total_bytes: u64,
    pub bytes_done: u64,
    pub lines_done: u64,
    /// Orders imported, by shard index (a string: JSON object keys are strings).
    pub imported: BTreeMap<String, u64>,
    /// Lines whose `order_ref` was already imported (a re-run).
    pub already_present: u64,
    pub rejected: u64,
    pub done: bool,
}

impl ImportProgress {
    pub fn imported_total(&self) -> u64 {
        self.imported.values().sum()
    }
}

/// The final report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportReport {
    #[serde(flatten)]
    pub progress: ImportProgress,
    /// Each rejected line with its reason, in line order (at most [`MAX_LISTED_REJECTIONS`]).
    pub rejected_lines: Vec<RejectedLine>,
}

/// For people: totals, per-shard counts, and every rejected line listed.
impl std::fmt::Display for ImportReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.progress;
        write!(
            f,
            "imported {} orders from {} lines of {}; {} already present; {} rejected",
            p.imported_total(),
            p.lines_done,
            p.path,
            p.already_present,
            p.rejected
        )?;
        for (shard, n) in &p.imported {
            write!(f, "\n  shard {shard}: {n} orders")?;
        }
        for r in &self.rejected_lines {
            write!(f, "\n  line {}: {}", r.line, r.reason)?;
        }
        let unlisted = p.rejected.saturating_sub(self.rejected_lines.len() as u64);
        if unlisted > 0 {
            write!(
                f,
                "\n  … and {unlisted} more rejected lines (only the first {} are listed)",
                self.rejected_lines.len()
            )?;
        }
        Ok(())
    }
}

#[workflow]
#[derive(Default)]
pub struct ImportOrdersWorkflow {
    report: ImportReport,
}

#[workflow_methods]
impl ImportOrdersWorkflow {
    #[run(name = "ImportOrders")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: ImportInput,
    ) -> WorkflowResult<ImportReport> {
        let file: ImportFile = ctx
            .execute_activity(
                ImportActivities::inspect_import_file,
                input.path.clone(),
                options(INSPECT_TIMEOUT),
            )
            .await
            .map_err(|e| workflow_failure(&e))?;
        ctx.state_mut(|s| {
            s.report.progress.path = file.path.clone();
            s.report.progress.total_bytes = file.bytes;
        });
        let chunk_size = input
            .chunk_size
            .unwrap_or(DEFAULT_CHUNK_SIZE)
            .clamp(1, MAX_CHUNK_SIZE);
        // The first run id makes a later import under the same workflow id a new import; a
        // reset keeps it, so a reset import still recognises what it wrote.
        let import_id = format!(
            "{}/{}",
            ctx.workflow_id(),
            ctx.info().first_execution_run_id()
        );
        loop {
            let (offset, first_line, room) = ctx.state(|s| {
                (
                    s.report.progress.bytes_done,
                    s.report.progress.lines_done + 1,
                    MAX_LISTED_REJECTIONS.saturating_sub(s.report.rejected_lines.len()),
                )
            });
            let segment = ctx
                .execute_activity(
                    ImportActivities::import_segment,
                    SegmentInput {
                        import_id: import_id.clone(),
                        file: file.clone(),
                        offset,
                        first_line,
                        max_lines: (u64::from(chunk_size) * CHUNKS_PER_SEGMENT)
                            .max(MIN_SEGMENT_LINES),
                        chunk_size,
                        list_rejections: room as u32,
                    },
                    options(Duration::from_secs(300)),
                )
                .await
                .map_err(|e| workflow_failure(&e))?;
            ctx.state_mut(|s| {
                let p = &mut s.report.progress;
                p.bytes_done = segment.next_offset;
                p.lines_done += segment.lines;
                for (shard, n) in &segment.imported {
                    *p.imported.entry(shard.clone()).or_default() += n;
                }
                p.already_present += segment.already_present;
                p.rejected += segment.rejected;
                s.report
                    .rejected_lines
                    .extend(segment.rejected_lines.iter().cloned());
            });
            if segment.eof {
                break;
            }
        }
        ctx.state_mut(|s| s.report.progress.done = true);
        Ok(ctx.state(|s| s.report.clone()))
    }

    /// Totals so far: bytes and lines done, orders imported per shard, lines refused.
    #[query]
    pub fn progress(&self, _ctx: &WorkflowContextView) -> ImportProgress {
        self.report.progress.clone()
    }
}

/// Retried with backoff until done: a shard that is down holds the import, it does not fail
/// it; a file the worker may not or cannot read fails it at once (`ImportFileUnreadable`,
/// non-retryable). Both activities heartbeat while they read and segments after each shard's
/// write, so a worker that dies is noticed within [`HEARTBEAT_TIMEOUT`] and its work retried
/// elsewhere.
fn options(start_to_close: Duration) -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(start_to_close)
        .heartbeat_timeout(HEARTBEAT_TIMEOUT)
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_millis(500))
                .maximum_interval(Duration::from_secs(30))
                .build(),
        )
        .build()
}
