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

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use temporalio_client::errors::WorkflowInteractionError;
use temporalio_client::{
    Client, UntypedWorkflow, WorkflowDescribeOptions, WorkflowExecutionStatus,
};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use orders_activities::two_phase::{commit_on, roll_back_on};
use orders_core::metrics::OrderMetrics;
use orders_core::shards::{Shard, ShardError, Shards};
use orders_core::store::two_phase::{self, FIRST_ROUND, Gid, GidParts, GidTooLong};

/// The memo key under which PlaceOrder records its two-phase decision.
pub const DECISION_MEMO: &str = "two_phase_decision";

/// The memo key naming the round ([`GidParts::round`]) the decision is about, recorded with
/// it from the second round on (absent means the first). A decision about a later round
/// means every earlier round was rolled back.
pub const ROUND_MEMO: &str = "two_phase_round";

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
    /// What could not be scanned or resolved; the next pass tries again.
    pub errors: Vec<RecoveryProblem>,
}

/// For people: the totals, one line per transaction, one per problem.
impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "in-doubt recovery: {} committed, {} rolled back, {} left, {} foreign left alone",
            self.count(Action::Committed),
            self.count(Action::RolledBack),
            self.count(Action::Left),
            self.foreign
        )?;
        for r in &self.resolutions {
            write!(
                f,
                "\n  shard {} {:?} {} ({} s old): {}",
                r.shard, r.action, r.gid, r.age_secs, r.reason
            )?;
        }
        for problem in &self.errors {
            write!(f, "\n  could not resolve: {problem}")?;
        }
        Ok(())
    }
}

/// One shard that could not be scanned, or one prepared transaction that could not be
/// resolved, with the whole chain of causes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryProblem {
    pub shard: usize,
    /// The prepared transaction, when the problem is one transaction's.
    pub gid: Option<String>,
    /// What went wrong, each cause after a colon.
    pub error: String,
}

impl std::fmt::Display for RecoveryProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.gid {
            Some(gid) => write!(f, "shard {} {gid}: {}", self.shard, self.error),
            None => write!(f, "shard {}: {}", self.shard, self.error),
        }
    }
}

/// Why recovery could not resolve a prepared transaction (or scan a shard).
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// A shard did not answer.
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// Temporal could not say what became of the workflow.
    #[error("cannot describe workflow {workflow_id}")]
    Describe {
        workflow_id: String,
        #[source]
        source: WorkflowInteractionError,
    },
    /// The workflow's decision memo does not hold a decision.
    #[error("unreadable decision memo of workflow {workflow_id}")]
    Memo {
        workflow_id: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The gid names a home shard this deployment does not have.
    #[error("home shard {0} is not configured")]
    HomeShardMissing(usize),
    #[error(transparent)]
    GidTooLong(#[from] GidTooLong),
    /// Commit was decided, but the part is gone without having committed.
    #[error(
        "{gid} on shard {shard} is neither prepared nor committed: rolled back outside its workflow"
    )]
    PartMissing { gid: Gid, shard: usize },
    /// Rollback was decided, but the part had committed.
    #[error("{gid} on shard {shard} already committed")]
    AlreadyCommitted { gid: Gid, shard: usize },
}

impl RecoveryProblem {
    fn new(shard: usize, gid: Option<&Gid>, error: &RecoveryError) -> Self {
        Self {
            shard,
            gid: gid.map(Gid::to_string),
            error: with_causes(error),
        }
    }
}

/// `error`'s message followed by each cause's, skipping causes whose text the message
/// already carries (a `ShardError` prints its source itself).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let more = e.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = e.source();
    }
    text
}

