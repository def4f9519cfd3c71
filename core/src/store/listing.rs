//! Order listings on one shard: newest first, paged by keyset (or by OFFSET, for comparison),
//! and counts by status. The SQL is public so `orders explain` shows the plans of exactly the
//! statements the listings run.

use chrono::{DateTime, FixedOffset};
use orders_entities::order::OrderStatus;
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, FromQueryResult, Statement, Value};
use serde::{Deserialize, Serialize};

/// An order as listings show it: no items, the customer's copied name and email.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, FromQueryResult)]
pub struct OrderSummary {
    pub id: i64,
    pub customer_id: i64,
    pub customer_name: Option<String>,
    pub customer_email: Option<String>,
    pub status: OrderStatus,
    pub total_amount: Decimal,
    pub created_at: DateTime<FixedOffset>,
}

impl OrderSummary {
    /// Where this order sits in the newest-first order.
    pub fn position(&self) -> Position {
        Position {
            created_at: self.created_at,
            id: self.id,
        }
    }
}

/// A place in the newest-first order of orders: (created_at desc, id desc). Ids are unique
/// across shards, so positions are too, and every order is strictly before or after one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub created_at: DateTime<FixedOffset>,
    pub id: i64,
}

/// The newest orders of a shard ($1 = limit, $2 = the buckets it serves). Walks
/// `idx_orders_created_at_id` backwards.
///
/// Listings and counts across shards keep to the buckets the map gives each shard (see
/// [`Served`]): while a bucket moves, its rows are on two shards, and are counted once.
pub const NEWEST: &str =
    "SELECT id, customer_id, customer_name, customer_email, status, total_amount, created_at
     FROM orders WHERE (id % 1024) = ANY($2)
     ORDER BY created_at DESC, id DESC LIMIT $1";

/// The orders after a position ($1 = created_at, $2 = id, $3 = limit, $4 = the buckets
/// served): the keyset page.
pub const NEWEST_AFTER: &str =
    "SELECT id, customer_id, customer_name, customer_email, status, total_amount, created_at
     FROM orders WHERE (created_at, id) < ($1, $2) AND (id % 1024) = ANY($4)
     ORDER BY created_at DESC, id DESC LIMIT $3";

/// The article's OFFSET page ($1 = limit, $2 = offset, $3 = the buckets served): reads and
/// discards `offset` rows.
pub const NEWEST_AT_OFFSET: &str =
    "SELECT id, customer_id, customer_name, customer_email, status, total_amount, created_at
     FROM orders WHERE (id % 1024) = ANY($3)
     ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2";

/// A customer's newest orders ($1 = customer, $2 = limit), on
/// `idx_orders_customer_created_at_id`.
pub const CUSTOMER_NEWEST: &str =
    "SELECT id, customer_id, customer_name, customer_email, status, total_amount, created_at
     FROM orders WHERE customer_id = $1
     ORDER BY created_at DESC, id DESC LIMIT $2";

/// A customer's orders after a position ($1 = customer, $2 = created_at, $3 = id,
/// $4 = limit).
pub const CUSTOMER_NEWEST_AFTER: &str =
    "SELECT id, customer_id, customer_name, customer_email, status, total_amount, created_at
     FROM orders WHERE customer_id = $1 AND (created_at, id) < ($2, $3)
     ORDER BY created_at DESC, id DESC LIMIT $4";

/// The time before which this shard's set of orders is final: no transaction that could
/// still commit an order older than it is open. It is the earliest of
/// - the start of every other open transaction on this database (an order's `created_at` is
///   its transaction's start), and
/// - every prepared transaction's PREPARE time, less a second (a two-phase order's
///   `created_at` is stamped microseconds before its PREPARE, in the same round trip, see
///   [`super::two_phase::prepare`]), and
/// - now.
///
/// Read it *before* the page's query: an order older than it then committed before the
/// query's snapshot, so the query sees it. Needs a role that sees the writers' sessions in
/// `pg_stat_activity` (the same role, or `pg_read_all_stats`).
pub const VISIBILITY_HORIZON: &str = "SELECT least(
        (SELECT min(xact_start) FROM pg_stat_activity
         WHERE datname = current_database() AND backend_type = 'client backend'
           AND pid <> pg_backend_pid()),
        (SELECT min(prepared) FROM pg_prepared_xacts
         WHERE database = current_database()) - interval '1 second',
        now()) AS horizon";

