//! Bulk-write benchmark: prints figures, asserts nothing. Run with
//! `cargo bench --workspace --bench import` (see docs/benchmarks.md).
//!
//! In one run, on throwaway PostgreSQL clusters (fsync off) and a Temporal dev server:
//! - item rows/s into one shard: one INSERT per row, multi-row INSERT, INSERT … SELECT
//!   unnest, COPY through the store, and `psql \copy` of the same rows;
//! - orders/s of the whole `orders import` path (file → workflow → COPY) against
//!   `psql \copy` of the same orders and items, on one shard and on four;
//! - the worker's peak memory importing 100k and 1M lines.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orders_core::store::batch::{self, NewItem};
use orders_core::store::listing;
use orders_dev::TemporalDevServer;
use orders_worker::cli::shards::synthetic;
use rust_decimal::Decimal;

mod common;

/// Item rows per store-method measurement (one-by-one uses a tenth).
const ITEM_ROWS: usize = 50_000;
const IMPORT_LINES: usize = 100_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let clusters = common::Clusters::start("import-bench", 4)?;
    let orders_bin = common::build_release_orders()?;
    let temporal = clusters.temporal()?;

    println!("\nbulk write benchmark (release build, fsync off)");
    store_methods(&clusters).await?;
    let one = import_path(&clusters, &temporal, &orders_bin, 1, IMPORT_LINES).await?;
    let four = import_path(&clusters, &temporal, &orders_bin, 4, IMPORT_LINES).await?;
    println!(
        "  → import on 4 shards / import on 1 shard: {:.2}×",
        four.orders_per_sec / one.orders_per_sec
    );
    let big = import_path(&clusters, &temporal, &orders_bin, 1, 1_000_000).await?;
    println!(
        "  → worker peak memory: {:.1} MiB at 100k lines, {:.1} MiB at 1M lines",
        one.worker_peak_kib as f64 / 1024.0,
        big.worker_peak_kib as f64 / 1024.0
    );
    drop(temporal);
    Ok(())
}

fn rate(label: &str, rows: usize, elapsed: Duration) -> f64 {
    let per_sec = rows as f64 / elapsed.as_secs_f64();
    println!("{label:<58} {rows:>9} rows {per_sec:>12.0} rows/s");
    per_sec
}

/// Item rows into one shard, each method into its own fresh orders.
async fn store_methods(clusters: &common::Clusters) -> anyhow::Result<()> {
    let (urls, shards) = clusters.deployment("items", 1).await?;
    synthetic::fill(
        &shards,
        synthetic::Volume {
            customers_per_shard: 100,
            orders_per_shard: (ITEM_ROWS * 4 + ITEM_ROWS / 10) as u32,
        },
    )
    .await?;
    let conn = &shards.get(0).conn;
    let order_ids: Vec<i64> = listing::newest(
        conn,
        &listing::Served::by(&shards.map(), 0),
        None,
        (ITEM_ROWS * 4 + ITEM_ROWS / 10) as u64,
    )
    .await?
    .iter()
    .map(|o| o.id)
    .collect();
    let items = |ids: &[i64]| -> Vec<NewItem> {
        ids.iter()
            .map(|&order_id| NewItem {
                order_id,
                product_id: 99,
                quantity: 3,
                price: Decimal::new(1250, 2),
            })
            .collect()
    };
    let (few, rest) = order_ids.split_at(ITEM_ROWS / 10);
    let mut sets = rest.chunks(ITEM_ROWS);
    let pool = conn.get_postgres_connection_pool();

    let rows = items(few);
    let started = Instant::now();
    batch::insert_items_one_by_one(conn, &rows).await?;
    let one_by_one = rate("items: one INSERT per row", rows.len(), started.elapsed());

    let rows = items(sets.next().unwrap());
    let mut c = pool.acquire().await?;
    let started = Instant::now();
    batch::insert_items_multirow(&mut c, &rows, 1000).await?;
    rate(
        "items: multi-row INSERT, 1000 rows per statement",
        rows.len(),
        started.elapsed(),
    );

    let rows = items(sets.next().unwrap());
    let started = Instant::now();
    batch::insert_items_unnest(conn, &rows).await?;
    rate(
        "items: INSERT … SELECT unnest (one statement)",
        rows.len(),
        started.elapsed(),
    );

    let rows = items(sets.next().unwrap());
    let started = Instant::now();
    batch::copy_items(&mut c, &rows).await?;
    let copy = rate(
        "items: COPY through the store",
        rows.len(),
        started.elapsed(),
    );

    let ids = sets.next().unwrap();
    let tsv = clusters.root.join("items.tsv");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&tsv)?);
    for id in ids {
        writeln!(file, "{id}\t99\t3\t12.50")?;
    }
    file.flush()?;
    drop(file);
    let elapsed = psql_copy(
        &urls[0],
        &[("order_items (order_id, product_id, quantity, price)", &tsv)],
    )?;
    let psql = rate(
        "items: psql \\copy (physical reference)",
        ids.len(),
        elapsed,
    );
    println!(
        "  → COPY through the store / psql \\copy: {:.2}×; / one INSERT per row: {:.0}×",
        copy / psql,
        copy / one_by_one
    );
    Ok(())
}

/// Runs `psql -c '\copy TABLE FROM FILE'` for each pair in one session; returns the time.
fn psql_copy(url: &str, loads: &[(&str, &Path)]) -> anyhow::Result<Duration> {
    let mut command = Command::new("psql");
    command.arg(url).args(["-q", "-v", "ON_ERROR_STOP=1"]);
    for (table, file) in loads {
        command
            .arg("-c")
            .arg(format!("\\copy {table} FROM '{}'", file.display()));
    }
    let started = Instant::now();
    let output = command.output()?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        output.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(elapsed)
}

