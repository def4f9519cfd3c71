//! PostgreSQL's two-phase commit, as the coordinator (the PlaceOrder workflow) uses it.
//!
//! Each shard's part of an order runs in its own transaction that ends with
//! `PREPARE TRANSACTION '<gid>'`: from then on the transaction survives crashes and restarts
//! of both the worker and the server, holds its locks, and is invisible to readers until
//! `COMMIT PREPARED` (or `ROLLBACK PREPARED`), which any session may run later.
//!
//! The global id names the workflow (its id and first run id, which a reset keeps), the shard, the
//! order's home shard (the customer's, which commits first) and the round (a workflow whose plan a
//! bucket move made stale rolls back and plans again), so whoever finds a prepared transaction
//! (`orders recover`, see `orders_operations::recovery`) can ask that workflow what was decided, or
//! read the outcome on the home shard. Utility statements take no parameters, so the gid is spliced
//! into the SQL: a [`Gid`] holds only `[A-Za-z0-9._%:-]` (the workflow id is percent-encoded),
//! whether it was built or parsed.

use std::fmt;
use std::str::FromStr;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, Statement,
    TransactionTrait,
};
use serde::{Deserialize, Serialize};

use super::idempotency::{self, Claim, Compensated};

/// Every gid this project creates starts with this; others' are left alone.
pub const GID_PREFIX: &str = "orders2pc:";
/// PostgreSQL keeps at most 199 bytes of a gid.
const MAX_GID_LEN: usize = 199;

/// What a gid says: which workflow prepared it, for which shard, and where the order's
/// commit record (its home part's key) lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GidParts {
    pub workflow_id: String,
    /// The first run id of the workflow's execution chain.
    pub run_id: String,
    pub shard: usize,
    pub home_shard: usize,
    /// Which plan of the order this part belongs to: 1, or more when a bucket moved between
    /// an earlier plan and its prepare (see [`FIRST_ROUND`]).
    pub round: u32,
}

/// The round of an order's first plan: its gids and keys keep the layout they had before
/// rounds existed, so parts prepared then are still understood.
pub const FIRST_ROUND: u32 = 1;

impl GidParts {
    /// The idempotency key of this part.
    pub fn part_key(&self) -> String {
        part_key(&self.workflow_id, &self.run_id, self.shard, self.round)
    }

    /// The idempotency key of the order's home part (in the same round): committed exactly
    /// when the decision was commit and phase two has begun (the home part commits first, in
    /// the workflow and in recovery alike).
    pub fn home_key(&self) -> String {
        part_key(&self.workflow_id, &self.run_id, self.home_shard, self.round)
    }

    /// The key recording that this part's order decided commit ([`decision_key`]).
    pub fn decision_key(&self) -> String {
        decision_key(&self.workflow_id, &self.run_id, self.round)
    }

    /// The same order's home part.
    pub fn home(&self) -> GidParts {
        GidParts {
            shard: self.home_shard,
            ..self.clone()
        }
    }

    /// This part's gid.
    pub fn gid(&self) -> Result<Gid, GidTooLong> {
        let round = match self.round {
            FIRST_ROUND => String::new(),
            later => format!("r{later}:"),
        };
        let text = format!(
            "{GID_PREFIX}{}:{}:{}:{round}{}",
            encode(&self.run_id),
            self.shard,
            self.home_shard,
            encode(&self.workflow_id)
        );
        if text.len() > MAX_GID_LEN {
            return Err(GidTooLong(self.workflow_id.clone()));
        }
        Ok(Gid {
            text,
            parts: self.clone(),
        })
    }
}

/// The idempotency key of a two-phase part: `<workflow id>/<first run id>/two-phase/shard-<n>`
/// in the first round, `…/two-phase/round-<r>/shard-<n>` in a later one.
pub fn part_key(workflow_id: &str, first_run_id: &str, shard: usize, round: u32) -> String {
    match round {
        FIRST_ROUND => format!("{workflow_id}/{first_run_id}/two-phase/shard-{shard}"),
        later => format!("{workflow_id}/{first_run_id}/two-phase/round-{later}/shard-{shard}"),
    }
}

