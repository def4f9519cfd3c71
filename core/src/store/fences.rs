//! Bucket fences (table `bucket_fences`): what this shard must do with a bucket that is
//! being moved, enforced by the guard trigger inside every writing transaction here.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, RuntimeErr, Statement};
use serde::{Deserialize, Serialize};

/// The SQLSTATE the guard trigger raises when it refuses a write.
pub const REFUSAL_SQLSTATE: &str = "OB001";

/// Why a shard treats a bucket specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FenceState {
    /// On the source while the rows are copied: writes go on, each change is logged.
    Copying,
    /// On the source from the freeze to the cut-over: no write commits.
    Frozen,
    /// On the target until the cut-over: the copy arrives, nothing else is written.
    Incoming,
    /// On the old owner after the cut-over: a worker with an old map is refused.
    Moved,
}

impl FenceState {
    pub fn as_str(self) -> &'static str {
        match self {
            FenceState::Copying => "copying",
            FenceState::Frozen => "frozen",
            FenceState::Incoming => "incoming",
            FenceState::Moved => "moved",
        }
    }

    fn parse(s: &str) -> Result<Self, DbErr> {
        Ok(match s {
            "copying" => FenceState::Copying,
            "frozen" => FenceState::Frozen,
            "incoming" => FenceState::Incoming,
            "moved" => FenceState::Moved,
            other => return Err(DbErr::Type(format!("unknown fence state {other:?}"))),
        })
    }
}

/// One fenced bucket on one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub bucket: u16,
    pub state: FenceState,
    /// The other shard of the move.
    pub peer: usize,
    pub move_id: String,
}

/// Whether `e` is the guard trigger refusing a write to a fenced bucket: the worker's map is
/// stale or a move is cutting over, and a retry will find the bucket's owner.
pub fn is_refusal(e: &DbErr) -> bool {
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = e else {
        return false;
    };
    e.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == REFUSAL_SQLSTATE)
}

/// Sets the fence of each of `buckets` to `state` (replacing any other), in one statement.
pub async fn set_all(
    conn: &impl ConnectionTrait,
    buckets: &[u16],
    state: FenceState,
    peer: usize,
    move_id: &str,
) -> Result<(), DbErr> {
    let buckets: Vec<i16> = buckets.iter().map(|&b| b as i16).collect();
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO bucket_fences (bucket, state, peer, move_id)
         SELECT b, $2, $3, $4 FROM unnest($1::smallint[]) AS b
         ON CONFLICT (bucket) DO UPDATE
             SET state = EXCLUDED.state, peer = EXCLUDED.peer, move_id = EXCLUDED.move_id,
                 since = now()",
        [
            buckets.into(),
            state.as_str().into(),
            (peer as i16).into(),
            move_id.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Removes the fences of `buckets` that are in one of `states`.
pub async fn clear_all(
    conn: &impl ConnectionTrait,
    buckets: &[u16],
    states: &[FenceState],
) -> Result<(), DbErr> {
    let buckets: Vec<i16> = buckets.iter().map(|&b| b as i16).collect();
    let states: Vec<String> = states.iter().map(|s| s.as_str().to_owned()).collect();
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "DELETE FROM bucket_fences WHERE bucket = ANY($1) AND state = ANY($2)",
        [buckets.into(), states.into()],
    ))
    .await?;
    Ok(())
}

/// Every fence on this shard, by bucket; empty before the migration that adds them.
pub async fn list(conn: &impl ConnectionTrait) -> Result<Vec<Fence>, DbErr> {
    if !super::table_exists(conn, "bucket_fences").await? {
        return Ok(Vec::new());
    }
    let rows = conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT bucket, state, peer, move_id FROM bucket_fences ORDER BY bucket",
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Fence {
                bucket: row.try_get::<i16>("", "bucket")? as u16,
                state: FenceState::parse(&row.try_get::<String>("", "state")?)?,
                peer: row.try_get::<i16>("", "peer")? as usize,
                move_id: row.try_get("", "move_id")?,
            })
        })
        .collect()
}

/// The transactions running on this shard now (prepared ones included), as a snapshot to
/// give [`still_running`]: a fence is certain to hold only once every transaction that might
/// have checked it before it was set has ended.
pub async fn transactions_now(conn: &impl ConnectionTrait) -> Result<String, DbErr> {
    conn.query_one_raw(Statement::from_string(
        DbBackend::Postgres,
        "SELECT pg_current_snapshot()::text AS snapshot",
    ))
    .await?
    .ok_or_else(|| DbErr::Custom("pg_current_snapshot() returned no row".into()))?
    .try_get("", "snapshot")
}

/// Which transactions of `snapshot` are still running in this database: how many, and the
/// gids of those that are prepared two-phase parts (which only their coordinator, or
/// `orders recover`, ends).
///
/// Transaction ids are the cluster's, so the snapshot lists other databases' transactions
/// too; those known to be elsewhere (a session or a prepared transaction of another
/// database) cannot write here and are not waited for. One whose database cannot be told is.
pub async fn still_running(
    conn: &impl ConnectionTrait,
    snapshot: &str,
) -> Result<(u64, Vec<String>), DbErr> {
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "WITH running AS (
                 SELECT (x::text::bigint % 4294967296)::text AS xid
                 FROM pg_snapshot_xip($1::pg_snapshot) AS x
                 WHERE pg_xact_status(x) = 'in progress'
             ), elsewhere AS (
                 SELECT backend_xid::text AS xid FROM pg_stat_activity
                 WHERE backend_xid IS NOT NULL AND datname IS DISTINCT FROM current_database()
                 UNION
                 SELECT transaction::text FROM pg_prepared_xacts
                 WHERE database <> current_database()
             ), here AS (
                 SELECT xid FROM running WHERE xid NOT IN (SELECT xid FROM elsewhere)
             )
             SELECT (SELECT count(*) FROM here) AS running,
                    ARRAY(SELECT p.gid FROM pg_prepared_xacts p
                          WHERE p.database = current_database()
                            AND p.transaction::text IN (SELECT xid FROM here)
                          ORDER BY p.gid) AS prepared",
            [snapshot.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("no row".into()))?;
    let running: i64 = row.try_get("", "running")?;
    Ok((running as u64, row.try_get("", "prepared")?))
}
