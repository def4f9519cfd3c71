//! What backups cost (`cargo bench -p orders-tests --bench backup`). One run, one machine,
//! release `orders`; four local clusters archiving their WAL into one pgBackRest repository,
//! each shard filled with [`ORDERS_PER_SHARD`] synthetic orders.
//!
//! 1. **The write pause of `orders backup point`.** [`POINTS`] points, one every
//!    [`POINT_EVERY`], taken while `orders load` runs at 16 in flight (a saga load, then a
//!    two-phase one). Printed: the pause's p50, p99 and max as the point measures it (from
//!    asking for the gates to opening them), and each load's orders/s and p99 against the
//!    same load with no point taken, and that against the same load with the gate's
//!    triggers disabled (two loads each, in the order A B B A): what the gate costs every
//!    order, point or not.
//! 2. **`orders backup` against pgBackRest's own backups.** A full backup of every shard,
//!    one shard after another, both ways, over [`BACKUP_ROUNDS`] rounds, each way first
//!    every other round: our command (a process, stanza checks, the progress bar) against
//!    `pgbackrest backup` per stanza. Printed: seconds each way and the ratio.
//! 3. **Restore of 4 × [`ORDERS_PER_SHARD`] orders.** `orders restore` of a point taken
//!    after the backups: seconds for the whole command (restore, start, replay to the point,
//!    settle, audit).
//!
//! Nothing is asserted; a service that cannot start fails the run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use orders_backup::pgbackrest::{BackupKind, LocalShard, Repository};
use orders_dev::{PostgresCluster, PostgresOptions};

const SHARDS: usize = 4;
/// Synthetic orders per shard, so backups and restores copy something.
const ORDERS_PER_SHARD: u64 = 100_000;
/// Points taken under each load, and how far apart.
const POINTS: usize = 20;
const POINT_EVERY: Duration = Duration::from_millis(500);
/// Orders per load: enough to outlast the points.
const LOAD_ORDERS: u64 = 800;
const IN_FLIGHT: usize = 16;
const BACKUP_ROUNDS: usize = 4;

/// Four archived clusters, their repository, and a deployment on them.
struct Setup {
    root: PathBuf,
    repository: Repository,
    clusters: Vec<PostgresCluster>,
    urls: Vec<String>,
    shards: orders_core::Shards,
}

