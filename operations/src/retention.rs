//! Bounded growth: deleting idempotency keys (and compensation tombstones) that no workflow
//! can need again.
//!
//! A key is `<workflow id>/<first run id>/<step>`. It protects its step against a retry, and
//! only a workflow that is still running can retry a step. So a key older than the
//! retention is deleted when Temporal says its workflow run chain is no longer running (or
//! no longer knows it); a running one keeps its keys however old they are. Keys of another
//! shape are never deleted. Resetting a workflow whose keys are gone would run its steps
//! again: reset only within the retention.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use temporalio_client::errors::WorkflowInteractionError;
use temporalio_client::{
    Client, UntypedWorkflow, WorkflowDescribeOptions, WorkflowExecutionStatus,
};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use orders_core::metrics::OrderMetrics;
use orders_core::shards::{Shard, ShardError, Shards};
use orders_core::store::idempotency;

/// What one pass deletes, at most, per shard: it comes back for the rest.
pub const MAX_KEYS_PER_PASS: u64 = 10_000;
const BATCH: u64 = 500;

/// Which keys a pass may delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Keys younger than this are kept without asking Temporal.
    pub older_than_days: u32,
}

/// What one pass did, over every shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    pub deleted: u64,
    /// Old keys of workflows still running.
    pub kept_running: u64,
    /// Old keys not of the `<workflow id>/<run id>/<step>` shape.
    pub kept_unrecognised: u64,
    /// Shards or workflows that could not be read; their keys stay for the next pass.
    pub errors: Vec<String>,
}

/// The workflow run chain a key belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Owner {
    workflow_id: String,
    first_run_id: String,
}

/// `<workflow id>/<first run id>/<step>`: the run id is the last segment that is a UUID
/// with a step after it; what comes before it is the workflow id, which may itself contain
/// `/` and UUIDs (`order/<uuid>`), while step names never hold one. Taking the first UUID
/// instead would judge such a key by a workflow that does not exist, and delete it.
fn owner(key: &str) -> Option<Owner> {
    let segments: Vec<&str> = key.split('/').collect();
    let run = (1..segments.len().saturating_sub(1))
        .rev()
        .find(|&i| uuid_shaped(segments[i]))?;
    Some(Owner {
        workflow_id: segments[..run].join("/"),
        first_run_id: segments[run].to_owned(),
    })
}

