//! The id sequences (`customer_id_seq`, `order_id_seq`), and why no two shards ever issue the
//! same value.
//!
//! Ids are `value * 1024 + bucket` ([`crate::routing`]), the value taken from the writing
//! shard's sequence. A bucket's ids stay in it when it moves, and a worker on a stale map takes
//! values on a bucket's old owner, so a value unique on its own shard is not enough: each
//! shard's sequences step by [`STRIDE`] through the values ≡ its recorded index (mod 1024), a
//! class no other shard draws from. [`crate::routing::BUCKETS`] bounds the number of shards,
//! so every shard has a class. `orders migrate up` puts each shard's sequences in its class,
//! above every value any shard issued ([`place_in_class`]); the worker refuses a shard whose
//! sequences are not ([`SequenceState::is_in_class_of`]).
//! See docs/decisions/disjoint-id-sequences.md.
//!
//! Every change takes the sequence's lock first (`ALTER SEQUENCE` blocks `nextval` until the
//! transaction ends), so no value is issued between reading a sequence and moving it.

use std::sync::Arc;

use sea_orm::sqlx::{self, Connection, PgConnection, Row};
use sea_orm::{DatabaseConnection, DbErr, RuntimeErr};

use crate::routing::ID_STRIDE;

/// The sequences ids are allocated from.
pub const SEQUENCES: [&str; 2] = ["customer_id_seq", "order_id_seq"];

/// The step of every shard's sequences, and the number of classes: one per possible shard.
pub const STRIDE: i64 = ID_STRIDE;

/// One sequence as a shard has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceState {
    pub name: &'static str,
    pub increment: i64,
    /// The value `nextval` returns next.
    pub next: i64,
}

impl SequenceState {
    /// The highest value it may have issued: sequences never move back.
    pub fn highest_issued(&self) -> i64 {
        self.next - self.increment
    }

    /// Whether it issues only values of shard `index`'s class.
    pub fn is_in_class_of(&self, index: usize) -> bool {
        self.increment == STRIDE && self.next.rem_euclid(STRIDE) == index as i64
    }
}

/// The first value above `bound` that is ≡ `residue` (mod `stride`).
pub fn first_value_above(bound: i64, residue: i64, stride: i64) -> i64 {
    let start = bound + 1;
    start + (residue - start).rem_euclid(stride)
}

/// Counts a class's values one by one (`value` div [`STRIDE`]): what takes turns, where the
/// value itself, always ≡ the shard's index, would pick the same turn every time.
pub fn turn(value: i64) -> i64 {
    value.div_euclid(STRIDE)
}

/// This shard's sequences, in [`SEQUENCES`] order; `None` before the migration creating them.
pub async fn read(conn: &DatabaseConnection) -> Result<Option<Vec<SequenceState>>, DbErr> {
    if !super::table_exists(conn, SEQUENCES[1]).await? {
        return Ok(None);
    }
    let mut conn = acquire(conn).await?;
    let mut states = Vec::new();
    for sequence in SEQUENCES {
        states.push(read_one(&mut conn, sequence).await.map_err(exec)?);
    }
    Ok(Some(states))
}

/// Puts this shard's sequences in shard `index`'s class, each above its `bounds` entry (in
/// [`SEQUENCES`] order) and above anything it issued itself; returns each as it was found.
/// Repeating it with the same bounds changes nothing.
pub async fn place_in_class(
    conn: &DatabaseConnection,
    index: usize,
    bounds: &[i64],
) -> Result<Vec<SequenceState>, DbErr> {
    let residue = i64::try_from(index)
        .ok()
        .filter(|&r| r < STRIDE)
        .ok_or_else(|| DbErr::Custom(format!("shard index {index} has no id class")))?;
    let mut conn = acquire(conn).await?;
    let mut found = Vec::new();
    for (sequence, &bound) in SEQUENCES.into_iter().zip(bounds) {
        let before = reposition(&mut conn, sequence, |now| {
            (
                STRIDE,
                first_value_above(bound.max(now.next - 1), residue, STRIDE),
            )
        })
        .await
        .map_err(exec)?;
        found.push(before);
    }
    Ok(found)
}

/// The highest value each sequence may have issued on this shard, in [`SEQUENCES`] order:
/// what [`advance_id_sequences`] moves a bucket's new owner past.
pub async fn id_sequences(conn: &mut PgConnection) -> Result<Vec<i64>, sqlx::Error> {
    let mut values = Vec::new();
    for sequence in SEQUENCES {
        values.push(read_one(conn, sequence).await?.highest_issued());
    }
    Ok(values)
}

/// Moves each sequence on this shard (a bucket's new owner) past `values` (its old owner's,
/// from [`id_sequences`]), keeping its class and never moving back. Disjoint classes already
/// keep the two from issuing the same value; this keeps a bucket's ids growing across a move,
/// and covers a shard that `orders migrate up` has not placed yet, in the window where it
/// places shards one after another while workers of the previous build still allocate.
pub async fn advance_id_sequences(
    conn: &mut PgConnection,
    values: &[i64],
) -> Result<(), sqlx::Error> {
    for (sequence, &value) in SEQUENCES.into_iter().zip(values) {
        reposition(conn, sequence, |now| {
            let residue = now.next.rem_euclid(now.increment);
            (
                now.increment,
                first_value_above(value.max(now.next - 1), residue, now.increment),
            )
        })
        .await?;
    }
    Ok(())
}