impl Drop for Setup {
    fn drop(&mut self) {
        for cluster in &mut self.clusters {
            cluster.stop();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

async fn setup() -> anyhow::Result<Setup> {
    let root = std::env::temp_dir().join(format!("orders-bench-backup-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let shards: Vec<LocalShard> = (0..SHARDS)
        .map(|i| {
            Ok(LocalShard {
                data_dir: root.join(format!("live-{i}")),
                port: orders_dev::free_port()?,
                socket_dir: root.join("sockets"),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let repository = Repository::write_local(&root, &shards)?;
    let mut clusters = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        clusters.push(PostgresCluster::start_archiving(
            PostgresOptions {
                data_dir: shard.data_dir.clone(),
                port: shard.port,
                ephemeral: true,
            },
            &repository.wal_archive(i)?,
        )?);
    }
    let mut urls = Vec::new();
    for cluster in &clusters {
        cluster.create_database("orders").await?;
        urls.push(cluster.url("orders"));
    }
    let shards = orders_core::Shards::connect_lazy(
        &urls,
        orders_core::shards::PoolSettings {
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
        },
    )
    .await?;
    orders_worker::deployment::migrate::run(
        &shards,
        orders_worker::deployment::migrate::Plan::Up(None),
    )
    .await?;
    Ok(Setup {
        root,
        repository,
        clusters,
        urls,
        shards,
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// `orders` with the deployment and the repository configured.
fn orders(bin: &Path, address: &str, task_queue: &str, setup: &Setup) -> Command {
    let mut command = Command::new(bin);
    common::deployment_env(&mut command, address, task_queue, &setup.urls);
    command.env("ORDERS_PGBACKREST_CONFIG", setup.repository.config());
    command
}

/// Runs `command` to completion; its JSON report.
async fn json(mut command: Command, what: &str) -> anyhow::Result<serde_json::Value> {
    command
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    anyhow::ensure!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).with_context(|| format!("{what} printed no report"))
}

/// An `orders load` of `mode`, started; its report when awaited.
fn load(
    bin: &Path,
    address: &str,
    task_queue: &str,
    setup: &Setup,
    mode: &str,
) -> tokio::task::JoinHandle<anyhow::Result<serde_json::Value>> {
    let mut command = orders(bin, address, task_queue, setup);
    command
        .args(["load", "--orders", &LOAD_ORDERS.to_string()])
        .args(["--concurrency", &IN_FLIGHT.to_string()])
        .args(["--consistency", mode, "--seed", "7"]);
    let what = format!("orders load ({mode})");
    tokio::spawn(async move { json(command, &what).await })
}

/// Turns the backup gate's triggers (migration 18) off or on, on every shard: the baseline
/// of what the gate costs.
async fn set_gate_triggers(setup: &Setup, enabled: bool) -> anyhow::Result<()> {
    use sea_orm::ConnectionTrait;
    let verb = if enabled { "ENABLE" } else { "DISABLE" };
    for shard in setup.shards.iter() {
        for table in orders_migration::GATED_TABLES {
            shard
                .conn
                .execute_unprepared(&format!(
                    "ALTER TABLE {table} {verb} TRIGGER {table}_backup_gate"
                ))
                .await?;
        }
    }
    Ok(())
}

/// The mean orders/s and p99 of several loads.
fn mean(rates: &[(f64, f64)]) -> (f64, f64) {
    let n = rates.len() as f64;
    let (orders, p99) = rates
        .iter()
        .fold((0.0, 0.0), |(o, p), (ro, rp)| (o + ro, p + rp));
    (orders / n, p99 / n)
}

fn rate(report: &serde_json::Value) -> (f64, f64) {
    (
        report["orders_per_sec"].as_f64().unwrap_or_default(),
        report["p99_ms"].as_f64().unwrap_or_default(),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bin = common::build_release_orders()?;
    let setup = setup().await?;
    let temporal = orders_dev::TemporalDevServer::start(orders_dev::TemporalOptions {
        port: orders_dev::free_port()?,
        ui_port: None,
        db_file: None,
        metrics_port: None,
        log_file: setup.root.join("temporal.log"),
        search_attributes: orders_worker::cli::dev::search_attribute_flags(),
        namespaces: vec![],
    })?;
    let address = temporal.address();
    let task_queue = "orders-bench-backup";
    let _worker = common::start_worker(&bin, &address, task_queue, &setup.urls)?;

    let filled = Instant::now();
    let mut fill = orders(&bin, &address, task_queue, &setup);
    fill.args(["fill", "--orders-per-shard", &ORDERS_PER_SHARD.to_string()]);
    json(fill, "orders fill").await?;
    println!(
        "filled {SHARDS} shards with {ORDERS_PER_SHARD} orders each in {:.1} s",
        filled.elapsed().as_secs_f64()
    );
    let mut first = orders(&bin, &address, task_queue, &setup);
    first.arg("backup");
    json(first, "the first orders backup").await?;

    println!(
        "\n## The write pause of `orders backup point` ({POINTS} points under each load, one every {POINT_EVERY:?}, {IN_FLIGHT} in flight)\n"
    );
    println!(
        "| load | orders/s, no gate | orders/s, gate | orders/s, gate + points | gate / no gate | points / gate | p99 no gate / gate / points | pause p50 | pause p99 | pause max |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut all_pauses = Vec::new();
    for mode in ["saga", "two_phase"] {
        // Without the gate and with it in the order A B B A, so that the drift between
        // consecutive loads cancels out of the ratio.
        let (mut ungated, mut gated) = (Vec::new(), Vec::new());
        for enabled in [false, true, true, false] {
            set_gate_triggers(&setup, enabled).await?;
            let report = load(&bin, &address, task_queue, &setup, mode).await??;
            if enabled { &mut gated } else { &mut ungated }.push(rate(&report));
        }
        set_gate_triggers(&setup, true).await?;
        let running = load(&bin, &address, task_queue, &setup, mode);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut pauses = Vec::new();
        for n in 0..POINTS {
            let taken =
                orders_backup::point::take(&setup.shards, &format!("bench-{mode}-{n}")).await?;
            pauses.push(taken.pause.as_secs_f64() * 1000.0);
            tokio::time::sleep(POINT_EVERY).await;
        }
        let with_points = running.await??;
        pauses.sort_by(f64::total_cmp);
        let (free, free_p99) = mean(&ungated);
        let (before, before_p99) = mean(&gated);
        let (during, during_p99) = rate(&with_points);
        println!(
            "| {mode} | {free:.1} | {before:.1} | {during:.1} | {:.2}× | {:.2}× | {free_p99:.0} / {before_p99:.0} / {during_p99:.0} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            before / free,
            during / before,
            percentile(&pauses, 0.5),
            percentile(&pauses, 0.99),
            pauses.last().copied().unwrap_or_default(),
        );
        all_pauses.extend(pauses);
    }
    all_pauses.sort_by(f64::total_cmp);
    println!(
        "\nall {} points: pause p50 {:.1} ms, p99 {:.1} ms (goal p99 ≤ 200 ms)",
        all_pauses.len(),
        percentile(&all_pauses, 0.5),
        percentile(&all_pauses, 0.99)
    );

    println!(
        "\n## `orders backup` against pgBackRest's own backups (full, {SHARDS} shards one after another)\n"
    );
    println!("| round | pgbackrest backup | orders backup | ratio |");
    println!("|---|---|---|---|");
    let (mut raw_total, mut ours_total) = (0.0, 0.0);
    for round in 0..BACKUP_ROUNDS {
        // Each way goes first every other round: a backup after another one is not a
        // backup after a load (the archiver's backlog, the repository's growth).
        let (mut raw, mut ours) = (0.0, 0.0);
        for ours_now in [round % 2 == 1, round % 2 == 0] {
            let started = Instant::now();
            if ours_now {
                let mut command = orders(&bin, &address, task_queue, &setup);
                command.arg("backup");
                json(command, "orders backup").await?;
                ours = started.elapsed().as_secs_f64();
            } else {
                for shard in 0..SHARDS {
                    setup.repository.backup(shard, BackupKind::Full).await?;
                }
                raw = started.elapsed().as_secs_f64();
            }
        }
        raw_total += raw;
        ours_total += ours;
        let first = if round % 2 == 1 {
            "orders"
        } else {
            "pgbackrest"
        };
        println!(
            "| {round} ({first} first) | {raw:.1} s | {ours:.1} s | {:.2}× |",
            ours / raw
        );
    }
    println!(
        "\nover {BACKUP_ROUNDS} rounds: orders backup / pgbackrest backup {:.2}× (goal about 1×)",
        ours_total / raw_total
    );

    println!("\n## Restore of {SHARDS} × {ORDERS_PER_SHARD} orders\n");
    orders_backup::point::take(&setup.shards, "bench-restore").await?;
    let into = setup.root.join("restored");
    let first_port = orders_dev::free_port_run(SHARDS as u16)?;
    let restored_at = Instant::now();
    let mut restore = orders(&bin, &address, task_queue, &setup);
    restore
        .args(["restore", "--point", "bench-restore", "--into"])
        .arg(&into)
        .args(["--first-port", &first_port.to_string()]);
    let report = json(restore, "orders restore").await?;
    println!(
        "orders restore: {:.1} s (restore, start, replay to the point, settle, audit); audit violations: {}",
        restored_at.elapsed().as_secs_f64(),
        report["audit"]["violations"].as_array().map_or(0, Vec::len)
    );
    let dirs: Vec<PathBuf> = (0..SHARDS)
        .map(|i| into.join(format!("shard-{i}")))
        .collect();
    let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    orders_backup::restore::stop_restored(&dirs)?;
    Ok(())
}
