//! A step that keeps failing says so, without flooding the log: every failed attempt counts
//! in `orders_step_failures`, and the log gets one warning per distinct error of a step (and
//! one line when the step succeeds again). The attempts themselves, with their last error,
//! are in the workflow's pending activities, which `orders reshard status` prints.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::{Arc, Mutex};

use temporalio_sdk::activities::ActivityError;

use crate::metrics::OrderMetrics;

/// The failures of one operation's steps (`"reshard"`, `"import"`), as a worker saw them.
pub struct StepFailures {
    operation: &'static str,
    metrics: Arc<OrderMetrics>,
    /// Per step (and subject, e.g. the buckets moved), the last error logged.
    last: Mutex<HashMap<(&'static str, String), String>>,
}

impl StepFailures {
    pub fn new(operation: &'static str, metrics: Arc<OrderMetrics>) -> Self {
        Self {
            operation,
            metrics,
            last: Mutex::default(),
        }
    }

    /// Records that attempt `attempt` of `step` on `subject` failed with `error`: counted
    /// always, logged when the error differs from the one logged last for it.
    pub fn failed(&self, step: &'static str, subject: &str, attempt: u32, error: &dyn Display) {
        self.metrics.step_failed(self.operation, step);
        let error = error.to_string();
        let key = (step, subject.to_owned());
        let mut last = self.last.lock().expect("step failures lock");
        if last.get(&key) == Some(&error) {
            return;
        }
        tracing::warn!(
            operation = self.operation,
            step,
            subject,
            attempt,
            %error,
            "step failed; it is retried, and this is logged again only if its error changes"
        );
        last.insert(key, error);
    }

    /// Records how attempt `attempt` of an activity's `step` on `subject` ended; a
    /// cancellation is neither.
    pub fn record<T>(
        &self,
        step: &'static str,
        subject: &str,
        attempt: u32,
        result: &Result<T, ActivityError>,
    ) {
        match result {
            Ok(_) => self.succeeded(step, subject, attempt),
            Err(ActivityError::Application(failure)) => {
                self.failed(step, subject, attempt, failure)
            }
            Err(_) => {}
        }
    }

    /// Records that `step` on `subject` succeeded: a step that had failed says it recovered.
    pub fn succeeded(&self, step: &'static str, subject: &str, attempt: u32) {
        let key = (step, subject.to_owned());
        if self
            .last
            .lock()
            .expect("step failures lock")
            .remove(&key)
            .is_some()
        {
            tracing::info!(
                operation = self.operation,
                step,
                subject,
                attempt,
                "step succeeded after failing"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_error_is_remembered_once_and_forgotten_on_success() {
        let failures = StepFailures::new("reshard", Arc::new(OrderMetrics::disabled()));
        failures.failed("CopyBucket", "[7]", 1, &"boom");
        failures.failed("CopyBucket", "[7]", 2, &"boom");
        failures.failed("CopyBucket", "[8]", 1, &"boom");
        assert_eq!(failures.last.lock().unwrap().len(), 2);
        failures.succeeded("CopyBucket", "[7]", 3);
        assert_eq!(failures.last.lock().unwrap().len(), 1);
    }
}
