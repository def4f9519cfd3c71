//! Idempotency keys: the proof, written with the effect, that a step already ran.
//!
//! Every forward step goes through [`run_once`]: inside its transaction it [`claim`]s its
//! key. If the claim is new, the step's body does the work and [`record_result`]s it in the
//! same transaction; if a committed row exists, the stored result is returned and nothing is
//! written. Two concurrent attempts serialise on the key's primary key: the second waits for
//! the first to commit or roll back. A compensation [`mark_compensated`]s the key, so a late
//! duplicate of the forward step sees the tombstone instead of writing again.

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, Statement,
    TransactionTrait,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What [`run_once`] found: the step's result, and whether this attempt produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Once<T> {
    /// The body ran now, and its effect and result are committed.
    Ran(T),
    /// An earlier attempt ran; this is the result it stored, and nothing was written now.
    AlreadyRan(T),
}

impl<T> Once<T> {
    /// The step's result, whichever attempt produced it.
    pub fn into_result(self) -> T {
        match self {
            Once::Ran(result) | Once::AlreadyRan(result) => result,
        }
    }
}

/// A compensation undid the step before this attempt of it ran: doing it now would bring
/// back what was undone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} was already compensated")]
pub struct Compensated {
    /// The step's idempotency key.
    pub key: String,
}

/// Ties `key` to `bucket`, so the key moves with the bucket's rows when the bucket moves to
/// another shard (keys with no bucket stay with their shard). For keys whose step may be
/// retried against the bucket's new owner: `CreateOrder`'s, whose repeat must find the order.
pub async fn assign_bucket(
    txn: &impl ConnectionTrait,
    key: &str,
    bucket: u16,
) -> Result<(), DbErr> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE idempotency_keys SET bucket = $2 WHERE key = $1 AND bucket IS DISTINCT FROM $2",
        [key.into(), (bucket as i16).into()],
    ))
    .await?;
    Ok(())
}

/// Runs a forward step at most once per `key`, in one transaction on `conn`: claims the key;
/// returns the stored result if an earlier attempt committed, [`Compensated`] if a
/// compensation tombstoned it; otherwise runs `body`, stores its result under the key and
/// commits. If `body` fails (a rejection or a database error) the transaction rolls back
/// and nothing of the step remains. (A two-phase part uses
/// [`super::two_phase::prepare_once`] instead.)
pub async fn run_once<T, E>(
    conn: &DatabaseConnection,
    key: &str,
    body: impl AsyncFnOnce(&DatabaseTransaction) -> Result<T, E>,
) -> Result<Once<T>, E>
where
    T: Serialize + DeserializeOwned,
    E: From<DbErr> + From<Compensated>,
{
    let txn = conn.begin().await?;
    // Returning early drops `txn`, which rolls it back: the claim wrote nothing.
    match claim(&txn, key).await? {
        Claim::Done(stored) => return Ok(Once::AlreadyRan(from_json(stored)?)),
        Claim::Compensated => return Err(compensated(key).into()),
        Claim::New => {}
    }
    let result = match body(&txn).await {
        Ok(result) => result,
        Err(e) => {
            txn.rollback().await?;
            return Err(e);
        }
    };
    let stored = serde_json::to_value(&result).map_err(|e| DbErr::Json(e.to_string()))?;
    record_result(&txn, key, &stored).await?;
    txn.commit().await?;
    Ok(Once::Ran(result))
}

pub(crate) fn compensated(key: &str) -> Compensated {
    Compensated {
        key: key.to_owned(),
    }
}

/// The result an earlier attempt stored under `key`, for a step that found its key taken
/// by a committed row: [`Compensated`] if a compensation tombstoned it.
pub async fn stored_result<T, E>(conn: &impl ConnectionTrait, key: &str) -> Result<T, E>
where
    T: DeserializeOwned,
    E: From<DbErr> + From<Compensated>,
{
    match lookup(conn, key).await? {
        Some(Claim::Done(stored)) => Ok(from_json(stored)?),
        Some(Claim::Compensated) => Err(compensated(key).into()),
        None | Some(Claim::New) => {
            Err(DbErr::RecordNotFound(format!("idempotency key {key} vanished")).into())
        }
    }
}

fn from_json<T: DeserializeOwned>(stored: serde_json::Value) -> Result<T, DbErr> {
    serde_json::from_value(stored).map_err(|e| DbErr::Json(e.to_string()))
}

/// What a forward step found when it claimed its key.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// First time: do the work.
    New,
    /// Already done: return this result.
    Done(serde_json::Value),
    /// Already undone by a compensation: do nothing.
    Compensated,
}

