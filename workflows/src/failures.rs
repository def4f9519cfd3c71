//! Turning what went wrong into the failure a client sees.
//!
//! An activity's business rejection reaches the workflow wrapped in an `ActivityFailure`.
//! Clients should not have to dig through that wrapper, so the workflow fails with a fresh
//! non-retryable application failure carrying the same type (`PaymentDeclined`, …) and message.

use orders_core::FailureType;
use temporalio_common::error::IncomingError;
use temporalio_common::protos::temporal::api::failure::v1::failure::FailureInfo;
use temporalio_sdk::{ActivityExecutionError, ApplicationFailure};

/// A business rejection reported by an activity: its failure type and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub failure_type: String,
    pub message: String,
}

/// The rejection inside `err`, if the activity failed with a non-retryable application
/// failure. Such failures come from activities that rolled back before rejecting, so the
/// step is known to have written nothing.
pub fn rejection(err: &ActivityExecutionError) -> Option<Rejected> {
    match err.reason() {
        Some(IncomingError::Application(failure)) if failure.is_non_retryable() => Some(Rejected {
            failure_type: failure
                .type_name()
                .unwrap_or("ApplicationFailure")
                .to_owned(),
            message: failure.to_string(),
        }),
        Some(_) => None,
        // A local activity's failure is the application failure itself, not an activity
        // failure wrapped around it.
        None => {
            let failure = err.failure()?;
            match &failure.failure_info {
                Some(FailureInfo::ApplicationFailureInfo(info)) if info.non_retryable => {
                    Some(Rejected {
                        failure_type: info.r#type.clone(),
                        message: failure.message.clone(),
                    })
                }
                _ => None,
            }
        }
    }
}

/// The failure PlaceOrder ends with after `err` stopped it (and compensations succeeded):
/// the activity's own failure type, or `StepFailed` when it was not a rejection of ours.
pub fn workflow_failure(err: &ActivityExecutionError) -> ApplicationFailure {
    let Some(r) = rejection(err) else {
        return FailureType::StepFailed.failure(describe(err));
    };
    match FailureType::from_wire(&r.failure_type) {
        Some(failure_type) => failure_type.failure(r.message),
        None => FailureType::StepFailed.failure(format!("{}: {}", r.failure_type, r.message)),
    }
}

/// What went wrong in `err`, in words: the underlying failure's message (e.g. the activity's
/// own error) rather than the generic "Activity task failed" wrapper.
pub fn describe(err: &ActivityExecutionError) -> String {
    match err.reason() {
        Some(cause) => {
            let failure = cause.failure();
            match failure_type(cause) {
                Some(kind) => format!("{kind}: {}", failure.message),
                None => failure.message.clone(),
            }
        }
        None => match rejection(err) {
            Some(r) => format!("{}: {}", r.failure_type, r.message),
            None => err.to_string(),
        },
    }
}

fn failure_type(cause: &IncomingError) -> Option<&str> {
    match cause {
        IncomingError::Application(failure) => failure.type_name(),
        _ => None,
    }
}
