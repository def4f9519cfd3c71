//! A bucket's rows on one shard, as the bucket mover reads and writes them: the copy (COPY
//! between the two shards, a key range at a time), the catch-up (rows named by the change
//! log, re-read and written again) and the deletion of a bucket's rows; the comparisons are in
//! [`super::bucket_checks`].
//!
//! Every write here runs with `orders.bucket_mover = on`, which the guard trigger lets
//! through: the target's `incoming` fence and the old owner's `moved` fence refuse everyone
//! else. Statements name tables and columns from [`TABLES`] only; values are parameters (the
//! COPY's key range and bucket reach it through settings of its connection, since COPY takes
//! no parameters).

use futures::StreamExt;
use sea_orm::sqlx::{self, Connection, PgConnection, PgPool, Row};

use crate::routing::BUCKETS;

/// One table holding a bucket's rows.
#[derive(Debug)]
pub struct BucketTable {
    pub name: &'static str,
    /// The column the copy walks in order, and that a logged change names.
    pub key: &'static str,
    /// Its SQL type.
    pub key_type: &'static str,
    /// Whether the key names one row (else: a group of rows, rewritten together).
    pub unique_key: bool,
    /// The columns copied. `order_items.id` is not one of them: item ids are each shard's
    /// own, so items get new ones on the target, and rows are compared without them.
    pub columns: &'static [&'static str],
    /// Selects the rows of a set of buckets, parameter `$1` (bigint[]).
    pub in_bucket: &'static str,
    /// For a table whose rows reference another's: the condition, on a copied row `c`, that
    /// its parent is on the target already (see [`copy_chunk`]).
    pub parent_present: Option<&'static str>,
    /// For a table whose key names a group of rows: the column that, with the key, names
    /// one row, which a logged change may carry (`<key>:<row>`, see migration 17) so the
    /// catch-up rewrites that row and not the whole group.
    pub row_column: Option<&'static str>,
}

/// Every table with a bucket's rows, in the order a copy writes them (parents before the
/// rows that reference them); deletions go the other way.
pub const TABLES: [BucketTable; 7] = [
    BucketTable {
        name: "customers",
        key: "id",
        key_type: "bigint",
        unique_key: true,
        columns: &[
            "id",
            "email",
            "credit_limit",
            "credit_used",
            "created_at",
            "updated_at",
            "first_name",
            "last_name",
        ],
        in_bucket: "(id % 1024) = ANY($1::bigint[])",
        parent_present: None,
        row_column: None,
    },
    BucketTable {
        name: "orders",
        key: "id",
        key_type: "bigint",
        unique_key: true,
        columns: &[
            "id",
            "customer_id",
            "status",
            "total_amount",
            "created_at",
            "updated_at",
            "notes",
            "customer_name",
            "customer_email",
            "order_ref",
            "import_id",
            "import_line",
            "consistency",
        ],
        in_bucket: "(id % 1024) = ANY($1::bigint[])",
        parent_present: Some("EXISTS (SELECT 1 FROM customers p WHERE p.id = c.customer_id)"),
        row_column: None,
    },
    BucketTable {
        name: "order_items",
        key: "order_id",
        key_type: "bigint",
        unique_key: false,
        columns: &["order_id", "product_id", "quantity", "price"],
        in_bucket: "(order_id % 1024) = ANY($1::bigint[])",
        parent_present: Some("EXISTS (SELECT 1 FROM orders p WHERE p.id = c.order_id)"),
        row_column: None,
    },
    BucketTable {
        name: "credit_holds",
        key: "order_id",
        key_type: "bigint",
        unique_key: true,
        columns: &[
            "order_id",
            "customer_id",
            "amount",
            "status",
            "created_at",
            "updated_at",
        ],
        in_bucket: "(order_id % 1024) = ANY($1::bigint[])",
        parent_present: None,
        row_column: None,
    },
    BucketTable {
        name: "inventory",
        key: "product_id",
        key_type: "bigint",
        unique_key: true,
        columns: &[
            "product_id",
            "name",
            "on_hand",
            "reserved",
            "created_at",
            "updated_at",
        ],
        in_bucket: "(product_id % 1024) = ANY($1::bigint[])",
        parent_present: None,
        row_column: None,
    },
    BucketTable {
        name: "stock_holds",
        key: "product_id",
        key_type: "bigint",
        unique_key: false,
        columns: &[
            "product_id",
            "order_id",
            "quantity",
            "status",
            "created_at",
            "updated_at",
        ],
        in_bucket: "(product_id % 1024) = ANY($1::bigint[])",
        parent_present: Some(
            "EXISTS (SELECT 1 FROM inventory p WHERE p.product_id = c.product_id)",
        ),
        row_column: Some("order_id"),
    },
    BucketTable {
        name: "idempotency_keys",
        key: "key",
        key_type: "text",
        unique_key: true,
        columns: &["key", "result", "compensated", "created_at", "bucket"],
        in_bucket: "bucket = ANY($1::bigint[])",
        parent_present: None,
        row_column: None,
    },
];

