//! The SQL of one shard: each function runs one statement or one transaction, takes the
//! connection or transaction first, and returns `Result<_, DbErr>`. Routing and retries
//! happen above this layer.

pub mod audit;
pub mod backup_points;
pub mod batch;
pub mod bucket_checks;
pub mod bucket_rows;
pub mod connections;
pub mod credit;
pub mod customers;
pub mod fences;
pub mod id_sequences;
pub mod idempotency;
pub mod imports;
pub mod inventory;
pub mod listing;
pub mod orders;
pub mod plans;
pub mod server;
pub mod shard_identity;
pub mod shard_map;
pub mod synthetic;
pub mod two_phase;

/// Whether `table` exists on this shard: the tables of migrations not yet applied do not.
pub(crate) async fn table_exists(
    conn: &impl sea_orm::ConnectionTrait,
    table: &str,
) -> Result<bool, sea_orm::DbErr> {
    conn.query_one_raw(sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        "SELECT to_regclass($1) IS NOT NULL AS present",
        [table.into()],
    ))
    .await?
    .ok_or_else(|| sea_orm::DbErr::Custom("to_regclass returned no row".into()))?
    .try_get("", "present")
}
