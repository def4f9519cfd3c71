//! `orders import` and `orders import-status`: starting an `ImportOrders` workflow and
//! watching it through its `progress` query.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cli::progress_bar::{bar, eta};
use orders_workflows::ImportOrdersWorkflow;
use orders_workflows::import_orders::{ImportInput, ImportProgress, ImportReport};
use temporalio_client::errors::WorkflowGetResultError;
use temporalio_client::{
    Client, WorkflowGetResultOptions, WorkflowQueryOptions, WorkflowStartOptions,
};
use temporalio_common::error::IncomingError;

/// Starts the import of `file` (made absolute, since the worker resolves it) as workflow
/// `workflow_id`.
pub(super) async fn start(
    client: &Client,
    task_queue: &str,
    workflow_id: &str,
    file: &Path,
    chunk_size: u32,
) -> anyhow::Result<()> {
    let path =
        std::fs::canonicalize(file).with_context(|| format!("cannot read {}", file.display()))?;
    let input = ImportInput {
        path: path.to_string_lossy().into_owned(),
        chunk_size: Some(chunk_size),
    };
    client
        .start_workflow(
            ImportOrdersWorkflow::run,
            input,
            WorkflowStartOptions::new(task_queue, workflow_id).build(),
        )
        .await
        .with_context(|| format!("failed to start ImportOrders {workflow_id}"))?;
    Ok(())
}

/// The import's progress, from its `progress` query.
pub(super) async fn progress(client: &Client, workflow_id: &str) -> anyhow::Result<ImportProgress> {
    client
        .get_workflow_handle::<ImportOrdersWorkflow>(workflow_id)
        .query(
            ImportOrdersWorkflow::progress,
            (),
            WorkflowQueryOptions::default(),
        )
        .await
        .with_context(|| format!("cannot query import {workflow_id} (is a worker running?)"))
}

/// Waits for the import to end and returns its report, or why it failed: the failure's type
/// (`ImportFileUnreadable`, …) and message, once (the client's error repeats it per cause).
pub(super) async fn report(client: &Client, workflow_id: &str) -> anyhow::Result<ImportReport> {
    let result = client
        .get_workflow_handle::<ImportOrdersWorkflow>(workflow_id)
        .get_result(WorkflowGetResultOptions::default())
        .await;
    match result {
        Ok(report) => Ok(report),
        Err(WorkflowGetResultError::Failed(failure)) => match *failure {
            IncomingError::Application(failure) => bail!(
                "import {workflow_id} failed with {}: {failure}",
                failure.type_name().unwrap_or("ApplicationFailure")
            ),
            other => bail!("import {workflow_id} failed: {other}"),
        },
        Err(e) => {
            Err(anyhow::Error::new(e).context(format!("import {workflow_id} did not complete")))
        }
    }
}

/// Redraws a progress line on stderr every half second until the import ends, and returns
/// its report (or why it failed).
pub(super) async fn watch(client: &Client, workflow_id: &str) -> anyhow::Result<ImportReport> {
    let started = Instant::now();
    let outcome = report(client, workflow_id);
    tokio::pin!(outcome);
    loop {
        if let Ok(p) = progress(client, workflow_id).await {
            eprint!("\r{}", progress_line(&p, started.elapsed()));
            std::io::stderr().flush().ok();
        }
        tokio::select! {
            ended = &mut outcome => {
                eprintln!();
                return ended;
            }
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// `[#########-----------]  45%  450000 lines  12000 lines/s  ETA 40s  imported 449000  rejected 3`
pub(super) fn progress_line(p: &ImportProgress, elapsed: Duration) -> String {
    let fraction = if p.total_bytes == 0 {
        // Not inspected yet, or an empty file.
        if p.done { 1.0 } else { 0.0 }
    } else {
        p.bytes_done as f64 / p.total_bytes as f64
    };
    let rate = p.lines_done as f64 / elapsed.as_secs_f64().max(0.001);
    format!(
        "{}  {} lines  {:.0} lines/s  {}  imported {}  rejected {}   ",
        bar(fraction),
        p.lines_done,
        rate,
        eta(fraction, elapsed),
        p.imported_total(),
        p.rejected
    )
}
