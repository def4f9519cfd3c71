//! `orders replay`: checks recorded histories against the current workflow code.
//!
//! A history is the JSON that `temporal workflow show --output json` (or the Web UI's
//! download) produces. Replaying it re-runs the workflow code against the recorded events;
//! if the code would now issue different commands, the SDK reports nondeterminism, and a
//! deployment of that code would break running orders.

use anyhow::Context;
use std::path::{Path, PathBuf};

use orders_workflows::{
    ImportOrdersWorkflow, InDoubtRecoveryWorkflow, OrderLifecycleWorkflow, PlaceOrderWorkflow,
};
use temporalio_common::protos::temporal::api::enums::v1::EventType;
use temporalio_common::protos::temporal::api::history::v1::History;
use temporalio_sdk::workflow_replayer::{
    WorkflowReplayFailure, WorkflowReplayer, WorkflowReplayerOptions,
};

/// The result of replaying one history file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replayed {
    pub path: PathBuf,
    /// `None` when the code is compatible with the history.
    pub failure: Option<ReplayFailure>,
}

/// Why a history no longer replays.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayFailure {
    pub nondeterministic: bool,
    /// The first event the code contradicts: its id and type, when it could be located.
    pub event: Option<(i64, String)>,
    pub message: String,
}

impl std::fmt::Display for ReplayFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some((id, kind)) = &self.event {
            write!(f, "event {id} ({kind}): ")?;
        }
        f.write_str(&self.message)
    }
}

/// The `.json` files named by `paths`, folders searched recursively, in a stable order.
pub fn history_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, &mut files).with_context(|| format!("cannot read {}", path.display()))?;
    }
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "no .json histories found under {paths:?}"
    );
    Ok(files)
}

fn collect(path: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?.path();
            if entry.is_dir() || entry.extension().is_some_and(|e| e == "json") {
                collect(&entry, files)?;
            }
        }
    } else {
        std::fs::metadata(path)?;
        files.push(path.to_owned());
    }
    Ok(())
}

/// The replayer options for the workflows this worker runs.
pub fn worker_workflows() -> anyhow::Result<WorkflowReplayerOptions> {
    Ok(WorkflowReplayerOptions::new()
        .register_workflow::<PlaceOrderWorkflow>()?
        .register_workflow::<OrderLifecycleWorkflow>()?
        .register_workflow::<ImportOrdersWorkflow>()?
        .register_workflow::<InDoubtRecoveryWorkflow>()?
        .build())
}

/// Replays every file against the workflows in `options` (see [`worker_workflows`]).
pub async fn replay_files(
    files: &[PathBuf],
    options: WorkflowReplayerOptions,
) -> anyhow::Result<Vec<Replayed>> {
    let replayer = WorkflowReplayer::new(options)?;
    let mut replayed = Vec::with_capacity(files.len());
    for path in files {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let history = crate::cli::maintenance::history_json::parse_history(&bytes)
            .with_context(|| format!("cannot read the history in {}", path.display()))?;
        let failure = match replay(&replayer, &history).await? {
            None => None,
            Some(failure) => Some(describe(&replayer, &history, failure).await?),
        };
        replayed.push(Replayed {
            path: path.clone(),
            failure,
        });
    }
    Ok(replayed)
}

async fn replay(
    replayer: &WorkflowReplayer,
    history: &History,
) -> anyhow::Result<Option<WorkflowReplayFailure>> {
    let mut results = replayer.replay_workflows([history.clone().into()]).await?;
    Ok(results.pop().and_then(|r| r.replay_failure))
}

/// Names the first event the code contradicts: the shortest prefix of the history that
/// already fails with nondeterminism ends with it (found by bisection).
async fn describe(
    replayer: &WorkflowReplayer,
    history: &History,
    failure: WorkflowReplayFailure,
) -> anyhow::Result<ReplayFailure> {
    let nondeterministic = matches!(failure, WorkflowReplayFailure::Nondeterminism { .. });
    let message = core_message(&failure.to_string());
    if !nondeterministic {
        return Ok(ReplayFailure {
            nondeterministic,
            event: None,
            message,
        });
    }
    let (mut good, mut bad) = (0usize, history.events.len());
    while bad - good > 1 {
        let middle = (good + bad) / 2;
        let prefix = History {
            events: history.events[..middle].to_vec(),
        };
        match replay(replayer, &prefix).await? {
            Some(WorkflowReplayFailure::Nondeterminism { .. }) => bad = middle,
            _ => good = middle,
        }
    }
    let event = history.events.get(bad - 1).map(|e| {
        let kind = EventType::try_from(e.event_type)
            .map(|t| t.as_str_name().trim_start_matches("EVENT_TYPE_").to_owned())
            .unwrap_or_else(|_| format!("type {}", e.event_type));
        (e.event_id, kind)
    });
    Ok(ReplayFailure {
        nondeterministic,
        event,
        message,
    })
}

/// The SDK wraps Core's reason (e.g. "[TMPRL1100] Nondeterminism error: …") in a debug dump
/// of the failure proto; keep just the reason when it is there.
fn core_message(text: &str) -> String {
    text.split_once("message: \"")
        .and_then(|(_, rest)| rest.split_once("\", source:"))
        .map(|(reason, _)| reason.replace("\\'", "'"))
        .unwrap_or_else(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_reason_is_extracted_from_the_failure_dump() {
        let dump = r#"workflow replay was nondeterministic: Workflow activation completion failed: Failure { failure: Some(Failure { message: "[TMPRL1100] Nondeterminism error: Activity type 'A' does not match 'B'", source: "", stack_trace: "" }) }"#;
        assert_eq!(
            core_message(dump),
            "[TMPRL1100] Nondeterminism error: Activity type 'A' does not match 'B'"
        );
        assert_eq!(core_message("plain"), "plain");
    }
}
