//! The invariants `orders audit` checks, one query per check, on one shard.
//!
//! "Placed" orders are the ones PlaceOrder wrote: each has a credit hold row (imported and
//! synthetic orders have none and are left out of the credit and stock checks). A placed
//! order is live unless it was cancelled; a live order's credit hold is `held`.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

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
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [MAX_REPORTED.into()],
        ))
        .await?;
    rows.iter().map(|row| row.try_get("", "id")).collect()
}

/// Orders whose total is not Σ quantity × price of their items: (id, total, sum).
pub async fn wrong_totals(
    conn: &impl ConnectionTrait,
) -> Result<Vec<(i64, Decimal, Decimal)>, DbErr> {
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT o.id, o.total_amount, sum(i.quantity * i.price) AS items_total
             FROM orders o JOIN order_items i ON i.order_id = o.id
             GROUP BY o.id HAVING o.total_amount <> sum(i.quantity * i.price)
             ORDER BY o.id LIMIT $1",
            [MAX_REPORTED.into()],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("", "id")?,
                row.try_get("", "total_amount")?,
                row.try_get("", "items_total")?,
            ))
        })
        .collect()
}

/// Customers whose `credit_used` is not the sum of their live placed orders' totals:
/// (customer, credit_used, live total).
pub async fn wrong_credit(
    conn: &impl ConnectionTrait,
) -> Result<Vec<(i64, Decimal, Decimal)>, DbErr> {
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
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
            [MAX_REPORTED.into()],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("", "id")?,
                row.try_get("", "credit_used")?,
                row.try_get("", "live_total")?,
            ))
        })
        .collect()
}

/// Credit holds that disagree with their order: held for a cancelled or missing order, or
/// released while the order is live. (order, hold status, order status or `missing`).
pub async fn stray_credit_holds(
    conn: &impl ConnectionTrait,
) -> Result<Vec<(i64, String, String)>, DbErr> {
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT h.order_id, h.status AS hold, COALESCE(o.status, 'missing') AS order_status
             FROM credit_holds h LEFT JOIN orders o ON o.id = h.order_id
             WHERE (h.status = 'held' AND (o.id IS NULL OR o.status = 'cancelled'))
                OR (h.status = 'released' AND o.status IS NOT NULL AND o.status <> 'cancelled')
             ORDER BY h.order_id LIMIT $1",
            [MAX_REPORTED.into()],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("", "order_id")?,
                row.try_get("", "hold")?,
                row.try_get("", "order_status")?,
            ))
        })
        .collect()
}

/// Σ quantity per product over the live placed orders of this shard.
pub async fn live_quantities(conn: &impl ConnectionTrait) -> Result<BTreeMap<i64, i64>, DbErr> {
    let rows = conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT i.product_id, sum(i.quantity)::bigint AS quantity
             FROM orders o
             JOIN credit_holds h ON h.order_id = o.id AND h.status = 'held'
             JOIN order_items i ON i.order_id = o.id
             WHERE o.status <> 'cancelled'
             GROUP BY i.product_id",
        ))
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("", "product_id")?, row.try_get("", "quantity")?)))
        .collect()
}
