//! What a shard's server and schema say about themselves: the migrations it recorded and the
//! settings the deployment checks read.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

use super::table_exists;

/// The migrations sea-orm recorded on this shard, oldest first (none before the first run).
pub async fn applied_migrations(conn: &impl ConnectionTrait) -> Result<Vec<String>, DbErr> {
    if !table_exists(conn, "seaql_migrations").await? {
        return Ok(Vec::new());
    }
    conn.query_all_raw(Statement::from_string(
        DbBackend::Postgres,
        "SELECT version FROM seaql_migrations ORDER BY version",
    ))
    .await?
    .iter()
    .map(|row| row.try_get::<String>("", "version"))
    .collect()
}

/// The server's `max_prepared_transactions`: two-phase orders need it above zero.
pub async fn max_prepared_transactions(conn: &impl ConnectionTrait) -> Result<i32, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT current_setting('max_prepared_transactions')::int AS setting",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("current_setting returned no row".into()))?;
    row.try_get("", "setting")
}
