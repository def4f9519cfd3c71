//! The import's activities: checking the file, and importing one segment of it. Both open
//! the file through the [`ImportPolicy`], so a client of the namespace can have the worker
//! read only what the operator put in `ORDERS_IMPORT_DIR`, and both heartbeat while they read.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;
use serde::{Deserialize, Serialize};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use super::RejectedLine;
use super::file::{self, ImportLine};
use super::policy::{CheckedFile, ImportPolicy, PathRefused};
use super::write::{self, ShardImport};
use crate::heartbeat::{Progress, while_heartbeating};
use orders_core::failpoints;
use orders_core::failure::Rejection;
use orders_core::metrics::OrderMetrics;
use orders_core::shards::Shards;
use orders_core::step_failures::StepFailures;

/// The import cannot go on with this file: refused by the policy, unreadable, or changed. Not
/// retried: the same path gives the same answer until someone changes the file or the
/// configuration, and then the import is started again.
fn unreadable(path: &str, error: impl std::fmt::Display) -> ActivityError {
    Rejection::ImportFileUnreadable {
        path: path.to_owned(),
        error: error.to_string(),
    }
    .into_activity_error()
}

/// A blocking file task that panicked: a bug, retried like any infrastructure error.
fn panicked(e: tokio::task::JoinError) -> ActivityError {
    ActivityError::from(std::io::Error::other(format!(
        "the import's file reader panicked: {e}"
    )))
}

/// The activities' shared state.
pub struct ImportActivities {
    shards: Shards,
    metrics: Arc<OrderMetrics>,
    policy: ImportPolicy,
    failures: StepFailures,
}

impl ImportActivities {
    /// With `policy` (the worker's `ORDERS_IMPORT_DIR` and `ORDERS_IMPORT_MAX_BYTES`), logged
    /// once so an operator sees where this worker imports from.
    pub fn with_policy(shards: Shards, metrics: Arc<OrderMetrics>, policy: ImportPolicy) -> Self {
        match &policy {
            ImportPolicy::Allowed { dir, max_bytes } => {
                tracing::info!(dir = %dir.display(), max_bytes, "imports read from this directory only");
            }
            ImportPolicy::Refused(reason) => tracing::info!(reason, "imports are refused"),
        }
        Self {
            shards,
            failures: StepFailures::new("import", metrics.clone()),
            metrics,
            policy,
        }
    }

    /// Opens `path` under the policy, on a blocking thread.
    async fn open(&self, path: &str) -> Result<CheckedFile, ActivityError> {
        let (policy, requested) = (self.policy.clone(), path.to_owned());
        tokio::task::spawn_blocking(move || policy.open(&requested))
            .await
            .map_err(panicked)?
            .map_err(|refused: PathRefused| unreadable(path, refused))
    }
}

/// The file to import, as the worker sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportFile {
    pub path: String,
    pub bytes: u64,
    /// SHA-256, hex: names the references of lines without an `order_ref`.
    pub sha256: String,
}

/// One segment to import: up to `max_lines` lines from byte `offset` (line `first_line`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInput {
    /// The import's id (its workflow id), stored on every order it writes.
    pub import_id: String,
    pub file: ImportFile,
    pub offset: u64,
    pub first_line: u64,
    pub max_lines: u64,
    /// Orders per COPY chunk (and savepoint).
    pub chunk_size: u32,
    /// Rejected lines to list in the outcome at most; the rest are only counted, so results
    /// and history stay small whatever the file holds.
    pub list_rejections: u32,
}

/// What a segment did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentOutcome {
    pub next_offset: u64,
    pub lines: u64,
    pub eof: bool,
    /// Orders imported, by shard index (a string: JSON object keys are strings).
    pub imported: BTreeMap<String, u64>,
    pub already_present: u64,
    pub rejected: u64,
    /// The first `list_rejections` rejected lines, in line order.
    pub rejected_lines: Vec<RejectedLine>,
}

#[activities]
impl ImportActivities {
    /// Checks that the policy lets the worker read the file, and returns its size and digest.
    /// Hashing a large file outlasts the heartbeat timeout, so it heartbeats meanwhile.
    #[activity(name = "InspectImportFile")]
    pub async fn inspect_import_file(
        self: Arc<Self>,
        ctx: ActivityContext,
        path: String,
    ) -> Result<ImportFile, ActivityError> {
        let subject = ctx.info().workflow_id.clone().unwrap_or_default();
        let inspected = self.inspect(&ctx, path).await;
        self.record("InspectImportFile", &subject, &ctx, &inspected);
        inspected
    }

