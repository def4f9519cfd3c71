//! Whether a bucket's rows are the same on two shards, for the bucket mover: checksums of
//! every table in one snapshot (the check made before the write pause, on a source still
//! taking writes), the first key that differs, and the comparison of only the keys a
//! catch-up rewrote (the check made during the pause, whose cost follows the writes of the
//! last seconds, not the bucket's size).
//!
//! Rows are compared as text in the `"C"` collation with timestamps in UTC, so equal rows
//! print the same on shards whatever their locale and settings.

use sea_orm::sqlx::{self, Connection, PgConnection, Row};

use super::bucket_rows::{BucketTable, TABLES, Touched, from_tables, ids};

/// Starts a read of a bucket whose rows print the same on every shard: timestamps in UTC
/// and ISO style, whatever each server's defaults, so equal rows never differ as text.
async fn begin_comparable(
    conn: &mut PgConnection,
) -> Result<sqlx::Transaction<'_, sqlx::Postgres>, sqlx::Error> {
    let mut read = conn
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    sqlx::query(
        "SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, YMD', true),
                set_config('IntervalStyle', 'postgres', true)",
    )
    .execute(&mut *read)
    .await?;
    Ok(read)
}

/// A table's rows in a bucket, summarised: how many, and the MD5 of their text in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableChecksum {
    pub rows: i64,
    pub md5: String,
}

/// Every table's [`TableChecksum`] of `buckets` on a source still taking writes, in
/// [`TABLES`] order, read in one snapshot, leaving out the rows its change log names (a
/// catch-up has yet to apply them, or has not yet struck them off): those are what the
/// check during the pause compares. Returns them too, for [`target_checksums`].
pub async fn source_checksums(
    conn: &mut PgConnection,
    buckets: &[u16],
) -> Result<(Vec<TableChecksum>, Touched), sqlx::Error> {
    let mut read = begin_comparable(conn).await?;
    let logged =
        sqlx::query("SELECT table_name, row_key FROM bucket_changes WHERE bucket = ANY($1)")
            .bind(buckets.iter().map(|&b| b as i16).collect::<Vec<_>>())
            .fetch_all(&mut *read)
            .await?;
    let mut pending = Touched::default();
    for change in &logged {
        let table: String = change.try_get("table_name")?;
        pending.add(&table, change.try_get("row_key")?)?;
    }
    let sums = checksums_in(&mut read, buckets, &pending).await?;
    read.commit().await?;
    Ok((sums, pending))
}

/// [`source_checksums`] on the target, leaving out the same rows (`pending`).
pub async fn target_checksums(
    conn: &mut PgConnection,
    buckets: &[u16],
    pending: &Touched,
) -> Result<Vec<TableChecksum>, sqlx::Error> {
    let mut read = begin_comparable(conn).await?;
    let sums = checksums_in(&mut read, buckets, pending).await?;
    read.commit().await?;
    Ok(sums)
}

async fn checksums_in(
    read: &mut PgConnection,
    buckets: &[u16],
    leaving_out: &Touched,
) -> Result<Vec<TableChecksum>, sqlx::Error> {
    let mut all = Vec::with_capacity(TABLES.len());
    for (index, table) in TABLES.iter().enumerate() {
        all.push(
            checksum_in(
                read,
                table,
                buckets,
                &leaving_out.keys[index],
                &leaving_out.rows[index],
            )
            .await?,
        );
    }
    Ok(all)
}

