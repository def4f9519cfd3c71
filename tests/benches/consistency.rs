//! Saga vs two-phase commit, measured in one run (`cargo bench -p orders-tests --bench
//! consistency`):
//!
//! 1. The database cost alone, on one shard: the customer's part of an order (order, items,
//!    credit hold) ended by a plain COMMIT, against the same part ended by PREPARE
//!    TRANSACTION + COMMIT PREPARED. Once with fsync off (CPU and WAL only), once durable
//!    (fsync on, where each of the two extra WAL flushes costs a disk sync).
//! 2. End to end: `orders load` of the same seeded orders through a release worker, once per
//!    mode, on four shards: orders/s and p50/p95/p99 latency.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orders_core::store::{credit, idempotency, orders, two_phase};
use orders_core::{Consistency, OrderLine, Shards, ValidOrder};
use orders_dev::TemporalDevServer;
use rust_decimal::Decimal;
use sea_orm::TransactionTrait;

/// Parts per commit-cost measurement.
const PARTS: usize = 400;
const LOAD_ORDERS: u64 = 400;
const LOAD_CONCURRENCY: &str = "16";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!("\nconsistency benchmark (release worker for the load; 2 cores shared by all)");
    let fast = common::Clusters::start("consistency-fast", 4)?;
    let durable = common::Clusters::start_with("consistency-durable", 1, false)?;
    for (label, clusters) in [("fsync off", &fast), ("fsync on", &durable)] {
        let (_, shards) = clusters.deployment("commit_cost", 1).await?;
        let plain = commit_cost(&shards, false).await?;
        let prepared = commit_cost(&shards, true).await?;
        println!(
            "  customer part, {label}: COMMIT {:.0} µs, PREPARE + COMMIT PREPARED {:.0} µs → {:.2}× ( +{:.0} µs per part)",
            plain,
            prepared,
            prepared / plain,
            prepared - plain
        );
    }
    drop(durable);

    let orders_bin = common::build_release_orders()?;
    let temporal = fast.temporal()?;
    let saga = load(&fast, &temporal, &orders_bin, "saga").await?;
    let two_phase = load(&fast, &temporal, &orders_bin, "two_phase").await?;
    for (mode, report) in [("saga", &saga), ("two_phase", &two_phase)] {
        println!(
            "  load {mode:<9}: {:>6.1} orders/s  p50 {:>5.0} ms  p95 {:>5.0} ms  p99 {:>5.0} ms  placed {}/{}",
            report["orders_per_sec"].as_f64().unwrap_or_default(),
            report["p50_ms"].as_f64().unwrap_or_default(),
            report["p95_ms"].as_f64().unwrap_or_default(),
            report["p99_ms"].as_f64().unwrap_or_default(),
            report["placed"],
            report["orders"],
        );
    }
    let ratio =
        |key: &str| two_phase[key].as_f64().unwrap_or_default() / saga[key].as_f64().unwrap_or(1.0);
    println!(
        "  → two_phase / saga: throughput {:.2}×, p50 latency {:.2}×, p99 latency {:.2}×",
        ratio("orders_per_sec"),
        ratio("p50_ms"),
        ratio("p99_ms")
    );
    drop(temporal);
    Ok(())
}

/// Mean µs per customer part: key, order with two items, credit hold, then COMMIT or
/// PREPARE TRANSACTION + COMMIT PREPARED.
async fn commit_cost(shards: &Shards, prepare: bool) -> anyhow::Result<f64> {
    let shard = shards.get(0);
    let customer = orders_worker::cli::catalog::customers::add(
        shards,
        orders_core::store::customers::NewCustomer {
            id: None,
            first_name: "Bench".into(),
            last_name: "Mark".into(),
            email: "bench@example.com".into(),
            credit_limit: Decimal::new(999_999_999, 2),
        },
    )
    .await?
    .id;
    let order = ValidOrder {
        customer_id: customer,
        items: vec![
            OrderLine {
                product_id: 1,
                quantity: 2,
                unit_price: Decimal::new(1999, 2),
            },
            OrderLine {
                product_id: 2,
                quantity: 1,
                unit_price: Decimal::new(500, 2),
            },
        ],
        notes: None,
        consistency: Consistency::TwoPhase,
    };
    let mode = if prepare { "2pc" } else { "plain" };
    let mut elapsed = Duration::ZERO;
    for i in 0..PARTS + 20 {
        let started = Instant::now();
        let order_id = orders::next_id(&shard.conn, customer).await?;
        let txn = shard.conn.begin().await?;
        let key = format!("bench/{mode}/{i}");
        idempotency::claim(&txn, &key).await?;
        orders::create_confirmed_with_id(&txn, &order, order_id).await?;
        credit::reserve(&txn, order_id, customer, order.total()).await?;
        idempotency::record_result(&txn, &key, &serde_json::Value::Null).await?;
        if prepare {
            let gid = two_phase::GidParts {
                workflow_id: format!("bench-{i}"),
                run_id: "run".to_owned(),
                shard: 0,
                home_shard: 0,
                round: two_phase::FIRST_ROUND,
            }
            .gid()?;
            two_phase::prepare(txn, &gid).await?;
            two_phase::commit_prepared(&shard.conn, &gid).await?;
        } else {
            txn.commit().await?;
        }
        if i >= 20 {
            elapsed += started.elapsed();
        }
    }
    Ok(elapsed.as_secs_f64() * 1e6 / PARTS as f64)
}

/// Runs `orders load` of the seeded orders in `consistency` mode on a fresh 4-shard
/// deployment through a release worker, and returns its JSON report.
async fn load(
    clusters: &common::Clusters,
    temporal: &TemporalDevServer,
    orders_bin: &Path,
    consistency: &str,
) -> anyhow::Result<serde_json::Value> {
    let database = format!("load_{consistency}");
    let (urls, _) = clusters.deployment(&database, 4).await?;
    let task_queue = format!("bench-{database}");
    let mut worker = common::start_worker(orders_bin, &temporal.address(), &task_queue, &urls)?;
    let mut load = Command::new(orders_bin);
    load.args(["load", "--orders", &LOAD_ORDERS.to_string()])
        .args([
            "--concurrency",
            LOAD_CONCURRENCY,
            "--consistency",
            consistency,
        ])
        .args([
            "--customers",
            "100",
            "--products",
            "50",
            "--seed",
            "42",
            "--json",
        ])
        .stderr(Stdio::null());
    common::deployment_env(&mut load, &temporal.address(), &task_queue, &urls);
    let output = load.output()?;
    worker.stop(Duration::from_secs(10));
    anyhow::ensure!(
        output.status.success(),
        "orders load ({consistency}) failed"
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}
