//! In-doubt recovery: resolving prepared transactions whose coordinator stopped caring.
//!
//! A two-phase order leaves a prepared transaction on a shard for as long as its workflow
//! takes to commit or roll it back. If the workflow was terminated, or a worker crashed at
//! the wrong moment and the workflow then ended, the transaction stays prepared, holding its
//! locks. As Citus does, recovery lists the prepared transactions of every shard and
//! resolves each of ours from the coordinator's durable log, here the workflow itself:
//! - its decision memo says `commit`: commit (the decision was made; it must be honoured);
//! - it says `rollback`, or the run is closed without a decision: roll back;
//! - the run is unknown to Temporal (never started, or past retention) and the transaction
//!   is older than the grace period: roll back, since nothing can decide it any more;
//! - the run is still running without a decision: leave it; the workflow resolves it itself.
//!
//! Transactions whose gid is not ours are never touched.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use temporalio_client::errors::WorkflowInteractionError;
use temporalio_client::{
    Client, NamespacedClient, UntypedWorkflow, WorkflowDescribeOptions, WorkflowExecutionInfo,
    WorkflowExecutionStatus, WorkflowHandle,
};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use crate::shards::Shards;
use crate::store::two_phase::{self, GidParts};

/// The memo key under which PlaceOrder records its two-phase decision.
pub const DECISION_MEMO: &str = "two_phase_decision";

/// A two-phase order's decision, as recorded in its workflow's memo (and history).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Commit,
    Rollback,
}

/// What recovery did with one prepared transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Committed,
    RolledBack,
    Left,
}

/// One prepared transaction of ours and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub shard: usize,
    pub gid: String,
    pub workflow_id: String,
    pub age_secs: i64,
    pub action: Action,
    /// Why, in words.
    pub reason: String,
}

/// What one recovery pass found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryReport {
    pub resolutions: Vec<Resolution>,
    /// Prepared transactions that are not ours, left alone.
    pub foreign: usize,
    /// Shards that could not be scanned or resolved, with the error.
    pub errors: Vec<String>,
}

impl RecoveryReport {
    pub fn count(&self, action: Action) -> usize {
        self.resolutions
            .iter()
            .filter(|r| r.action == action)
            .count()
    }
}

/// What the workflow behind a gid says should happen to it.
enum Verdict {
    Commit(String),
    Rollback(String),
    Leave(String),
}

/// Reads the decision of the run that prepared `parts` from Temporal.
async fn verdict(
    client: &Client,
    parts: &GidParts,
    age: Duration,
    grace: Duration,
) -> Result<Verdict, WorkflowInteractionError> {
    let info = WorkflowExecutionInfo::builder()
        .namespace(client.namespace())
        .workflow_id(parts.workflow_id.clone())
        .run_id(parts.run_id.clone())
        .build();
    let handle = WorkflowHandle::<Client, UntypedWorkflow>::new(client.clone(), info);
    let described = match handle.describe(WorkflowDescribeOptions::default()).await {
        Ok(described) => described,
        Err(WorkflowInteractionError::NotFound(_)) if age >= grace => {
            return Ok(Verdict::Rollback(
                "its workflow run is unknown to Temporal and it is older than the grace period"
                    .into(),
            ));
        }
        Err(WorkflowInteractionError::NotFound(_)) => {
            return Ok(Verdict::Leave(
                "its workflow run is not visible yet; within the grace period".into(),
            ));
        }
        Err(other) => return Err(other),
    };
    let decision: Option<Decision> = described
        .memo()
        .get(DECISION_MEMO)
        .map_err(|e| WorkflowInteractionError::Other(Box::new(e)))?;
    let status = described.status();
    Ok(match (decision, status) {
        (Some(Decision::Commit), _) => Verdict::Commit("the workflow decided commit".into()),
        (Some(Decision::Rollback), _) => Verdict::Rollback("the workflow decided rollback".into()),
        (None, WorkflowExecutionStatus::Running) => {
            Verdict::Leave("the workflow is running and has not decided yet".into())
        }
        (None, status) => {
            Verdict::Rollback(format!("the workflow ended ({status:?}) without deciding"))
        }
    })
}

/// One recovery pass over every shard.
pub async fn recover(shards: &Shards, client: &Client, grace: Duration) -> RecoveryReport {
    let mut report = RecoveryReport::default();
    for shard in shards.iter() {
        let prepared = match two_phase::in_doubt(&shard.conn).await {
            Ok(prepared) => prepared,
            Err(e) => {
                report.errors.push(shard.error(e).to_string());
                continue;
            }
        };
        report.foreign += two_phase::foreign_count(&shard.conn).await.unwrap_or(0);
        for in_doubt in prepared {
            let Some(parts) = two_phase::parse_gid(&in_doubt.gid) else {
                continue;
            };
            let age = Duration::from_secs(in_doubt.age_secs.max(0) as u64);
            let verdict = match verdict(client, &parts, age, grace).await {
                Ok(verdict) => verdict,
                Err(e) => {
                    report.errors.push(format!(
                        "{}: cannot read workflow {}: {e}",
                        in_doubt.gid, parts.workflow_id
                    ));
                    continue;
                }
            };
            let (action, reason, outcome) = match verdict {
                Verdict::Commit(reason) => (
                    Action::Committed,
                    reason,
                    two_phase::commit_prepared(&shard.conn, &in_doubt.gid).await,
                ),
                Verdict::Rollback(reason) => (
                    Action::RolledBack,
                    reason,
                    two_phase::rollback_prepared(&shard.conn, &in_doubt.gid).await,
                ),
                Verdict::Leave(reason) => (Action::Left, reason, Ok(())),
            };
            if let Err(e) = outcome {
                // The workflow may have resolved it meanwhile; the next pass will tell.
                report
                    .errors
                    .push(format!("{}: {}", in_doubt.gid, shard.error(e)));
                continue;
            }
            tracing::info!(gid = %in_doubt.gid, ?action, %reason, "in-doubt transaction resolved");
            report.resolutions.push(Resolution {
                shard: shard.index,
                gid: in_doubt.gid,
                workflow_id: parts.workflow_id,
                age_secs: in_doubt.age_secs,
                action,
                reason,
            });
        }
    }
    report
}

/// The recovery activity's state: the shards and a Temporal client to ask workflows.
pub struct RecoveryActivities {
    shards: Shards,
    client: Client,
}

impl RecoveryActivities {
    pub fn new(shards: Shards, client: Client) -> Self {
        Self { shards, client }
    }
}

#[activities]
impl RecoveryActivities {
    /// One recovery pass; `grace_secs` protects transactions of runs Temporal does not
    /// show yet.
    #[activity(name = "RecoverInDoubt")]
    pub async fn recover_in_doubt(
        self: std::sync::Arc<Self>,
        _ctx: ActivityContext,
        grace_secs: u64,
    ) -> Result<RecoveryReport, ActivityError> {
        Ok(recover(&self.shards, &self.client, Duration::from_secs(grace_secs)).await)
    }
}
