//! `orders backup point NAME`: a restore point on every shard at one instant, when no order
//! step commits on any of them.
//!
//! Every writing transaction on an order's tables takes the backup gate's lock, shared, as
//! it commits (migration 18). The point takes it exclusively on every shard at once: that
//! waits for the commits in progress and holds the next ones back. With every shard's gate
//! closed, it writes the restore point on each, then opens them all. An order step is
//! therefore on the same side of the point on every shard; prepared two-phase parts, which
//! do not take the gate, are settled by a restore from their order's decision
//! (see [`crate::settle`]).

use std::time::{Duration, Instant};

use futures::future::join_all;
use orders_core::Shards;
use orders_core::store::backup_points::{self, PointPosition};
use orders_core::store::fences::{self, FenceState};
use sea_orm::{DatabaseTransaction, DbErr, TransactionTrait};

/// How long the point waits for a shard's gate before it gives up: a commit holds it for
/// milliseconds, so a longer wait means a shard that is stuck, not busy.
pub const GATE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a shard keeps a gate closed by a session that went quiet (this process stalled
/// or cut off): the server ends the session, and the gate opens, after this.
/// Under the workers' 3 s `lock_timeout`, so a commit held back by a stalled point waits
/// for the gate to open instead of failing.
pub const GATE_HELD_AT_MOST: Duration = Duration::from_secs(2);

/// A point written on every shard.
#[derive(Debug, Clone)]
pub struct PointTaken {
    pub name: String,
    /// From asking for the gates to opening them: the longest any commit was held back.
    pub pause: Duration,
    /// Each shard's restore point position, in shard order.
    pub positions: Vec<PointPosition>,
}

/// Why no point was written (or, for `Failed`, not everywhere).
#[derive(Debug, thiserror::Error)]
pub enum PointError {
    #[error("{0:?} is not a usable point name: use 1 to 63 letters, digits, '.', '_' or '-'")]
    InvalidName(String),
    #[error(
        "shard {shard} cannot take part in point {name:?} ({cause}); no write was paused and no point was written: bring the shard back (`orders shards` shows it), then take the point again"
    )]
    ShardUnavailable {
        name: String,
        shard: usize,
        cause: String,
    },
    #[error(
        "shard {shard} is in the middle of a bucket move ({fences} bucket(s) fenced): a point now would restore the move half-done; take it once `orders reshard status` shows no move running"
    )]
    MoveRunning { shard: usize, fences: usize },
    #[error(
        "shard {shard} already has a point named {name:?}: choose another name (`orders backup list` shows them)"
    )]
    Exists { name: String, shard: usize },
    #[error(
        "shard {shard} did not let the gate close ({cause}); every gate is open again and no point was written: take the point again"
    )]
    GateNotClosed { shard: usize, cause: String },
    #[error(
        "shard {shard} failed to write point {name:?} ({cause}); every gate is open again, but the shards written before it hold a point of that name: take the point again under another name"
    )]
    Failed {
        name: String,
        shard: usize,
        cause: String,
    },
}

/// Whether `name` can name a restore point: PostgreSQL takes up to 63 bytes; we keep to
/// characters that need no quoting anywhere (pgBackRest's `--target`, logs, file names).
pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Takes point `name` on every shard (see the module). Refuses, pausing nothing, when a
/// shard does not answer or already has the name.
pub async fn take(shards: &Shards, name: &str) -> Result<PointTaken, PointError> {
    if !valid_name(name) {
        return Err(PointError::InvalidName(name.to_owned()));
    }
    request_everywhere(shards, name).await?;
    // Every shard's connection first: a shard that fails to give one is refused before any
    // gate closes, so no healthy shard's writes wait on it.
    let opened = join_all(shards.iter().map(|shard| shard.conn.begin())).await;
    let (sessions, refusal) =
        all_or_first_error(opened, |shard, cause| PointError::ShardUnavailable {
            name: name.to_owned(),
            shard,
            cause,
        });
    if let Some(refusal) = refusal {
        open(sessions).await;
        forget_everywhere(shards, name).await;
        return Err(refusal);
    }
    let started = Instant::now();
    // In shard order, one after another: two points asked for at once close their gates in
    // the same order, so one waits for the other instead of each holding half the shards.
    let mut closing = Vec::with_capacity(sessions.len());
    for txn in &sessions {
        let closed =
            backup_points::close_gate(txn, GATE_TIMEOUT.as_millis() as u64, GATE_HELD_AT_MOST)
                .await;
        let failed = closed.is_err();
        closing.push(closed);
        if failed {
            break;
        }
    }
    let (_, refusal) = all_or_first_error(closing, |shard, cause| PointError::GateNotClosed {
        shard,
        cause,
    });
    let closed = sessions;
    if let Some(refusal) = refusal {
        open(closed).await;
        forget_everywhere(shards, name).await;
        return Err(refusal);
    }
    let written = join_all(
        closed
            .iter()
            .map(|txn| backup_points::create_restore_point(txn, name)),
    )
    .await;
    open(closed).await;
    let pause = started.elapsed();
    let mut positions = Vec::with_capacity(written.len());
    for (index, position) in written.into_iter().enumerate() {
        match position {
            Ok(lsn) => positions.push(lsn),
            Err(e) => {
                return Err(PointError::Failed {
                    name: name.to_owned(),
                    shard: index,
                    cause: e.to_string(),
                });
            }
        }
    }
    record_everywhere(shards, name, &positions, pause).await;
    Ok(PointTaken {
        name: name.to_owned(),
        pause,
        positions,
    })
}

