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

use sea_orm::sqlx::{self, PgPool};

use super::RejectedLine;
use super::file::ImportLine;
use orders_core::failure::FailureType;
use orders_core::store::batch;
use orders_core::store::imports::{self, ImportedOrder, Provenance};

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
    imports::lock_chunk(&mut tx, import_id, lock).await?;
    let customer_ids: Vec<i64> = lines.iter().map(|l| l.order.customer_id).collect();
    let contacts = imports::contacts(&mut tx, &customer_ids).await?;
    let keys: Vec<(i64, &str)> = lines
        .iter()
        .map(|l| (l.order.customer_id, l.order_ref.as_str()))
        .collect();
    let present = imports::present_refs(&mut tx, &keys).await?;
    let mut to_write = Vec::with_capacity(lines.len());
    for line in lines {
        let key = (line.order.customer_id, line.order_ref.clone());
        match present.get(&key) {
            // Written by an earlier attempt of this very segment.
            Some(Provenance {
                import_id: Some(by),
                line: Some(at),
            }) if by == import_id && *at == line.line as i64 => outcome.imported += 1,
            Some(Provenance {
                import_id: Some(by),
                line: Some(at),
            }) if by == import_id => {
                outcome.rejected.push(used_again(&line, *at as u64));
            }
            Some(_) => outcome.already_present += 1,
            None if !contacts.contains_key(&line.order.customer_id) => {
                outcome.rejected.push(RejectedLine {
                    line: line.line,
                    reason: format!(
                        "{}: no such customer on the shard that owns customer_id",
                        FailureType::UnknownCustomer
                    ),
                    order_ref: Some(line.order_ref),
                });
            }
            None => to_write.push(line),
        }
    }
    let owners: Vec<i64> = to_write.iter().map(|l| l.order.customer_id).collect();
    let ids = imports::order_ids(&mut tx, &owners).await?;
    let rows: Vec<ImportedOrder> = ids
        .into_iter()
        .zip(&to_write)
        .map(|(id, line)| ImportedOrder {
            id,
            order: &line.order,
            contact: &contacts[&line.order.customer_id],
            order_ref: &line.order_ref,
            line: line.line,
        })
        .collect();
    let failed = batch::isolate_failures(&mut tx, &rows, rows.len().max(1), |conn, rows| {
        Box::pin(imports::copy_orders(conn, rows, import_id))
    })
    .await?;
    tx.commit().await?;
    outcome.imported += (rows.len() - failed.len()) as u64;
    for failure in failed {
        let row = &rows[failure.index];
        outcome.rejected.push(RejectedLine {
            line: row.line,
            order_ref: Some(row.order_ref.to_owned()),
            reason: format!("database: {}", without_values(&failure.error)),
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
            "{}: order_ref is used again for the same customer (first on line {first})",
            FailureType::InvalidOrder,
        ),
    }
}

/// The database's reason for refusing a row, without the row's values: PostgreSQL's detail
/// quotes them (`Key (customer_id, order_ref)=(…) already exists`, `Failing row contains
/// (…)`), and so do data errors after a colon (`invalid input syntax for type …: "…"`). What
/// is left names the rule: the constraint, or the kind of data error.
fn without_values(error: &str) -> &str {
    let primary = error.split(" (Key (").next().unwrap_or(error);
    let primary = primary
        .split(" (Failing row contains")
        .next()
        .unwrap_or(primary);
    primary.split(": ").next().unwrap_or(primary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_refusal_keeps_the_rule_and_drops_the_values() {
        for (error, rule) in [
            (
                "duplicate key value violates unique constraint \"orders_customer_ref\" (Key (customer_id, order_ref)=(7, SECRET) already exists.)",
                "duplicate key value violates unique constraint \"orders_customer_ref\"",
            ),
            (
                "new row for relation \"order_items\" violates check constraint \"quantity_positive\" (Failing row contains (1, SECRET).)",
                "new row for relation \"order_items\" violates check constraint \"quantity_positive\"",
            ),
            (
                "invalid input syntax for type numeric: \"SECRET\"",
                "invalid input syntax for type numeric",
            ),
        ] {
            assert_eq!(without_values(error), rule);
        }
    }
}
