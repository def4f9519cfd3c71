//! The invariants `orders audit` checks, one query per check, on one shard.
//!
//! "Placed" orders are the ones PlaceOrder wrote: each has a credit hold row (imported and
//! synthetic orders have none and are left out of the credit and stock checks). A placed
//! order is live unless it was cancelled; a live order's credit hold is `held`.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryResult, Statement};

/// The migration that introduced stock; orders created before it hold none.
pub const STOCK_MIGRATION: &str = "m20261129_000011_create_inventory";

/// Most rows one check reports per shard; the rest are counted.
pub const MAX_REPORTED: i64 = 50;

/// Orders with no items.
pub async fn orders_without_items(conn: &impl ConnectionTrait) -> Result<Vec<i64>, DbErr> {
    ids(
        conn,
        "SELECT o.id FROM orders o
         WHERE NOT EXISTS (SELECT 1 FROM order_items i WHERE i.order_id = o.id)
         ORDER BY o.id LIMIT $1",
    )
    .await
}

/// Items whose order does not exist.
pub async fn orphan_items(conn: &impl ConnectionTrait) -> Result<Vec<i64>, DbErr> {
    ids(
        conn,
        "SELECT i.id FROM order_items i
         WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.id = i.order_id)
         ORDER BY i.id LIMIT $1",
    )
    .await
}

async fn ids(conn: &impl ConnectionTrait, sql: &str) -> Result<Vec<i64>, DbErr> {
    reported(conn, sql, |row| row.try_get("", "id")).await
}

/// Runs a check whose `$1` is [`MAX_REPORTED`] and reads each row it reports with `read`.
async fn reported<T>(
    conn: &impl ConnectionTrait,
    sql: &str,
    read: impl Fn(&QueryResult) -> Result<T, DbErr>,
) -> Result<Vec<T>, DbErr> {
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [MAX_REPORTED.into()],
        ))
        .await?;
    rows.iter().map(read).collect()
}

/// Three columns of a reported row.
fn triple<A, B, C>(row: &QueryResult, names: [&str; 3]) -> Result<(A, B, C), DbErr>
where
    A: sea_orm::TryGetable,
    B: sea_orm::TryGetable,
    C: sea_orm::TryGetable,
{
    Ok((
        row.try_get("", names[0])?,
        row.try_get("", names[1])?,
        row.try_get("", names[2])?,
    ))
}

/// Orders whose total is not Σ quantity × price of their items: (id, total, sum).
pub async fn wrong_totals(
    conn: &impl ConnectionTrait,
) -> Result<Vec<(i64, Decimal, Decimal)>, DbErr> {
    reported(
        conn,
        "SELECT o.id, o.total_amount, sum(i.quantity * i.price) AS items_total
         FROM orders o JOIN order_items i ON i.order_id = o.id
         GROUP BY o.id HAVING o.total_amount <> sum(i.quantity * i.price)
         ORDER BY o.id LIMIT $1",
        |row| triple(row, ["id", "total_amount", "items_total"]),
    )
    .await
}

/// Customers whose `credit_used` is not the sum of their live placed orders' totals:
/// (customer, credit_used, live total).
pub async fn wrong_credit(
    conn: &impl ConnectionTrait,
) -> Result<Vec<(i64, Decimal, Decimal)>, DbErr> {
    reported(
        conn,
        "SELECT c.id, c.credit_used, COALESCE(live.total, 0) AS live_total
         FROM customers c
         LEFT JOIN (
             SELECT o.customer_id, sum(o.total_amount) AS total
             FROM orders o JOIN credit_holds h ON h.order_id = o.id AND h.status = 'held'
             WHERE o.status <> 'cancelled'
             GROUP BY o.customer_id
         ) live ON live.customer_id = c.id
         WHERE c.credit_used <> COALESCE(live.total, 0)
         ORDER BY c.id LIMIT $1",
        |row| triple(row, ["id", "credit_used", "live_total"]),
    )
    .await
}

/// Credit holds that disagree with their order: held for a cancelled or missing order, or
/// released while the order is live. (order, hold status, order status or `missing`).
pub async fn stray_credit_holds(
    conn: &impl ConnectionTrait,
) -> Result<Vec<(i64, String, String)>, DbErr> {
    reported(
        conn,
        "SELECT h.order_id, h.status AS hold, COALESCE(o.status, 'missing') AS order_status
         FROM credit_holds h LEFT JOIN orders o ON o.id = h.order_id
         WHERE (h.status = 'held' AND (o.id IS NULL OR o.status = 'cancelled'))
            OR (h.status = 'released' AND o.status IS NOT NULL AND o.status <> 'cancelled')
         ORDER BY h.order_id LIMIT $1",
        |row| triple(row, ["order_id", "hold", "order_status"]),
    )
    .await
}

/// Σ quantity per product over the live placed orders of this shard that hold stock: those
/// created since stock exists (migration 11); older ones never reserved any.
pub async fn live_quantities(conn: &impl ConnectionTrait) -> Result<BTreeMap<i64, i64>, DbErr> {
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT i.product_id, sum(i.quantity)::bigint AS quantity
             FROM orders o
             JOIN credit_holds h ON h.order_id = o.id AND h.status = 'held'
             JOIN order_items i ON i.order_id = o.id
             WHERE o.status <> 'cancelled'
               AND o.created_at >= (SELECT to_timestamp(applied_at) FROM seaql_migrations
                                    WHERE version = $1)
             GROUP BY i.product_id",
            [STOCK_MIGRATION.into()],
        ))
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("", "product_id")?, row.try_get("", "quantity")?)))
        .collect()
}