/// Claims `key` for the current transaction.
pub async fn claim(txn: &impl ConnectionTrait, key: &str) -> Result<Claim, DbErr> {
    let inserted = txn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO idempotency_keys (key) VALUES ($1) ON CONFLICT (key) DO NOTHING",
            [key.into()],
        ))
        .await?
        .rows_affected();
    if inserted == 1 {
        return Ok(Claim::New);
    }
    lookup(txn, key).await?.ok_or_else(|| {
        DbErr::RecordNotFound(format!("idempotency key {key} vanished or has no result"))
    })
}

/// Claims `key` for the current transaction, with `result` stored at once, unless the
/// prepared transaction `gid` exists: `None` then. For a step whose result is known before
/// it runs and which ends in `PREPARE TRANSACTION` (see
/// [`super::two_phase::prepare_once`]): an earlier attempt's claim is inside its prepared
/// transaction, invisible and locked, and claiming again would wait on it until the lock
/// timeout. One statement, where a lookup of `gid` and a claim would be two.
pub async fn claim_unless_prepared(
    txn: &impl ConnectionTrait,
    key: &str,
    gid: &str,
    result: &serde_json::Value,
) -> Result<Option<Claim>, DbErr> {
    let inserted = txn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO idempotency_keys (key, result)
             SELECT $1, $3
             WHERE NOT EXISTS (SELECT 1 FROM pg_prepared_xacts
                               WHERE gid = $2 AND database = current_database())
             ON CONFLICT (key) DO NOTHING",
            [key.into(), gid.into(), result.clone().into()],
        ))
        .await?
        .rows_affected();
    if inserted == 1 {
        return Ok(Some(Claim::New));
    }
    // Not inserted and no committed row: the part is prepared (or was rolled back just now,
    // which phase two finds out).
    lookup(txn, key).await
}

/// Stores the result a retry of the step will return.
pub async fn record_result(
    txn: &impl ConnectionTrait,
    key: &str,
    result: &serde_json::Value,
) -> Result<(), DbErr> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE idempotency_keys SET result = $2 WHERE key = $1",
        [key.into(), result.clone().into()],
    ))
    .await?;
    Ok(())
}

/// Marks `key` compensated (creating a tombstone if the step never ran) and returns the
/// result the forward step stored, if it ran.
pub async fn mark_compensated(
    txn: &impl ConnectionTrait,
    key: &str,
) -> Result<Option<serde_json::Value>, DbErr> {
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO idempotency_keys (key, compensated) VALUES ($1, true)
             ON CONFLICT (key) DO UPDATE SET compensated = true
             RETURNING result",
            [key.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("INSERT … RETURNING returned no row".into()))?;
    row.try_get("", "result")
}

/// Reads `key` without claiming it: `None` if no committed row (with a result or a
/// tombstone) exists.
pub async fn lookup(conn: &impl ConnectionTrait, key: &str) -> Result<Option<Claim>, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT result, compensated FROM idempotency_keys WHERE key = $1",
            [key.into()],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    if row.try_get::<bool>("", "compensated")? {
        return Ok(Some(Claim::Compensated));
    }
    Ok(row
        .try_get::<Option<serde_json::Value>>("", "result")?
        .map(Claim::Done))
}

/// Keys written before `cutoff`, after `after` in (created_at, key) order, at most `limit`:
/// the candidates of one retention batch. Walks `idx_idempotency_keys_created_at_key`.
pub async fn written_before(
    conn: &impl ConnectionTrait,
    cutoff: chrono::DateTime<chrono::FixedOffset>,
    after: Option<&(chrono::DateTime<chrono::FixedOffset>, String)>,
    limit: u64,
) -> Result<Vec<(chrono::DateTime<chrono::FixedOffset>, String)>, DbErr> {
    let (after_time, after_key) = match after {
        Some((time, key)) => (Some(*time), Some(key.clone())),
        None => (None, None),
    };
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT created_at, key FROM idempotency_keys
             WHERE created_at < $1
               AND ($2::timestamptz IS NULL OR (created_at, key) > ($2, $3))
             ORDER BY created_at, key
             LIMIT $4",
            [
                cutoff.into(),
                after_time.into(),
                after_key.into(),
                (limit as i64).into(),
            ],
        ))
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("", "created_at")?, row.try_get("", "key")?)))
        .collect()
}

/// Deletes `keys`; returns how many rows went.
pub async fn delete(conn: &impl ConnectionTrait, keys: &[String]) -> Result<u64, DbErr> {
    if keys.is_empty() {
        return Ok(0);
    }
    let done = conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "DELETE FROM idempotency_keys WHERE key = ANY($1)",
            [keys.to_vec().into()],
        ))
        .await?;
    Ok(done.rows_affected())
}