impl BucketTable {
    /// The key as the mover orders and compares it: text in the `"C"` collation, so both
    /// shards of a move (whatever locale each was created with) walk chunk ranges and
    /// checksums in the same order, byte order, as Rust compares strings.
    pub(super) fn ordered_key(&self) -> String {
        if self.key_type == "text" {
            format!("{} COLLATE \"C\"", self.key)
        } else {
            self.key.to_owned()
        }
    }

    pub(super) fn column_list(&self) -> String {
        self.columns.join(", ")
    }

    /// `in_bucket` with the buckets read from the connection's `orders.copy_buckets`.
    fn in_bucket_setting(&self) -> String {
        self.in_bucket.replace(
            "$1::bigint[]",
            "CAST(current_setting('orders.copy_buckets') AS bigint[])",
        )
    }
}

/// `buckets` as the `$1` of [`BucketTable::in_bucket`].
pub(super) fn ids(buckets: &[u16]) -> Vec<i64> {
    buckets.iter().map(|&b| i64::from(b)).collect()
}

/// `buckets` as `bucket_changes.bucket` values.
fn small(buckets: &[u16]) -> Vec<i16> {
    buckets.iter().map(|&b| b as i16).collect()
}

/// The table named `name`, if it holds buckets' rows.
pub fn table(name: &str) -> Option<&'static BucketTable> {
    TABLES.iter().find(|t| t.name == name)
}

/// A statement built from [`TABLES`]' table and column names, which are constants: the
/// values it works on are bound parameters.
pub(super) fn from_tables(statement: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(statement)
}

/// Marks the transaction as the mover's: the guard trigger lets its writes through.
async fn as_mover(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config('orders.bucket_mover', 'on', true)")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// What one [`copy_chunk`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedChunk {
    /// The highest key copied: the next chunk starts after it.
    pub last_key: String,
    pub rows: u64,
}

