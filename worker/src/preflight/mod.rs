//! What the worker checks before it polls. Each mistake found here would otherwise show up
//! far from its cause: orders whose workflow task the server rejects without end (a missing
//! search attribute), steps failing on a column that does not exist yet (a shard behind),
//! two-phase orders failing at PREPARE (`max_prepared_transactions = 0`), or orders written
//! to the wrong shard (`ORDERS_SHARDS` in another order than the deployment's).
//!
//! The worker fixes what is safe to fix (it registers missing search attributes where the
//! server allows it) and refuses to start on the rest, listing every problem with its fix.
//! A shard that does not answer is logged and not checked: refusing would turn one shard's
//! outage into an outage of every shard whenever a worker restarts.

mod schema;
mod search_attributes;

use std::fmt;

use orders_core::Shards;
use temporalio_client::Client;

/// One thing wrong with the deployment, and what fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

/// Why the worker will not start: every problem found, each with its fix.
#[derive(Debug, thiserror::Error)]
pub struct Refusal(pub Vec<Problem>);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        write!(
            f,
            "the worker did not start: {count} problem{} with this deployment",
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.0 {
            write!(f, "\n  - {}\n    fix: {}", problem.what, problem.fix)?;
        }
        Ok(())
    }
}

/// Checks the namespace and every reachable shard; `Err` lists everything that must be fixed
/// before this worker may poll.
pub async fn check(client: &Client, shards: &Shards) -> Result<(), Refusal> {
    let (mut problems, shard_problems) = tokio::join!(
        search_attributes::ensure_registered(client),
        schema::check(shards)
    );
    problems.extend(shard_problems);
    if problems.is_empty() {
        tracing::info!(shards = shards.len(), "deployment checks passed");
        Ok(())
    } else {
        Err(Refusal(problems))
    }
}
