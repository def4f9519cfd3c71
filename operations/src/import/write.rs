//! Writing one shard's share of a segment: a transaction per chunk, a few side by side; in
//! each, unknown customers and already-imported references are filtered out first, then the
//! chunk goes in with COPY inside a savepoint.
//!
//! Each chunk's transaction first takes an advisory lock on (import, segment, chunk): if
//! Temporal retries a segment whose earlier attempt is still writing (a missed heartbeat, not
//! a dead worker), the retry waits for that attempt's commit or rollback and then sees exactly
//! what it wrote.

use std::collections::HashMap;

use futures::StreamExt;

use sea_orm::sqlx::{self, PgConnection, PgPool, Row};

use super::RejectedLine;
use super::file::ImportLine;
use orders_core::copy_text::CopyText;
use orders_core::failure::FailureType;
use orders_core::routing::{bucket_of, tagged_id};
use orders_core::store::batch::{self, copy_in};

/// What happened to one shard's lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardImport {
    /// Orders this import wrote (in this call or an earlier attempt of it).
    pub imported: u64,
    /// Lines whose `order_ref` another import (or an earlier run of the same file) wrote.
    pub already_present: u64,
    pub rejected: Vec<RejectedLine>,
}

/// Transactions one shard's share of a segment is written in at once. Each COPY ends with a
/// wait on the server's delayed ACK (sqlx leaves Nagle's algorithm on), so chunks written side
/// by side keep the shard busy while one of them waits.
pub const WRITERS_PER_SHARD: usize = 4;

/// Imports `lines` (all owned by this shard) of the segment starting at byte `segment`:
/// `chunk` orders per transaction, up to [`WRITERS_PER_SHARD`] transactions at once.
pub async fn write_shard(
    pool: &PgPool,
    import_id: &str,
    segment: u64,
    lines: Vec<ImportLine>,
    chunk: usize,
) -> Result<ShardImport, sqlx::Error> {
    let mut outcome = ShardImport::default();
    // One line per (customer, ref): chunks written side by side must never share a key, or
    // they would wait on each other's unique-index entries (and could deadlock).
    let mut first_line: HashMap<(i64, String), u64> = HashMap::new();
    let mut unique = Vec::with_capacity(lines.len());
    for line in lines {
        let key = (line.order.customer_id, line.order_ref.clone());
        match first_line.get(&key) {
            Some(&first) => outcome.rejected.push(used_again(&line, first)),
            None => {
                first_line.insert(key, line.line);
                unique.push(line);
            }
        }
    }
    let mut chunks = Vec::new();
    let mut lines = unique.into_iter().peekable();
    while lines.peek().is_some() {
        chunks.push(lines.by_ref().take(chunk).collect::<Vec<_>>());
    }
    let writes = chunks.into_iter().enumerate().map(|(index, lines)| {
        let lock = (segment as i64)
            .wrapping_mul(1024)
            .wrapping_add(index as i64);
        write_chunk(pool, import_id, lock, lines)
    });
    let mut done = futures::stream::iter(writes).buffer_unordered(WRITERS_PER_SHARD);
    while let Some(written) = done.next().await {
        let written = written?;
        outcome.imported += written.imported;
        outcome.already_present += written.already_present;
        outcome.rejected.extend(written.rejected);
    }
    Ok(outcome)
}

/// Imports one chunk in one transaction: one COPY of its orders and one of their items,
/// inside a savepoint; if the database refuses the data, the savepoint is rolled back and
/// the chunk split until the bad rows are isolated (see [`batch::isolate_failures`]).
async fn write_chunk(
    pool: &PgPool,
    import_id: &str,
    lock: i64,
    lines: Vec<ImportLine>,
) -> Result<ShardImport, sqlx::Error> {
    let mut outcome = ShardImport::default();
    if lines.is_empty() {
        return Ok(outcome);
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, $2))")
        .bind(import_id)
        .bind(lock)
        .execute(&mut *tx)
        .await?;
    let customers = customers_of(&mut tx, &lines).await?;
    let present = present_refs(&mut tx, &lines).await?;
    let mut to_write = Vec::with_capacity(lines.len());
    for line in lines {
        let key = (line.order.customer_id, line.order_ref.clone());
        match present.get(&key) {
            // Written by an earlier attempt of this very segment.
            Some((Some(by), Some(at))) if by == import_id && *at == line.line as i64 => {
                outcome.imported += 1
            }
            Some((Some(by), Some(at))) if by == import_id => {
                outcome.rejected.push(used_again(&line, *at as u64));
            }
            Some(_) => outcome.already_present += 1,
            None if !customers.contains_key(&line.order.customer_id) => {
                outcome.rejected.push(RejectedLine {
                    line: line.line,
                    reason: format!(
                        "{}: no customer {} on the shard that owns it",
                        FailureType::UnknownCustomer,
                        line.order.customer_id
                    ),
                    order_ref: Some(line.order_ref),
                });
            }
            None => to_write.push(line),
        }
    }
    let ids = order_ids(&mut tx, &to_write).await?;
    let rows: Vec<(i64, &ImportLine)> = ids.into_iter().zip(&to_write).collect();
    let failed = batch::isolate_failures(&mut tx, &rows, rows.len().max(1), |conn, rows| {
        Box::pin(copy_orders(conn, rows, &customers, import_id))
    })
    .await?;
    tx.commit().await?;
    outcome.imported += (rows.len() - failed.len()) as u64;
    for failure in failed {
        let line = rows[failure.index].1;
        outcome.rejected.push(RejectedLine {
            line: line.line,
            order_ref: Some(line.order_ref.clone()),
            reason: format!("database: {}", failure.error),
        });
    }
    Ok(outcome)
}