/// The idempotency key recording, on the shard where it is written, that the order's round
/// `round` decided commit. Written before any part commits, through the backup gate, so a
/// restore point has the decision on its side or not at all (see `orders_backup::settle`).
pub fn decision_key(workflow_id: &str, first_run_id: &str, round: u32) -> String {
    format!("{workflow_id}/{first_run_id}/two-phase/decision-{round}")
}

/// Records `key` ([`decision_key`]) on `conn`'s shard, once.
pub async fn record_commit_decision(conn: &DatabaseConnection, key: &str) -> Result<(), DbErr> {
    let txn = conn.begin().await?;
    match idempotency::claim(&txn, key).await? {
        Claim::New => {
            idempotency::record_result(&txn, key, &serde_json::json!("commit")).await?;
            txn.commit().await
        }
        Claim::Done(_) => Ok(()),
        Claim::Compensated => Err(DbErr::Custom(format!(
            "{key} is tombstoned: the order's round was rolled back"
        ))),
    }
}

/// The global id of one of our prepared transactions:
/// `orders2pc:<first run id>:<shard>:<home shard>:<percent-encoded workflow id>` in an
/// order's first round, `…:<home shard>:r<round>:<workflow id>` in a later one (the encoded
/// workflow id never holds a `:`, so the field count tells the layouts apart).
///
/// Prepared but undecided ⇒ roll back; decided ⇒ commit. Whoever finds one asks the workflow it
/// names for the decision, or reads the order's commit record on the home shard (see
/// `orders_operations::recovery`). A `Gid` holds only `[A-Za-z0-9._%:-]` and at most 199 bytes, so
/// it is safe to splice into the utility statements, which take no parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Gid {
    text: String,
    parts: GidParts,
}

impl Gid {
    /// What the gid names.
    pub fn parts(&self) -> &GidParts {
        &self.parts
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The gid as a SQL string literal.
    fn literal(&self) -> String {
        format!("'{}'", self.text)
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<Gid> for String {
    fn from(gid: Gid) -> Self {
        gid.text
    }
}

impl TryFrom<String> for Gid {
    type Error = GidError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl FromStr for Gid {
    type Err = GidError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some(rest) = text.strip_prefix(GID_PREFIX) else {
            return Err(GidError::Foreign(text.to_owned()));
        };
        let malformed = || GidError::Malformed(text.to_owned());
        let spliceable = text.len() <= MAX_GID_LEN
            && text
                .bytes()
                .all(|b| is_plain(b) || matches!(b, b':' | b'%'));
        if !spliceable {
            return Err(malformed());
        }
        let fields: Vec<&str> = rest.split(':').collect();
        let (run_id, shard, home_shard, round, workflow_id) = match fields[..] {
            [run, shard, home, workflow] => (run, shard, home, FIRST_ROUND, workflow),
            [run, shard, home, round, workflow] => {
                let round = round
                    .strip_prefix('r')
                    .and_then(|r| r.parse().ok())
                    .filter(|&r| r > FIRST_ROUND)
                    .ok_or_else(malformed)?;
                (run, shard, home, round, workflow)
            }
            _ => return Err(malformed()),
        };
        let run_id = decode(run_id).ok_or_else(malformed)?;
        let shard = shard.parse().map_err(|_| malformed())?;
        let home_shard = home_shard.parse().map_err(|_| malformed())?;
        let workflow_id = decode(workflow_id).ok_or_else(malformed)?;
        Ok(Gid {
            text: text.to_owned(),
            parts: GidParts {
                workflow_id,
                run_id,
                shard,
                home_shard,
                round,
            },
        })
    }
}

/// Why a workflow id cannot name a prepared transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "workflow id {0:?} is too long for a two-phase order: the prepared transaction id holds at most {MAX_GID_LEN} bytes (use a shorter workflow id, or saga consistency)"
)]
pub struct GidTooLong(pub String);

/// Why a text is not one of our gids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GidError {
    /// Someone else's prepared transaction: never touched.
    #[error("{0:?} is not a gid of this project (it does not start with {GID_PREFIX:?})")]
    Foreign(String),
    /// It has our prefix but not our layout, or characters a gid of ours never has.
    #[error("{0:?} has the prefix {GID_PREFIX:?} but is not a gid this project made")]
    Malformed(String),
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

/// Marks `order_id`, inserted in `txn`, to have its `created_at` stamped by [`prepare`].
pub async fn stamp_at_prepare(txn: &impl ConnectionTrait, order_id: i64) -> Result<(), DbErr> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT set_config('orders.stamp_at_prepare', $1, true)",
        [order_id.to_string().into()],
    ))
    .await?;
    Ok(())
}

