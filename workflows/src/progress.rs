//! What PlaceOrder reports about itself through its `progress` query.

use serde::{Deserialize, Serialize};

/// Where an order's placement stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Input not yet validated.
    #[default]
    Received,
    /// Order written, not yet confirmed.
    Pending,
    Confirmed,
    /// Rejected or failed; see `failure`.
    Failed,
    Cancelled,
}

impl Stage {
    /// Whether the run ends in this stage.
    pub fn is_final(self) -> bool {
        matches!(self, Stage::Confirmed | Stage::Failed | Stage::Cancelled)
    }

    /// The `OrderStatus` search attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Received => "received",
            Stage::Pending => "pending",
            Stage::Confirmed => "confirmed",
            Stage::Failed => "failed",
            Stage::Cancelled => "cancelled",
        }
    }
}

/// The answer to the `progress` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub stage: Stage,
    /// The step running now, or the last one that ran.
    pub step: Option<String>,
    pub order_id: Option<i64>,
    pub shard: Option<usize>,
    /// Failure type and message, once failed.
    pub failure: Option<String>,
    /// Compensations that ran, in the order they ran.
    pub compensations_run: Vec<String>,
}

/// The answer to the `Accepted` update: was the order written, or refused before that?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acceptance {
    pub accepted: bool,
    pub order_id: Option<i64>,
    pub shard: Option<usize>,
    /// Failure type and message when refused.
    pub failure: Option<String>,
}

impl Acceptance {
    /// What `progress` says about acceptance (call once the stage left `Received`): an order
    /// that was written was accepted, whatever happened to it afterwards.
    pub fn of(progress: &Progress) -> Self {
        let accepted = progress.order_id.is_some();
        Self {
            accepted,
            order_id: progress.order_id,
            shard: progress.shard,
            failure: if accepted {
                None
            } else {
                progress.failure.clone()
            },
        }
    }
}
