//! Growing a deployment from four shards to five while orders flow (`cargo bench -p
//! orders-tests --bench reshard`): five PostgreSQL clusters (fsync off), a Temporal dev
//! server, a release worker, `orders fill` of `RESHARD_ORDERS_PER_SHARD` orders per shard
//! (100 000 by default), then `orders reshard --to 5` (204 buckets) under `orders load`.
//!
//! Printed, each against a baseline measured in the same run:
//! - the mover's copy rate (rows copied over the time spent copying) against psql `\copy`
//!   of the same rows between the same clusters, into a migrated database beside the target;
//! - the write pause per move (its buckets' freeze to their opening on the target), p50 /
//!   p99 / max;
//! - `orders load` orders/s during the move against before it;
//! - the time to move the 204 buckets, and the worker's peak RSS (VmHWM) after a load alone
//!   and after the move under load; then a drain back to 4 shards with no load, sampling the
//!   worker's resident set throughout (the mover alone: it must stay flat).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orders_core::shard_map::ShardMap;
use orders_core::store::bucket_rows::TABLES;

/// Orders per load batch, and how many at a time.
const LOAD_BATCH: u64 = 150;
const IN_FLIGHT: usize = 16;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let per_shard: u32 = std::env::var("RESHARD_ORDERS_PER_SHARD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    println!(
        "\nreshard benchmark: 4 → 5 shards, {per_shard} orders per shard (release worker; 2 cores shared by all)"
    );
    let clusters = common::Clusters::start("reshard", 5)?;
    let orders_bin = common::build_release_orders()?;
    let temporal = clusters.temporal()?;
    let address = temporal.address();
    let task_queue = "bench-reshard";

    let (mut urls, _) = clusters.deployment("reshard", 4).await?;
    let started = Instant::now();
    run(
        &orders_bin,
        &address,
        task_queue,
        &urls,
        &[
            "fill",
            "--orders-per-shard",
            &per_shard.to_string(),
            "--customers-per-shard",
            &(per_shard / 10).max(10).to_string(),
        ],
    )?;
    println!("  filled in {:.0} s", started.elapsed().as_secs_f64());
    // The fifth shard the documented way (docs/operations.md): a database, its URL appended, `orders migrate up`.
    clusters.clusters[4].create_database("reshard").await?;
    urls.push(clusters.clusters[4].url("reshard"));
    run(&orders_bin, &address, task_queue, &urls, &["migrate", "up"])?;

    let moved = ShardMap::initial(4).moved_buckets(&ShardMap::initial(4).grown_to(5));
    let (baseline_rows, baseline_secs) = psql_copy(&clusters, &urls, &moved).await?;

    let mut worker = start_worker(&orders_bin, &address, task_queue, &urls)?;
    // As many orders as the move lasts (about), so the worker's memory for orders alone is
    // known before the mover runs.
    let before = load_for(&orders_bin, &address, task_queue, &urls, 8, None).await?;
    let rss_before = peak_rss_kib(worker.pid());

    let moving = Instant::now();
    let mut running = reshard_to(&orders_bin, &address, task_queue, &urls, 5).spawn()?;
    let during = load_for(
        &orders_bin,
        &address,
        task_queue,
        &urls,
        usize::MAX,
        Some(&mut running),
    )
    .await?;
    let output = tokio::task::spawn_blocking(move || running.wait_with_output()).await??;
    let move_secs = moving.elapsed().as_secs_f64();
    anyhow::ensure!(output.status.success(), "orders reshard --to 5 failed");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let rss_after = peak_rss_kib(worker.pid());
    run(
        &orders_bin,
        &address,
        task_queue,
        &urls,
        &["audit", "--grace", "0"],
    )?;
    // The mover alone: the fifth shard drained back with no load, the worker's resident set
    // sampled throughout. A mover holding a bucket (or a move) in memory would grow it.
    let rss_idle = rss_kib(worker.pid());
    let draining = Instant::now();
    let mut running = reshard_to(&orders_bin, &address, task_queue, &urls, 4).spawn()?;
    let mut rss_draining = rss_idle;
    while running.try_wait()?.is_none() {
        rss_draining = rss_draining.max(rss_kib(worker.pid()));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drain_secs = draining.elapsed().as_secs_f64();
    let drained = running.wait_with_output()?;
    anyhow::ensure!(drained.status.success(), "orders reshard --to 4 failed");
    let drained: serde_json::Value = serde_json::from_slice(&drained.stdout)?;
    worker.stop(Duration::from_secs(10));

    let rows = report["rows_copied"].as_f64().unwrap_or_default();
    let copy_secs = report["copy_ms"].as_f64().unwrap_or_default() / 1000.0;
    let mut pauses: Vec<i64> = report["pauses_ms"]
        .as_array()
        .map(|p| p.iter().filter_map(|v| v.as_i64()).collect())
        .unwrap_or_default();
    pauses.sort_unstable();
    let at =
        |q: f64| pauses[((q * pauses.len() as f64).ceil() as usize).clamp(1, pauses.len()) - 1];
    let mover_rate = rows / copy_secs.max(0.001);
    let psql_rate = baseline_rows as f64 / baseline_secs.max(0.001);
    let buckets = report["buckets_moved"].as_u64().unwrap_or_default();
    println!(
        "  moved {buckets} buckets in {} moves, {rows:.0} rows, in {move_secs:.0} s ({:.2} s per move)",
        pauses.len(),
        move_secs / pauses.len().max(1) as f64
    );
    println!(
        "  copy rate: mover {mover_rate:.0} rows/s, psql \\copy {psql_rate:.0} rows/s ({baseline_rows} rows in {baseline_secs:.1} s) → {:.2}×",
        mover_rate / psql_rate
    );
    println!(
        "  write pause per move: p50 {} ms, p99 {} ms, max {} ms",
        at(0.50),
        at(0.99),
        pauses.last().copied().unwrap_or_default()
    );
    println!(
        "  orders load (saga, {IN_FLIGHT} in flight): {:.1} orders/s before, {:.1} during the move → {:.2}× ({} placed, {} refused during)",
        before.orders_per_sec(),
        during.orders_per_sec(),
        during.orders_per_sec() / before.orders_per_sec(),
        during.placed,
        during.failed
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "  worker peak RSS: {:.0} MiB after {} orders of load alone, {:.0} MiB after the move under load (+{:.0} MiB)",
        mib(rss_before),
        before.placed + before.failed,
        mib(rss_after),
        mib(rss_after.saturating_sub(rss_before))
    );
    println!(
        "  drain 5 → 4 without load: {} buckets, {:.0} rows in {drain_secs:.0} s; worker RSS {:.0} MiB before, at most {:.0} MiB during (+{:.1} MiB)",
        drained["buckets_moved"],
        drained["rows_copied"].as_f64().unwrap_or_default(),
        mib(rss_idle),
        mib(rss_draining),
        mib(rss_draining.saturating_sub(rss_idle))
    );
    drop(temporal);
    Ok(())
}