/// The successes of `results` (in shard order), and the first failure as `refusal` says.
fn all_or_first_error<T>(
    results: Vec<Result<T, DbErr>>,
    refusal: impl Fn(usize, String) -> PointError,
) -> (Vec<T>, Option<PointError>) {
    let mut done = Vec::with_capacity(results.len());
    let mut first = None;
    for (index, result) in results.into_iter().enumerate() {
        match result {
            Ok(value) => done.push(value),
            Err(e) => {
                first.get_or_insert_with(|| refusal(index, e.to_string()));
            }
        }
    }
    (done, first)
}

/// Records the request on every shard, after checking each answers: a shard that is down
/// is named before any gate closes.
async fn request_everywhere(shards: &Shards, name: &str) -> Result<(), PointError> {
    let requested = join_all(shards.iter().map(|shard| async move {
        if !shard.answers().await {
            return Err(format!(
                "it does not answer within {:?}",
                orders_core::shards::PING_TIMEOUT
            ));
        }
        let moving = fences::list(&shard.conn)
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .filter(|fence| fence.state != FenceState::Moved)
            .count();
        if moving > 0 {
            return Ok(Err(moving));
        }
        backup_points::request(&shard.conn, name)
            .await
            .map(Ok)
            .map_err(|e| e.to_string())
    }))
    .await;
    let mut refusal = None;
    for (index, answer) in requested.into_iter().enumerate() {
        let problem = match answer {
            Ok(Ok(true)) => continue,
            Ok(Ok(false)) => PointError::Exists {
                name: name.to_owned(),
                shard: index,
            },
            Ok(Err(fences)) => PointError::MoveRunning {
                shard: index,
                fences,
            },
            Err(cause) => PointError::ShardUnavailable {
                name: name.to_owned(),
                shard: index,
                cause,
            },
        };
        refusal.get_or_insert(problem);
    }
    match refusal {
        None => Ok(()),
        Some(refusal) => {
            // Only requests not yet taken are forgotten: a point taken earlier under the
            // name stays.
            forget_everywhere(shards, name).await;
            Err(refusal)
        }
    }
}

/// Opens the gates: the transactions that hold them end.
async fn open(gates: Vec<DatabaseTransaction>) {
    for result in join_all(gates.into_iter().map(|txn| txn.rollback())).await {
        if let Err(e) = result {
            // The connection is gone, and its lock with it.
            tracing::warn!(error = %e, "a gate's transaction did not end cleanly");
        }
    }
}

async fn forget_everywhere(shards: &Shards, name: &str) {
    join_all(shards.iter().map(|shard| async move {
        if let Err(e) = backup_points::forget(&shard.conn, name).await {
            tracing::warn!(shard = shard.index, error = %e, point = name, "could not forget a point not taken");
        }
    }))
    .await;
}

/// Records where the point landed, and ends each shard's WAL segment so the segment holding
/// the point is archived now. Failures are logged: the point itself is written.
async fn record_everywhere(
    shards: &Shards,
    name: &str,
    positions: &[PointPosition],
    pause: Duration,
) {
    let pause_ms = i32::try_from(pause.as_millis()).unwrap_or(i32::MAX);
    join_all(shards.iter().zip(positions).map(|(shard, at)| async move {
        let recorded = backup_points::record_taken(&shard.conn, name, at, pause_ms).await;
        let switched = backup_points::switch_wal(&shard.conn).await;
        if let Err(e) = recorded.and(switched) {
            tracing::warn!(shard = shard.index, error = %e, point = name, "point written, but not recorded or its WAL segment not switched");
        }
    }))
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_names_need_no_quoting() {
        assert!(valid_name("nightly-2026-12-07_01.00"));
        assert!(!valid_name(""));
        assert!(!valid_name("it's"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"x".repeat(64)));
    }

    #[test]
    fn the_gate_key_is_the_migrations() {
        assert_eq!(backup_points::GATE_LOCK, orders_migration::BACKUP_GATE_LOCK);
    }
}
