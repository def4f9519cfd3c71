//! Idempotency keys: the proof, written with the effect, that a step already ran.
//!
//! A forward step first [`claim`]s its key inside its transaction. If the claim is new, the
//! step does its work and [`record_result`]s before committing; if a committed row exists,
//! the step returns the stored result and writes nothing. Two concurrent attempts serialise
//! on the key's primary key: the second waits for the first to commit or roll back.
//! A compensation [`mark_compensated`]s the key, so a late duplicate of the forward step
//! sees the tombstone instead of writing again.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

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
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT result, compensated FROM idempotency_keys WHERE key = $1",
            [key.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("idempotency key {key} vanished")))?;
    if row.try_get::<bool>("", "compensated")? {
        return Ok(Claim::Compensated);
    }
    match row.try_get::<Option<serde_json::Value>>("", "result")? {
        Some(result) => Ok(Claim::Done(result)),
        None => Err(DbErr::Custom(format!(
            "idempotency key {key} has no result"
        ))),
    }
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

/// Reads `key` without claiming it: `None` if no committed row exists.
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
