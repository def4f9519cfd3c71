//! Commands for whoever runs the deployment, and their reports: `recover` (which runs
//! [`orders_operations::recovery::recover`]), `audit` ([`audit::run`]) and `replay`
//! ([`replay`]).

pub mod audit;
mod history_json;
pub mod replay;

use std::fmt;
use std::path::PathBuf;

use orders_operations::recovery::RecoveryReport;
use serde::Serialize;

use super::report::Report;
use audit::AuditReport;
use replay::Replayed;

impl Report for RecoveryReport {
    fn failure(&self) -> Option<String> {
        let n = self.errors.len();
        (n > 0).then(|| format!("{n} prepared transactions or shards could not be resolved"))
    }
}

impl Report for AuditReport {
    fn failure(&self) -> Option<String> {
        let n = self.violations.len();
        (n > 0).then(|| format!("the audit found {n} violation(s)"))
    }
}

/// Every history replayed against this build.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub(super) struct ReplayReport(Vec<Replayed>);

pub(super) async fn replay(paths: &[PathBuf]) -> anyhow::Result<ReplayReport> {
    let files = replay::history_files(paths)?;
    let results = replay::replay_files(&files, replay::worker_workflows()?).await?;
    Ok(ReplayReport(results))
}

impl ReplayReport {
    fn failed(&self) -> usize {
        self.0.iter().filter(|r| r.failure.is_some()).count()
    }
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for result in &self.0 {
            match &result.failure {
                None => writeln!(f, "ok    {}", result.path.display())?,
                Some(failure) => writeln!(f, "FAIL  {}: {failure}", result.path.display())?,
            }
        }
        if self.failed() == 0 {
            write!(f, "{} histories replay cleanly", self.0.len())
        } else {
            Ok(())
        }
    }
}

impl Report for ReplayReport {
    fn failure(&self) -> Option<String> {
        let failed = self.failed();
        (failed > 0).then(|| {
            format!(
                "{failed} of {} histories no longer replay: the workflow change is not deterministic (guard it with ctx.patched, see docs/operations.md, \"Replaying recorded histories\")",
                self.0.len()
            )
        })
    }
}
