//! PostgreSQL's two-phase commit, as the coordinator (the PlaceOrder workflow) uses it.
//!
//! Each shard's part of an order runs in its own transaction that ends with
//! `PREPARE TRANSACTION '<gid>'`: from then on the transaction survives crashes and restarts
//! of both the worker and the server, holds its locks, and is invisible to readers until
//! `COMMIT PREPARED` (or `ROLLBACK PREPARED`), which any session may run later.
//!
//! The global id names the workflow (its id and first run id, which a reset keeps), the
//! shard, and the order's home shard (the customer's, which commits first), so whoever finds
//! a prepared transaction (`orders recover`, see [`crate::recovery`]) can ask that workflow
//! what was decided, or read the outcome on the home shard. Utility statements take no
//! parameters, so the gid is spliced into the SQL: it is built only from `[A-Za-z0-9._%:-]`
//! (the workflow id is percent-encoded), and every statement here checks that before running.

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, Statement};

/// Every gid this project creates starts with this; others' are left alone.
pub const GID_PREFIX: &str = "orders2pc:";
/// PostgreSQL keeps at most 199 bytes of a gid.
const MAX_GID_LEN: usize = 199;

/// What a gid says: which workflow prepared it, for which shard, and where the order's
/// commit record (its home part's key) lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GidParts {
    pub workflow_id: String,
    /// The first run id of the workflow's execution chain.
    pub run_id: String,
    pub shard: usize,
    pub home_shard: usize,
}

impl GidParts {
    /// The idempotency key of this part.
    pub fn part_key(&self) -> String {
        part_key(&self.workflow_id, &self.run_id, self.shard)
    }

    /// The idempotency key of the order's home part: committed exactly when the decision
    /// was commit and phase two has begun (the home part commits first, in the workflow and
    /// in recovery alike).
    pub fn home_key(&self) -> String {
        part_key(&self.workflow_id, &self.run_id, self.home_shard)
    }

    /// The same order's home part.
    pub fn home(&self) -> GidParts {
        GidParts {
            shard: self.home_shard,
            ..self.clone()
        }
    }

    /// This part's gid, as [`gid`] builds it.
    pub fn gid(&self) -> Result<String, GidTooLong> {
        gid(&self.workflow_id, &self.run_id, self.shard, self.home_shard)
    }
}

/// The idempotency key of a two-phase part: `<workflow id>/<first run id>/two-phase/shard-<n>`.
pub fn part_key(workflow_id: &str, first_run_id: &str, shard: usize) -> String {
    format!("{workflow_id}/{first_run_id}/two-phase/shard-{shard}")
}

/// Why a workflow id cannot name a prepared transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "workflow id {0:?} is too long for a two-phase order: the prepared transaction id holds at most {MAX_GID_LEN} bytes (use a shorter workflow id, or saga consistency)"
)]
pub struct GidTooLong(pub String);

/// `orders2pc:<first run id>:<shard>:<home shard>:<percent-encoded workflow id>`.
pub fn gid(
    workflow_id: &str,
    first_run_id: &str,
    shard: usize,
    home_shard: usize,
) -> Result<String, GidTooLong> {
    let gid = format!(
        "{GID_PREFIX}{}:{shard}:{home_shard}:{}",
        encode(first_run_id),
        encode(workflow_id)
    );
    if gid.len() > MAX_GID_LEN {
        return Err(GidTooLong(workflow_id.to_owned()));
    }
    Ok(gid)
}

/// The parts of one of our gids; `None` for a gid someone else created.
pub fn parse_gid(gid: &str) -> Option<GidParts> {
    let rest = gid.strip_prefix(GID_PREFIX)?;
    let mut fields = rest.splitn(4, ':');
    let run_id = decode(fields.next()?)?;
    let shard = fields.next()?.parse().ok()?;
    let home_shard = fields.next()?.parse().ok()?;
    let workflow_id = decode(fields.next()?)?;
    Some(GidParts {
        workflow_id,
        run_id,
        shard,
        home_shard,
    })
}

fn is_plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-')
}

fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if is_plain(byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The gid as a SQL literal, refusing anything that could break out of the quotes.
fn literal(gid: &str) -> Result<String, DbErr> {
    let safe =
        gid.len() <= MAX_GID_LEN && gid.bytes().all(|b| is_plain(b) || matches!(b, b':' | b'%'));
    if !safe {
        return Err(DbErr::Custom(format!(
            "refusing unsafe transaction id {gid:?}"
        )));
    }
    Ok(format!("'{gid}'"))
}

/// Ends `txn` with `PREPARE TRANSACTION`: its work is now durable but invisible, and its
/// locks are held until [`commit_prepared`] or [`rollback_prepared`].
pub async fn prepare(txn: DatabaseTransaction, gid: &str) -> Result<(), DbErr> {
    // PREPARE ends the transaction block, but sea-orm still ends `txn` with a COMMIT. An
    // empty transaction opened right behind the PREPARE (same round trip) gives that COMMIT
    // something to end, instead of a "there is no transaction in progress" warning.
    txn.execute_unprepared(&format!("PREPARE TRANSACTION {}; BEGIN", literal(gid)?))
        .await?;
    txn.commit().await
}

/// Whether `gid` is prepared (and so still undecided) in this database.
pub async fn is_prepared(conn: &impl ConnectionTrait, gid: &str) -> Result<bool, DbErr> {
    Ok(conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT 1 AS found FROM pg_prepared_xacts
             WHERE gid = $1 AND database = current_database()",
            [gid.into()],
        ))
        .await?
        .is_some())
}

/// Makes the prepared transaction's work visible. Must not run inside a transaction.
pub async fn commit_prepared(conn: &impl ConnectionTrait, gid: &str) -> Result<(), DbErr> {
    conn.execute_unprepared(&format!("COMMIT PREPARED {}", literal(gid)?))
        .await?;
    Ok(())
}

/// Discards the prepared transaction's work. Must not run inside a transaction.
pub async fn rollback_prepared(conn: &impl ConnectionTrait, gid: &str) -> Result<(), DbErr> {
    conn.execute_unprepared(&format!("ROLLBACK PREPARED {}", literal(gid)?))
        .await?;
    Ok(())
}

/// One of our transactions that is prepared and waiting for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InDoubt {
    pub gid: String,
    /// Seconds since it was prepared.
    pub age_secs: i64,
}

/// Our prepared transactions in this database, oldest first.
pub async fn in_doubt(conn: &impl ConnectionTrait) -> Result<Vec<InDoubt>, DbErr> {
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT gid, extract(epoch FROM now() - prepared)::bigint AS age_secs
             FROM pg_prepared_xacts
             WHERE database = current_database() AND starts_with(gid, $1)
             ORDER BY prepared",
            [GID_PREFIX.into()],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok(InDoubt {
                gid: row.try_get("", "gid")?,
                age_secs: row.try_get("", "age_secs")?,
            })
        })
        .collect()
}

/// How many prepared transactions in this database are someone else's.
pub async fn foreign_count(conn: &impl ConnectionTrait) -> Result<usize, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM pg_prepared_xacts
             WHERE database = current_database() AND NOT starts_with(gid, $1)",
            [GID_PREFIX.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("count returned no row".into()))?;
    Ok(row.try_get::<i64>("", "n")? as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gid_names_its_workflow_run_and_shard_and_round_trips_any_workflow_id() {
        for workflow_id in ["order-7f3a", "odd id: 'quoted' / ü", "a%b:c"] {
            let gid = gid(workflow_id, "0198-abc", 3, 1).expect("short enough");
            assert!(literal(&gid).is_ok(), "{gid} is safe to splice");
            let parts = parse_gid(&gid).expect("ours");
            assert_eq!(
                parts,
                GidParts {
                    workflow_id: workflow_id.to_owned(),
                    run_id: "0198-abc".to_owned(),
                    shard: 3,
                    home_shard: 1,
                }
            );
            assert_eq!(
                parts.home_key(),
                format!("{workflow_id}/0198-abc/two-phase/shard-1")
            );
        }
    }

    #[test]
    fn foreign_long_and_unsafe_gids_are_refused() {
        assert_eq!(parse_gid("citus_0_123_4_5"), None);
        assert!(gid(&"w".repeat(200), "run", 0, 0).is_err());
        assert!(literal("orders2pc:x'; DROP TABLE orders; --").is_err());
    }
}
