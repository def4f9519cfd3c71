//! What the worker checks before it polls. Each mistake found here would otherwise show up
//! far from its cause: orders whose workflow task the server rejects without end (a missing
//! search attribute), steps failing on a column that does not exist yet (a shard behind),
//! two-phase orders failing at PREPARE (`max_prepared_transactions = 0`), orders written
//! to the wrong shard (`ORDERS_SHARDS` in another order than the deployment's), an order id
//! issued twice after a bucket moves (id sequences not disjoint), or bucket moves failing
//! verification (shards that sort text differently).
//!
//! The worker fixes what is safe to fix (it registers missing search attributes where the
//! server allows it) and refuses to start on the rest, listing every problem with its fix.
//! A shard that does not answer is logged and not checked: refusing would turn one shard's
//! outage into an outage of every shard whenever a worker restarts.

mod id_sequences;
mod schema;
mod search_attributes;

use orders_core::Shards;
use temporalio_client::Client;

use super::{Refusal, collation};

/// Checks the namespace and every reachable shard; `Err` lists everything that must be fixed
/// before this worker may poll.
pub async fn check(client: &Client, shards: &Shards) -> Result<(), Refusal> {
    let (mut problems, schema, sequences, collations) = tokio::join!(
        search_attributes::ensure_registered(client),
        schema::check(shards),
        id_sequences::check(shards),
        collation::read(shards)
    );
    problems.extend(schema);
    problems.extend(sequences);
    problems.extend(collation::mismatch(&collations));
    if problems.is_empty() {
        tracing::info!(shards = shards.len(), "deployment checks passed");
        Ok(())
    } else {
        Err(Refusal(problems))
    }
}
