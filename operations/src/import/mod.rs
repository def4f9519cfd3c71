//! Bulk import of orders from a JSON Lines file, for the `ImportOrders` workflow.
//!
//! Any client of the namespace names the file, so it must be one the operator allowed
//! ([`policy`](mod@policy): a regular file of bounded size inside `ORDERS_IMPORT_DIR`). It is
//! read a segment at a time from a byte offset ([`file`](mod@file)), heartbeating meanwhile
//! ([`crate::heartbeat`]), each line validated with PlaceOrder's rules (a rejected
//! line names the rule, never the values), the valid ones grouped by owning shard and written
//! there with COPY in savepoint-guarded chunks ([`write`](mod@write)). Memory stays bounded by
//! the segment size whatever the file size. Each imported order carries an `order_ref` (the
//! client's, or one derived from the line) that is unique per shard, so re-running a file adds
//! nothing, and the import's id, so a retried segment counts the rows it already wrote as its
//! own.

pub mod activities;
pub mod file;
pub mod policy;
pub mod write;

use serde::{Deserialize, Serialize};

pub use activities::{ImportActivities, SegmentInput, SegmentOutcome};
pub use policy::ImportPolicy;

/// A line that was not imported, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedLine {
    /// 1-based line number in the file.
    pub line: u64,
    pub order_ref: Option<String>,
    pub reason: String,
}

impl RejectedLine {
    /// Longest reason kept in reports.
    pub const MAX_REASON: usize = 300;

    /// This line with its reason cut to [`Self::MAX_REASON`] bytes (database messages can
    /// quote whole rows).
    pub fn shortened(mut self) -> Self {
        if self.reason.len() > Self::MAX_REASON {
            let mut end = Self::MAX_REASON;
            while !self.reason.is_char_boundary(end) {
                end -= 1;
            }
            self.reason.truncate(end);
            self.reason.push('…');
        }
        self
    }
}