/// Copies the next rows of `table` in `bucket` after key `after` (from the start if `None`),
/// about `limit` of them (a key's whole group when the key is not unique), from `source` to
/// `target` with COPY, streamed: no chunk is held in memory. The target's rows in the same
/// key range are replaced, so a chunk copied again after a crash is not doubled. `None`
/// when nothing is left.
pub async fn copy_chunk(
    source: &PgPool,
    target: &mut PgConnection,
    table: &BucketTable,
    buckets: &[u16],
    after: Option<&str>,
    limit: u32,
) -> Result<Option<CopiedChunk>, sqlx::Error> {
    let (key, key_type) = (table.ordered_key(), table.key_type);
    let upper: Option<String> = sqlx::query_scalar(from_tables(format!(
        "SELECT (max(k))::text FROM (
             SELECT {key} AS k FROM {name}
             WHERE {in_bucket} AND ($2::text IS NULL OR {key} > CAST($2::text AS {key_type}))
             ORDER BY {key} LIMIT $3
         ) chunk",
        name = table.name,
        in_bucket = table.in_bucket,
    )))
    .bind(ids(buckets))
    .bind(after)
    .bind(i64::from(limit))
    .fetch_one(source)
    .await?;
    let Some(upper) = upper else {
        return Ok(None);
    };
    // The COPY OUT runs on a connection of its own, closed afterwards: a connection reused
    // after streaming one (sqlx 0.9) got no rows back from its next statement here.
    let mut reader = source.acquire().await?.detach();
    sqlx::query(
        "SELECT set_config('orders.copy_buckets', $1, false),
                set_config('orders.copy_after', coalesce($2, ''), false),
                set_config('orders.copy_upper', $3, false)",
    )
    .bind(format!(
        "{{{}}}",
        buckets
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    ))
    .bind(after)
    .bind(&upper)
    .execute(&mut reader)
    .await?;
    let columns = table.column_list();
    let range = format!(
        "(nullif(current_setting('orders.copy_after'), '') IS NULL
              OR {key} > CAST(nullif(current_setting('orders.copy_after'), '') AS {key_type}))
         AND {key} <= CAST(current_setting('orders.copy_upper') AS {key_type})"
    );
    let copy_out = format!(
        "COPY (SELECT {columns} FROM {name} WHERE {in_bucket} AND {range} ORDER BY {key}) TO STDOUT",
        name = table.name,
        in_bucket = table.in_bucket_setting(),
    );

    let mut write = target.begin().await?;
    as_mover(&mut write).await?;
    sqlx::query(from_tables(format!(
        "DELETE FROM {name} WHERE {in_bucket}
             AND ($2::text IS NULL OR {key} > CAST($2::text AS {key_type}))
             AND {key} <= CAST($3::text AS {key_type})",
        name = table.name,
        in_bucket = table.in_bucket,
    )))
    .bind(ids(buckets))
    .bind(after)
    .bind(&upper)
    .execute(&mut *write)
    .await?;
    // A row whose parent is not on the target yet (an order placed after the orders were
    // copied, say) waits for the catch-up: its parent's insert and its own were both logged.
    // Such rows go through a staging table, the others straight in.
    let into = match table.parent_present {
        None => table.name.to_owned(),
        Some(_) => {
            sqlx::query(from_tables(format!(
                "CREATE TEMP TABLE bucket_copy ON COMMIT DROP AS SELECT {columns} FROM {name} WITH NO DATA",
                name = table.name,
            )))
            .execute(&mut *write)
            .await?;
            "bucket_copy".to_owned()
        }
    };
    let mut rows = {
        let mut sink = write
            .copy_in_raw(&format!("COPY {into} ({columns}) FROM STDIN"))
            .await?;
        let mut stream = reader.copy_out_raw(&copy_out).await?;
        while let Some(bytes) = stream.next().await {
            sink.send(bytes?).await?;
        }
        drop(stream);
        sink.finish().await?
    };
    if let Some(parent_present) = table.parent_present {
        rows = sqlx::query(from_tables(format!(
            "INSERT INTO {name} ({columns}) SELECT {columns} FROM bucket_copy c WHERE {parent_present}",
            name = table.name,
        )))
        .execute(&mut *write)
        .await?
        .rows_affected();
    }
    write.commit().await?;
    reader.close().await?;
    Ok(Some(CopiedChunk {
        last_key: upper,
        rows,
    }))
}

/// How many of `bucket`'s rows each table holds on this shard.
pub async fn count_rows(conn: &mut PgConnection, buckets: &[u16]) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    for table in &TABLES {
        let n: i64 = sqlx::query_scalar(from_tables(format!(
            "SELECT count(*) FROM {} WHERE {}",
            table.name, table.in_bucket
        )))
        .bind(ids(buckets))
        .fetch_one(&mut *conn)
        .await?;
        total += n as u64;
    }
    Ok(total)
}

/// What one [`catch_up`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CaughtUp {
    /// The newest change applied, for progress.
    pub last_change: i64,
    /// Changes read (a row changed twice counts twice).
    pub changes: u64,
    /// The keys it rewrote: what a check after it needs to compare.
    pub touched: Touched,
}

/// Keys a catch-up rewrote on the target, per table (indexed like [`TABLES`]): whole groups
/// by key, and single rows by (key, [`BucketTable::row_column`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touched {
    pub keys: Vec<Vec<String>>,
    pub rows: Vec<Vec<(i64, i64)>>,
}

