//! Every shard must be at this build's migration, accept prepared transactions, and be the
//! shard `ORDERS_SHARDS` says it is.

use futures::future::join_all;
use orders_core::store::server::max_prepared_transactions;
use orders_core::store::shard_identity;
use orders_core::{Shard, Shards};
use sea_orm::DbErr;

use crate::deployment::Problem;
use crate::deployment::migrate;
use crate::deployment::shard_identity::{Membership, membership};

/// Checks every shard; shards that do not answer are logged and skipped.
pub(super) async fn check(shards: &Shards) -> Vec<Problem> {
    let checked =
        join_all(shards.iter().map(|shard| async move {
            (shard, check_shard(shard).await.map_err(|e| shard.error(e)))
        }))
        .await;
    let mut problems = Vec::new();
    let mut identities = Vec::new();
    for (shard, outcome) in checked {
        match outcome {
            Ok(ShardState {
                problems: mine,
                identity,
            }) => {
                problems.extend(mine);
                if let Some(identity) = identity {
                    identities.push((shard.index, identity));
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "shard unreachable: not checked before polling; its orders fail until it answers"
            ),
        }
    }
    problems.extend(identity_problems(shards, &identities));
    problems
}

/// What one shard showed.
struct ShardState {
    problems: Vec<Problem>,
    /// Its recorded identity, when its schema is current (else the schema problem says
    /// what to run, and that also records the identity).
    identity: Option<shard_identity::ShardIdentity>,
}

async fn check_shard(shard: &Shard) -> Result<ShardState, DbErr> {
    let conn = &shard.conn;
    let mut problems = Vec::new();
    let schema = migrate::compare_with_build(conn).await?;
    let current = schema.is_current();
    if let Some(problem) = schema.problem(shard) {
        problems.push(problem);
    }
    let prepared = max_prepared_transactions(conn).await?;
    if prepared == 0 {
        problems.push(Problem {
            what: format!(
                "shard {} ({}) has max_prepared_transactions = 0, so every two-phase order fails at PREPARE TRANSACTION",
                shard.index, shard.url
            ),
            fix: "set max_prepared_transactions in its postgresql.conf to at least the connections the workers may open (e.g. `ALTER SYSTEM SET max_prepared_transactions = 64`), then restart PostgreSQL".into(),
        });
    }
    let identity = if current {
        let identity = shard_identity::read(conn).await?;
        if identity.is_none() {
            problems.push(Problem {
                what: format!(
                    "shard {} ({}) has no recorded identity",
                    shard.index, shard.url
                ),
                fix: "orders migrate up (it records each shard's place in ORDERS_SHARDS)".into(),
            });
        }
        identity
    } else {
        None
    };
    Ok(ShardState { problems, identity })
}

/// Shards whose recorded identity disagrees with where `ORDERS_SHARDS` lists them.
fn identity_problems(
    shards: &Shards,
    identities: &[(usize, shard_identity::ShardIdentity)],
) -> Vec<Problem> {
    let url = |index: usize| shards.get(index).url.clone();
    membership(identities)
        .into_iter()
        .filter_map(|(index, m)| match m {
            Membership::Member => None,
            Membership::Moved { recorded } => Some(Problem {
                what: format!(
                    "ORDERS_SHARDS lists shard {recorded} ({}) at position {index}: the shards are not in the order the deployment was created with, so customers would be routed to the wrong shard",
                    url(index)
                ),
                fix: format!(
                    "list the shards in their recorded order: {}",
                    recorded_order(shards, identities)
                ),
            }),
            Membership::Stranger { deployment, ours } => Some(Problem {
                what: format!(
                    "shard {index} ({}) belongs to another deployment ({deployment}) than the other shards ({ours})",
                    url(index)
                ),
                fix: "point ORDERS_SHARDS at this deployment's shards only; a new shard must be an empty database, added at the end and migrated with `orders migrate up`".into(),
            }),
        })
        .collect()
}

/// `ORDERS_SHARDS` rearranged into the recorded order, as far as identities are known.
fn recorded_order(
    shards: &Shards,
    identities: &[(usize, shard_identity::ShardIdentity)],
) -> String {
    let mut by_recorded: Vec<(usize, String)> = identities
        .iter()
        .map(|(position, identity)| (identity.index, shards.get(*position).url.clone()))
        .collect();
    by_recorded.sort();
    by_recorded
        .into_iter()
        .map(|(_, url)| url)
        .collect::<Vec<_>>()
        .join(",")
}