fn uuid_shaped(segment: &str) -> bool {
    segment.len() == 36
        && segment.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Whether a workflow run chain can still run a step.
async fn still_running(client: &Client, owner: &Owner) -> Result<bool, WorkflowInteractionError> {
    let handle = client.get_workflow_handle::<UntypedWorkflow>(owner.workflow_id.clone());
    match handle.describe(WorkflowDescribeOptions::default()).await {
        Ok(described) => {
            let first_run = described
                .raw()
                .workflow_execution_info
                .as_ref()
                .map(|info| info.first_run_id.clone())
                .unwrap_or_default();
            // Another chain under the same id means ours ended; a server that does not
            // report first run ids gets the benefit of the doubt.
            let ours = first_run.is_empty() || first_run == owner.first_run_id;
            Ok(ours && described.status() == WorkflowExecutionStatus::Running)
        }
        Err(WorkflowInteractionError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// One pass over every shard.
pub async fn prune(
    shards: &Shards,
    client: &Client,
    policy: RetentionPolicy,
    metrics: &OrderMetrics,
) -> PruneReport {
    let cutoff = chrono::Utc::now().fixed_offset()
        - chrono::Duration::days(i64::from(policy.older_than_days));
    let mut report = PruneReport::default();
    let mut verdicts: HashMap<Owner, bool> = HashMap::new();
    for shard in shards.iter() {
        let pass = prune_shard(shard, client, cutoff, metrics, &mut verdicts, &mut report);
        if let Err(e) = pass.await {
            report.errors.push(e.to_string());
        }
    }
    report
}

async fn prune_shard(
    shard: &Shard,
    client: &Client,
    cutoff: chrono::DateTime<chrono::FixedOffset>,
    metrics: &OrderMetrics,
    verdicts: &mut HashMap<Owner, bool>,
    report: &mut PruneReport,
) -> Result<(), ShardError> {
    let mut after = None;
    let mut seen = 0;
    while seen < MAX_KEYS_PER_PASS {
        let batch = {
            let _timer = metrics.time(shard, "PruneIdempotencyKeys");
            idempotency::written_before(&shard.conn, cutoff, after.as_ref(), BATCH)
                .await
                .map_err(|e| shard.error(e))?
        };
        let Some(last) = batch.last().cloned() else {
            break;
        };
        seen += batch.len() as u64;
        let mut doomed = Vec::new();
        for (_, key) in &batch {
            let Some(owner) = owner(key) else {
                report.kept_unrecognised += 1;
                continue;
            };
            let running = match verdicts.get(&owner) {
                Some(&running) => running,
                None => match still_running(client, &owner).await {
                    Ok(running) => *verdicts.entry(owner).or_insert(running),
                    Err(e) => {
                        report.errors.push(format!(
                            "cannot describe workflow {}: {e}; its keys stay",
                            owner.workflow_id
                        ));
                        continue;
                    }
                },
            };
            if running {
                report.kept_running += 1;
            } else {
                doomed.push(key.clone());
            }
        }
        let _timer = metrics.time(shard, "PruneIdempotencyKeys");
        report.deleted += idempotency::delete(&shard.conn, &doomed)
            .await
            .map_err(|e| shard.error(e))?;
        if (batch.len() as u64) < BATCH {
            break;
        }
        after = Some(last);
    }
    Ok(())
}

/// The retention's activity.
pub struct RetentionActivities {
    shards: Shards,
    client: Client,
    metrics: Arc<OrderMetrics>,
}

impl RetentionActivities {
    pub fn new(shards: Shards, client: Client, metrics: Arc<OrderMetrics>) -> Self {
        Self {
            shards,
            client,
            metrics,
        }
    }
}

#[activities]
impl RetentionActivities {
    /// One retention pass (see the module docs).
    #[activity(name = "PruneIdempotencyKeys")]
    pub async fn prune_idempotency_keys(
        self: std::sync::Arc<Self>,
        _ctx: ActivityContext,
        policy: RetentionPolicy,
    ) -> Result<PruneReport, ActivityError> {
        Ok(prune(&self.shards, &self.client, policy, &self.metrics).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "01a234a4-bdb8-7ce6-b17b-53b70b6e0bd9";

    #[test]
    fn a_key_names_its_workflow_and_first_run() {
        assert_eq!(
            owner(&format!("order-42/{RUN}/reserve-stock/shard-2")),
            Some(Owner {
                workflow_id: "order-42".into(),
                first_run_id: RUN.into()
            })
        );
        assert_eq!(
            owner(&format!("tenant/a/order-42/{RUN}/create-order")).map(|o| o.workflow_id),
            Some("tenant/a/order-42".into())
        );
    }

    #[test]
    fn a_workflow_id_holding_a_uuid_keeps_it_and_the_run_id_follows() {
        let order = "5f0c6a52-1f7e-4d43-9a55-2a8e1f3b9c10";
        assert_eq!(
            owner(&format!("order/{order}/{RUN}/reserve-stock/shard-2")),
            Some(Owner {
                workflow_id: format!("order/{order}"),
                first_run_id: RUN.into()
            })
        );
        assert_eq!(
            owner(&format!("{order}/{RUN}/create-order")).map(|o| o.workflow_id),
            Some(order.to_owned())
        );
    }

    #[test]
    fn keys_of_another_shape_have_no_owner() {
        for key in [
            "create-order",
            &format!("{RUN}/x"),
            &format!("order/{RUN}"),
            "a/b/c",
        ] {
            assert_eq!(owner(key), None, "{key}");
        }
    }
}
