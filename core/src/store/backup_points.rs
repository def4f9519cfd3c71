//! Restore points taken through the backup gate (table `backup_points`), and the gate: the
//! advisory lock every writing transaction on an order's tables takes as it commits (see
//! migration 18), which a point takes exclusively.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

/// The gate's advisory lock key (migration 18's `BACKUP_GATE_LOCK`).
pub const GATE_LOCK: i64 = 0x6f72_6465_7273_6267;

/// A restore point as the shard recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupPoint {
    pub name: String,
    pub requested_at: chrono::DateTime<chrono::Utc>,
    /// `None` until the point is written (and in a copy restored to this very point).
    pub taken_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The restore point's WAL position on this shard, and the timeline it was written on.
    pub lsn: Option<String>,
    pub timeline: Option<i32>,
    /// How long writes waited for the point, over all shards.
    pub pause_ms: Option<i32>,
}

/// Records that `name` is being taken; `false` if this shard already has a point of that
/// name. Committed before the gate closes, so a copy restored to the point holds its row.
pub async fn request(conn: &impl ConnectionTrait, name: &str) -> Result<bool, DbErr> {
    let inserted = conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO backup_points (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
            [name.into()],
        ))
        .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Forgets a point that could not be taken.
pub async fn forget(conn: &impl ConnectionTrait, name: &str) -> Result<(), DbErr> {
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "DELETE FROM backup_points WHERE name = $1 AND taken_at IS NULL",
        [name.into()],
    ))
    .await?;
    Ok(())
}

/// Records where the point landed on this shard and how long writes paused for it.
pub async fn record_taken(
    conn: &impl ConnectionTrait,
    name: &str,
    at: &PointPosition,
    pause_ms: i32,
) -> Result<(), DbErr> {
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE backup_points SET taken_at = now(), lsn = $2::pg_lsn, timeline = $3,
                                  pause_ms = $4
         WHERE name = $1",
        [
            name.into(),
            at.lsn.clone().into(),
            (at.timeline as i32).into(),
            pause_ms.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Every point this shard recorded, oldest first.
pub async fn list(conn: &impl ConnectionTrait) -> Result<Vec<BackupPoint>, DbErr> {
    if !super::table_exists(conn, "backup_points").await? {
        return Ok(Vec::new());
    }
    let rows = conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT name, requested_at, taken_at, lsn::text AS lsn, timeline, pause_ms
             FROM backup_points ORDER BY requested_at, name",
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok(BackupPoint {
                name: row.try_get("", "name")?,
                requested_at: row.try_get("", "requested_at")?,
                taken_at: row.try_get("", "taken_at")?,
                lsn: row.try_get("", "lsn")?,
                timeline: row.try_get("", "timeline")?,
                pause_ms: row.try_get("", "pause_ms")?,
            })
        })
        .collect()
}

/// When the newest point this shard took was written, in seconds since the Unix epoch
/// (`None` before the first): what the "no recent restore point" alert watches.
pub async fn newest_taken_at(conn: &impl ConnectionTrait) -> Result<Option<i64>, DbErr> {
    conn.query_one_raw(Statement::from_string(
        DbBackend::Postgres,
        "SELECT extract(epoch FROM max(taken_at))::bigint AS newest FROM backup_points",
    ))
    .await?
    .ok_or_else(|| DbErr::Custom("max() returned no row".into()))?
    .try_get("", "newest")
}

/// Closes the gate for the rest of `txn`: waits (up to `lock_timeout`) for the commits in
/// progress on this shard, and holds back every later one until `txn` ends, or until the
/// session has been idle `held_at_most` (the server then ends it, and the gate opens).
pub async fn close_gate(
    txn: &impl ConnectionTrait,
    lock_timeout_ms: u64,
    held_at_most: std::time::Duration,
) -> Result<(), DbErr> {
    txn.execute_unprepared(&format!(
        "SET LOCAL lock_timeout = {lock_timeout_ms};
         SET LOCAL idle_in_transaction_session_timeout = {};
         SELECT pg_advisory_xact_lock({GATE_LOCK})",
        held_at_most.as_millis()
    ))
    .await?;
    Ok(())
}

/// Where a restore point lies in one shard's WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointPosition {
    pub lsn: String,
    pub timeline: i64,
}

/// Writes restore point `name` in the WAL; returns where it lies.
pub async fn create_restore_point(
    txn: &impl ConnectionTrait,
    name: &str,
) -> Result<PointPosition, DbErr> {
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_create_restore_point($1)::text AS lsn,
                    (SELECT timeline_id::bigint FROM pg_control_checkpoint()) AS timeline",
            [name.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("pg_create_restore_point returned no row".into()))?;
    Ok(PointPosition {
        lsn: row.try_get("", "lsn")?,
        timeline: row.try_get("", "timeline")?,
    })
}

/// Ends the current WAL segment, so the one holding a new restore point is archived now
/// rather than when it fills.
pub async fn switch_wal(conn: &impl ConnectionTrait) -> Result<(), DbErr> {
    conn.execute_unprepared("SELECT pg_switch_wal()").await?;
    Ok(())
}

/// The shard's current timeline: with a point's position, where its WAL segment is.
pub async fn timeline(conn: &impl ConnectionTrait) -> Result<i64, DbErr> {
    conn.query_one_raw(Statement::from_string(
        DbBackend::Postgres,
        "SELECT timeline_id::bigint AS timeline FROM pg_control_checkpoint()",
    ))
    .await?
    .ok_or_else(|| DbErr::Custom("pg_control_checkpoint returned no row".into()))?
    .try_get("", "timeline")
}