impl RecoveryReport {
    /// Logs `error` (once, here) and lists it.
    fn problem(&mut self, shard: usize, gid: Option<&Gid>, error: RecoveryError) {
        let problem = RecoveryProblem::new(shard, gid, &error);
        tracing::warn!(%problem, "in-doubt recovery could not finish this");
        self.errors.push(problem);
    }

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
) -> Result<Verdict, RecoveryError> {
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
        Err(source) => {
            return Err(RecoveryError::Describe {
                workflow_id: parts.workflow_id.clone(),
                source,
            });
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
    let decision: Option<Decision> =
        described
            .memo()
            .get(DECISION_MEMO)
            .map_err(|e| RecoveryError::Memo {
                workflow_id: parts.workflow_id.clone(),
                source: e.into(),
            })?;
    let round: Option<u32> = described
        .memo()
        .get(ROUND_MEMO)
        .map_err(|e| RecoveryError::Memo {
            workflow_id: parts.workflow_id.clone(),
            source: e.into(),
        })?;
    let decided = decision.map(|d| (d, round.unwrap_or(FIRST_ROUND)));
    match (decided, described.status()) {
        (Some((_, round)), _) if parts.round < round => Ok(Verdict::Rollback(format!(
            "the workflow planned the order again (round {round}), so round {} was rolled back",
            parts.round
        ))),
        (Some((Decision::Commit, round)), _) if parts.round == round => {
            Ok(Verdict::Commit("the workflow decided commit".into()))
        }
        (Some((Decision::Rollback, round)), _) if parts.round == round => {
            Ok(Verdict::Rollback("the workflow decided rollback".into()))
        }
        // Undecided, or decided only about an earlier round.
        (_, WorkflowExecutionStatus::Running) => Ok(Verdict::Leave(
            "the workflow is running and has not decided yet".into(),
        )),
        (_, status) => {
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
) -> Result<Verdict, RecoveryError> {
    if parts.home_shard >= shards.len() {
        return Err(RecoveryError::HomeShardMissing(parts.home_shard));
    }
    let home = shards.get(parts.home_shard);
    let home_parts = parts.home();
    let home_gid = home_parts.gid()?;
    // Settle the home part first: once it is rolled back (and tombstoned) it can never
    // commit, so the outcome is fixed before any other part is touched. A home part that
    // turns out committed means the decision was commit.
    let home_rolled_back = roll_back_on(home, &home_gid, &home_parts.part_key())
        .await
        .map_err(|e| home.error(e))?;
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
async fn commit(shards: &Shards, shard: &Shard, gid: &Gid) -> Result<(), RecoveryError> {
    let parts = gid.parts();
    if parts.shard != parts.home_shard && parts.home_shard < shards.len() {
        let home = shards.get(parts.home_shard);
        let home_gid = parts.home().gid()?;
        if !commit_on(home, &home_gid, &parts.home_key())
            .await
            .map_err(|e| home.error(e))?
        {
            return Err(RecoveryError::PartMissing {
                gid: home_gid,
                shard: home.index,
            });
        }
    }
    if !commit_on(shard, gid, &parts.part_key())
        .await
        .map_err(|e| shard.error(e))?
    {
        return Err(RecoveryError::PartMissing {
            gid: gid.clone(),
            shard: shard.index,
        });
    }
    Ok(())
}

/// Rolls `gid` back and tombstones its part's key.
async fn roll_back(shard: &Shard, gid: &Gid) -> Result<(), RecoveryError> {
    if roll_back_on(shard, gid, &gid.parts().part_key())
        .await
        .map_err(|e| shard.error(e))?
    {
        Ok(())
    } else {
        Err(RecoveryError::AlreadyCommitted {
            gid: gid.clone(),
            shard: shard.index,
        })
    }
}

/// One recovery pass over every shard. Every problem is logged here, once, and listed in the
/// report; the rest of the pass goes on.
pub async fn recover(
    shards: &Shards,
    client: &Client,
    grace: Duration,
    metrics: &OrderMetrics,
) -> RecoveryReport {
    let mut report = RecoveryReport::default();
    let mut found = Vec::new();
    for shard in shards.iter() {
        let _timer = metrics.time(shard, "RecoverInDoubt");
        match two_phase::in_doubt(&shard.conn).await {
            Ok(prepared) => found.extend(prepared.into_iter().map(|in_doubt| (shard, in_doubt))),
            Err(e) => report.problem(shard.index, None, shard.error(e).into()),
        }
        match two_phase::foreign_count(&shard.conn).await {
            Ok(foreign) => report.foreign += foreign,
            Err(e) => report.problem(shard.index, None, shard.error(e).into()),
        }
    }
    // Home parts first, as in the workflow: an order's home part is resolved before its
    // other parts, so its key stays the order's commit record.
    found.sort_by_key(|(_, in_doubt)| {
        let parts = in_doubt.gid.parts();
        parts.shard != parts.home_shard
    });
    for (shard, in_doubt) in found {
        let gid = &in_doubt.gid;
        let parts = gid.parts();
        let age = Duration::from_secs(in_doubt.age_secs.max(0) as u64);
        let verdict = match verdict(client, shards, parts, age, grace).await {
            Ok(verdict) => verdict,
            Err(e) => {
                report.problem(shard.index, Some(gid), e);
                continue;
            }
        };
        let _timer = metrics.time(shard, "RecoverInDoubt");
        let (action, reason, outcome) = match verdict {
            Verdict::Commit(reason) => {
                (Action::Committed, reason, commit(shards, shard, gid).await)
            }
            Verdict::Rollback(reason) => (Action::RolledBack, reason, roll_back(shard, gid).await),
            Verdict::Leave(reason) => (Action::Left, reason, Ok(())),
        };
        if let Err(e) = outcome {
            report.problem(shard.index, Some(gid), e);
            continue;
        }
        tracing::info!(%gid, ?action, %reason, "in-doubt transaction resolved");
        report.resolutions.push(Resolution {
            shard: shard.index,
            gid: gid.to_string(),
            workflow_id: parts.workflow_id.clone(),
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
    metrics: Arc<OrderMetrics>,
}

impl RecoveryActivities {
    pub fn new(shards: Shards, client: Client, metrics: Arc<OrderMetrics>) -> Self {
        Self {
            shards,
            client,
            metrics,
        }
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
        let report = recover(
            &self.shards,
            &self.client,
            Duration::from_secs(grace_secs),
            &self.metrics,
        )
        .await;
        for resolution in &report.resolutions {
            match resolution.action {
                Action::Committed => self.metrics.recovery_action(true),
                Action::RolledBack => self.metrics.recovery_action(false),
                Action::Left => {}
            }
        }
        Ok(report)
    }
}
