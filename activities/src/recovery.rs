//! In-doubt recovery: resolving prepared transactions whose coordinator stopped caring.
//!
//! A two-phase order leaves a prepared transaction on a shard for as long as its workflow
//! takes to commit or roll it back. If the workflow was terminated, or a worker crashed at
//! the wrong moment and the workflow then ended, the transaction stays prepared, holding its
//! locks. As Citus does, recovery lists the prepared transactions of every shard and
//! resolves each of ours from the coordinator's durable log:
//! - the workflow's decision memo says `commit` (or `rollback`): do that;
//! - the workflow is still running and has not decided: leave it, the workflow resolves it;
//! - the workflow ended without deciding, or Temporal no longer knows it (past retention,
//!   and older than the grace period): read the order's commit record, the key of its home
//!   part. The home part commits before any other, so if its key is committed the decision
//!   was commit; if not, no part committed and rolling back is safe.
//!
//! A part rolled back here gets its key tombstoned, so an attempt of `PreparePart` still in
//! flight cannot prepare it again. Transactions whose gid is not ours are never touched.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use temporalio_client::errors::WorkflowInteractionError;
use temporalio_client::{
    Client, UntypedWorkflow, WorkflowDescribeOptions, WorkflowExecutionStatus,
};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use crate::shards::{Shard, Shards};
use crate::store::two_phase::{self, GidParts};
use crate::two_phase::{commit_on, roll_back_on};

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

/// What should happen to one prepared transaction, and why.
enum Verdict {
    Commit(String),
    Rollback(String),
    Leave(String),
}

/// Reads the decision of the workflow that prepared `parts` from Temporal, falling back on
/// the order's commit record when the workflow cannot tell.
async fn verdict(
    client: &Client,
    shards: &Shards,
    parts: &GidParts,
    age: Duration,
    grace: Duration,
) -> Result<Verdict, String> {
    let handle = client.get_workflow_handle::<UntypedWorkflow>(parts.workflow_id.clone());
    let described = match handle.describe(WorkflowDescribeOptions::default()).await {
        Ok(described) => described,
        Err(WorkflowInteractionError::NotFound(_)) if age < grace => {
            return Ok(Verdict::Leave(
                "its workflow is not visible yet; within the grace period".into(),
            ));
        }
        Err(WorkflowInteractionError::NotFound(_)) => {
            return from_commit_record(shards, parts, "its workflow is unknown to Temporal").await;
        }
        Err(other) => {
            return Err(format!(
                "cannot describe workflow {}: {other}",
                parts.workflow_id
            ));
        }
    };
    let first_run = described
        .raw()
        .workflow_execution_info
        .as_ref()
        .map(|info| info.first_run_id.as_str())
        .unwrap_or_default();
    if first_run.is_empty() {
        return Ok(Verdict::Leave(
            "the Temporal server does not report first run ids; resolve it by hand".into(),
        ));
    }
    if first_run != parts.run_id {
        return from_commit_record(shards, parts, "its workflow run chain has ended").await;
    }
    let decision: Option<Decision> = described
        .memo()
        .get(DECISION_MEMO)
        .map_err(|e| format!("unreadable decision memo: {e}"))?;
    match (decision, described.status()) {
        (Some(Decision::Commit), _) => Ok(Verdict::Commit("the workflow decided commit".into())),
        (Some(Decision::Rollback), _) => {
            Ok(Verdict::Rollback("the workflow decided rollback".into()))
        }
        (None, WorkflowExecutionStatus::Running) => Ok(Verdict::Leave(
            "the workflow is running and has not decided yet".into(),
        )),
        (None, status) => {
            let why = format!("the workflow ended ({status:?}) without deciding");
            from_commit_record(shards, parts, &why).await
        }
    }
}

