//! Which shards belong together, and in what order. `orders migrate up` records each shard's
//! deployment and index the first time it migrates it; the worker checks them before it
//! polls (see [`crate::deployment::preflight`]), and every other command that touches the
//! shards before it does anything ([`verify`]). A shard appended to `ORDERS_SHARDS` is new, not a
//! stranger: migrating it records the next index.
//!
//! Shards migrated before identities existed are recorded in the order of the first
//! `orders migrate up` that runs this version.

use anyhow::bail;
use futures::future::join_all;
use orders_core::Shards;
use orders_core::store::shard_identity::{self, ShardIdentity};

/// How one shard's recorded identity relates to where `ORDERS_SHARDS` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// Recorded at this position, in this deployment.
    Member,
    /// This deployment's shard, recorded at another position.
    Moved { recorded: usize },
    /// Recorded in another deployment.
    Stranger { deployment: String, ours: String },
}

/// The deployment most of `identities` belong to; on a tie, the one of the lowest position.
pub fn prevailing(identities: &[(usize, ShardIdentity)]) -> Option<&str> {
    let mut best: Option<(&str, usize)> = None;
    for (_, identity) in identities {
        let votes = identities
            .iter()
            .filter(|(_, other)| other.deployment == identity.deployment)
            .count();
        if best.is_none_or(|(_, most)| votes > most) {
            best = Some((&identity.deployment, votes));
        }
    }
    best.map(|(deployment, _)| deployment)
}

/// Each recorded shard's membership, by position in `ORDERS_SHARDS`.
pub fn membership(identities: &[(usize, ShardIdentity)]) -> Vec<(usize, Membership)> {
    let Some(ours) = prevailing(identities) else {
        return Vec::new();
    };
    identities
        .iter()
        .map(|(position, identity)| {
            let m = if identity.deployment != ours {
                Membership::Stranger {
                    deployment: identity.deployment.clone(),
                    ours: ours.to_owned(),
                }
            } else if identity.index != *position {
                Membership::Moved {
                    recorded: identity.index,
                }
            } else {
                Membership::Member
            };
            (*position, m)
        })
        .collect()
}

