//! Stock on one shard: the products it owns, and what each order holds of them.
//!
//! Reserving locks the order's products in id order (so two orders never deadlock on each
//! other's rows), checks every one, and only then writes a `stock_holds` row per product and
//! raises `reserved`, all in one statement. Releasing flips the order's held rows to `released`
//! and lowers `reserved` by exactly what they held, so it gives stock back once however often
//! it runs.

use std::collections::BTreeMap;

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};
use serde::{Deserialize, Serialize};

/// One product's stock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stock {
    pub product_id: i64,
    pub name: Option<String>,
    pub on_hand: i32,
    pub reserved: i32,
}

impl Stock {
    /// What new orders can still reserve.
    pub fn available(&self) -> i32 {
        self.on_hand - self.reserved
    }
}

/// Quantity wanted per product, each product once, in id order (the lock order).
pub type Wanted = BTreeMap<i64, i32>;

/// The outcome of [`reserve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserve {
    /// Every product is now held for the order (or already was).
    Reserved,
    /// This product does not have `requested` available. Nothing was written.
    OutOfStock {
        product_id: i64,
        requested: i32,
        available: i32,
    },
    /// No product with this id exists on this shard. Nothing was written.
    UnknownProduct { product_id: i64 },
}

/// Sets `product_id`'s stock on hand, creating the product if needed. Fails (CHECK
/// violation) if that would leave less on hand than is already reserved.
pub async fn put(
    conn: &impl ConnectionTrait,
    product_id: i64,
    name: Option<&str>,
    on_hand: i32,
) -> Result<Stock, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO inventory (product_id, name, on_hand) VALUES ($1, $2, $3)
             ON CONFLICT (product_id) DO UPDATE
                 SET on_hand = EXCLUDED.on_hand,
                     name = COALESCE(EXCLUDED.name, inventory.name),
                     updated_at = now()
             RETURNING product_id, name, on_hand, reserved",
            [
                product_id.into(),
                name.map(str::to_owned).into(),
                on_hand.into(),
            ],
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("INSERT … RETURNING returned no row".into()))?;
    stock_of(&row)
}

/// `product_id`'s stock, if this shard has the product.
pub async fn find(conn: &impl ConnectionTrait, product_id: i64) -> Result<Option<Stock>, DbErr> {
    conn.query_one_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT product_id, name, on_hand, reserved FROM inventory WHERE product_id = $1",
        [product_id.into()],
    ))
    .await?
    .map(|row| stock_of(&row))
    .transpose()
}

/// The highest product id this shard stocks, 0 if none.
pub async fn highest_product_id(conn: &impl ConnectionTrait) -> Result<i64, DbErr> {
    let row = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT COALESCE(max(product_id), 0) AS highest FROM inventory",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("max() returned no row".into()))?;
    row.try_get("", "highest")
}

fn stock_of(row: &sea_orm::QueryResult) -> Result<Stock, DbErr> {
    Ok(Stock {
        product_id: row.try_get("", "product_id")?,
        name: row.try_get("", "name")?,
        on_hand: row.try_get("", "on_hand")?,
        reserved: row.try_get("", "reserved")?,
    })
}

