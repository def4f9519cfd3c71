//! `orders migrate up`'s step that gives every shard's id sequences a class of their own
//! (see [`orders_core::store::id_sequences`]). A bucket's ids stay in it when it moves, so a
//! value issued on one shard must not be issued by another even in the future: each shard
//! starts above the highest value any shard has issued, which needs every shard to answer.
//! Once every shard is in its class, running it again changes nothing.

use anyhow::bail;
use futures::future::join_all;
use orders_core::Shards;
use orders_core::store::id_sequences::{self, SEQUENCES, SequenceState};
use orders_core::store::shard_identity;

/// A shard's recorded index and its sequences.
struct Found {
    position: usize,
    index: usize,
    states: Vec<SequenceState>,
}

/// Places every shard's sequences in its class, above every value issued anywhere, unless
/// they all are already. Fails, naming them, when shards do not answer.
pub async fn make_disjoint(shards: &Shards) -> anyhow::Result<()> {
    let read = join_all(shards.iter().map(|shard| async move {
        let identity = shard_identity::read(&shard.conn).await;
        let states = id_sequences::read(&shard.conn).await;
        match (identity, states) {
            (Ok(Some(identity)), Ok(Some(states))) => Ok(Found {
                position: shard.index,
                index: identity.index,
                states,
            }),
            (Ok(_), Ok(_)) => Err(format!(
                "shard {} ({}) has no recorded identity or no id sequences",
                shard.index, shard.url
            )),
            (Err(e), _) | (_, Err(e)) => Err(shard.error(e).to_string()),
        }
    }))
    .await;
    let (found, failed): (Vec<_>, Vec<_>) = read.into_iter().partition(Result::is_ok);
    if !failed.is_empty() {
        bail!(
            "the id sequences were not made disjoint: every shard must answer, since a value issued on one that does not could be issued again by another:\n  {}\nre-run `orders migrate up` once they answer; workers refuse to start until then",
            failed
                .into_iter()
                .filter_map(Result::err)
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
    let found: Vec<Found> = found.into_iter().filter_map(Result::ok).collect();
    if found
        .iter()
        .all(|f| f.states.iter().all(|s| s.is_in_class_of(f.index)))
    {
        return Ok(());
    }
    let bounds = highest_issued(found.iter().map(|f| f.states.as_slice()));
    let before = place_all(shards, &found, &bounds).await?;
    // A worker of the previous build may have taken values on a shard between the read and
    // its placement: place every shard again above those (all now in their classes, so
    // nothing issues outside them any more).
    let later = highest_issued(before.iter().map(Vec::as_slice));
    if later != bounds {
        place_all(shards, &found, &later).await?;
    }
    tracing::info!(
        above = ?SEQUENCES.iter().zip(later).collect::<Vec<_>>(),
        "id sequences put in a class of their own on every shard"
    );
    Ok(())
}

/// Per sequence, the highest value any of `shards` may have issued.
fn highest_issued<'a>(shards: impl Iterator<Item = &'a [SequenceState]>) -> Vec<i64> {
    let mut highest = vec![0; SEQUENCES.len()];
    for states in shards {
        for (bound, state) in highest.iter_mut().zip(states) {
            *bound = (*bound).max(state.highest_issued());
        }
    }
    highest
}

/// Places each shard in its class above `bounds`; returns what each had before.
async fn place_all(
    shards: &Shards,
    found: &[Found],
    bounds: &[i64],
) -> anyhow::Result<Vec<Vec<SequenceState>>> {
    let placed = join_all(found.iter().map(|f| async move {
        let shard = shards.get(f.position);
        id_sequences::place_in_class(&shard.conn, f.index, bounds)
            .await
            .map_err(|e| shard.error(e))
    }))
    .await;
    let mut before = Vec::new();
    let mut failed = Vec::new();
    for outcome in placed {
        match outcome {
            Ok(states) => before.push(states),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if !failed.is_empty() {
        bail!(
            "the id sequences of {} shard(s) were not put in their class:\n  {}\nre-run `orders migrate up`; workers refuse to start until every shard's are",
            failed.len(),
            failed.join("\n  ")
        );
    }
    Ok(before)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &'static str, increment: i64, next: i64) -> SequenceState {
        SequenceState {
            name,
            increment,
            next,
        }
    }

    #[test]
    fn the_bound_is_the_highest_value_issued_on_any_shard_per_sequence() {
        let a = [
            state("customer_id_seq", 1, 701),
            state("order_id_seq", 1, 12),
        ];
        let b = [
            state("customer_id_seq", 1, 6),
            state("order_id_seq", 1024, 3073),
        ];
        assert_eq!(
            highest_issued([&a[..], &b[..]].into_iter()),
            vec![700, 2049]
        );
    }

    #[test]
    fn a_deployment_that_issued_nothing_has_a_bound_of_zero() {
        let fresh = [state("customer_id_seq", 1, 1), state("order_id_seq", 1, 1)];
        assert_eq!(highest_issued([&fresh[..]].into_iter()), vec![0, 0]);
    }
}
