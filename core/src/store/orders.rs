//! Orders and their items: the article's queries, on one shard.

use chrono::{DateTime, FixedOffset};
use orders_entities::order::OrderStatus;
use rust_decimal::Decimal;
use sea_orm::{
    ActiveEnum, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, PaginatorTrait,
    Statement, Value,
};
use serde::{Deserialize, Serialize};

use super::idempotency::{self, Compensated};
use crate::order_input::{Consistency, ValidOrder};
use crate::routing::{ID_STRIDE, bucket_of};

/// Creates the order (status `pending`) and all its items in one statement: the article's
/// `CreateOrderWithItems`, a data-modifying CTE feeding `unnest`ed arrays into `order_items`.
/// The id carries the customer's bucket (see [`crate::routing`]), and the customer's name
/// and email are copied onto the order. Returns the new order id, or `None` (nothing
/// written) if the customer is not on this shard: the insert reads the customer anyway, so
/// no separate lookup is needed.
#[tracing::instrument(skip_all, fields(customer_id = order.customer_id))]
pub async fn create_with_items(
    txn: &impl ConnectionTrait,
    order: &ValidOrder,
) -> Result<Option<i64>, DbErr> {
    insert_with_items(txn, order, None, OrderStatus::Pending).await
}

/// Creates the order as `confirmed` under an id taken earlier with [`next_id_once`]: the
/// two-phase path, where the order becomes visible only when its prepared transaction
/// commits, so nobody ever sees it pending. `None`: the customer is not on this shard.
#[tracing::instrument(skip_all, fields(customer_id = order.customer_id, order_id))]
pub async fn create_confirmed_with_id(
    txn: &impl ConnectionTrait,
    order: &ValidOrder,
    order_id: i64,
) -> Result<Option<i64>, DbErr> {
    insert_with_items(txn, order, Some(order_id), OrderStatus::Confirmed).await
}

/// Takes a fresh order id for `customer_id` on its shard. A retry takes another one; the
/// first is simply never used.
pub async fn next_id(conn: &impl ConnectionTrait, customer_id: i64) -> Result<i64, DbErr> {
    conn.query_one_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT nextval('order_id_seq') * $1 + $2 AS id",
        [ID_STRIDE.into(), i64::from(bucket_of(customer_id)).into()],
    ))
    .await?
    .ok_or_else(|| DbErr::Custom("nextval returned no row".into()))?
    .try_get("", "id")
}

/// Takes a fresh order id for `customer_id` once per `key`: a repeat (a retry, a reset
/// workflow planning again) gets the id the first took, and a tombstoned key
/// [`Compensated`]. The key and its id go in together in one autocommitted statement; only a
/// repeat reads the stored id afterwards.
pub async fn next_id_once<E>(
    conn: &DatabaseConnection,
    key: &str,
    customer_id: i64,
) -> Result<i64, E>
where
    E: From<DbErr> + From<Compensated>,
{
    let taken = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO idempotency_keys (key, result)
             VALUES ($1, to_jsonb(nextval('order_id_seq') * $2 + $3))
             ON CONFLICT (key) DO NOTHING
             RETURNING (result #>> '{}')::bigint AS id",
            [
                key.into(),
                ID_STRIDE.into(),
                i64::from(bucket_of(customer_id)).into(),
            ],
        ))
        .await?;
    if let Some(row) = taken {
        return Ok(row.try_get("", "id")?);
    }
    idempotency::stored_result(conn, key).await
}

async fn insert_with_items(
    txn: &impl ConnectionTrait,
    order: &ValidOrder,
    order_id: Option<i64>,
    status: OrderStatus,
) -> Result<Option<i64>, DbErr> {
    let product_ids: Vec<i64> = order.items.iter().map(|i| i.product_id).collect();
    let quantities: Vec<i32> = order.items.iter().map(|i| i.quantity).collect();
    let prices: Vec<Decimal> = order.items.iter().map(|i| i.unit_price).collect();
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "WITH new_order AS (
                 INSERT INTO orders (id, customer_id, status, total_amount, notes,
                                     customer_name, customer_email, consistency)
                 SELECT COALESCE($9, nextval('order_id_seq') * $1 + $2), c.id, $10, $4, $5,
                        btrim(c.first_name || ' ' || c.last_name), c.email, $11
                 FROM customers c
                 WHERE c.id = $3
                 RETURNING id
             ), new_items AS (
                 INSERT INTO order_items (order_id, product_id, quantity, price)
                 SELECT new_order.id, item.product_id, item.quantity, item.price
                 FROM new_order,
                      unnest($6::bigint[], $7::integer[], $8::numeric[])
                          AS item(product_id, quantity, price)
             )
             SELECT id FROM new_order",
            [
                ID_STRIDE.into(),
                i64::from(bucket_of(order.customer_id)).into(),
                order.customer_id.into(),
                order.total().into(),
                order.notes.clone().into(),
                Value::from(product_ids),
                Value::from(quantities),
                Value::from(prices),
                order_id.into(),
                status.to_value().into(),
                order.consistency.as_str().into(),
            ],
        ))
        .await?;
    row.map(|row| row.try_get("", "id")).transpose()
}

