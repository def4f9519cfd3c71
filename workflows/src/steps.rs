//! How PlaceOrder's database steps run, in both consistency modes.
//!
//! [`Steps::Local`] (every order since the `one-task-order` patch, see
//! `place_order::version`): as local activities, inside the workflow task. The
//! worker runs the step at once and the result goes into the history as a marker when the
//! task completes, so a whole order usually costs the server one workflow task: no activity
//! task to schedule, dispatch and complete, and no workflow task to wake the workflow after
//! each step. That is also why a two-phase order's prepared parts hold their rows for
//! milliseconds instead of several server round trips.
//!
//! Local activities are at-least-once like any activity: if the worker dies mid-task, the
//! task times out (`ORDER_TASK_TIMEOUT`, 5 s) and the next worker replays it from the
//! history and runs the unrecorded steps again, and each step finds its own earlier work by
//! its idempotency key and changes nothing. A step that keeps failing retries inside the
//! task (the worker heartbeats the task every 4 s meanwhile); a back-off beyond the SDK's
//! threshold (one minute) becomes a timer instead.
//!
//! [`Steps::Remote`] (histories recorded before the patch, and workers started with
//! `ORDERS_STEPS=remote`, whose orders take `Version::Remote`, see
//! `place_order::version`): as activities, each scheduled, dispatched and completed
//! by the server, followed by a workflow task.

mod options;

use std::time::Duration;

use temporalio_common::ActivityDefinition;
use temporalio_common::data_converters::TemporalDeserializable;
use temporalio_sdk::{
    ActivityExecutionError, TimerOptions, WorkflowCancellationToken, WorkflowContext,
};

pub use options::{PREPARE_FOR_AT_MOST, forward_options};
use options::{local_options, remote_options};

/// Where a step runs: in the workflow task, or as an activity of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steps {
    Local,
    Remote,
}

/// What a step does, which sets how it retries and whether a cancellation stops it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Plan, write, reserve, prepare: retried until done or refused; a cancellation stops it
    /// (after the running attempt has stopped, so compensations see what it wrote).
    Forward,
    /// Phase one of a two-phase order: as `Forward`, but retried for at most
    /// [`PREPARE_FOR_AT_MOST`]. Its prepared parts hold their rows while it retries, so it
    /// gives up soon, and the order releases them and tries again later
    /// (see `place_order::two_phase`).
    Prepare,
    /// A saga's compensation: immune to cancellation, retried for about two minutes, then
    /// reported as failed.
    Compensate,
    /// What follows a confirmation (starting the order's lifecycle): immune to cancellation,
    /// retried for about two minutes; the order stays confirmed either way.
    AfterConfirmation,
    /// Commit or roll back a prepared part: retried until done (a shard that is down comes
    /// back, and its prepared transaction with it), and never cancelled.
    Resolve,
}

impl Steps {
    /// Runs `activity(input)` as this kind of step.
    pub async fn run<W, A>(
        self,
        ctx: &WorkflowContext<W>,
        activity: A,
        input: A::Input,
        phase: Phase,
    ) -> Result<A::Output, ActivityExecutionError>
    where
        A: ActivityDefinition,
        A::Output: TemporalDeserializable,
    {
        match self {
            Steps::Local => {
                ctx.execute_local_activity(activity, input, local_options(phase))
                    .await
            }
            Steps::Remote => {
                ctx.execute_activity(activity, input, remote_options(phase))
                    .await
            }
        }
    }
}

impl Steps {
    /// Ends the workflow task before the workflow undoes what its steps did after a refusal.
    ///
    /// A local step's result, the refusal among them, reaches the history only when the task
    /// completes, and undoing leaves tombstones (a compensated key, a rolled-back part). A
    /// worker dying mid-undo would have the next one replay the task, run the forward steps
    /// again, meet those tombstones (`AlreadyCompensated`) and lose the refusal's reason
    /// (`OutOfStock`, `PaymentDeclined`). A 1 ms timer records the steps first; only refused
    /// orders pay for it, one timer and one more workflow task. Steps that are activities are
    /// recorded one by one already.
    pub async fn record_before_undoing<W>(self, ctx: &WorkflowContext<W>) {
        if self == Steps::Local {
            let timer = TimerOptions::builder(Duration::from_millis(1))
                .cancellation_token(WorkflowCancellationToken::new())
                .summary("record the refusal before undoing".to_owned())
                .build();
            let _ = ctx.timer(timer).await;
        }
    }
}
