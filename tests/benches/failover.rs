//! What a synchronous standby costs, and what losing a primary does to orders in flight
//! (`cargo bench -p orders-tests --bench failover`). One run, one machine, release workers:
//!
//! 1. **Price of synchronous replication.** The same seeded `orders load` (16 in flight,
//!    [`PRICE_ROUNDS`] × [`PRICE_ORDERS`] orders per mode) against (a) four single-node
//!    shards and (b) four shards that are each a pg_auto_failover formation (one monitor,
//!    eight nodes: a primary and a synchronous standby per shard), alternating the setups
//!    so that neither gets the quieter minutes. Printed: orders/s, p50 and p99 per mode and
//!    setup, and the ratio sync / single; before that, what one commit costs on each (a
//!    one-row INSERT, one after another on shard 0), which the orders' figures hide in
//!    Temporal's share of the latency. The machine is shared: each round's ratio is
//!    printed too, so that their spread shows what the noise is.
//! 2. **Loss of a primary at 16 in flight.** On setup (b), this benchmark's own load (16
//!    lanes, half saga, half two-phase; every order's start, end, outcome and shards noted)
//!    runs [`BEFORE`] after a short warm-up, then shard 1's primary is lost (keeper and
//!    postgres SIGKILLed, as a machine loss) and the load runs [`AFTER`] more. Printed: the
//!    time from the loss to the monitor's promotion and to the first order touching shard 1
//!    confirmed again; orders confirmed per 5 s; orders/s and latency in the minute before
//!    against the minute after; confirmed orders lost (each looked up on its shard, shard
//!    1's on the promoted node); orders failed by type, and stuck (not ended within
//!    [`STUCK_AFTER`]). The same load runs first with nothing lost, as the baseline of the
//!    before / after figures (the load's own rate drifts over two minutes).
//!
//! Both setups have the same durability apart from replication: fsync off on every node,
//! full-page writes on (pg_auto_failover needs them for pg_rewind, so the single nodes get
//! them too). `FAILOVER_FSYNC=on` runs both with fsync on. Nothing is asserted; a service
//! that cannot start fails the run.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use orders_core::store::customers::NewCustomer;
use orders_core::{Consistency, OrderRequest, RequestedItem, Shards};
use orders_dev::auto_failover::FailoverTimings;
use orders_worker::cli::load::Rng;
use orders_worker::client::{self, OrderOutcome};
use orders_worker::config::{TemporalSettings, TemporalTls};
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use temporalio_client::Client;