impl Default for Touched {
    fn default() -> Self {
        Self {
            keys: vec![Vec::new(); TABLES.len()],
            rows: vec![Vec::new(); TABLES.len()],
        }
    }
}

impl Touched {
    /// Adds the row or group a change logged on `table` with `row_key` names.
    pub(super) fn add(&mut self, table: &str, row_key: String) -> Result<(), sqlx::Error> {
        let index = TABLES
            .iter()
            .position(|t| t.name == table)
            .ok_or_else(|| sqlx::Error::Protocol(format!("change to unknown table {table}")))?;
        match one_row(&TABLES[index], &row_key) {
            Some(row) => self.rows[index].push(row),
            None => self.keys[index].push(row_key),
        }
        Ok(())
    }

    /// Adds `other`'s keys, each once.
    pub fn extend(&mut self, other: Touched) {
        for (mine, theirs) in self.keys.iter_mut().zip(other.keys) {
            mine.extend(theirs);
            mine.sort_unstable();
            mine.dedup();
        }
        for (mine, theirs) in self.rows.iter_mut().zip(other.rows) {
            mine.extend(theirs);
            mine.sort_unstable();
            mine.dedup();
        }
    }

    /// Keys and rows, over every table.
    pub fn len(&self) -> usize {
        self.keys.iter().map(Vec::len).sum::<usize>()
            + self.rows.iter().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Applies to `target` up to `limit` of the changes logged on `source` for `buckets`: each
/// named row is read from `source` as it is now and written again on `target` (or deleted
/// there, if it is gone), in one transaction; then those changes leave the log.
///
/// The log is drained, not read past a cursor: a change's id is taken when it is written but
/// seen when its transaction commits, so a change committing late can have a lower id than
/// one already applied. Left in the log, it is applied by a later pass (the last one runs
/// frozen, once every writer has ended). Applying a change twice (a pass that dies before
/// deleting) writes the same rows again.
pub async fn catch_up(
    source: &mut PgConnection,
    target: &mut PgConnection,
    buckets: &[u16],
    limit: u32,
) -> Result<CaughtUp, sqlx::Error> {
    let changes = sqlx::query(
        "SELECT id, table_name, row_key FROM bucket_changes
         WHERE bucket = ANY($1) ORDER BY id LIMIT $2",
    )
    .bind(small(buckets))
    .bind(i64::from(limit))
    .fetch_all(&mut *source)
    .await?;
    if changes.is_empty() {
        return Ok(CaughtUp::default());
    }
    let applied: Vec<i64> = changes
        .iter()
        .map(|change| change.try_get("id"))
        .collect::<Result<_, _>>()?;
    let last_change = applied.iter().copied().max().unwrap_or_default();
    let mut named = Touched::default();
    for change in &changes {
        let table: String = change.try_get("table_name")?;
        named.add(&table, change.try_get("row_key")?)?;
    }
    let Touched {
        mut keys,
        rows: mut single,
    } = named;
    let mut single_rows = Vec::with_capacity(TABLES.len());
    for ((table, keys), single) in TABLES.iter().zip(&keys).zip(single.iter_mut()) {
        // A row whose whole group is rewritten needs no rewrite of its own.
        single.retain(|(key, _)| !keys.contains(&key.to_string()));
        single.sort_unstable();
        single.dedup();
        single_rows.push(match table.row_column {
            Some(row_column) if !single.is_empty() => {
                let (group, row): (Vec<i64>, Vec<i64>) = single.iter().copied().unzip();
                sqlx::query_scalar(from_tables(format!(
                    "SELECT coalesce(jsonb_agg(to_jsonb(t)), '[]'::jsonb) FROM {name} t
                     WHERE ({key}, {row_column}) IN (SELECT * FROM unnest($1::bigint[], $2::bigint[]))",
                    name = table.name,
                    key = table.key,
                )))
                .bind(group)
                .bind(row)
                .fetch_one(&mut *source)
                .await?
            }
            _ => serde_json::Value::Array(Vec::new()),
        });
    }
    let mut rows = Vec::with_capacity(TABLES.len());
    for (table, keys) in TABLES.iter().zip(keys.iter_mut()) {
        keys.sort();
        keys.dedup();
        if keys.is_empty() {
            rows.push(serde_json::Value::Array(Vec::new()));
            continue;
        }
        let current: serde_json::Value = sqlx::query_scalar(from_tables(format!(
            "SELECT coalesce(jsonb_agg(to_jsonb(t)), '[]'::jsonb) FROM {name} t
             WHERE {key} = ANY(CAST($1::text[] AS {key_type}[]))",
            name = table.name,
            key = table.key,
            key_type = table.key_type,
        )))
        .bind(&*keys)
        .fetch_one(&mut *source)
        .await?;
        rows.push(current);
    }

    let mut write = target.begin().await?;
    as_mover(&mut write).await?;
    // In table order, parents before the rows that reference them: a key's group, then the
    // single rows named.
    for (index, table) in TABLES.iter().enumerate() {
        write_group(&mut write, table, &keys[index], &rows[index]).await?;
        write_single(&mut write, table, &single[index], &single_rows[index]).await?;
    }
    // Rows gone from the source go from the target too, children before parents.
    for ((table, keys), rows) in TABLES.iter().zip(&keys).zip(&rows).rev() {
        if keys.is_empty() || !table.unique_key {
            continue;
        }
        let (name, key, key_type) = (table.name, table.key, table.key_type);
        sqlx::query(from_tables(format!(
            "DELETE FROM {name} t WHERE {key} = ANY(CAST($1::text[] AS {key_type}[]))
             AND NOT EXISTS (SELECT 1 FROM jsonb_populate_recordset(NULL::{name}, $2) s
                             WHERE s.{key} = t.{key})"
        )))
        .bind(keys)
        .bind(rows)
        .execute(&mut *write)
        .await?;
    }
    write.commit().await?;
    sqlx::query("DELETE FROM bucket_changes WHERE id = ANY($1)")
        .bind(&applied)
        .execute(&mut *source)
        .await?;
    Ok(CaughtUp {
        last_change,
        changes: changes.len() as u64,
        touched: Touched { keys, rows: single },
    })
}

/// Writes the rows of `keys` as the source has them (`rows`): upserted where the key names
/// one row, replaced as a group where it names several.
async fn write_group(
    write: &mut PgConnection,
    table: &BucketTable,
    keys: &[String],
    rows: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let columns = table.column_list();
    let (name, key, key_type) = (table.name, table.key, table.key_type);
    if table.unique_key {
        let others: Vec<&str> = table
            .columns
            .iter()
            .copied()
            .filter(|c| *c != key)
            .collect();
        let excluded: Vec<String> = others.iter().map(|c| format!("EXCLUDED.{c}")).collect();
        sqlx::query(from_tables(format!(
            "INSERT INTO {name} ({columns})
             SELECT {columns} FROM jsonb_populate_recordset(NULL::{name}, $1)
             ON CONFLICT ({key}) DO UPDATE SET ({others}) = ROW({excluded})",
            others = others.join(", "),
            excluded = excluded.join(", "),
        )))
        .bind(rows)
        .execute(&mut *write)
        .await?;
        return Ok(());
    }
    sqlx::query(from_tables(format!(
        "DELETE FROM {name} WHERE {key} = ANY(CAST($1::text[] AS {key_type}[]))"
    )))
    .bind(keys)
    .execute(&mut *write)
    .await?;
    insert_rows(write, table, rows).await
}

/// Replaces the single rows `single` ((key, row column) pairs) with the source's `rows`.
async fn write_single(
    write: &mut PgConnection,
    table: &BucketTable,
    single: &[(i64, i64)],
    rows: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    let Some(row_column) = table.row_column.filter(|_| !single.is_empty()) else {
        return Ok(());
    };
    let (group, row): (Vec<i64>, Vec<i64>) = single.iter().copied().unzip();
    let (name, key) = (table.name, table.key);
    sqlx::query(from_tables(format!(
        "DELETE FROM {name}
         WHERE ({key}, {row_column}) IN (SELECT * FROM unnest($1::bigint[], $2::bigint[]))"
    )))
    .bind(group)
    .bind(row)
    .execute(&mut *write)
    .await?;
    insert_rows(write, table, rows).await
}

/// Inserts `rows` (a JSON array of `table`'s rows, as the source's `to_jsonb` gave them).
async fn insert_rows(
    write: &mut PgConnection,
    table: &BucketTable,
    rows: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    let (name, columns) = (table.name, table.column_list());
    sqlx::query(from_tables(format!(
        "INSERT INTO {name} ({columns})
         SELECT {columns} FROM jsonb_populate_recordset(NULL::{name}, $1)"
    )))
    .bind(rows)
    .execute(&mut *write)
    .await?;
    Ok(())
}

/// The one row a logged change names, as (key, row column), when its table has a
/// [`BucketTable::row_column`] and the change carries it; `None` for a change naming a key's
/// whole group (every other table, and changes logged before migration 17).
fn one_row(table: &BucketTable, logged: &str) -> Option<(i64, i64)> {
    table.row_column?;
    let (key, row) = logged.split_once(':')?;
    Some((key.parse().ok()?, row.parse().ok()?))
}

/// Deletes `bucket`'s rows from this shard, `chunk` rows per transaction, children before
/// parents, and its change log. Returns the rows deleted.
pub async fn delete_bucket(
    conn: &mut PgConnection,
    buckets: &[u16],
    chunk: u32,
) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    for table in TABLES.iter().rev() {
        loop {
            let mut txn = conn.begin().await?;
            as_mover(&mut txn).await?;
            let n = sqlx::query(from_tables(format!(
                "DELETE FROM {name} WHERE ctid = ANY(ARRAY(
                     SELECT ctid FROM {name} WHERE {in_bucket} LIMIT $2))",
                name = table.name,
                in_bucket = table.in_bucket,
            )))
            .bind(ids(buckets))
            .bind(i64::from(chunk))
            .execute(&mut *txn)
            .await?
            .rows_affected();
            txn.commit().await?;
            deleted += n;
            if n == 0 {
                break;
            }
        }
    }
    drop_change_log(conn, buckets).await?;
    Ok(deleted)
}