/// Holds `wanted` for `order_id`. Must run inside a transaction; on anything but
/// `Reserved` nothing was written and the caller rolls back.
///
/// One statement (one round trip on the order's critical path): it locks the products in
/// id order, finds the first it cannot hold, and only if there is none writes the holds and
/// raises `reserved`.
#[tracing::instrument(skip_all, fields(order_id, products = wanted.len()))]
pub async fn reserve(
    txn: &impl ConnectionTrait,
    order_id: i64,
    wanted: &Wanted,
) -> Result<Reserve, DbErr> {
    let product_ids: Vec<i64> = wanted.keys().copied().collect();
    let quantities: Vec<i32> = wanted.values().copied().collect();
    let refused = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            // A product this order already holds (or held and released) is not checked: its
            // hold row stands, and the insert leaves it as it is. ON CONFLICT keeps a hold
            // from ever being counted twice: a repeat on this shard is ruled out by the
            // step's key, one on another shard after a bucket moved by this.
            "WITH locked AS MATERIALIZED (
                 SELECT i.product_id, i.on_hand - i.reserved AS available,
                        EXISTS (SELECT 1 FROM stock_holds h
                                WHERE h.order_id = $1 AND h.product_id = i.product_id) AS held
                 FROM inventory i
                 WHERE i.product_id = ANY($2) ORDER BY i.product_id FOR UPDATE OF i
             ), wanted AS (
                 SELECT * FROM unnest($2::bigint[], $3::integer[]) AS w(product_id, quantity)
             ), refused AS MATERIALIZED (
                 SELECT w.product_id, w.quantity AS requested, l.available
                 FROM wanted w LEFT JOIN locked l USING (product_id)
                 WHERE l.product_id IS NULL OR (NOT l.held AND l.available < w.quantity)
                 ORDER BY w.product_id LIMIT 1
             ), held AS (
                 INSERT INTO stock_holds (order_id, product_id, quantity, status)
                 SELECT $1, product_id, quantity, 'held' FROM wanted
                 WHERE NOT EXISTS (SELECT 1 FROM refused)
                 ON CONFLICT (order_id, product_id) DO NOTHING
                 RETURNING product_id, quantity
             ), raised AS (
                 UPDATE inventory
                 SET reserved = inventory.reserved + held.quantity, updated_at = now()
                 FROM held WHERE inventory.product_id = held.product_id
             )
             SELECT product_id, requested, available FROM refused",
            [
                order_id.into(),
                Value::from(product_ids),
                Value::from(quantities),
            ],
        ))
        .await?;
    let Some(refused) = refused else {
        return Ok(Reserve::Reserved);
    };
    let product_id = refused.try_get("", "product_id")?;
    Ok(match refused.try_get::<Option<i32>>("", "available")? {
        None => Reserve::UnknownProduct { product_id },
        Some(available) => Reserve::OutOfStock {
            product_id,
            requested: refused.try_get("", "requested")?,
            available,
        },
    })
}

/// Gives back everything `order_id` holds on this shard, once. Must run inside a
/// transaction. Returns the products and quantities released now (empty on a repeat).
///
/// `ordered` are the order's products: their inventory rows are locked too, which waits
/// for a transaction still holding them, a two-phase stock part prepared and not yet
/// committed among them. Its hold is invisible until it commits, and would be missed.
#[tracing::instrument(skip_all, fields(order_id))]
pub async fn release(
    txn: &impl ConnectionTrait,
    order_id: i64,
    ordered: &[i64],
) -> Result<Wanted, DbErr> {
    // Lock the products in id order first, as `reserve` does, so the two never deadlock.
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT 1 FROM inventory WHERE product_id = ANY($2) OR product_id IN (
             SELECT product_id FROM stock_holds WHERE order_id = $1 AND status = 'held'
         ) ORDER BY product_id FOR UPDATE",
        [order_id.into(), Value::from(ordered.to_vec())],
    ))
    .await?;
    let rows = txn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "WITH released AS (
                 UPDATE stock_holds SET status = 'released', updated_at = now()
                 WHERE order_id = $1 AND status = 'held'
                 RETURNING product_id, quantity
             )
             UPDATE inventory SET reserved = inventory.reserved - released.quantity,
                                  updated_at = now()
             FROM released WHERE inventory.product_id = released.product_id
             RETURNING released.product_id, released.quantity",
            [order_id.into()],
        ))
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("", "product_id")?, row.try_get("", "quantity")?)))
        .collect()
}

/// Per product on this shard: `reserved` as stored, and the sum of its held quantities.
/// The two differ only if a bug or a manual edit broke the bookkeeping.
pub async fn reserved_vs_held(conn: &impl ConnectionTrait) -> Result<Vec<(i64, i64, i64)>, DbErr> {
    let rows = conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT i.product_id, i.reserved::bigint AS reserved,
                    COALESCE(sum(h.quantity), 0)::bigint AS held
             FROM inventory i
             LEFT JOIN stock_holds h ON h.product_id = i.product_id AND h.status = 'held'
             GROUP BY i.product_id ORDER BY i.product_id",
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("", "product_id")?,
                row.try_get("", "reserved")?,
                row.try_get("", "held")?,
            ))
        })
        .collect()
}