/// The rejection of a line whose (customer, ref) an earlier line of the same import took.
fn used_again(line: &ImportLine, first: u64) -> RejectedLine {
    RejectedLine {
        line: line.line,
        order_ref: Some(line.order_ref.clone()),
        reason: format!(
            "{}: order_ref {:?} is used again for customer {} (first on line {first})",
            FailureType::InvalidOrder,
            line.order_ref,
            line.order.customer_id
        ),
    }
}

/// The customer's "first last" name and email, for the lines' customers found on this shard.
async fn customers_of(
    conn: &mut PgConnection,
    lines: &[ImportLine],
) -> Result<HashMap<i64, (String, String)>, sqlx::Error> {
    let ids: Vec<i64> = lines.iter().map(|l| l.order.customer_id).collect();
    let rows = sqlx::query(
        "SELECT id, btrim(first_name || ' ' || last_name) AS name, email
         FROM customers WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("id")?, (r.try_get("name")?, r.try_get("email")?))))
        .collect()
}

/// The lines' (customer, reference) pairs already on this shard, with the import and line
/// that wrote each.
async fn present_refs(
    conn: &mut PgConnection,
    lines: &[ImportLine],
) -> Result<HashMap<(i64, String), (Option<String>, Option<i64>)>, sqlx::Error> {
    let customers: Vec<i64> = lines.iter().map(|l| l.order.customer_id).collect();
    let refs: Vec<&str> = lines.iter().map(|l| l.order_ref.as_str()).collect();
    let rows = sqlx::query(
        "SELECT o.customer_id, o.order_ref, o.import_id, o.import_line
         FROM orders o
         JOIN unnest($1::bigint[], $2::text[]) AS wanted(customer_id, order_ref)
           ON o.customer_id = wanted.customer_id AND o.order_ref = wanted.order_ref",
    )
    .bind(customers)
    .bind(refs)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                (r.try_get("customer_id")?, r.try_get("order_ref")?),
                (r.try_get("import_id")?, r.try_get("import_line")?),
            ))
        })
        .collect()
}

/// A new order id per line, from this shard's sequence, carrying the customer's bucket.
async fn order_ids(conn: &mut PgConnection, lines: &[ImportLine]) -> Result<Vec<i64>, sqlx::Error> {
    let sequence: Vec<i64> =
        sqlx::query_scalar("SELECT nextval('order_id_seq') FROM generate_series(1, $1)")
            .bind(lines.len() as i64)
            .fetch_all(&mut *conn)
            .await?;
    Ok(sequence
        .into_iter()
        .zip(lines)
        .map(|(seq, line)| tagged_id(seq, bucket_of(line.order.customer_id)))
        .collect())
}

/// COPYs the orders, then their items. Imported orders are `confirmed`: they are history,
/// so they skip payment (no credit is reserved).
async fn copy_orders(
    conn: &mut PgConnection,
    rows: &[(i64, &ImportLine)],
    customers: &HashMap<i64, (String, String)>,
    import_id: &str,
) -> Result<(), sqlx::Error> {
    let mut orders = CopyText::new();
    let mut items = CopyText::new();
    for &(id, line) in rows {
        let order = &line.order;
        let (name, email) = &customers[&order.customer_id];
        orders
            .plain(id)
            .plain(order.customer_id)
            .plain("confirmed")
            .plain(order.total())
            .text(order.notes.as_deref())
            .text(Some(name))
            .text(Some(email))
            .text(Some(&line.order_ref))
            .text(Some(import_id))
            .plain(line.line)
            .end_row();
        for item in &order.items {
            items
                .plain(id)
                .plain(item.product_id)
                .plain(item.quantity)
                .plain(item.unit_price)
                .end_row();
        }
    }
    copy_in(
        conn,
        "COPY orders (id, customer_id, status, total_amount, notes, customer_name,
                      customer_email, order_ref, import_id, import_line) FROM STDIN",
        orders,
    )
    .await?;
    copy_in(
        conn,
        "COPY order_items (order_id, product_id, quantity, price) FROM STDIN",
        items,
    )
    .await?;
    Ok(())
}
