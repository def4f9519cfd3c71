//! The steps of a running workflow that are failing, as the server knows them: each pending
//! activity past its first attempt, with its last error. `orders reshard status` prints them,
//! so a move that keeps retrying says what holds it.

use serde::Serialize;
use temporalio_client::{Client, UntypedWorkflow, WorkflowDescribeOptions};

/// An activity retrying after a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct FailingStep {
    pub step: String,
    /// The attempt running or scheduled next.
    pub attempt: i32,
    pub last_error: String,
}

impl std::fmt::Display for FailingStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step {} failing (attempt {}): {}",
            self.step, self.attempt, self.last_error
        )
    }
}

/// The failing steps of `workflow_id`'s latest run; empty when none fails or the workflow
/// cannot be described (the progress query already said why).
pub(crate) async fn of(client: &Client, workflow_id: &str) -> Vec<FailingStep> {
    let Ok(description) = client
        .get_workflow_handle::<UntypedWorkflow>(workflow_id)
        .describe(WorkflowDescribeOptions::default())
        .await
    else {
        return Vec::new();
    };
    description
        .raw_description
        .pending_activities
        .iter()
        .filter_map(|pending| {
            let failure = pending.last_failure.as_ref()?;
            Some(FailingStep {
                step: pending
                    .activity_type
                    .as_ref()
                    .map_or_else(String::new, |t| t.name.clone()),
                attempt: pending.attempt,
                last_error: failure.message.clone(),
            })
        })
        .collect()
}