/// Runs `orders ARGS` against the deployment and fails unless it succeeds.
fn run(
    bin: &Path,
    address: &str,
    task_queue: &str,
    urls: &[String],
    args: &[&str],
) -> anyhow::Result<()> {
    let mut command = Command::new(bin);
    command
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    common::deployment_env(&mut command, address, task_queue, urls);
    let output = command.output()?;
    anyhow::ensure!(
        output.status.success(),
        "orders {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// `orders reshard --to SHARDS --json` against the deployment, its report on stdout.
fn reshard_to(
    bin: &Path,
    address: &str,
    task_queue: &str,
    urls: &[String],
    shards: u32,
) -> Command {
    let mut command = Command::new(bin);
    command
        .args(["reshard", "--to", &shards.to_string()])
        .args(["--clean-up-after", "5", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    common::deployment_env(&mut command, address, task_queue, urls);
    command
}

/// A worker that re-reads the map every 2 s, so the clean-up delay can be short.
fn start_worker(
    bin: &Path,
    address: &str,
    task_queue: &str,
    urls: &[String],
) -> anyhow::Result<orders_dev::process::ChildService> {
    common::start_worker_with(
        bin,
        address,
        task_queue,
        urls,
        &[("ORDERS_SHARD_MAP_REFRESH_SECS", "2")],
    )
}

/// What a series of loads placed, and in how long.
#[derive(Default)]
struct Loaded {
    placed: u64,
    failed: u64,
    secs: f64,
}

impl Loaded {
    fn orders_per_sec(&self) -> f64 {
        self.placed as f64 / self.secs.max(0.001)
    }
}

/// `batches` saga loads of [`LOAD_BATCH`] orders one after another, or, with `until`, as
/// many as fit before that process exits.
async fn load_for(
    bin: &Path,
    address: &str,
    task_queue: &str,
    urls: &[String],
    batches: usize,
    mut until: Option<&mut std::process::Child>,
) -> anyhow::Result<Loaded> {
    let mut loaded = Loaded::default();
    for seed in 0..batches {
        if let Some(child) = until.as_mut()
            && child.try_wait()?.is_some()
        {
            break;
        }
        let mut load = Command::new(bin);
        load.args(["load", "--orders", &LOAD_BATCH.to_string()])
            .args(["--concurrency", &IN_FLIGHT.to_string()])
            .args([
                "--consistency",
                "saga",
                "--seed",
                &(seed + 1).to_string(),
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        common::deployment_env(&mut load, address, task_queue, urls);
        let output = tokio::task::spawn_blocking(move || load.output()).await??;
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        loaded.placed += report["placed"].as_u64().unwrap_or_default();
        loaded.failed += report["orders"].as_u64().unwrap_or_default()
            - report["placed"].as_u64().unwrap_or_default();
        loaded.secs += report["elapsed_secs"].as_f64().unwrap_or_default();
    }
    Ok(loaded)
}

/// The baseline: psql `\copy` of the rows of `buckets`, table by table, from each source
/// cluster into a migrated database on the fifth cluster. Returns the rows and the seconds.
/// (psql's `\copy` takes no parameters: the bucket numbers are written into its query.)
async fn psql_copy(
    clusters: &common::Clusters,
    urls: &[String],
    buckets: &[u16],
) -> anyhow::Result<(u64, f64)> {
    clusters.clusters[4].create_database("baseline").await?;
    let baseline = clusters.clusters[4].url("baseline");
    let pools =
        orders_core::Shards::connect_lazy(std::slice::from_ref(&baseline), Default::default())
            .await?;
    orders_worker::deployment::migrate::run(
        &pools,
        orders_worker::deployment::migrate::Plan::Up(None),
    )
    .await?;
    let map = ShardMap::initial(4);
    let list = |shard: usize| {
        buckets
            .iter()
            .filter(|&&b| map.shard_of_bucket(b) == shard)
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let started = Instant::now();
    let mut rows = 0;
    for (shard, url) in urls.iter().take(4).enumerate() {
        let owned = list(shard);
        for table in &TABLES {
            let columns = table.columns.join(", ");
            let predicate = table
                .in_bucket
                .replace("= ANY($1::bigint[])", &format!("IN ({owned})"));
            let out = format!(
                "\\copy (SELECT {columns} FROM {} WHERE {predicate}) TO STDOUT",
                table.name
            );
            let into = format!("\\copy {} ({columns}) FROM STDIN", table.name);
            let script = format!(
                "psql -X -q -v ON_ERROR_STOP=1 '{url}' -c \"{out}\" | psql -X -q -v ON_ERROR_STOP=1 '{baseline}' -c \"{into}\""
            );
            let status = Command::new("bash")
                .args(["-o", "pipefail", "-c", &script])
                .status()?;
            anyhow::ensure!(status.success(), "psql \\copy of {} failed", table.name);
        }
        rows += count_rows(url, &owned)?;
    }
    Ok((rows, started.elapsed().as_secs_f64()))
}

/// The rows of every bucket table in `owned` (a comma-separated list) on `url`.
fn count_rows(url: &str, owned: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for table in &TABLES {
        let predicate = table
            .in_bucket
            .replace("= ANY($1::bigint[])", &format!("IN ({owned})"));
        let output = Command::new("psql")
            .args(["-X", "-q", "-t", "-A", url, "-c"])
            .arg(format!(
                "SELECT count(*) FROM {} WHERE {predicate}",
                table.name
            ))
            .output()?;
        anyhow::ensure!(output.status.success(), "count of {} failed", table.name);
        total += String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse::<u64>()?;
    }
    Ok(total)
}

/// The process's peak resident set (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// The process's resident set now (VmRSS), in KiB.
fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or_default()
}