/// How many orders have each status ($1 = the buckets served).
pub const COUNT_BY_STATUS: &str = "SELECT status, count(*) AS orders FROM orders
     WHERE (id % 1024) = ANY($1) GROUP BY status ORDER BY status";

/// The buckets a shard serves under the map in use, as the listings' parameter.
#[derive(Debug, Clone)]
pub struct Served(Vec<i64>);

impl Served {
    /// The buckets `map` gives to `shard`.
    pub fn by(map: &crate::shard_map::ShardMap, shard: usize) -> Self {
        Self(map.buckets_of(shard).into_iter().map(i64::from).collect())
    }

    /// As the statements' parameter.
    pub fn value(&self) -> Value {
        Value::from(self.0.clone())
    }
}

/// This shard's [`VISIBILITY_HORIZON`].
pub async fn visibility_horizon(
    conn: &impl ConnectionTrait,
) -> Result<DateTime<FixedOffset>, DbErr> {
    conn.query_one_raw(Statement::from_string(
        DbBackend::Postgres,
        VISIBILITY_HORIZON,
    ))
    .await?
    .ok_or_else(|| DbErr::Custom("the horizon query returned no row".into()))?
    .try_get("", "horizon")
}

impl Position {
    /// The position just newer than every order created before `time`: a page "after" it
    /// holds orders with `created_at < time` only.
    pub fn before(time: DateTime<FixedOffset>) -> Self {
        Self {
            created_at: time,
            id: i64::MIN,
        }
    }
}

/// Up to `limit` orders after `after` (or the newest), newest first.
pub async fn newest(
    conn: &impl ConnectionTrait,
    served: &Served,
    after: Option<Position>,
    limit: u64,
) -> Result<Vec<OrderSummary>, DbErr> {
    let limit = limit as i64;
    match after {
        None => summaries(conn, NEWEST, vec![limit.into(), served.value()]).await,
        Some(p) => {
            summaries(
                conn,
                NEWEST_AFTER,
                vec![
                    p.created_at.into(),
                    p.id.into(),
                    limit.into(),
                    served.value(),
                ],
            )
            .await
        }
    }
}

/// `limit` orders after skipping the `offset` newest: the article's pagination.
pub async fn newest_at_offset(
    conn: &impl ConnectionTrait,
    served: &Served,
    offset: u64,
    limit: u64,
) -> Result<Vec<OrderSummary>, DbErr> {
    summaries(
        conn,
        NEWEST_AT_OFFSET,
        vec![
            (limit as i64).into(),
            (offset as i64).into(),
            served.value(),
        ],
    )
    .await
}

/// Up to `limit` of a customer's orders after `after` (or the newest), newest first.
pub async fn customer_newest(
    conn: &impl ConnectionTrait,
    customer_id: i64,
    after: Option<Position>,
    limit: u64,
) -> Result<Vec<OrderSummary>, DbErr> {
    let limit = limit as i64;
    match after {
        None => {
            summaries(
                conn,
                CUSTOMER_NEWEST,
                vec![customer_id.into(), limit.into()],
            )
            .await
        }
        Some(p) => {
            summaries(
                conn,
                CUSTOMER_NEWEST_AFTER,
                vec![
                    customer_id.into(),
                    p.created_at.into(),
                    p.id.into(),
                    limit.into(),
                ],
            )
            .await
        }
    }
}

/// Orders per status on this shard.
pub async fn count_by_status(
    conn: &impl ConnectionTrait,
    served: &Served,
) -> Result<Vec<(OrderStatus, i64)>, DbErr> {
    #[derive(FromQueryResult)]
    struct Row {
        status: OrderStatus,
        orders: i64,
    }
    let rows = Row::find_by_statement(Statement::from_sql_and_values(
        DbBackend::Postgres,
        COUNT_BY_STATUS,
        [served.value()],
    ))
    .all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.status, r.orders)).collect())
}

async fn summaries(
    conn: &impl ConnectionTrait,
    sql: &str,
    values: Vec<Value>,
) -> Result<Vec<OrderSummary>, DbErr> {
    OrderSummary::find_by_statement(Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        values,
    ))
    .all(conn)
    .await
}