/// Ends `txn` with `PREPARE TRANSACTION`: its work is now durable but invisible, and its
/// locks are held until [`commit_prepared`] or [`rollback_prepared`].
///
/// An order marked with [`stamp_at_prepare`] gets `created_at = clock_timestamp()` in the
/// same round trip, just before the PREPARE: readers then know a prepared order is no older
/// than its PREPARE time (less a margin), which keyset listings rely on to skip nothing
/// that commits late (see `listing::VISIBILITY_HORIZON`).
pub async fn prepare(txn: DatabaseTransaction, gid: &Gid) -> Result<(), DbErr> {
    // PREPARE ends the transaction block, but sea-orm still ends `txn` with a COMMIT. An
    // empty transaction opened right behind the PREPARE (same round trip) gives that COMMIT
    // something to end, instead of a "there is no transaction in progress" warning.
    // `orders.prepared_part` keeps the backup gate's shared lock out of the prepared
    // transaction, where it would stay until COMMIT PREPARED (see `orders_backup`).
    txn.execute_unprepared(&format!(
        "UPDATE orders SET created_at = clock_timestamp()
         WHERE id = nullif(current_setting('orders.stamp_at_prepare', true), '')::bigint;
         SET LOCAL orders.prepared_part = 'on';
         PREPARE TRANSACTION {}; BEGIN",
        gid.literal()
    ))
    .await?;
    txn.commit().await
}

/// What [`prepare_once`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrepareOnce {
    /// The body ran now and its transaction is prepared.
    Prepared,
    /// An earlier attempt prepared the part: it is waiting for phase two.
    AlreadyPrepared,
    /// An earlier attempt's part is committed already.
    AlreadyCommitted,
}

/// Writes a two-phase part at most once per `key` and prepares it under `gid`, in one
/// transaction on `conn`: the part's version of [`idempotency::run_once`]. The claim finds
/// an earlier attempt's part prepared (its claim inside, invisible), committed (its key
/// stored with the gid as result), or compensated (a rollback tombstoned the key:
/// [`Compensated`]); only a new claim runs `body` and prepares. If `body` fails the
/// transaction rolls back and nothing of the part remains.
pub async fn prepare_once<E>(
    conn: &DatabaseConnection,
    key: &str,
    gid: &Gid,
    body: impl AsyncFnOnce(&DatabaseTransaction) -> Result<(), E>,
) -> Result<PrepareOnce, E>
where
    E: From<DbErr> + From<Compensated>,
{
    let txn = conn.begin().await?;
    let result = serde_json::json!({ "gid": gid.as_str() });
    // Returning early drops `txn`, which rolls it back: the claim wrote nothing.
    match idempotency::claim_unless_prepared(&txn, key, gid.as_str(), &result).await? {
        None => return Ok(PrepareOnce::AlreadyPrepared),
        Some(Claim::Done(_)) => return Ok(PrepareOnce::AlreadyCommitted),
        Some(Claim::Compensated) => return Err(idempotency::compensated(key).into()),
        Some(Claim::New) => {}
    }
    if let Err(e) = body(&txn).await {
        txn.rollback().await?;
        return Err(e);
    }
    prepare(txn, gid).await?;
    Ok(PrepareOnce::Prepared)
}

/// Whether `gid` is prepared (and so still undecided) in this database.
pub async fn is_prepared(conn: &impl ConnectionTrait, gid: &Gid) -> Result<bool, DbErr> {
    Ok(conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT 1 AS found FROM pg_prepared_xacts
             WHERE gid = $1 AND database = current_database()",
            [gid.as_str().into()],
        ))
        .await?
        .is_some())
}