/// The article's compensating delete: removes the order and its items. Deleting an order
/// that is already gone is not an error, so the compensation can be retried.
#[tracing::instrument(skip_all, fields(order_id))]
pub async fn delete_with_items(txn: &impl ConnectionTrait, order_id: i64) -> Result<u64, DbErr> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "DELETE FROM order_items WHERE order_id = $1",
        [order_id.into()],
    ))
    .await?;
    Ok(txn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "DELETE FROM orders WHERE id = $1",
            [order_id.into()],
        ))
        .await?
        .rows_affected())
}

/// Moves the order to `to` if its status is one of `from`, bumping `updated_at`.
/// Returns the status the order has afterwards (`None` if there is no such order), so a
/// retried transition sees its own earlier success.
#[tracing::instrument(skip_all, fields(order_id))]
pub async fn transition(
    conn: &impl ConnectionTrait,
    order_id: i64,
    from: &[OrderStatus],
    to: OrderStatus,
) -> Result<Option<OrderStatus>, DbErr> {
    let from: Vec<String> = from.iter().map(ActiveEnum::to_value).collect();
    let moved = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE orders SET status = $2, updated_at = now()
             WHERE id = $1 AND status = ANY($3::text[])
             RETURNING status",
            [order_id.into(), to.to_value().into(), Value::from(from)],
        ))
        .await?;
    // Nothing moved: read the status in a new statement, which (unlike a CTE sharing the
    // UPDATE's snapshot) sees a concurrent transition that just committed.
    let row = match moved {
        Some(row) => Some(row),
        None => {
            conn.query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT status FROM orders WHERE id = $1",
                [order_id.into()],
            ))
            .await?
        }
    };
    match row {
        Some(row) => Ok(Some(OrderStatus::try_from_value(
            &row.try_get("", "status")?,
        )?)),
        None => Ok(None),
    }
}

/// How many orders this shard holds.
pub async fn count(conn: &impl ConnectionTrait) -> Result<u64, DbErr> {
    orders_entities::order::Entity::find().count(conn).await
}

/// The import that wrote `order_id`, if an import did.
pub async fn import_of(
    conn: &impl ConnectionTrait,
    order_id: i64,
) -> Result<Option<String>, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT import_id FROM orders WHERE id = $1",
            [order_id.into()],
        ))
        .await?;
    match row {
        Some(row) => row.try_get("", "import_id"),
        None => Ok(None),
    }
}

/// An order with its items, as `orders get` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderWithItems {
    pub id: i64,
    pub customer_id: i64,
    /// Copied from the customer when the order was created (kept current by
    /// [`super::customers::update_contact`]).
    pub customer_name: Option<String>,
    pub customer_email: Option<String>,
    pub status: OrderStatus,
    pub total_amount: Decimal,
    pub notes: Option<String>,
    /// How the order was placed; none for imported and synthetic orders, and for orders
    /// placed before migration 16.
    #[serde(default)]
    pub consistency: Option<Consistency>,
    pub created_at: DateTime<FixedOffset>,
    pub updated_at: DateTime<FixedOffset>,
    pub items: Vec<ItemView>,
}

/// One item of [`OrderWithItems`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemView {
    pub id: i64,
    pub product_id: i64,
    pub quantity: i32,
    pub price: Decimal,
}

/// The SQL of [`find_with_items`] ($1 = order id).
pub const FIND_WITH_ITEMS: &str = "SELECT json_build_object(
                 'id', o.id,
                 'customer_id', o.customer_id,
                 'customer_name', o.customer_name,
                 'customer_email', o.customer_email,
                 'status', o.status,
                 'total_amount', o.total_amount::text,
                 'notes', o.notes,
                 'consistency', o.consistency,
                 'created_at', o.created_at,
                 'updated_at', o.updated_at,
                 'items', COALESCE(
                     json_agg(json_build_object(
                         'id', oi.id,
                         'product_id', oi.product_id,
                         'quantity', oi.quantity,
                         'price', oi.price::text
                     ) ORDER BY oi.id) FILTER (WHERE oi.id IS NOT NULL),
                     '[]'::json)
             ) AS order_json
             FROM orders o
             LEFT JOIN order_items oi ON oi.order_id = o.id
             WHERE o.id = $1
             GROUP BY o.id";

/// The article's `GetOrderWithItems`: the order and its items in one round trip, the items
/// aggregated with `json_agg`. Money travels as text so no digit is lost to floating point.
#[tracing::instrument(skip_all, fields(order_id))]
pub async fn find_with_items(
    conn: &impl ConnectionTrait,
    order_id: i64,
) -> Result<Option<OrderWithItems>, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            FIND_WITH_ITEMS,
            [order_id.into()],
        ))
        .await?;
    let Some(row) = row else { return Ok(None) };
    let json: serde_json::Value = row.try_get("", "order_json")?;
    serde_json::from_value(json)
        .map(Some)
        .map_err(|e| DbErr::Type(format!("order {order_id} did not decode: {e}")))
}