/// The order's outcome from its home part's key: committed means commit was decided.
async fn from_commit_record(
    shards: &Shards,
    parts: &GidParts,
    why: &str,
) -> Result<Verdict, String> {
    if parts.home_shard >= shards.len() {
        return Err(format!("home shard {} is not configured", parts.home_shard));
    }
    let home = shards.get(parts.home_shard);
    let home_parts = parts.home();
    let home_gid = home_parts.gid().map_err(|e| e.to_string())?;
    // Settle the home part first: once it is rolled back (and tombstoned) it can never
    // commit, so the outcome is fixed before any other part is touched. A home part that
    // turns out committed means the decision was commit.
    let home_rolled_back = roll_back_on(home, &home_gid, &home_parts.part_key())
        .await
        .map_err(|e| home.error(e).to_string())?;
    Ok(if home_rolled_back {
        Verdict::Rollback(format!(
            "{why}; its home part on shard {} never committed, so no part did",
            parts.home_shard
        ))
    } else {
        Verdict::Commit(format!(
            "{why}; its home part on shard {} committed, so the decision was commit",
            parts.home_shard
        ))
    })
}

/// Commits `gid`, committing its order's home part first if that is still prepared, so the
/// home part's key stays the order's commit record.
async fn commit(shards: &Shards, shard: &Shard, gid: &str, parts: &GidParts) -> Result<(), String> {
    let missing = |on: &Shard, gid: &str| {
        format!(
            "{gid} on shard {} is neither prepared nor committed: rolled back outside its workflow",
            on.index
        )
    };
    if parts.shard != parts.home_shard && parts.home_shard < shards.len() {
        let home = shards.get(parts.home_shard);
        let home_gid = parts.home().gid().map_err(|e| e.to_string())?;
        if !commit_on(home, &home_gid, &parts.home_key())
            .await
            .map_err(|e| home.error(e).to_string())?
        {
            return Err(missing(home, &home_gid));
        }
    }
    if !commit_on(shard, gid, &parts.part_key())
        .await
        .map_err(|e| shard.error(e).to_string())?
    {
        return Err(missing(shard, gid));
    }
    Ok(())
}

/// Rolls `gid` back and tombstones its part's key.
async fn roll_back(shard: &Shard, gid: &str, parts: &GidParts) -> Result<(), String> {
    if roll_back_on(shard, gid, &parts.part_key())
        .await
        .map_err(|e| shard.error(e).to_string())?
    {
        Ok(())
    } else {
        Err(format!("{gid} on shard {} already committed", shard.index))
    }
}

/// One recovery pass over every shard.
pub async fn recover(shards: &Shards, client: &Client, grace: Duration) -> RecoveryReport {
    let mut report = RecoveryReport::default();
    let mut found = Vec::new();
    for shard in shards.iter() {
        match two_phase::in_doubt(&shard.conn).await {
            Ok(prepared) => found.extend(prepared.into_iter().filter_map(|in_doubt| {
                let parts = two_phase::parse_gid(&in_doubt.gid)?;
                Some((shard, in_doubt, parts))
            })),
            Err(e) => report.errors.push(shard.error(e).to_string()),
        }
        report.foreign += two_phase::foreign_count(&shard.conn).await.unwrap_or(0);
    }
    // Home parts first, as in the workflow: an order's home part is resolved before its
    // other parts, so its key stays the order's commit record.
    found.sort_by_key(|(_, _, parts)| parts.shard != parts.home_shard);
    for (shard, in_doubt, parts) in found {
        let age = Duration::from_secs(in_doubt.age_secs.max(0) as u64);
        let verdict = match verdict(client, shards, &parts, age, grace).await {
            Ok(verdict) => verdict,
            Err(e) => {
                report.errors.push(format!("{}: {e}", in_doubt.gid));
                continue;
            }
        };
        let (action, reason, outcome) = match verdict {
            Verdict::Commit(reason) => (
                Action::Committed,
                reason,
                commit(shards, shard, &in_doubt.gid, &parts).await,
            ),
            Verdict::Rollback(reason) => (
                Action::RolledBack,
                reason,
                roll_back(shard, &in_doubt.gid, &parts).await,
            ),
            Verdict::Leave(reason) => (Action::Left, reason, Ok(())),
        };
        if let Err(e) = outcome {
            report.errors.push(format!("{}: {e}", in_doubt.gid));
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
