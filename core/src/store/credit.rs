//! Credit holds: reserving part of a customer's credit limit for one order, and giving it back.
//!
//! The hold row, keyed by order id, is written in the same transaction as the change to
//! `customers.credit_used`, so a retried reserve finds it and does nothing, and a release
//! flips it to `released` exactly once. A release that runs before its reserve (the saga
//! registers compensations first) leaves a `released` tombstone that the reserve respects.

use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

/// The outcome of [`reserve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserve {
    /// Credit is now held for the order.
    Reserved,
    /// A previous attempt already holds it.
    AlreadyHeld,
    /// The hold was already released: the order is being compensated.
    AlreadyReleased,
    /// The customer's remaining credit cannot cover `amount`. Nothing was written.
    Declined { available: Decimal },
    /// The customer does not exist on this shard. Nothing was written.
    UnknownCustomer,
}

/// Holds `amount` of `customer_id`'s credit for `order_id`. Must run inside a transaction;
/// on `Declined` or `UnknownCustomer` the caller rolls it back.
///
/// The hold row and the change to `credit_used` go in one statement (one round trip on the
/// order's critical path); the outcomes other than `Reserved` read why afterwards.
#[tracing::instrument(skip_all, fields(order_id, customer_id))]
pub async fn reserve(
    txn: &impl ConnectionTrait,
    order_id: i64,
    customer_id: i64,
    amount: Decimal,
) -> Result<Reserve, DbErr> {
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "WITH hold AS (
                 INSERT INTO credit_holds (order_id, customer_id, amount, status)
                 VALUES ($1, $2, $3, 'held') ON CONFLICT (order_id) DO NOTHING
                 RETURNING order_id
             ), used AS (
                 UPDATE customers SET credit_used = credit_used + $3, updated_at = now()
                 WHERE id = $2 AND credit_used + $3 <= credit_limit
                   AND EXISTS (SELECT 1 FROM hold)
                 RETURNING id
             )
             SELECT EXISTS (SELECT 1 FROM hold) AS held_now,
                    EXISTS (SELECT 1 FROM used) AS reserved",
            [order_id.into(), customer_id.into(), amount.into()],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("SELECT EXISTS returned no row".into()))?;
    if row.try_get::<bool>("", "reserved")? {
        return Ok(Reserve::Reserved);
    }
    if !row.try_get::<bool>("", "held_now")? {
        let status: String = txn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT status FROM credit_holds WHERE order_id = $1",
                [order_id.into()],
            ))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound(format!("credit hold of order {order_id}")))?
            .try_get("", "status")?;
        return Ok(if status == "held" {
            Reserve::AlreadyHeld
        } else {
            Reserve::AlreadyReleased
        });
    }
    let available = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT credit_limit - credit_used AS available FROM customers WHERE id = $1",
            [customer_id.into()],
        ))
        .await?;
    match available {
        Some(row) => Ok(Reserve::Declined {
            available: row.try_get("", "available")?,
        }),
        None => Ok(Reserve::UnknownCustomer),
    }
}

/// The outcome of [`release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// `amount` went back to the customer.
    Released { amount: Decimal },
    /// Nothing was held (never reserved, or already released).
    NothingHeld,
}

/// Gives the credit held for `order_id` back, once. Must run inside a transaction.
///
/// The tombstone goes in first: if a reserve of the same order is still in flight, the insert
/// waits for it to commit or roll back, so the update that follows sees its hold. The other
/// order (update first) would miss an uncommitted hold and leave it held for good.
#[tracing::instrument(skip_all, fields(order_id, customer_id))]
pub async fn release(
    txn: &impl ConnectionTrait,
    order_id: i64,
    customer_id: i64,
) -> Result<Release, DbErr> {
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO credit_holds (order_id, customer_id, amount, status)
         VALUES ($1, $2, 0, 'released') ON CONFLICT (order_id) DO NOTHING",
        [order_id.into(), customer_id.into()],
    ))
    .await?;
    let released = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE credit_holds SET status = 'released', updated_at = now()
             WHERE order_id = $1 AND status = 'held'
             RETURNING customer_id, amount",
            [order_id.into()],
        ))
        .await?;
    let Some(row) = released else {
        return Ok(Release::NothingHeld);
    };
    let holder: i64 = row.try_get("", "customer_id")?;
    let amount: Decimal = row.try_get("", "amount")?;
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE customers SET credit_used = credit_used - $2, updated_at = now() WHERE id = $1",
        [holder.into(), amount.into()],
    ))
    .await?;
    Ok(Release::Released { amount })
}