/// [`TableChecksum`] of `table` in `buckets`, without the groups `keys` and the rows `rows`.
async fn checksum_in(
    read: &mut PgConnection,
    table: &BucketTable,
    buckets: &[u16],
    keys: &[String],
    rows: &[(i64, i64)],
) -> Result<TableChecksum, sqlx::Error> {
    let (name, key) = (table.name, table.key);
    let rows_left_out = match table.row_column {
        Some(row_column) => format!(
            "AND ({key}, {row_column}) NOT IN (SELECT * FROM unnest($3::bigint[], $4::bigint[]))"
        ),
        None => String::new(),
    };
    let (group, row): (Vec<i64>, Vec<i64>) = rows.iter().copied().unzip();
    let sum = sqlx::query(from_tables(format!(
        "SELECT count(*) AS rows,
                md5(coalesce(string_agg(r, E'\\n' ORDER BY k, r COLLATE \"C\"), '')) AS md5
         FROM (SELECT {ordered} AS k, ROW({columns})::text AS r FROM {name}
               WHERE {in_bucket} AND NOT ({key}::text = ANY($2::text[])) {rows_left_out}) s",
        ordered = table.ordered_key(),
        columns = table.column_list(),
        in_bucket = table.in_bucket,
    )))
    .bind(ids(buckets))
    .bind(keys)
    .bind(group)
    .bind(row)
    .fetch_one(&mut *read)
    .await?;
    Ok(TableChecksum {
        rows: sum.try_get("rows")?,
        md5: sum.try_get("md5")?,
    })
}

/// Keys compared per page by [`first_difference`].
const DIFF_PAGE: i64 = 1_000;

/// The first key (in key order) whose rows differ between `a` and `b`, including a key
/// present on one side only, leaving out `pending` (keys whose change is still logged);
/// `None` if the bucket's other rows of `table` are equal.
pub async fn first_difference(
    a: &mut PgConnection,
    b: &mut PgConnection,
    table: &BucketTable,
    buckets: &[u16],
    pending: &[String],
) -> Result<Option<String>, sqlx::Error> {
    let mut after: Option<String> = None;
    loop {
        let page_a = key_digests(a, table, buckets, after.as_deref()).await?;
        let page_b = key_digests(b, table, buckets, after.as_deref()).await?;
        let settled = |page: &[(String, String)]| -> Vec<(String, String)> {
            page.iter()
                .filter(|(key, _)| !pending.contains(key))
                .cloned()
                .collect()
        };
        let (left, right) = (settled(&page_a), settled(&page_b));
        for i in 0..left.len().max(right.len()) {
            match (left.get(i), right.get(i)) {
                (Some(l), Some(r)) if l == r => {}
                (Some(l), Some(r)) => return Ok(Some(l.0.clone().min(r.0.clone()))),
                (Some(only), None) | (None, Some(only)) => return Ok(Some(only.0.clone())),
                (None, None) => unreachable!("i is below the longer length"),
            }
        }
        if (page_a.len() as i64) < DIFF_PAGE {
            return Ok(None);
        }
        after = page_a.last().map(|(k, _)| k.clone());
    }
}

/// (key as text, MD5 of its rows) for the next page of keys after `after`, in key order.
async fn key_digests(
    conn: &mut PgConnection,
    table: &BucketTable,
    buckets: &[u16],
    after: Option<&str>,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let mut read = begin_comparable(conn).await?;
    let rows = sqlx::query(from_tables(format!(
        "SELECT {key}::text AS k, md5(string_agg(ROW({columns})::text, E'\\n'
                                                 ORDER BY ROW({columns})::text COLLATE \"C\")) AS d
         FROM {name}
         WHERE {in_bucket} AND ($2::text IS NULL OR {key} > CAST($2::text AS {key_type}))
         GROUP BY {key} ORDER BY {key} LIMIT $3",
        key = table.ordered_key(),
        key_type = table.key_type,
        columns = table.column_list(),
        name = table.name,
        in_bucket = table.in_bucket,
    )))
    .bind(ids(buckets))
    .bind(after)
    .bind(DIFF_PAGE)
    .fetch_all(&mut *read)
    .await?;
    read.commit().await?;
    rows.iter()
        .map(|r| Ok((r.try_get("k")?, r.try_get("d")?)))
        .collect()
}

/// The first key among `touched` whose rows differ between `a` and `b`, with its table's
/// name; `None` when they are equal. A single row is named `<key>:<row>`.
pub async fn touched_difference(
    a: &mut PgConnection,
    b: &mut PgConnection,
    touched: &Touched,
) -> Result<Option<(&'static str, String)>, sqlx::Error> {
    for (index, table) in TABLES.iter().enumerate() {
        let (keys, rows) = (&touched.keys[index], &touched.rows[index]);
        if keys.is_empty() && rows.is_empty() {
            continue;
        }
        let left = touched_digests(a, table, keys, rows).await?;
        let right = touched_digests(b, table, keys, rows).await?;
        if left != right {
            let differs = |side: &[(String, String)], other: &[(String, String)]| {
                side.iter()
                    .find(|entry| !other.contains(entry))
                    .map(|(key, _)| key.clone())
            };
            let first = [differs(&left, &right), differs(&right, &left)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_default();
            return Ok(Some((table.name, first)));
        }
    }
    Ok(None)
}

/// (key, MD5 of its rows) for each of `keys` and `rows` present on this shard, in byte order.
async fn touched_digests(
    conn: &mut PgConnection,
    table: &BucketTable,
    keys: &[String],
    rows: &[(i64, i64)],
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let (name, key, key_type, columns) =
        (table.name, table.key, table.key_type, table.column_list());
    let mut parts = vec![format!(
        "SELECT {key}::text AS k, ROW({columns})::text AS r FROM {name}
         WHERE {key} = ANY(CAST($1::text[] AS {key_type}[]))"
    )];
    if let Some(row_column) = table.row_column {
        parts.push(format!(
            "SELECT {key}::text || ':' || {row_column}::text, ROW({columns})::text FROM {name}
             WHERE ({key}, {row_column}) IN (SELECT * FROM unnest($2::bigint[], $3::bigint[]))"
        ));
    }
    let (group, row): (Vec<i64>, Vec<i64>) = rows.iter().copied().unzip();
    let mut read = begin_comparable(conn).await?;
    let digests = sqlx::query(from_tables(format!(
        "SELECT k, md5(string_agg(r, E'\\n' ORDER BY r COLLATE \"C\")) AS d
         FROM ({}) s GROUP BY k ORDER BY k COLLATE \"C\"",
        parts.join(" UNION ALL ")
    )))
    .bind(keys)
    .bind(group)
    .bind(row)
    .fetch_all(&mut *read)
    .await?;
    read.commit().await?;
    digests
        .iter()
        .map(|r| Ok((r.try_get("k")?, r.try_get("d")?)))
        .collect()
}