/// Orders in flight, in both parts.
const IN_FLIGHT: usize = 16;
/// Orders per `orders load` in part 1, and how many loads per mode and setup.
const PRICE_ORDERS: u64 = 100;
const PRICE_ROUNDS: u64 = 6;
/// One-row commits per setup and round of the commit probe, and its rounds.
const PROBE_COMMITS: usize = 250;
const PROBE_ROUNDS: usize = 4;
/// Orders per mode and setup before part 1 measures anything.
const WARM_UP_ORDERS: u64 = 48;
/// The shard whose primary part 2 loses.
const HA: usize = 1;
/// Part 2: load before the measured minute, the minute before the loss, the load after it.
const WARM_UP: Duration = Duration::from_secs(5);
const BEFORE: Duration = Duration::from_secs(60);
const AFTER: Duration = Duration::from_secs(60);
/// An order not ended this long after its start is stuck.
const STUCK_AFTER: Duration = Duration::from_secs(60);
/// Part 2's pool: customers and products, created through the catalog on every shard.
const POOL_CUSTOMERS: usize = 40;
const POOL_PRODUCTS: usize = 40;
/// Width of the timeline's buckets around the loss, and how far it reaches.
const TIMELINE_STEP: Duration = Duration::from_secs(5);
const TIMELINE_FROM: i64 = -(BEFORE.as_secs() as i64);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let durable = std::env::var("FAILOVER_FSYNC").is_ok_and(|v| v == "on");
    let ephemeral = !durable;
    let timings = FailoverTimings::fast();
    println!(
        "\nfailover benchmark (release workers; fsync {} on every node, full-page writes on; 2 cores shared by all)",
        if durable { "on" } else { "off" }
    );
    let clusters = if ephemeral {
        common::Clusters::start("failover", 4)?
    } else {
        common::Clusters::start_with("failover", 4, false)?
    };
    let orders_bin = common::build_release_orders()?;
    let temporal = clusters.temporal()?;
    let address = temporal.address();

    let (single_urls, single_shards) = clusters.deployment("failover", 4).await?;
    // pg_auto_failover keeps full-page writes on (pg_rewind needs them): so do the single
    // nodes, so that replication is the only difference.
    for url in &single_urls {
        full_page_writes_on(url).await?;
    }
    let starting = Instant::now();
    let mut formations =
        common::Formations::start(&clusters.root.join("formations"), 4, timings, ephemeral).await?;
    let (sync_urls, sync_shards) = formations.deployment().await?;
    println!(
        "  setup (a): 4 single-node shards; setup (b): 4 formations of a primary and a synchronous standby, one monitor (8 nodes, started in {:.0} s)",
        starting.elapsed().as_secs_f64()
    );
    println!("  failover timings: {timings}");

    let setups = [
        Setup {
            label: "single node",
            task_queue: "bench-failover-single",
            urls: single_urls,
        },
        Setup {
            label: "sync standby",
            task_queue: "bench-failover-sync",
            urls: sync_urls,
        },
    ];
    let mut workers = Vec::new();
    for setup in &setups {
        workers.push(common::start_worker(
            &orders_bin,
            &address,
            setup.task_queue,
            &setup.urls,
        )?);
    }

    let begun = Instant::now();
    println!(
        "  machine load (1-minute average) before part 1: {}",
        load_average()
    );
    commit_probe([&single_shards, &sync_shards]).await?;
    price_of_replication(&orders_bin, &address, &setups).await?;
    println!("  (part 1 took {:.0} s)", begun.elapsed().as_secs_f64());
    // Part 2 runs on setup (b) alone.
    let mut single_worker = workers.remove(0);
    single_worker.stop(Duration::from_secs(10));

    let begun = Instant::now();
    println!(
        "\n  machine load (1-minute average) before part 2: {}",
        load_average()
    );
    let client = orders_worker::client::connect(&TemporalSettings {
        address: address.clone(),
        namespace: "default".to_owned(),
        task_queue: setups[1].task_queue.to_owned(),
        tls: TemporalTls::default(),
    })
    .await?;
    lose_a_primary(
        &mut formations,
        &sync_shards,
        client,
        setups[1].task_queue,
        &orders_bin,
        &address,
        &setups[1].urls,
    )
    .await?;
    println!("  (part 2 took {:.0} s)", begun.elapsed().as_secs_f64());
    for mut worker in workers {
        worker.stop(Duration::from_secs(10));
    }
    drop(formations);
    drop(temporal);
    Ok(())
}

/// One deployment, its worker's task queue and its shard URLs.
struct Setup {
    label: &'static str,
    task_queue: &'static str,
    urls: Vec<String>,
}

async fn full_page_writes_on(url: &str) -> anyhow::Result<()> {
    let conn = Database::connect(url).await?;
    conn.execute_unprepared("ALTER SYSTEM SET full_page_writes = on")
        .await?;
    conn.execute_unprepared("SELECT pg_reload_conf()").await?;
    conn.close().await?;
    Ok(())
}

/// The 1-minute load average: other work on this shared machine shows here.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

// ---------------------------------------------------------------------------------------
// Part 1: the price of synchronous replication.

