//! `orders reshard`: starting the Reshard workflow, following it through its `progress`
//! query, and cancelling it.

use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use orders_operations::reshard::ReshardRequest;
use orders_workflows::ReshardWorkflow;
use orders_workflows::reshard::{Phase, ReshardInput, ReshardProgress, WORKFLOW_ID};
use serde::Serialize;
use temporalio_client::{
    Client, WorkflowCancelOptions, WorkflowGetResultOptions, WorkflowQueryOptions,
    WorkflowStartOptions,
};

use super::failing_steps::{self, FailingStep};
use super::report::Report;
use crate::cli::progress_bar::{bar, eta};

/// Where a Reshard stands, as `orders reshard` prints it.
#[derive(Debug, Serialize)]
pub(super) struct ReshardStatus {
    pub workflow_id: String,
    #[serde(flatten)]
    pub progress: ReshardProgress,
    /// Set when the run ended without finishing (failed or cancelled).
    pub outcome: Option<String>,
    /// Phases retrying after a failure, with their last error.
    pub failing: Vec<FailingStep>,
}

impl Report for ReshardStatus {
    fn failure(&self) -> Option<String> {
        matches!(self.progress.phase, Phase::Failed).then(|| {
            self.outcome
                .clone()
                .unwrap_or_else(|| "the reshard failed".into())
        })
    }
}

impl fmt::Display for ReshardStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.progress;
        writeln!(
            f,
            "reshard {}: {} — {}/{} buckets moved, {} cleaned up, {} rows copied, {} changes caught up",
            self.workflow_id,
            p.phase.as_str(),
            p.buckets_moved,
            p.buckets_total,
            p.cleaned,
            p.rows_copied,
            p.changes_applied
        )?;
        if let Some(mv) = &p.current {
            writeln!(
                f,
                "  in flight: buckets {:?} from shard {} to shard {}",
                mv.buckets, mv.from, mv.to
            )?;
        }
        if let Some((p50, p99)) = pause_percentiles(&p.pauses_ms) {
            writeln!(f, "  write pause per move: p50 {p50} ms, p99 {p99} ms")?;
        }
        for step in &self.failing {
            writeln!(f, "  {step}")?;
        }
        if let Some(outcome) = &self.outcome {
            writeln!(f, "  {outcome}")?;
        }
        Ok(())
    }
}

/// p50 and p99 of the pauses, nearest rank.
pub(super) fn pause_percentiles(pauses: &[i64]) -> Option<(i64, i64)> {
    if pauses.is_empty() {
        return None;
    }
    let mut sorted: Vec<f64> = pauses.iter().map(|&ms| ms as f64).collect();
    sorted.sort_by(f64::total_cmp);
    let at = |p| crate::cli::load::percentile(&sorted, p) as i64;
    Some((at(50.0), at(99.0)))
}

/// Starts the Reshard workflow; a second start while one runs says which one, and how to
/// follow or stop it.
pub(super) async fn start(
    client: &Client,
    task_queue: &str,
    input: ReshardInput,
) -> anyhow::Result<()> {
    let started = client
        .start_workflow(
            ReshardWorkflow::run,
            input.clone(),
            WorkflowStartOptions::new(task_queue, WORKFLOW_ID).build(),
        )
        .await;
    if let Err(e) = started {
        if let Ok(running) = progress(client).await
            && !matches!(
                running.phase,
                Phase::Done | Phase::Failed | Phase::Cancelled
            )
        {
            anyhow::bail!(
                "a reshard is already running ({WORKFLOW_ID}, {}, {}/{} buckets moved): follow it with `orders reshard status` or stop it with `orders reshard cancel`",
                running.phase.as_str(),
                running.buckets_moved,
                running.buckets_total
            );
        }
        return Err(e).context(format!("failed to start Reshard {WORKFLOW_ID}"));
    }
    match input.request {
        ReshardRequest::Shards { shards } => {
            eprintln!("resharding onto {shards} shards as {WORKFLOW_ID}")
        }
        ReshardRequest::Bucket { bucket, to } => {
            eprintln!("moving bucket {bucket} to shard {to} as {WORKFLOW_ID}")
        }
    }
    Ok(())
}

/// The running (or last) Reshard's progress.
async fn progress(client: &Client) -> anyhow::Result<ReshardProgress> {
    client
        .get_workflow_handle::<ReshardWorkflow>(WORKFLOW_ID)
        .query(
            ReshardWorkflow::progress,
            (),
            WorkflowQueryOptions::default(),
        )
        .await
        .with_context(|| {
            format!(
                "cannot query {WORKFLOW_ID} (has a reshard been started, and is a worker running?)"
            )
        })
}

/// Where the Reshard stands: its progress, and how it ended if it has.
pub(super) async fn status(client: &Client) -> anyhow::Result<ReshardStatus> {
    let progress = progress(client).await?;
    let outcome = match progress.phase {
        Phase::Failed | Phase::Cancelled => progress.stopped.clone(),
        _ => None,
    };
    Ok(ReshardStatus {
        workflow_id: WORKFLOW_ID.to_owned(),
        progress,
        outcome,
        failing: failing_steps::of(client, WORKFLOW_ID).await,
    })
}

/// Follows the Reshard to its end, redrawing a progress line on stderr when `draw`.
pub(super) async fn watch(client: &Client, draw: bool) -> anyhow::Result<ReshardStatus> {
    let started = Instant::now();
    let handle = client.get_workflow_handle::<ReshardWorkflow>(WORKFLOW_ID);
    let outcome = handle.get_result(WorkflowGetResultOptions::default());
    tokio::pin!(outcome);
    loop {
        if draw && let Ok(p) = progress(client).await {
            eprint!("\r{}", progress_line(&p, started.elapsed()));
            std::io::stderr().flush().ok();
        }
        tokio::select! {
            ended = &mut outcome => {
                if draw {
                    eprintln!();
                }
                let mut status = status(client).await?;
                if let Err(e) = ended {
                    status.outcome.get_or_insert_with(|| format!("{e:#}"));
                }
                return Ok(status);
            }
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// `[####------]  40%  82/204 buckets  412000 rows  9100 rows/s  ETA 2m  copying bucket 17 0→4`
fn progress_line(p: &ReshardProgress, elapsed: Duration) -> String {
    let fraction = if p.buckets_total == 0 {
        0.0
    } else {
        p.buckets_moved as f64 / p.buckets_total as f64
    };
    let rate = p.rows_copied as f64 / elapsed.as_secs_f64().max(0.001);
    let current = p
        .current
        .as_ref()
        .map(|m| format!(" {} buckets {}→{}", m.buckets.len(), m.from, m.to))
        .unwrap_or_default();
    format!(
        "{}  {}/{} buckets  {} rows  {:.0} rows/s  {}  {}{}   ",
        bar(fraction),
        p.buckets_moved,
        p.buckets_total,
        p.rows_copied,
        rate,
        eta(fraction, elapsed),
        p.phase.as_str(),
        current
    )
}

/// Asks the running Reshard to stop; it rolls back the move in flight and ends.
pub(super) async fn cancel(client: &Client) -> anyhow::Result<ReshardStatus> {
    client
        .get_workflow_handle::<ReshardWorkflow>(WORKFLOW_ID)
        .cancel(
            WorkflowCancelOptions::builder()
                .reason("orders reshard cancel".to_owned())
                .build(),
        )
        .await
        .with_context(|| format!("cannot cancel {WORKFLOW_ID} (is one running?)"))?;
    watch(client, false).await
}
