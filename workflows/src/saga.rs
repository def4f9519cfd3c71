//! A saga: forward steps, each with a compensation registered *before* the step runs.
//!
//! Why before: a step whose activity timed out or was cancelled may or may not have written;
//! its compensation must run in either case (all our compensations are idempotent and
//! harmless when there is nothing to undo). The one exception is a step that *rejected* the
//! request (a non-retryable application failure): our activities roll back before
//! rejecting, so that step's compensation is dropped and nothing is written for it.
//!
//! Compensations run in reverse order, with a cancellation token detached from the
//! workflow's, so they still run when the workflow itself is being cancelled. A compensation
//! that fails after its retries is reported, never swallowed: [`Saga::compensate`] reports
//! every failure and the workflow fails with all of them.
//!
//! Steps and compensations run as [`Steps`] say: local activities, or activities of their own.

use futures::future::{LocalBoxFuture, join_all};
use temporalio_common::ActivityDefinition;
use temporalio_common::data_converters::TemporalDeserializable;
use temporalio_sdk::{ActivityExecutionError, WorkflowContext};

use crate::failures;
use crate::steps::{Phase, Steps};

struct Compensation {
    name: String,
    run: LocalBoxFuture<'static, Result<(), ActivityExecutionError>>,
}

/// A compensation that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompensationFailure {
    pub activity: String,
    pub error: String,
}

/// How the compensations went, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompensationReport {
    pub succeeded: Vec<String>,
    pub failed: Vec<CompensationFailure>,
}

/// Forward steps and the compensations they registered.
pub struct Saga<W> {
    ctx: WorkflowContext<W>,
    steps: Steps,
    compensations: Vec<Compensation>,
}

impl<W: 'static> Saga<W> {
    pub fn new(ctx: &WorkflowContext<W>, steps: Steps) -> Self {
        Self {
            ctx: ctx.clone(),
            steps,
            compensations: Vec::new(),
        }
    }

    /// Registers `undo(undo_input)`, then runs `forward(input)`.
    pub async fn step<F, U>(
        &mut self,
        forward: F,
        input: F::Input,
        undo: U,
        undo_input: U::Input,
    ) -> Result<F::Output, ActivityExecutionError>
    where
        F: ActivityDefinition,
        F::Output: TemporalDeserializable,
        U: ActivityDefinition<Output = ()> + 'static,
        U::Input: 'static,
    {
        self.register(undo, undo_input);
        let result = self
            .steps
            .run(&self.ctx, forward, input, Phase::Forward)
            .await;
        if let Err(err) = &result
            && failures::rejection(err).is_some()
        {
            self.compensations.pop();
        }
        result
    }

    /// Steps that do not depend on each other (one per shard): registers each one's
    /// `undo()`, then runs every `forward()` at once. Like [`Self::step`], a step that
    /// rejected drops its compensation; the first failure (in input order) is returned once
    /// every step has ended, so the compensations see what each wrote.
    pub async fn steps_side_by_side<F, U>(
        &mut self,
        forward: impl Fn() -> F,
        inputs: Vec<(F::Input, U::Input)>,
        undo: impl Fn() -> U,
    ) -> Result<Vec<F::Output>, ActivityExecutionError>
    where
        F: ActivityDefinition,
        F::Output: TemporalDeserializable,
        U: ActivityDefinition<Output = ()> + 'static,
        U::Input: 'static,
    {
        let first = self.compensations.len();
        let mut forward_inputs = Vec::with_capacity(inputs.len());
        for (input, undo_input) in inputs {
            self.register(undo(), undo_input);
            forward_inputs.push(input);
        }
        let results = join_all(
            forward_inputs
                .into_iter()
                .map(|input| self.steps.run(&self.ctx, forward(), input, Phase::Forward)),
        )
        .await;
        for (i, result) in results.iter().enumerate().rev() {
            if let Err(err) = result
                && failures::rejection(err).is_some()
            {
                self.compensations.remove(first + i);
            }
        }
        results.into_iter().collect()
    }

    /// Registers `undo(undo_input)`, to run if the saga compensates.
    fn register<U>(&mut self, undo: U, undo_input: U::Input)
    where
        U: ActivityDefinition<Output = ()> + 'static,
        U::Input: 'static,
    {
        let ctx = self.ctx.clone();
        let steps = self.steps;
        self.compensations.push(Compensation {
            name: undo.name().to_owned(),
            run: Box::pin(
                async move { steps.run(&ctx, undo, undo_input, Phase::Compensate).await },
            ),
        });
    }

    /// Runs a step that needs no compensation.
    pub async fn final_step<F>(
        &mut self,
        forward: F,
        input: F::Input,
    ) -> Result<F::Output, ActivityExecutionError>
    where
        F: ActivityDefinition,
        F::Output: TemporalDeserializable,
    {
        self.steps
            .run(&self.ctx, forward, input, Phase::Forward)
            .await
    }

    /// Runs every registered compensation, newest first, and reports how each went.
    pub async fn compensate(self) -> CompensationReport {
        let mut report = CompensationReport::default();
        for compensation in self.compensations.into_iter().rev() {
            match compensation.run.await {
                Ok(()) => report.succeeded.push(compensation.name),
                Err(err) => report.failed.push(CompensationFailure {
                    activity: compensation.name,
                    error: failures::describe(&err),
                }),
            }
        }
        report
    }
}