/// Under the sequence's lock, gives it the increment and next value `choose` picks from its
/// current state; returns that state.
async fn reposition(
    conn: &mut PgConnection,
    sequence: &'static str,
    choose: impl FnOnce(SequenceState) -> (i64, i64),
) -> Result<SequenceState, sqlx::Error> {
    let mut txn = conn.begin().await?;
    let increment: i64 = sqlx::query_scalar(named(format!(
        "SELECT seqincrement FROM pg_sequence WHERE seqrelid = '{sequence}'::regclass"
    )))
    .fetch_one(&mut *txn)
    .await?;
    sqlx::query(named(format!(
        "ALTER SEQUENCE {sequence} INCREMENT BY {increment}"
    )))
    .execute(&mut *txn)
    .await?;
    let now = read_one(&mut txn, sequence).await?;
    let (increment, next) = choose(now);
    if increment != now.increment {
        sqlx::query(named(format!(
            "ALTER SEQUENCE {sequence} INCREMENT BY {increment}"
        )))
        .execute(&mut *txn)
        .await?;
    }
    if (increment, next) != (now.increment, now.next) {
        sqlx::query(named(format!("SELECT setval('{sequence}', $1, false)")))
            .bind(next)
            .execute(&mut *txn)
            .await?;
    }
    txn.commit().await?;
    Ok(now)
}

async fn read_one(
    conn: &mut PgConnection,
    sequence: &'static str,
) -> Result<SequenceState, sqlx::Error> {
    let row = sqlx::query(named(format!(
        "SELECT p.seqincrement AS increment,
                CASE WHEN s.is_called THEN s.last_value + p.seqincrement
                     ELSE s.last_value END AS next
         FROM {sequence} s, pg_sequence p
         WHERE p.seqrelid = '{sequence}'::regclass"
    )))
    .fetch_one(conn)
    .await?;
    Ok(SequenceState {
        name: sequence,
        increment: row.try_get("increment")?,
        next: row.try_get("next")?,
    })
}

/// A statement naming one of [`SEQUENCES`], which are constants; values are parameters.
fn named(statement: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(statement)
}

async fn acquire(
    conn: &DatabaseConnection,
) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, DbErr> {
    conn.get_postgres_connection_pool()
        .acquire()
        .await
        .map_err(|e| DbErr::Conn(RuntimeErr::SqlxError(Arc::new(e))))
}

fn exec(e: sqlx::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::SqlxError(Arc::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_value_above_a_bound_is_in_the_asked_class() {
        for bound in [0, 1, 699, 1023, 1024, 1300, 1_000_000] {
            for residue in [0, 1, 2, 3, 1023] {
                let value = first_value_above(bound, residue, STRIDE);
                assert!(
                    value > bound && value - bound <= STRIDE,
                    "{bound} {residue}"
                );
                assert_eq!(value.rem_euclid(STRIDE), residue);
            }
        }
    }

    #[test]
    fn a_fresh_deployment_starts_shard_1_at_1_and_shard_0_at_1024() {
        assert_eq!(first_value_above(0, 1, STRIDE), 1);
        assert_eq!(first_value_above(0, 0, STRIDE), 1024);
        assert_eq!(first_value_above(1300, 2, STRIDE), 2050);
    }

    #[test]
    fn a_value_already_in_its_class_is_kept() {
        assert_eq!(first_value_above(2049 - 1, 1, STRIDE), 2049);
    }

    #[test]
    fn with_a_step_of_one_the_first_value_above_is_the_next_integer() {
        assert_eq!(first_value_above(41, 0, 1), 42);
    }

    #[test]
    fn two_shards_classes_never_share_a_value() {
        let class = |index: i64| {
            (0..500)
                .map(move |n| first_value_above(0, index, STRIDE) + n * STRIDE)
                .collect::<std::collections::HashSet<_>>()
        };
        for (a, b) in [(0, 1), (1, 2), (3, 1023)] {
            assert!(class(a).is_disjoint(&class(b)), "{a} and {b}");
        }
    }

    #[test]
    fn a_sequence_is_in_a_class_only_with_the_class_step_and_residue() {
        let state = |increment, next| SequenceState {
            name: "order_id_seq",
            increment,
            next,
        };
        assert!(state(STRIDE, 2 * STRIDE + 3).is_in_class_of(3));
        assert!(!state(STRIDE, 2 * STRIDE + 3).is_in_class_of(2));
        assert!(!state(1, 3).is_in_class_of(3));
        assert_eq!(state(STRIDE, 2050).highest_issued(), 1026);
        assert_eq!(state(1, 1).highest_issued(), 0);
    }

    #[test]
    fn turns_count_a_class_one_by_one() {
        let turns: Vec<i64> = (0..4).map(|n| turn(5 + n * STRIDE)).collect();
        assert_eq!(turns, [0, 1, 2, 3]);
    }
}