/// Deletes `buckets`' rows of every table after `TABLES[table]` on this shard (children
/// before parents), in one transaction; for a copy resuming at `table`, which copies those
/// tables again from their start. Returns the rows deleted.
pub async fn delete_tables_after(
    conn: &mut PgConnection,
    buckets: &[u16],
    table: usize,
) -> Result<u64, sqlx::Error> {
    let mut txn = conn.begin().await?;
    as_mover(&mut txn).await?;
    let mut deleted = 0;
    for later in TABLES.iter().skip(table + 1).rev() {
        deleted += sqlx::query(from_tables(format!(
            "DELETE FROM {name} WHERE {in_bucket}",
            name = later.name,
            in_bucket = later.in_bucket,
        )))
        .bind(ids(buckets))
        .execute(&mut *txn)
        .await?
        .rows_affected();
    }
    txn.commit().await?;
    Ok(deleted)
}

/// Deletes the change log of `buckets` on this shard.
pub async fn drop_change_log(conn: &mut PgConnection, buckets: &[u16]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM bucket_changes WHERE bucket = ANY($1)")
        .bind(small(buckets))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// For the `verify_bucket.corrupt_target` failpoint: changes one customer of `bucket` on
/// this shard, as a broken copy would, so tests can watch verification catch it.
pub async fn corrupt_one_customer(conn: &mut PgConnection, bucket: u16) -> Result<(), sqlx::Error> {
    let mut txn = conn.begin().await?;
    as_mover(&mut txn).await?;
    sqlx::query(
        "UPDATE customers SET email = 'corrupted-' || email
         WHERE id = (SELECT min(id) FROM customers WHERE (id % 1024) = $1::bigint)",
    )
    .bind(i64::from(bucket))
    .execute(&mut *txn)
    .await?;
    txn.commit().await
}

const _: () = assert!(
    BUCKETS == 1024,
    "the SQL above and the guard trigger say 1024"
);