/// One-row INSERT commits, one after another on one connection to shard 0 of each setup,
/// timed one by one, the setups alternating every [`PROBE_COMMITS`]; first, what the
/// formation's primary says of its replication, so that a standby that is not synchronous
/// cannot pass unnoticed.
async fn commit_probe(setups: [&Shards; 2]) -> anyhow::Result<()> {
    let replication = setups[1]
        .get(0)
        .conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT current_setting('synchronous_commit') || ', synchronous_standby_names ' \
             || quote_literal(current_setting('synchronous_standby_names')) || ', standbys: ' \
             || coalesce((SELECT string_agg(application_name || ' ' || sync_state, ', ') \
                          FROM pg_stat_replication), 'none')",
        ))
        .await?
        .context("no row")?
        .try_get_by_index::<String>(0)?;
    let table = "bench_commit_probe";
    for shards in setups {
        shards
            .get(0)
            .conn
            .execute_unprepared(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (id bigserial PRIMARY KEY, note text)"
            ))
            .await?;
    }
    let mut latencies: [Vec<f64>; 2] = Default::default();
    for round in 0..PROBE_ROUNDS {
        let order: [usize; 2] = if round.is_multiple_of(2) {
            [0, 1]
        } else {
            [1, 0]
        };
        for i in order {
            let conn = &setups[i].get(0).conn;
            for _ in 0..PROBE_COMMITS {
                let began = Instant::now();
                conn.execute_unprepared(&format!("INSERT INTO {table} (note) VALUES ('probe')"))
                    .await?;
                latencies[i].push(began.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    for shards in setups {
        shards
            .get(0)
            .conn
            .execute_unprepared(&format!("DROP TABLE {table}"))
            .await?;
    }
    let mut figures = Vec::new();
    for latencies in &mut latencies {
        latencies.sort_by(f64::total_cmp);
        let mean = latencies.iter().sum::<f64>() / latencies.len() as f64;
        figures.push((
            percentile(latencies, 50.0),
            mean,
            percentile(latencies, 99.0),
        ));
    }
    println!("\n  sync standby's primary (shard 0): synchronous_commit {replication}");
    println!(
        "  one commit (one-row INSERT, {} in a row per setup on shard 0, alternating):",
        PROBE_ROUNDS * PROBE_COMMITS
    );
    for (label, (p50, mean, p99)) in [("single node", figures[0]), ("sync standby", figures[1])] {
        println!("    {label:<13} p50 {p50:.2} ms  mean {mean:.2} ms  p99 {p99:.2} ms");
    }
    println!(
        "    sync / single: p50 {:.2}× ({:+.2} ms)  mean {:.2}×",
        figures[1].0 / figures[0].0,
        figures[1].0 - figures[0].0,
        figures[1].1 / figures[0].1,
    );
    Ok(())
}

/// What the loads of one mode on one setup measured, together.
#[derive(Default)]
struct Measured {
    orders: u64,
    placed: u64,
    secs: f64,
    latencies_ms: Vec<f64>,
    failures: BTreeMap<String, u64>,
}

impl Measured {
    fn orders_per_sec(&self) -> f64 {
        self.orders as f64 / self.secs.max(0.001)
    }

    fn percentile(&mut self, p: f64) -> f64 {
        self.latencies_ms.sort_by(f64::total_cmp);
        percentile(&self.latencies_ms, p)
    }
}

async fn price_of_replication(
    orders_bin: &Path,
    address: &str,
    setups: &[Setup; 2],
) -> anyhow::Result<()> {
    // Connections, prepared statements and the task queues warm up here.
    for setup in setups {
        for mode in ["saga", "two_phase"] {
            orders_load(orders_bin, address, setup, mode, WARM_UP_ORDERS, 1).await?;
        }
    }
    println!(
        "\n  price of synchronous replication: orders load, {IN_FLIGHT} in flight, {PRICE_ROUNDS} × {PRICE_ORDERS} orders per mode and setup (the setups alternate)"
    );
    println!(
        "  {:<10} {:<13} {:>8}  {:>6} {:>6}  placed",
        "mode", "setup", "orders/s", "p50", "p99"
    );
    for mode in ["saga", "two_phase"] {
        let mut measured: [Measured; 2] = Default::default();
        let mut round_ratios = Vec::new();
        for round in 0..PRICE_ROUNDS {
            // single then sync, then sync then single.
            let order: [usize; 2] = if round.is_multiple_of(2) {
                [0, 1]
            } else {
                [1, 0]
            };
            let mut rates = [0.0; 2];
            for i in order {
                let run = orders_load(
                    orders_bin,
                    address,
                    &setups[i],
                    mode,
                    PRICE_ORDERS,
                    42 + round,
                )
                .await?;
                rates[i] = run.orders as f64 / run.secs.max(0.001);
                let m = &mut measured[i];
                m.orders += run.orders;
                m.placed += run.placed;
                m.secs += run.secs;
                m.latencies_ms.extend(run.latencies_ms);
                for (reason, n) in run.failures {
                    *m.failures.entry(reason).or_default() += n;
                }
            }
            round_ratios.push(format!("{:.2}", rates[1] / rates[0]));
        }
        let mut ratios = Vec::new();
        for (setup, m) in setups.iter().zip(&mut measured) {
            let (p50, p99) = (m.percentile(50.0), m.percentile(99.0));
            println!(
                "  {mode:<10} {:<13} {:>8.1}  {:>6.0} {:>6.0}  {}/{}{}",
                setup.label,
                m.orders_per_sec(),
                p50,
                p99,
                m.placed,
                m.orders,
                describe_failures(&m.failures),
            );
            ratios.push((m.orders_per_sec(), p50, p99));
        }
        let ((single, single_p50, single_p99), (sync, sync_p50, sync_p99)) = (ratios[0], ratios[1]);
        println!(
            "  {mode:<10} sync / single: orders/s {:.2}×  p50 {:.2}×  p99 {:.2}×  (orders/s by round: {})",
            sync / single,
            sync_p50 / single_p50,
            sync_p99 / single_p99,
            round_ratios.join(", ")
        );
    }
    Ok(())
}

/// What one `orders load` printed.
struct LoadRun {
    orders: u64,
    placed: u64,
    secs: f64,
    latencies_ms: Vec<f64>,
    failures: BTreeMap<String, u64>,
}

/// `orders load` of `orders` seeded orders in `mode` through `setup`'s worker.
async fn orders_load(
    orders_bin: &Path,
    address: &str,
    setup: &Setup,
    mode: &str,
    orders: u64,
    seed: u64,
) -> anyhow::Result<LoadRun> {
    let mut load = Command::new(orders_bin);
    load.args(["load", "--orders", &orders.to_string()])
        .args(["--concurrency", &IN_FLIGHT.to_string()])
        .args(["--consistency", mode])
        .args(["--customers", "100", "--products", "50"])
        .args(["--seed", &seed.to_string(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    common::deployment_env(&mut load, address, setup.task_queue, &setup.urls);
    let output = tokio::task::spawn_blocking(move || load.output()).await??;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("orders load ({mode}, {}) printed no report", setup.label))?;
    anyhow::ensure!(
        report["client_errors"].as_u64() == Some(0),
        "orders load ({mode}, {}) met client errors: {}",
        setup.label,
        report["results"]
    );
    let latencies_ms = report["results"]
        .as_array()
        .context("no results")?
        .iter()
        .filter_map(|r| r["latency_ms"].as_f64())
        .collect();
    let failures = report["failures"]
        .as_object()
        .map(|f| {
            f.iter()
                .map(|(reason, n)| (reason.clone(), n.as_u64().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    Ok(LoadRun {
        orders: report["orders"].as_u64().unwrap_or_default(),
        placed: report["placed"].as_u64().unwrap_or_default(),
        secs: report["elapsed_secs"].as_f64().unwrap_or_default(),
        latencies_ms,
        failures,
    })
}

// ---------------------------------------------------------------------------------------
// Part 2: losing shard 1's primary under load.

/// How one order of part 2 ended.
#[derive(Debug, Clone)]
enum Ended {
    Placed {
        order_id: i64,
        shard: usize,
    },
    /// Failed with this type (`OutOfStock`, …), or cancelled, or ended otherwise.
    NotPlaced(String),
    /// The client could not start or follow it.
    ClientError(String),
    /// Not ended within [`STUCK_AFTER`].
    Stuck,
}

/// One order of part 2, its times since the load began.
struct Record {
    mode: Consistency,
    started: Duration,
    ended: Duration,
    touches_ha: bool,
    outcome: Ended,
}

impl Record {
    fn placed(&self) -> bool {
        matches!(self.outcome, Ended::Placed { .. })
    }

    fn latency(&self) -> Option<Duration> {
        matches!(self.outcome, Ended::Placed { .. } | Ended::NotPlaced(_))
            .then(|| self.ended - self.started)
    }
}

/// What part 2's lanes share: the pool, the routing, the client.
struct LoadPool {
    customers: Vec<i64>,
    products: Vec<i64>,
    shards: Shards,
    client: Client,
    task_queue: String,
    run_id: String,
}

impl LoadPool {
    /// Customers (placed by the catalog on the least-loaded shard) and products (routed by
    /// id), enough of both on every shard.
    async fn create(shards: &Shards, client: Client, task_queue: &str) -> anyhow::Result<Self> {
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let mut customers = Vec::with_capacity(POOL_CUSTOMERS);
        for n in 0..POOL_CUSTOMERS {
            let customer = orders_worker::cli::catalog::customers::add(
                shards,
                NewCustomer {
                    id: None,
                    first_name: "Failover".to_owned(),
                    last_name: format!("{run_id} {n}"),
                    email: format!("failover-{run_id}-{n}@example.com"),
                    credit_limit: Decimal::new(1_000_000_000, 2),
                },
            )
            .await?;
            customers.push(customer.id);
        }
        let first = orders_worker::cli::catalog::products::next_free_id(shards).await?;
        let products: Vec<i64> = (first..first + POOL_PRODUCTS as i64).collect();
        for &id in &products {
            orders_worker::cli::catalog::products::add(
                shards,
                id,
                Some("failover bench"),
                1_000_000,
            )
            .await?;
        }
        Ok(Self {
            customers,
            products,
            shards: shards.clone(),
            client,
            task_queue: task_queue.to_owned(),
            run_id,
        })
    }

    /// The next order, drawn as `orders load` draws its own: 1–3 lines of 1–3 units at
    /// 1.00–99.99.
    fn request(&self, rng: &mut Rng, mode: Consistency) -> OrderRequest {
        let customer_id = self.customers[rng.below(self.customers.len() as u64) as usize];
        let lines = 1 + rng.below(3);
        let items = (0..lines)
            .map(|_| RequestedItem {
                product_id: self.products[rng.below(self.products.len() as u64) as usize],
                quantity: 1 + rng.below(3) as i64,
                unit_price: Decimal::new(100 + rng.below(9_900) as i64, 2).into(),
            })
            .collect();
        OrderRequest {
            customer_id,
            items,
            notes: None,
            consistency: mode,
        }
    }

    fn touches_ha(&self, request: &OrderRequest) -> bool {
        self.shards.for_customer(request.customer_id).index == HA
            || request
                .items
                .iter()
                .any(|item| self.shards.for_product(item.product_id).index == HA)
    }

    /// Places orders one after another until `stop`: lane `lane` of the load. Even lanes
    /// place sagas, odd lanes two-phase orders.
    async fn lane(
        self: Arc<Self>,
        lane: usize,
        stop: Arc<AtomicBool>,
        began: Instant,
    ) -> Vec<Record> {
        let mode = if lane.is_multiple_of(2) {
            Consistency::Saga
        } else {
            Consistency::TwoPhase
        };
        let mut rng = Rng((42 + lane as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut records = Vec::new();
        for n in 0.. {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let request = self.request(&mut rng, mode);
            let touches_ha = self.touches_ha(&request);
            let workflow_id = format!("failover-{}-{lane}-{n}", self.run_id);
            let started = began.elapsed();
            let followed = async {
                client::start_order(&self.client, &self.task_queue, &workflow_id, &request).await?;
                client::order_outcome(&self.client, &workflow_id).await
            };
            let outcome = match tokio::time::timeout(STUCK_AFTER, followed).await {
                Ok(Ok(OrderOutcome::Placed(placed))) => Ended::Placed {
                    order_id: placed.order_id,
                    shard: placed.shard,
                },
                Ok(Ok(OrderOutcome::Failed { failure_type, .. })) => Ended::NotPlaced(failure_type),
                Ok(Ok(OrderOutcome::Cancelled)) => Ended::NotPlaced("Cancelled".to_owned()),
                Ok(Ok(OrderOutcome::Other(what))) => Ended::NotPlaced(format!("other: {what}")),
                Ok(Err(e)) => Ended::ClientError(format!("{e:#}")),
                Err(_) => Ended::Stuck,
            };
            records.push(Record {
                mode,
                started,
                ended: began.elapsed(),
                touches_ha,
                outcome,
            });
        }
        records
    }
}

/// Part 2's load while it runs: its lanes and when it began.
struct RunningLoad {
    began: Instant,
    stop: Arc<AtomicBool>,
    lanes: Vec<tokio::task::JoinHandle<Vec<Record>>>,
}

impl RunningLoad {
    /// Starts [`IN_FLIGHT`] lanes on a pool of its own.
    async fn start(shards: &Shards, client: Client, task_queue: &str) -> anyhow::Result<Self> {
        let pool = Arc::new(LoadPool::create(shards, client, task_queue).await?);
        let stop = Arc::new(AtomicBool::new(false));
        let began = Instant::now();
        let lanes = (0..IN_FLIGHT)
            .map(|lane| tokio::spawn(pool.clone().lane(lane, stop.clone(), began)))
            .collect();
        Ok(Self { began, stop, lanes })
    }

    /// Waits until `at` into the load.
    async fn until(&self, at: Duration) {
        tokio::time::sleep(at.saturating_sub(self.began.elapsed())).await;
    }

    /// Lets the orders in flight end, starting no more, and returns every order's record.
    async fn finish(self) -> anyhow::Result<Vec<Record>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut records = Vec::new();
        for lane in self.lanes {
            records.extend(lane.await.context("a load lane panicked")?);
        }
        Ok(records)
    }
}

async fn lose_a_primary(
    formations: &mut common::Formations,
    shards: &Shards,
    client: Client,
    task_queue: &str,
    orders_bin: &Path,
    address: &str,
    urls: &[String],
) -> anyhow::Result<()> {
    println!(
        "\n  loss of shard {HA}'s primary at {IN_FLIGHT} in flight ({} saga and {} two-phase lanes, {:.0} s of load before the loss, {:.0} s after); first the same load with nothing lost, as a baseline",
        IN_FLIGHT.div_ceil(2),
        IN_FLIGHT / 2,
        (WARM_UP + BEFORE).as_secs_f64(),
        AFTER.as_secs_f64()
    );
    let mark = WARM_UP + BEFORE;
    let baseline = RunningLoad::start(shards, client.clone(), task_queue).await?;
    baseline.until(mark + AFTER).await;
    let records = baseline.finish().await?;
    let (first, second) = (
        window(&records, mark - BEFORE, mark),
        window(&records, mark, mark + AFTER),
    );
    println!("  no loss:");
    print_timeline(&records, mark, "from the mark");
    for (label, figures) in [("minute before", &first), ("minute after", &second)] {
        println!("    {label:<13}: {figures}");
    }
    println!(
        "    after / before: orders/s {:.2}×  p50 {:.2}×  p99 {:.2}×",
        second.rate / first.rate,
        second.p50 / first.p50,
        second.p99 / first.p99
    );

    let load = RunningLoad::start(shards, client, task_queue).await?;
    load.until(mark).await;
    let monitor = &formations.monitor;
    let lost = formations.shards[HA].primary(monitor).await?;
    let lost_port = formations.shards[HA].node(lost).port();
    let lost_at = load.began.elapsed();
    let shard = &mut formations.shards[HA];
    tokio::task::block_in_place(|| shard.node_mut(lost).lose());
    let promoted = formations.shards[HA]
        .wait_for_primary_other_than(&formations.monitor, lost, Duration::from_secs(90))
        .await
        .context("the monitor promoted no standby")?;
    let promoted_at = load.began.elapsed();
    load.until(lost_at + AFTER).await;
    let began = load.began;
    let records = load.finish().await?;
    let load_secs = began.elapsed().as_secs_f64();

    println!("  loss:");
    println!(
        "    node{lost} (port {lost_port}) lost {:.1} s into the load; the monitor reported node{promoted} primary {:.1} s after the loss",
        lost_at.as_secs_f64(),
        (promoted_at - lost_at).as_secs_f64()
    );
    let back_at = report_unavailability(&records, lost_at);
    print_timeline(&records, lost_at, "from the loss");
    report_windows(&records, lost_at, back_at);
    let promoted_node = formations.shards[HA].node(promoted).url();
    report_lost_and_failed(&records, shards, &promoted_node).await?;
    println!(
        "    {} orders in {load_secs:.0} s ({} touching shard {HA})",
        records.len(),
        records.iter().filter(|r| r.touches_ha).count()
    );
    let audit = audit(orders_bin, address, task_queue, urls)?;
    println!("    orders audit afterwards: {audit}");
    Ok(())
}

/// When orders touching the lost shard were confirmed again, seen from the client; returns
/// the first such confirmation (since the load began).
fn report_unavailability(records: &[Record], lost_at: Duration) -> Option<Duration> {
    // Only orders started after the loss: one in flight at the loss may have written to
    // shard 1 before it, and be confirmed a moment later.
    let first_confirmed = |of_mode: Option<Consistency>| {
        records
            .iter()
            .filter(|r| r.touches_ha && r.placed() && r.started >= lost_at)
            .filter(|r| of_mode.is_none_or(|m| r.mode == m))
            .map(|r| r.ended)
            .min()
    };
    for (label, of_mode) in [
        ("any mode", None),
        ("saga", Some(Consistency::Saga)),
        ("two-phase", Some(Consistency::TwoPhase)),
    ] {
        let first = first_confirmed(of_mode).map(|at| at - lost_at);
        println!(
            "    write unavailability ({label}): the first order touching shard {HA} started after the loss was confirmed {}",
            first.map_or("never".to_owned(), |d| format!(
                "{:.1} s after it",
                d.as_secs_f64()
            ))
        );
    }
    first_confirmed(None)
}

/// Orders confirmed per [`TIMELINE_STEP`], from [`BEFORE`] before `mark` to [`AFTER`]
/// after it.
fn print_timeline(records: &[Record], mark: Duration, what: &str) {
    let step = TIMELINE_STEP.as_secs() as i64;
    let buckets = (AFTER.as_secs() as i64 - TIMELINE_FROM) / step;
    let timeline: Vec<String> = (0..buckets)
        .map(|b| {
            let from = TIMELINE_FROM + b * step;
            let count = records
                .iter()
                .filter(|r| r.placed())
                .filter(|r| {
                    let at = signed_secs(r.ended, mark);
                    at >= from as f64 && at < (from + step) as f64
                })
                .count();
            format!("{from:+}s {count}")
        })
        .collect();
    println!(
        "    orders confirmed per {step} s {what}: {}",
        timeline.join(", ")
    );
}

/// Confirmations and latency over a stretch of the load.
struct Window {
    rate: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} orders/s confirmed, latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            self.rate, self.p50, self.p99, self.max
        )
    }
}

/// The orders that ended in `[from, to)`: placed ones per second, and the latency of all
/// that ended with an outcome.
fn window(records: &[Record], from: Duration, to: Duration) -> Window {
    let ended: Vec<&Record> = records
        .iter()
        .filter(|r| r.ended >= from && r.ended < to)
        .collect();
    let placed = ended.iter().filter(|r| r.placed()).count();
    let mut latencies: Vec<f64> = ended
        .iter()
        .filter_map(|r| r.latency())
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    Window {
        rate: placed as f64 / (to - from).as_secs_f64(),
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        max: latencies.last().copied().unwrap_or_default(),
    }
}

/// Orders/s and latency in the minute before the loss against the minute after it, and
/// after it once orders touching the lost shard were confirmed again (`back_at`) and a few
/// seconds more for the backlog: orders counted by when they ended.
fn report_windows(records: &[Record], lost_at: Duration, back_at: Option<Duration>) {
    let before = window(records, lost_at.saturating_sub(BEFORE), lost_at);
    let after = window(records, lost_at, lost_at + AFTER);
    for (label, figures) in [("minute before", &before), ("minute after", &after)] {
        println!("    {label:<13}: {figures}");
    }
    if let Some(back_at) = back_at {
        let from = back_at + TIMELINE_STEP;
        if from + TIMELINE_STEP < lost_at + AFTER {
            let recovered = window(records, from, lost_at + AFTER);
            println!(
                "    recovered ({:+.0} s to {:+.0} s): {recovered} ({:.2}× the minute before)",
                signed_secs(from, lost_at),
                AFTER.as_secs_f64(),
                recovered.rate / before.rate
            );
        }
    }
    println!(
        "    after / before: orders/s {:.2}×  p50 {:.2}×  p99 {:.2}×",
        after.rate / before.rate,
        after.p50 / before.p50,
        after.p99 / before.p99
    );
}

/// Every order the client saw confirmed, looked up on its shard (shard [`HA`]'s on the
/// promoted node itself); then what did not end as placed.
async fn report_lost_and_failed(
    records: &[Record],
    shards: &Shards,
    promoted_node: &str,
) -> anyhow::Result<()> {
    let mut by_shard: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
    for record in records {
        if let Ended::Placed { order_id, shard } = record.outcome {
            by_shard.entry(shard).or_default().push(order_id);
        }
    }
    let promoted = Database::connect(promoted_node)
        .await
        .context("the promoted node answers")?;
    let in_recovery = scalar(&promoted, "SELECT pg_is_in_recovery()::int::bigint").await? != 0;
    let (mut confirmed, mut found, mut missing) = (0, 0, Vec::new());
    for (&shard, ids) in &by_shard {
        let conn = if shard == HA {
            &promoted
        } else {
            &shards.get(shard).conn
        };
        let present = confirmed_among(conn, ids).await?;
        confirmed += ids.len();
        found += present.len();
        missing.extend(
            ids.iter()
                .filter(|id| !present.contains(id))
                .map(|id| (shard, *id)),
        );
    }
    println!(
        "    confirmed orders lost: {} of {confirmed} ({found} found confirmed on their shards; shard {HA}'s {} read on the promoted node, {})",
        missing.len(),
        by_shard.get(&HA).map_or(0, Vec::len),
        if in_recovery {
            "still in recovery!"
        } else {
            "now primary"
        }
    );
    if !missing.is_empty() {
        println!("      missing (shard, order): {missing:?}");
    }
    // Prepared parts the loss left behind are settled by their decisions on the new
    // primary; give that a moment before counting what is left.
    let mut prepared = 0;
    for _ in 0..60 {
        prepared = scalar(&promoted, "SELECT count(*) FROM pg_prepared_xacts").await?;
        if prepared == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("    prepared transactions left on the promoted node: {prepared}");

    let mut failed: BTreeMap<String, usize> = BTreeMap::new();
    let (mut stuck, mut client_errors) = (0, Vec::new());
    for record in records {
        match &record.outcome {
            Ended::Placed { .. } => {}
            Ended::NotPlaced(reason) => {
                *failed
                    .entry(format!("{} {reason}", mode_label(record.mode)))
                    .or_default() += 1;
            }
            Ended::ClientError(e) => client_errors.push(e.clone()),
            Ended::Stuck => stuck += 1,
        }
    }
    let failed = if failed.is_empty() {
        "none".to_owned()
    } else {
        failed
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "    orders failed: {failed}; stuck (not ended within {} s): {stuck}; client errors: {}",
        STUCK_AFTER.as_secs(),
        client_errors.len()
    );
    if let Some(first) = client_errors.first() {
        println!("      first client error: {first}");
    }
    Ok(())
}

/// The ids among `ids` of orders `conn` holds as confirmed.
async fn confirmed_among(conn: &DatabaseConnection, ids: &[i64]) -> anyhow::Result<Vec<i64>> {
    let mut found = Vec::new();
    for chunk in ids.chunks(1000) {
        let list: Vec<String> = chunk.iter().map(i64::to_string).collect();
        let rows = conn
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                format!(
                    "SELECT id FROM orders WHERE status = 'confirmed' AND id IN ({})",
                    list.join(",")
                ),
            ))
            .await?;
        for row in rows {
            found.push(row.try_get_by_index::<i64>(0)?);
        }
    }
    Ok(found)
}

async fn scalar(conn: &DatabaseConnection, sql: &str) -> anyhow::Result<i64> {
    Ok(conn
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await?
        .context("no row")?
        .try_get_by_index::<i64>(0)?)
}

/// `orders audit --grace 60` on the deployment: "clean", or its violations by check.
fn audit(
    orders_bin: &Path,
    address: &str,
    task_queue: &str,
    urls: &[String],
) -> anyhow::Result<String> {
    let mut command = Command::new(orders_bin);
    command
        .args(["audit", "--grace", "60", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    common::deployment_env(&mut command, address, task_queue, urls);
    let output = command.output()?;
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("orders audit printed no report")?;
    let violations = report["violations"].as_array().cloned().unwrap_or_default();
    if violations.is_empty() {
        return Ok("clean".to_owned());
    }
    let mut by_check: BTreeMap<String, usize> = BTreeMap::new();
    for violation in &violations {
        *by_check
            .entry(violation["check"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    Ok(format!("{} violations: {by_check:?}", violations.len()))
}

fn describe_failures(failures: &BTreeMap<String, u64>) -> String {
    if failures.is_empty() {
        return String::new();
    }
    let list: Vec<String> = failures.iter().map(|(r, n)| format!("{r} {n}")).collect();
    format!("  (not placed: {})", list.join(", "))
}

fn mode_label(mode: Consistency) -> &'static str {
    match mode {
        Consistency::Saga => "saga",
        Consistency::TwoPhase => "two-phase",
    }
}

/// `at` relative to `origin`, in seconds, negative before it.
fn signed_secs(at: Duration, origin: Duration) -> f64 {
    at.as_secs_f64() - origin.as_secs_f64()
}

/// The `p`th percentile (0–100) of `sorted`, nearest rank, as `orders load` computes it; 0
/// when empty.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
