//! The stored versions of the bucket → shard map (table `shard_map`, a copy on every shard).

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};

use crate::shard_map::ShardMap;

/// The highest map version this shard holds, as (version, owner of each bucket); `None`
/// when it holds none, including before the migration that creates the table.
pub async fn latest(conn: &impl ConnectionTrait) -> Result<Option<(i32, Vec<u16>)>, DbErr> {
    if !super::table_exists(conn, "shard_map").await? {
        return Ok(None);
    }
    let row = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT version, owners FROM shard_map ORDER BY version DESC LIMIT 1",
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    let owners: Vec<i16> = row.try_get("", "owners")?;
    let owners = owners
        .into_iter()
        .map(|s| u16::try_from(s).map_err(|_| DbErr::Type(format!("negative shard {s} in map"))))
        .collect::<Result<_, _>>()?;
    Ok(Some((row.try_get("", "version")?, owners)))
}

/// Stores `map` on this shard. A version is immutable once written: storing it again is a
/// no-op, so publishing can be retried.
pub async fn publish(conn: &impl ConnectionTrait, map: &ShardMap) -> Result<(), DbErr> {
    let owners: Vec<i16> = map.owners().iter().map(|&s| s as i16).collect();
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO shard_map (version, owners) VALUES ($1, $2) ON CONFLICT (version) DO NOTHING",
        [map.version().into(), Value::from(owners)],
    ))
    .await?;
    Ok(())
}