    /// Imports one segment: reads it, validates every line, writes each shard's share
    /// concurrently (COPY in savepoint chunks), and reports per line what was refused.
    /// Safe to retry: rows it already wrote are recognised by their `order_ref` and import id.
    #[activity(name = "ImportSegment")]
    pub async fn import_segment(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: SegmentInput,
    ) -> Result<SegmentOutcome, ActivityError> {
        let subject = format!("{} from byte {}", input.import_id, input.offset);
        let imported = self.segment(&ctx, input).await;
        self.record("ImportSegment", &subject, &ctx, &imported);
        imported
    }
}

impl ImportActivities {
    /// Counts and logs (once per distinct error) a failed attempt of `step`.
    fn record<T>(
        &self,
        step: &'static str,
        subject: &str,
        ctx: &ActivityContext,
        result: &Result<T, ActivityError>,
    ) {
        self.failures
            .record(step, subject, ctx.info().attempt, result);
    }

    async fn inspect(
        &self,
        ctx: &ActivityContext,
        path: String,
    ) -> Result<ImportFile, ActivityError> {
        let CheckedFile { file, bytes } = self.open(&path).await?;
        let progress = Progress::new();
        let hashing = {
            let progress = progress.clone();
            async move {
                failpoints::hit("inspect_import_file.hash").await?;
                tokio::task::spawn_blocking(move || file::file_digest(file, &progress))
                    .await
                    .map_err(panicked)?
                    .map_err(|e| unreadable(&path, e))
                    .map(|sha256| (path, sha256))
            }
        };
        let (path, sha256) = while_heartbeating(ctx, &progress, hashing).await??;
        Ok(ImportFile {
            path,
            bytes,
            sha256,
        })
    }

    async fn segment(
        &self,
        ctx: &ActivityContext,
        input: SegmentInput,
    ) -> Result<SegmentOutcome, ActivityError> {
        let started = std::time::Instant::now();
        let CheckedFile { file, bytes } = self.open(&input.file.path).await?;
        if bytes != input.file.bytes {
            return Err(unreadable(
                &input.file.path,
                format!(
                    "it changed during the import ({} bytes, now {bytes}); import the new file as a new import",
                    input.file.bytes
                ),
            ));
        }
        let (offset, first_line, max_lines) = (input.offset, input.first_line, input.max_lines);
        let digest = input.file.sha256.clone();
        let progress = Progress::new();
        let reading = {
            let progress = progress.clone();
            tokio::task::spawn_blocking(move || {
                file::read_segment(file, &digest, offset, first_line, max_lines, &progress)
            })
        };
        let segment = while_heartbeating(ctx, &progress, reading)
            .await?
            .map_err(panicked)?
            .map_err(|e| unreadable(&input.file.path, e))?;
        ctx.record_heartbeat(segment.next_offset).await.ok();
        let read = started.elapsed();

        let mut by_shard: BTreeMap<usize, Vec<ImportLine>> = BTreeMap::new();
        for line in segment.valid {
            let shard = self.shards.for_customer(line.order.customer_id).index;
            by_shard.entry(shard).or_default().push(line);
        }
        let chunk = input.chunk_size.max(1) as usize;
        let ctx = &ctx;
        let writes = by_shard.into_iter().map(|(index, lines)| {
            let shard = self.shards.get(index);
            let import_id = input.import_id.as_str();
            let metrics = &self.metrics;
            async move {
                let _timer = metrics.time(shard, "ImportSegment");
                let pool = shard.conn.get_postgres_connection_pool();
                let done = write::write_shard(pool, import_id, input.offset, lines, chunk)
                    .await
                    .map_err(|e| shard.error(sea_orm::DbErr::Custom(e.to_string())))?;
                ctx.record_heartbeat(segment.next_offset).await.ok();
                Ok::<_, orders_core::shards::ShardError>((index, done))
            }
        });
        let mut outcome = SegmentOutcome {
            next_offset: segment.next_offset,
            lines: segment.lines,
            eof: segment.eof,
            ..SegmentOutcome::default()
        };
        let mut rejected = segment.rejected;
        for written in join_all(writes).await {
            let (index, done): (usize, ShardImport) = written?;
            *outcome.imported.entry(index.to_string()).or_default() += done.imported;
            outcome.already_present += done.already_present;
            rejected.extend(done.rejected);
        }
        rejected.sort_by_key(|r| r.line);
        tracing::info!(
            import_id = %input.import_id,
            first_line = input.first_line,
            lines = outcome.lines,
            rejected = rejected.len(),
            read_ms = read.as_millis() as u64,
            write_ms = (started.elapsed() - read).as_millis() as u64,
            "segment imported"
        );
        outcome.rejected = rejected.len() as u64;
        self.metrics
            .import_rows(outcome.imported.values().sum::<u64>(), outcome.rejected);
        rejected.truncate(input.list_rejections as usize);
        outcome.rejected_lines = rejected.into_iter().map(RejectedLine::shortened).collect();
        failpoints::hit("import_segment.after_write").await?;
        Ok(outcome)
    }
}
