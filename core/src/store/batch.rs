//! Many rows at once: the article's `BatchCreateOrderItems`, and the ways to run it.
//!
//! | form | use it when |
//! |---|---|
//! | [`insert_items_one_by_one`] | a handful of rows; the baseline the others are measured against |
//! | [`insert_items_multirow`] | up to a few thousand rows where COPY is not allowed (some poolers); `chunk` rows per statement, at most [`MAX_MULTIROW_CHUNK`] |
//! | [`insert_items_unnest`] | any count in one statement with four array parameters; simple and fast up to ~10k rows |
//! | [`copy_items`] | thousands of rows or more: COPY, the fastest path |
//! | [`isolate_failures`] with [`copy_items`] | untrusted input: chunks in savepoints, a failing chunk split until its bad rows are known, every good row kept |
//!
//! The COPY forms need a plain connection (`&mut PgConnection`), e.g. a transaction begun on
//! the shard's pool (`shard.conn.get_postgres_connection_pool().begin()`).

use futures::future::BoxFuture;
use rust_decimal::Decimal;
use sea_orm::sqlx::{self, PgConnection, Postgres, QueryBuilder};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};

use crate::copy_text::CopyText;

/// The most rows one multi-row INSERT of items can carry: PostgreSQL takes at most 65535
/// bind parameters per statement, and an item row has four.
pub const MAX_MULTIROW_CHUNK: usize = 65535 / 4;

/// One order item to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewItem {
    pub order_id: i64,
    pub product_id: i64,
    pub quantity: i32,
    pub price: Decimal,
}

/// One `INSERT` per item.
pub async fn insert_items_one_by_one(
    conn: &impl ConnectionTrait,
    items: &[NewItem],
) -> Result<u64, DbErr> {
    for item in items {
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO order_items (order_id, product_id, quantity, price) VALUES ($1, $2, $3, $4)",
            [
                item.order_id.into(),
                item.product_id.into(),
                item.quantity.into(),
                item.price.into(),
            ],
        ))
        .await?;
    }
    Ok(items.len() as u64)
}

/// `INSERT … VALUES (…), (…), …` with up to `chunk` rows per statement.
pub async fn insert_items_multirow(
    conn: &mut PgConnection,
    items: &[NewItem],
    chunk: usize,
) -> Result<u64, sqlx::Error> {
    assert!(
        (1..=MAX_MULTIROW_CHUNK).contains(&chunk),
        "chunk must be 1..={MAX_MULTIROW_CHUNK}"
    );
    let mut inserted = 0;
    for rows in items.chunks(chunk) {
        let mut insert = QueryBuilder::<Postgres>::new(
            "INSERT INTO order_items (order_id, product_id, quantity, price) ",
        );
        insert.push_values(rows, |mut row, item| {
            row.push_bind(item.order_id)
                .push_bind(item.product_id)
                .push_bind(item.quantity)
                .push_bind(item.price);
        });
        inserted += insert.build().execute(&mut *conn).await?.rows_affected();
    }
    Ok(inserted)
}

/// The article's `BatchCreateOrderItems`: one `INSERT … SELECT FROM unnest(…)` whatever the
/// number of rows.
pub async fn insert_items_unnest(
    conn: &impl ConnectionTrait,
    items: &[NewItem],
) -> Result<u64, DbErr> {
    Ok(conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO order_items (order_id, product_id, quantity, price)
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::integer[], $4::numeric[])",
            [
                Value::from(items.iter().map(|i| i.order_id).collect::<Vec<_>>()),
                Value::from(items.iter().map(|i| i.product_id).collect::<Vec<_>>()),
                Value::from(items.iter().map(|i| i.quantity).collect::<Vec<_>>()),
                Value::from(items.iter().map(|i| i.price).collect::<Vec<_>>()),
            ],
        ))
        .await?
        .rows_affected())
}

/// `COPY order_items FROM STDIN`: the article's `:copyfrom`.
pub async fn copy_items(conn: &mut PgConnection, items: &[NewItem]) -> Result<u64, sqlx::Error> {
    let mut rows = CopyText::new();
    for item in items {
        rows.plain(item.order_id)
            .plain(item.product_id)
            .plain(item.quantity)
            .plain(item.price)
            .end_row();
    }
    copy_in(
        conn,
        "COPY order_items (order_id, product_id, quantity, price) FROM STDIN",
        rows,
    )
    .await
}

/// Streams `rows` into `statement` (a `COPY … FROM STDIN` in text format).
pub async fn copy_in(
    conn: &mut PgConnection,
    statement: &str,
    rows: CopyText,
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut copy = conn.copy_in_raw(statement).await?;
    copy.send(rows.into_bytes()).await?;
    copy.finish().await
}

/// A row [`isolate_failures`] could not write, and the database's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRow {
    /// Index into the rows given.
    pub index: usize,
    pub error: String,
}

/// Writes `rows` in chunks of `chunk`, each inside a savepoint of the caller's transaction.
/// A chunk the database refuses for its data (SQLSTATE classes 22, data exception, and 23,
/// integrity constraint violation) is rolled back to its savepoint and split in halves, again
/// and again, until each bad row is alone: every good row is written, every bad row is
/// returned with the database's reason. Any other error (a lost connection, a deadlock, a
/// timeout) says nothing about the rows and aborts the whole call, for the caller to retry.
pub async fn isolate_failures<T, W>(
    conn: &mut PgConnection,
    rows: &[T],
    chunk: usize,
    mut write: W,
) -> Result<Vec<FailedRow>, sqlx::Error>
where
    W: for<'c> FnMut(&'c mut PgConnection, &'c [T]) -> BoxFuture<'c, Result<(), sqlx::Error>>,
{
    assert!(chunk > 0, "chunk must be at least 1");
    let mut failed = Vec::new();
    // Ranges still to write, the next one on top.
    let mut pending: Vec<(usize, usize)> = (0..rows.len())
        .step_by(chunk)
        .map(|start| (start, (start + chunk).min(rows.len())))
        .rev()
        .collect();
    while let Some((start, end)) = pending.pop() {
        sqlx::query("SAVEPOINT chunk").execute(&mut *conn).await?;
        match write(conn, &rows[start..end]).await {
            Ok(()) => {
                sqlx::query("RELEASE SAVEPOINT chunk")
                    .execute(&mut *conn)
                    .await?;
            }
            Err(sqlx::Error::Database(e)) if is_about_the_data(e.as_ref()) => {
                sqlx::query("ROLLBACK TO SAVEPOINT chunk")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("RELEASE SAVEPOINT chunk")
                    .execute(&mut *conn)
                    .await?;
                if end - start == 1 {
                    failed.push(FailedRow {
                        index: start,
                        error: describe(e.as_ref()),
                    });
                } else {
                    let middle = start + (end - start) / 2;
                    pending.push((middle, end));
                    pending.push((start, middle));
                }
            }
            Err(other) => return Err(other),
        }
    }
    failed.sort_by_key(|f| f.index);
    Ok(failed)
}

/// Whether the error is the rows' fault (bad value, broken constraint), not the moment's.
fn is_about_the_data(e: &dyn sqlx::error::DatabaseError) -> bool {
    e.code()
        .is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
}

/// The database's message, with its detail when it has one (e.g. which key is duplicated).
fn describe(e: &dyn sqlx::error::DatabaseError) -> String {
    let detail = e
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .and_then(|pg| pg.detail())
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    format!("{}{detail}", e.message())
}
