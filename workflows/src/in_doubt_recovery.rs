//! `InDoubtRecovery`: `orders recover`, every minute, for as long as workers run.
//!
//! Each worker makes sure one instance runs (workflow id [`WORKFLOW_ID`], started if absent,
//! with the schedule of the worker that started it; to change it, terminate the workflow and
//! the next worker to start begins a new one),
//! so prepared transactions left behind by terminated or crashed two-phase orders are
//! resolved without anyone watching (see `orders_operations::recovery`). The loop continues
//! as new every [`PASSES_PER_RUN`] passes, so its history stays short.

use std::time::Duration;

use orders_operations::recovery::{Action, RecoveryActivities};
use serde::{Deserialize, Serialize};
use temporalio_common::RetryPolicy;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{ActivityOptions, ContinueAsNewOptions, WorkflowContext, WorkflowResult};

/// The one recovery workflow of a namespace.
pub const WORKFLOW_ID: &str = "orders-in-doubt-recovery";
/// Passes before the loop continues as new.
pub const PASSES_PER_RUN: u32 = 100;

/// How often to look, and how long a prepared transaction of a workflow Temporal does not
/// know (yet) is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverySchedule {
    pub every_secs: u64,
    pub grace_secs: u64,
}

impl Default for RecoverySchedule {
    fn default() -> Self {
        Self {
            every_secs: 60,
            grace_secs: 300,
        }
    }
}

#[workflow]
#[derive(Default)]
pub struct InDoubtRecoveryWorkflow;

#[workflow_methods]
impl InDoubtRecoveryWorkflow {
    #[run(name = "InDoubtRecovery")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        schedule: RecoverySchedule,
    ) -> WorkflowResult<()> {
        let options = ActivityOptions::with_start_to_close_timeout(Duration::from_secs(60))
            .retry_policy(RetryPolicy::builder().maximum_attempts(3).build())
            .build();
        for _ in 0..PASSES_PER_RUN {
            // Wait first: a worker (re)starting the loop must not race the workflows it
            // would resolve for, which are typically resuming at that very moment.
            ctx.timer(Duration::from_secs(schedule.every_secs)).await;
            let pass = ctx
                .execute_activity(
                    RecoveryActivities::recover_in_doubt,
                    schedule.grace_secs,
                    options.clone(),
                )
                .await;
            if !ctx.is_replaying() {
                match &pass {
                    Ok(report) if !report.resolutions.is_empty() || !report.errors.is_empty() => {
                        tracing::info!(
                            committed = report.count(Action::Committed),
                            rolled_back = report.count(Action::RolledBack),
                            left = report.count(Action::Left),
                            errors = ?report.errors,
                            "in-doubt recovery pass"
                        );
                    }
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(%err, "in-doubt recovery pass failed; next pass soon")
                    }
                }
            }
        }
        ctx.continue_as_new(schedule, ContinueAsNewOptions::default())?;
        Ok(())
    }
}
