//! Query plans as PostgreSQL chooses them: `EXPLAIN (ANALYZE, BUFFERS)` of a statement with
//! its parameters bound, and parameters sampled from the shard's own data, so the plans are
//! the ones production gets (`orders explain`).

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};

/// An order some way down the newest-first order, and its customer: realistic parameters
/// for the listing and lookup queries.
#[derive(Debug, Clone)]
pub struct Sample {
    pub order_id: i64,
    pub customer_id: i64,
    pub created_at: chrono::DateTime<chrono::FixedOffset>,
}

/// The order `depth` rows down the newest-first order (or halfway, on a smaller shard);
/// `None` when the shard has no orders.
pub async fn sample(conn: &impl ConnectionTrait, depth: i64) -> Result<Option<Sample>, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id, customer_id, created_at FROM orders
             ORDER BY created_at DESC, id DESC
             OFFSET LEAST($1, (SELECT count(*) FROM orders) / 2) LIMIT 1",
            [depth.into()],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Sample {
        order_id: row.try_get("", "id")?,
        customer_id: row.try_get("", "customer_id")?,
        created_at: row.try_get("", "created_at")?,
    }))
}

/// Runs `EXPLAIN (ANALYZE, BUFFERS)` of `sql` with `values` bound; the plan as text.
pub async fn explain_analyze(
    conn: &impl ConnectionTrait,
    sql: &str,
    values: Vec<Value>,
) -> Result<String, DbErr> {
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"),
            values,
        ))
        .await?;
    let lines = rows
        .iter()
        .map(|row| row.try_get::<String>("", "QUERY PLAN"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(lines.join("\n"))
}