/// Records an identity on every shard that has none: the deployment of the others, or a new
/// one for a new deployment, and the shard's position. Refuses, changing nothing, when a
/// shard is listed out of its recorded order or belongs to another deployment.
pub async fn record_missing(shards: &Shards) -> anyhow::Result<()> {
    let read = join_all(shards.iter().map(|shard| async move {
        shard_identity::read(&shard.conn)
            .await
            .map(|identity| (shard.index, identity))
            .map_err(|e| shard.error(e))
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    let recorded: Vec<(usize, ShardIdentity)> = read
        .iter()
        .filter_map(|(index, identity)| identity.clone().map(|identity| (*index, identity)))
        .collect();
    let wrong = misplaced(&recorded);
    if !wrong.is_empty() {
        bail!(
            "ORDERS_SHARDS does not match the shards' recorded identities, so no identity was recorded:\n  {}\nlist this deployment's shards in the order they were created, new ones at the end",
            describe(&wrong)
        );
    }
    let deployment = prevailing(&recorded)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    for (index, identity) in read {
        if identity.is_none() {
            let shard = shards.get(index);
            let identity = ShardIdentity {
                deployment: deployment.clone(),
                index,
            };
            shard_identity::record(&shard.conn, &identity)
                .await
                .map_err(|e| shard.error(e))?;
            tracing::info!(shard = index, deployment, "shard identity recorded");
        }
    }
    Ok(())
}

/// Refuses, saying what to fix, when `ORDERS_SHARDS` lists a shard out of its recorded order
/// or names another deployment's shard. Every command that writes to the shards or reads
/// them by routing runs this first: with two URLs swapped, `orders product add` would stock
/// the wrong shard and `orders recover` roll back parts of committed orders. Shards that do
/// not answer are skipped (a command that needs one fails on it anyway, and a shard's outage
/// must not stop commands on the others); shards with no identity yet have nothing to compare.
pub async fn verify(shards: &Shards) -> anyhow::Result<()> {
    let read = join_all(
        shards
            .iter()
            .map(|shard| async move { (shard, shard_identity::read(&shard.conn).await) }),
    )
    .await;
    let mut recorded = Vec::new();
    for (shard, identity) in read {
        match identity {
            Ok(Some(identity)) => recorded.push((shard.index, identity)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %shard.error(e), "shard unreachable: its identity is not checked")
            }
        }
    }
    let wrong = misplaced(&recorded);
    if wrong.is_empty() {
        return Ok(());
    }
    let mut fixes = Vec::new();
    if wrong
        .iter()
        .any(|(_, m)| matches!(m, Membership::Moved { .. }))
    {
        let mut in_order: Vec<(usize, &str)> = recorded
            .iter()
            .map(|(position, identity)| (identity.index, shards.get(*position).url.as_str()))
            .collect();
        in_order.sort();
        let urls: Vec<&str> = in_order.into_iter().map(|(_, url)| url).collect();
        fixes.push(format!(
            "list the shards in their recorded order (passwords not shown): {}",
            urls.join(",")
        ));
    }
    if wrong
        .iter()
        .any(|(_, m)| matches!(m, Membership::Stranger { .. }))
    {
        fixes.push("point ORDERS_SHARDS at this deployment's shards only".to_owned());
    }
    bail!(
        "ORDERS_SHARDS does not match the shards' recorded identities, so nothing was done:\n  {}\nfix: {}",
        describe(&wrong),
        fixes.join("; and ")
    )
}

/// The recorded shards that `ORDERS_SHARDS` lists out of place, by position.
fn misplaced(recorded: &[(usize, ShardIdentity)]) -> Vec<(usize, Membership)> {
    membership(recorded)
        .into_iter()
        .filter(|(_, m)| *m != Membership::Member)
        .collect()
}

/// One line per misplaced shard, saying where it belongs.
fn describe(misplaced: &[(usize, Membership)]) -> String {
    let lines: Vec<String> = misplaced
        .iter()
        .map(|(position, m)| match m {
            Membership::Member => format!("shard {position} is in place"),
            Membership::Moved { recorded } => format!(
                "position {position} in ORDERS_SHARDS holds the deployment's shard {recorded}"
            ),
            Membership::Stranger { deployment, ours } => {
                format!("shard {position} belongs to deployment {deployment}, the others to {ours}")
            }
        })
        .collect();
    lines.join("\n  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(position: usize, deployment: &str, index: usize) -> (usize, ShardIdentity) {
        (
            position,
            ShardIdentity {
                deployment: deployment.into(),
                index,
            },
        )
    }

    #[test]
    fn shards_in_their_recorded_places_are_members() {
        let ids = [at(0, "a", 0), at(1, "a", 1), at(2, "a", 2)];
        assert!(
            membership(&ids)
                .iter()
                .all(|(_, m)| *m == Membership::Member)
        );
    }

    #[test]
    fn swapped_shards_are_both_moved() {
        let ids = [at(0, "a", 1), at(1, "a", 0), at(2, "a", 2)];
        assert_eq!(
            membership(&ids),
            vec![
                (0, Membership::Moved { recorded: 1 }),
                (1, Membership::Moved { recorded: 0 }),
                (2, Membership::Member),
            ]
        );
    }

    #[test]
    fn the_minority_deployment_is_the_stranger_even_at_position_zero() {
        let ids = [at(0, "b", 0), at(1, "a", 1), at(2, "a", 2)];
        assert_eq!(
            membership(&ids)[0].1,
            Membership::Stranger {
                deployment: "b".into(),
                ours: "a".into()
            }
        );
    }

    #[test]
    fn on_a_tie_the_lowest_position_decides() {
        let ids = [at(0, "a", 0), at(1, "b", 1)];
        assert_eq!(prevailing(&ids), Some("a"));
    }
}