struct ImportRun {
    orders_per_sec: f64,
    worker_peak_kib: u64,
}

/// Imports `lines` orders (one item each) into a fresh deployment of `shard_count` shards
/// through a release worker, and, on one shard, loads the same rows with psql for reference.
async fn import_path(
    clusters: &common::Clusters,
    temporal: &TemporalDevServer,
    orders_bin: &Path,
    shard_count: usize,
    lines: usize,
) -> anyhow::Result<ImportRun> {
    let database = format!("import_{shard_count}_{lines}");
    let (urls, shards) = clusters.deployment(&database, shard_count).await?;
    synthetic::fill(
        &shards,
        synthetic::Volume {
            customers_per_shard: 250,
            orders_per_shard: 0,
        },
    )
    .await?;
    let customers: Vec<(i64, String, String)> = {
        let mut all = Vec::new();
        for shard in shards.iter() {
            for row in sea_orm::ConnectionTrait::query_all_raw(
                &shard.conn,
                sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    "SELECT id, btrim(first_name || ' ' || last_name) AS name, email FROM customers ORDER BY id",
                ),
            )
            .await?
            {
                all.push((row.try_get("", "id")?, row.try_get("", "name")?, row.try_get("", "email")?));
            }
        }
        all
    };
    let file = clusters.root.join(format!("{database}.jsonl"));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file)?);
    for i in 0..lines {
        let (customer, _, _) = &customers[i % customers.len()];
        writeln!(
            out,
            r#"{{"order_ref":"B-{i}","customer_id":{customer},"items":[{{"product_id":{},"quantity":2,"unit_price":"9.95"}}]}}"#,
            1 + i % 500
        )?;
    }
    out.flush()?;
    drop(out);

    let task_queue = format!("bench-{database}");
    // The worker reads imports only from the directory it is given: the one the file is in.
    let import_dir = clusters.root.to_str().expect("a UTF-8 path").to_owned();
    let mut worker = common::start_worker_with(
        orders_bin,
        &temporal.address(),
        &task_queue,
        &urls,
        &[("ORDERS_IMPORT_DIR", &import_dir)],
    )?;
    let worker_pid = worker.pid();
    let mut import = Command::new(orders_bin);
    import
        .args(["import", file.to_str().unwrap(), "--json"])
        .stdout(Stdio::null());
    common::deployment_env(&mut import, &temporal.address(), &task_queue, &urls);
    let started = Instant::now();
    let status = import.status()?;
    let elapsed = started.elapsed();
    anyhow::ensure!(status.success(), "orders import failed");
    let worker_peak_kib = peak_memory_kib(worker_pid)?;
    worker.stop(Duration::from_secs(10));
    let orders_per_sec = rate(
        &format!("orders import: {lines} lines, {shard_count} shard(s), orders/s"),
        lines,
        elapsed,
    );

    if shard_count == 1 && lines == IMPORT_LINES {
        // The same orders and items, loaded by psql into an identical empty deployment.
        let (reference, _) = clusters.deployment("psql_reference", 1).await?;
        copy_customers(&urls[0], &reference[0])?;
        let orders_tsv = clusters.root.join("orders.tsv");
        let items_tsv = clusters.root.join("order_items.tsv");
        let mut orders_out = std::io::BufWriter::new(std::fs::File::create(&orders_tsv)?);
        let mut items_out = std::io::BufWriter::new(std::fs::File::create(&items_tsv)?);
        for i in 0..lines {
            let (customer, name, email) = &customers[i % customers.len()];
            let id = (i as i64 + 1) * 1024 + customer % 1024;
            writeln!(
                orders_out,
                "{id}\t{customer}\tconfirmed\t19.90\t\\N\t{name}\t{email}\tB-{i}\tpsql"
            )?;
            writeln!(items_out, "{id}\t{}\t2\t9.95", 1 + i % 500)?;
        }
        orders_out.flush()?;
        items_out.flush()?;
        drop((orders_out, items_out));
        let elapsed = psql_copy(
            &reference[0],
            &[
                (
                    "orders (id, customer_id, status, total_amount, notes, customer_name, customer_email, order_ref, import_id)",
                    &orders_tsv,
                ),
                (
                    "order_items (order_id, product_id, quantity, price)",
                    &items_tsv,
                ),
            ],
        )?;
        let psql = rate(
            "psql \\copy of the same orders and items, 1 shard",
            lines,
            elapsed,
        );
        println!(
            "  → orders import / psql \\copy on one shard: {:.2}× (target ≥ 0.8)",
            orders_per_sec / psql
        );
    }
    Ok(ImportRun {
        orders_per_sec,
        worker_peak_kib,
    })
}

/// Copies the customers table from one database to another with psql (the orders' foreign
/// key needs them).
fn copy_customers(from: &str, to: &str) -> anyhow::Result<()> {
    let dump = Command::new("psql")
        .arg(from)
        .args(["-q", "-c", "\\copy customers TO STDOUT"])
        .output()?;
    anyhow::ensure!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let mut load = Command::new("psql")
        .arg(to)
        .args([
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "\\copy customers FROM STDIN",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    load.stdin.take().unwrap().write_all(&dump.stdout)?;
    let output = load.wait_with_output()?;
    anyhow::ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The process's peak resident memory (VmHWM), in KiB.
fn peak_memory_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM for pid {pid}"))
}
