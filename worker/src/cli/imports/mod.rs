//! `import` and `import-status`: a bulk import through an ImportOrders workflow.

pub mod follow;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use orders_workflows::import_orders::{ImportProgress, ImportReport, MAX_CHUNK_SIZE};
use serde::Serialize;
use temporalio_client::Client;

use super::failing_steps::{self, FailingStep};
use super::report::Report;

impl Report for ImportReport {
    fn failure(&self) -> Option<String> {
        let rejected = self.progress.rejected;
        (rejected > 0).then(|| format!("{rejected} lines were rejected; the report lists them"))
    }
}

/// Where an import stands: started and left to run, still running, or done.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum ImportStatus {
    /// `--detach`: started; the workflow id, for `orders import-status`.
    Started {
        workflow_id: String,
    },
    Running {
        #[serde(flatten)]
        progress: ImportProgress,
        /// Steps retrying after a failure, with their last error.
        failing: Vec<FailingStep>,
    },
    Done(ImportReport),
}

/// Starts importing `file` as `workflow_id`; unless `detach`, follows it to its report (with
/// a progress line on stderr when `progress`).
pub(super) async fn start(
    client: &Client,
    task_queue: &str,
    file: &Path,
    options: ImportOptions,
) -> anyhow::Result<ImportStatus> {
    let ImportOptions {
        chunk_size,
        workflow_id,
        detach,
        progress,
    } = options;
    anyhow::ensure!(
        (1..=MAX_CHUNK_SIZE).contains(&chunk_size),
        "--chunk-size must be between 1 and {MAX_CHUNK_SIZE}"
    );
    let workflow_id = workflow_id.unwrap_or_else(|| format!("import-{}", uuid::Uuid::new_v4()));
    follow::start(client, task_queue, &workflow_id, file, chunk_size).await?;
    if detach {
        eprintln!("import started; follow it with: orders import-status {workflow_id}");
        return Ok(ImportStatus::Started { workflow_id });
    }
    eprintln!("importing {} as {workflow_id}", file.display());
    let report = if progress {
        follow::watch(client, &workflow_id).await?
    } else {
        follow::report(client, &workflow_id).await?
    };
    Ok(ImportStatus::Done(report))
}

/// How `orders import` runs.
pub(super) struct ImportOptions {
    pub(super) chunk_size: u32,
    pub(super) workflow_id: Option<String>,
    pub(super) detach: bool,
    /// Draw a progress line on stderr while it runs.
    pub(super) progress: bool,
}

/// The import's progress, or its report once it is done.
pub(super) async fn status(client: &Client, workflow_id: &str) -> anyhow::Result<ImportStatus> {
    let progress = follow::progress(client, workflow_id).await?;
    if !progress.done {
        let failing = failing_steps::of(client, workflow_id).await;
        return Ok(ImportStatus::Running { progress, failing });
    }
    Ok(ImportStatus::Done(
        follow::report(client, workflow_id).await?,
    ))
}

impl fmt::Display for ImportStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportStatus::Started { workflow_id } => f.write_str(workflow_id),
            ImportStatus::Running { progress, failing } => {
                f.write_str(&follow::progress_line(progress, Duration::ZERO))?;
                for step in failing {
                    write!(f, "\n  {step}")?;
                }
                Ok(())
            }
            ImportStatus::Done(report) => report.fmt(f),
        }
    }
}

impl Report for ImportStatus {
    fn failure(&self) -> Option<String> {
        match self {
            ImportStatus::Done(report) => report.failure(),
            _ => None,
        }
    }
}
