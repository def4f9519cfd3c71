//! Orders that share products, in both modes, measured in one run (`cargo bench -p
//! orders-tests --bench contention`): one Temporal dev server with its default settings,
//! four shards (fsync off), a release worker, `orders load` of the same seeded orders.
//!
//! 1. 150 orders at 32 in flight over 20 products, then at 64 in flight over 5 products:
//!    orders/s, p50, p99, the slowest order and how many took over 10 s, saga against
//!    two-phase on fresh deployments, and the ratios two_phase / saga.
//! 2. A dead worker: two workers on one task queue, one SIGKILLed 3 s into a load of 200
//!    orders at 32 in flight over 20 products, in each mode; then `orders audit` must be
//!    clean. The slowest order shows how long a dead worker's tasks take to move.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use orders_dev::TemporalDevServer;

/// One `orders load`: how many orders, how many in flight, over how many products.
#[derive(Clone, Copy)]
struct Scenario {
    orders: u64,
    concurrency: usize,
    products: usize,
    /// SIGKILL one of two workers this long into the load.
    kill_after: Option<Duration>,
}

/// What one load measured.
struct Measured {
    orders_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    over_10s: usize,
    placed: u64,
    orders: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!("\ncontention benchmark (release worker; 2 cores shared by all)");
    let clusters = common::Clusters::start("contention", 4)?;
    let orders_bin = common::build_release_orders()?;
    let temporal = clusters.temporal()?;
    let scenarios = [
        (
            "32 in flight, 20 products",
            Scenario {
                orders: 150,
                concurrency: 32,
                products: 20,
                kill_after: None,
            },
        ),
        (
            "64 in flight, 5 products",
            Scenario {
                orders: 150,
                concurrency: 64,
                products: 5,
                kill_after: None,
            },
        ),
        (
            "one of two workers SIGKILLed after 3 s (200 orders, 32 in flight, 20 products)",
            Scenario {
                orders: 200,
                concurrency: 32,
                products: 20,
                kill_after: Some(Duration::from_secs(3)),
            },
        ),
    ];
    let mut run = 0;
    for (label, scenario) in scenarios {
        println!("  {label}:");
        let mut measured = Vec::new();
        for mode in ["saga", "two_phase"] {
            run += 1;
            let m = load(&clusters, &temporal, &orders_bin, run, mode, scenario).await?;
            println!(
                "    {mode:<9} {:>5.1} orders/s  p50 {:>6.0} ms  p99 {:>6.0} ms  max {:>6.0} ms  over 10 s {:>3}  placed {}/{}",
                m.orders_per_sec, m.p50_ms, m.p99_ms, m.max_ms, m.over_10s, m.placed, m.orders
            );
            measured.push(m);
        }
        let (saga, two_phase) = (&measured[0], &measured[1]);
        println!(
            "    → two_phase / saga: throughput {:.2}×, p50 {:.2}×, p99 {:.2}×",
            two_phase.orders_per_sec / saga.orders_per_sec,
            two_phase.p50_ms / saga.p50_ms,
            two_phase.p99_ms / saga.p99_ms
        );
    }
    drop(temporal);
    Ok(())
}

/// Runs one `orders load` in `mode` on a fresh deployment and reads its report; with
/// `kill_after`, a second worker serves the same task queue and is SIGKILLed that long in,
/// and the audit must be clean afterwards.
async fn load(
    clusters: &common::Clusters,
    temporal: &TemporalDevServer,
    orders_bin: &Path,
    run: usize,
    mode: &str,
    scenario: Scenario,
) -> anyhow::Result<Measured> {
    let database = format!("contention_{run}");
    let (urls, _) = clusters.deployment(&database, 4).await?;
    let task_queue = format!("bench-{database}");
    let address = temporal.address();
    let mut worker = common::start_worker(orders_bin, &address, &task_queue, &urls)?;
    let mut doomed = match scenario.kill_after {
        Some(_) => Some(common::start_worker(
            orders_bin,
            &address,
            &task_queue,
            &urls,
        )?),
        None => None,
    };
    let mut load = Command::new(orders_bin);
    load.args(["load", "--orders", &scenario.orders.to_string()])
        .args(["--concurrency", &scenario.concurrency.to_string()])
        .args(["--products", &scenario.products.to_string()])
        .args(["--consistency", mode, "--seed", "42", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    common::deployment_env(&mut load, &address, &task_queue, &urls);
    let running = load.spawn()?;
    if let (Some(after), Some(doomed)) = (scenario.kill_after, doomed.as_mut()) {
        tokio::time::sleep(after).await;
        doomed.kill();
    }
    let output = tokio::task::spawn_blocking(move || running.wait_with_output()).await??;
    anyhow::ensure!(output.status.success(), "orders load ({mode}) failed");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    if scenario.kill_after.is_some() {
        let mut audit = Command::new(orders_bin);
        audit.args(["audit", "--grace", "0"]).stderr(Stdio::null());
        common::deployment_env(&mut audit, &address, &task_queue, &urls);
        let audit = audit.output()?;
        anyhow::ensure!(
            audit.status.success(),
            "the audit after the {mode} load with a dead worker is not clean:\n{}",
            String::from_utf8_lossy(&audit.stdout)
        );
    }
    worker.stop(Duration::from_secs(10));
    let latencies: Vec<f64> = report["results"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .filter_map(|r| r["latency_ms"].as_f64())
                .collect()
        })
        .unwrap_or_default();
    let number = |key: &str| report[key].as_f64().unwrap_or_default();
    Ok(Measured {
        orders_per_sec: number("orders_per_sec"),
        p50_ms: number("p50_ms"),
        p99_ms: number("p99_ms"),
        max_ms: latencies.iter().copied().fold(0.0, f64::max),
        over_10s: latencies.iter().filter(|&&ms| ms > 10_000.0).count(),
        placed: report["placed"].as_u64().unwrap_or_default(),
        orders: report["orders"].as_u64().unwrap_or_default(),
    })
}
