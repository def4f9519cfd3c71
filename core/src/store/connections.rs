//! Who is connected to a shard's database, from `pg_stat_activity`.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

/// Connections to the current database from every client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    pub open: i64,
    /// Running a statement right now.
    pub active: i64,
}

/// The connections to this database, this one included.
pub async fn count(conn: &impl ConnectionTrait) -> Result<Connections, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS open, count(*) FILTER (WHERE state = 'active') AS active
             FROM pg_stat_activity WHERE datname = current_database()",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("pg_stat_activity returned no row".into()))?;
    Ok(Connections {
        open: row.try_get("", "open")?,
        active: row.try_get("", "active")?,
    })
}
