//! `IdempotencyRetention`: one retention pass (see `orders_operations::retention`) every
//! `every_secs`, for as long as workers run, so `idempotency_keys` stops growing forever.
//!
//! Like [`crate::in_doubt_recovery`], each worker makes sure one instance runs (workflow id
//! [`WORKFLOW_ID`], started with that worker's schedule if absent; terminate it to change the
//! schedule), and the loop continues as new every [`PASSES_PER_RUN`] passes.

use std::time::Duration;

use orders_operations::retention::{RetentionActivities, RetentionPolicy};
use serde::{Deserialize, Serialize};
use temporalio_common::RetryPolicy;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{ActivityOptions, ContinueAsNewOptions, WorkflowContext, WorkflowResult};

/// The one retention workflow of a namespace.
pub const WORKFLOW_ID: &str = "orders-idempotency-retention";
/// Passes before the loop continues as new.
pub const PASSES_PER_RUN: u32 = 100;

/// How often to prune, and which keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionSchedule {
    pub every_secs: u64,
    pub policy: RetentionPolicy,
}

impl Default for RetentionSchedule {
    fn default() -> Self {
        Self {
            every_secs: 3600,
            policy: RetentionPolicy {
                older_than_days: 40,
            },
        }
    }
}

#[workflow]
#[derive(Default)]
pub struct IdempotencyRetentionWorkflow;

#[workflow_methods]
impl IdempotencyRetentionWorkflow {
    #[run(name = "IdempotencyRetention")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        schedule: RetentionSchedule,
    ) -> WorkflowResult<()> {
        let options = ActivityOptions::with_start_to_close_timeout(Duration::from_secs(300))
            .retry_policy(RetryPolicy::builder().maximum_attempts(3).build())
            .build();
        for _ in 0..PASSES_PER_RUN {
            ctx.timer(Duration::from_secs(schedule.every_secs)).await;
            let pass = ctx
                .execute_activity(
                    RetentionActivities::prune_idempotency_keys,
                    schedule.policy,
                    options.clone(),
                )
                .await;
            if !ctx.is_replaying() {
                match &pass {
                    Ok(report) if report.deleted > 0 || !report.errors.is_empty() => {
                        tracing::info!(
                            deleted = report.deleted,
                            kept_running = report.kept_running,
                            kept_unrecognised = report.kept_unrecognised,
                            errors = ?report.errors,
                            "idempotency retention pass"
                        );
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(%err, "idempotency retention pass failed; next pass later")
                    }
                }
            }
        }
        ctx.continue_as_new(schedule, ContinueAsNewOptions::default())?;
        Ok(())
    }
}