/// Makes the prepared transaction's work visible. Must not run inside a transaction.
pub async fn commit_prepared(conn: &impl ConnectionTrait, gid: &Gid) -> Result<(), DbErr> {
    conn.execute_unprepared(&format!("COMMIT PREPARED {}", gid.literal()))
        .await?;
    Ok(())
}

/// Discards the prepared transaction's work. Must not run inside a transaction.
pub async fn rollback_prepared(conn: &impl ConnectionTrait, gid: &Gid) -> Result<(), DbErr> {
    conn.execute_unprepared(&format!("ROLLBACK PREPARED {}", gid.literal()))
        .await?;
    Ok(())
}

/// One of our transactions that is prepared and waiting for a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InDoubt {
    pub gid: Gid,
    /// Seconds since it was prepared.
    pub age_secs: i64,
}

/// Our prepared transactions in this database, oldest first. One that carries our prefix but
/// not our layout is logged and left out: nothing here made it, so nothing here resolves it.
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
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let text: String = row.try_get("", "gid")?;
        match text.parse() {
            Ok(gid) => found.push(InDoubt {
                gid,
                age_secs: row.try_get("", "age_secs")?,
            }),
            Err(e) => tracing::warn!(error = %e, "prepared transaction left alone"),
        }
    }
    Ok(found)
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

    fn parts(workflow_id: &str) -> GidParts {
        GidParts {
            workflow_id: workflow_id.to_owned(),
            run_id: "0198-abc".to_owned(),
            shard: 3,
            home_shard: 1,
            round: FIRST_ROUND,
        }
    }

    #[test]
    fn a_gid_formats_and_parses_back_to_the_same_parts_for_any_workflow_id() {
        for workflow_id in ["order-7f3a", "odd id: 'quoted' / ü", "a%b:c"] {
            let gid = parts(workflow_id).gid().expect("short enough");
            assert!(gid.as_str().starts_with(GID_PREFIX));
            let parsed: Gid = gid.to_string().parse().expect("ours");
            assert_eq!(parsed, gid);
            assert_eq!(parsed.parts(), &parts(workflow_id));
            assert_eq!(
                parsed.parts().home_key(),
                format!("{workflow_id}/0198-abc/two-phase/shard-1")
            );
        }
    }

    #[test]
    fn a_later_round_gets_its_own_gid_and_keys_and_the_first_keeps_the_old_layout() {
        let first = parts("order-7").gid().unwrap();
        assert_eq!(first.as_str(), "orders2pc:0198-abc:3:1:order-7");
        let second = GidParts {
            round: 2,
            ..parts("order-7")
        };
        let gid = second.gid().unwrap();
        assert_eq!(gid.as_str(), "orders2pc:0198-abc:3:1:r2:order-7");
        let parsed: Gid = gid.as_str().parse().unwrap();
        assert_eq!(parsed.parts(), &second);
        assert_eq!(
            second.part_key(),
            "order-7/0198-abc/two-phase/round-2/shard-3"
        );
        assert_eq!(second.home().home_key(), second.home_key());
        assert_ne!(second.part_key(), parts("order-7").part_key());
        for bad in [
            "orders2pc:run:3:1:r1:wf",
            "orders2pc:run:3:1:x2:wf",
            "orders2pc:run:3:1:r2:wf:more",
        ] {
            assert!(
                matches!(bad.parse::<Gid>(), Err(GidError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_gid_travels_as_its_text_in_json() {
        let gid = parts("order-1").gid().unwrap();
        let json = serde_json::to_value(&gid).unwrap();
        assert_eq!(json, serde_json::Value::String(gid.to_string()));
        assert_eq!(serde_json::from_value::<Gid>(json).unwrap(), gid);
    }

    #[test]
    fn foreign_long_and_unsafe_gids_are_refused() {
        assert!(matches!(
            "citus_0_123_4_5".parse::<Gid>(),
            Err(GidError::Foreign(_))
        ));
        assert!(parts(&"w".repeat(200)).gid().is_err());
        assert!(matches!(
            "orders2pc:x'; DROP TABLE orders; --".parse::<Gid>(),
            Err(GidError::Malformed(_))
        ));
        assert!(matches!(
            "orders2pc:run:notashard:0:wf".parse::<Gid>(),
            Err(GidError::Malformed(_))
        ));
    }
}
