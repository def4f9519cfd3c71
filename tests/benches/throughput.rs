//! What an order costs Temporal on each step path, measured in one run (`cargo bench -p
//! orders-tests --bench throughput`).
//!
//! One Temporal dev server (a SQLite file with the WAL pragmas, as `orders dev` runs it),
//! four shards (fsync off) and two release workers on them: one started with
//! `ORDERS_STEPS=remote` (every step an activity of its own: the path before the one-task
//! change, "old") and one with the default local steps ("new"). For each consistency mode and
//! each number of orders in flight (1, 16, 64), the same seeded `orders load` runs through the
//! old worker, then through the new one, and the benchmark prints for each:
//! - orders/s and p50/p95/p99 latency (from `orders load`);
//! - worker, Temporal server and shard (all four PostgreSQL servers) CPU ms per order (from
//!   `/proc`, over the load);
//! - history events and workflow tasks per order, PlaceOrder's and its lifecycle's where
//!   PlaceOrder starts one (from the histories of a sample of the orders);
//! - the server's billable actions per order (its own `action` metric, the count Temporal
//!   documents for estimating Cloud usage);
//!
//! then the ratios new/old, then what shipping a sample of the orders costs each path (the
//! old path's lifecycle is running, the new path's starts with that change), and draws orders/s against orders in flight for both paths to
//! `docs/throughput.svg` (`THROUGHPUT_PLOT` to write it elsewhere).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use orders_dev::TemporalDevServer;
use orders_worker::config::{TemporalSettings, TemporalTls};
use plotters::prelude::*;
use temporalio_client::{Client, UntypedWorkflow, WorkflowFetchHistoryOptions};
use temporalio_common::protos::temporal::api::enums::v1::EventType;

const MODES: [&str; 2] = ["saga", "two_phase"];
/// Orders in flight, and how many orders each load places.
const LOADS: [(usize, u64); 3] = [(1, 100), (16, 240), (64, 400)];
/// Orders whose histories are read per load.
const HISTORY_SAMPLE: usize = 40;
/// `/proc/<pid>/stat` counts CPU time in USER_HZ, 100 per second on Linux.
const TICKS_PER_SEC: f64 = 100.0;

/// A step path: the worker that runs it and its task queue.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StepPath {
    Remote,
    Local,
}

impl StepPath {
    fn label(self) -> &'static str {
        match self {
            StepPath::Remote => "old (remote)",
            StepPath::Local => "new (local)",
        }
    }

    fn setting(self) -> &'static str {
        match self {
            StepPath::Remote => "remote",
            StepPath::Local => "local",
        }
    }

    fn task_queue(self) -> String {
        format!("bench-throughput-{}", self.setting())
    }
}

/// What one load measured.
#[derive(Clone)]
struct Cell {
    path: StepPath,
    mode: &'static str,
    in_flight: usize,
    orders: u64,
    placed: u64,
    orders_per_sec: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    worker_cpu_ms: f64,
    server_cpu_ms: f64,
    shards_cpu_ms: f64,
    events: f64,
    workflow_tasks: f64,
    actions: f64,
    /// Orders it placed whose histories were read.
    sample: Vec<i64>,
}

/// What the first status change of placed orders (shipping them) cost through a path: the
/// old path's lifecycle is already running, the new path's starts now.
struct ShipCost {
    orders: usize,
    server_cpu_ms: f64,
    worker_cpu_ms: f64,
    events: f64,
    workflow_tasks: f64,
}

/// The deployment under measurement.
struct Bench {
    temporal: TemporalDevServer,
    metrics_port: u16,
    client: Client,
    orders_bin: PathBuf,
    urls: Vec<String>,
    /// The shards' postmasters, whose CPU (and their backends') is the shards' cost.
    postmasters: Vec<u32>,
    workers: Vec<(StepPath, orders_dev::process::ChildService)>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!("\nthroughput benchmark (release workers; 2 cores shared by all)");
    let clusters = common::Clusters::start("throughput", 4)?;
    let orders_bin = common::build_release_orders()?;
    let metrics_port = orders_dev::free_port()?;
    let temporal = TemporalDevServer::start(orders_dev::TemporalOptions {
        port: orders_dev::free_port()?,
        ui_port: None,
        db_file: Some(clusters.root.join("temporal.db")),
        metrics_port: Some(metrics_port),
        log_file: clusters.root.join("temporal.log"),
        search_attributes: orders_worker::cli::dev::search_attribute_flags(),
        namespaces: vec![],
    })?;
    let (urls, _) = clusters.deployment("throughput", 4).await?;
    let client = orders_worker::client::connect(&TemporalSettings {
        address: temporal.address(),
        namespace: "default".to_owned(),
        task_queue: StepPath::Local.task_queue(),
        tls: TemporalTls::default(),
    })
    .await?;
    let postmasters = clusters
        .clusters
        .iter()
        .map(|cluster| {
            cluster
                .pid()
                .context("the benchmark starts its own clusters")
        })
        .collect::<anyhow::Result<_>>()?;
    let mut bench = Bench {
        temporal,
        metrics_port,
        client,
        orders_bin,
        urls,
        postmasters,
        workers: Vec::new(),
    };
    for path in [StepPath::Remote, StepPath::Local] {
        let worker = bench.start_worker(path)?;
        bench.workers.push((path, worker));
        // Connections, each connection's prepared statements of both modes, caches and the
        // server's task queue partitions warm up here.
        for mode in MODES {
            bench.load(path, mode, 8, 24).await?;
        }
    }
    println!(
        "  {:<13} {:<9} {:>3}  {:>8}  {:>6} {:>6} {:>6}  {:>9} {:>9} {:>9}  {:>6} {:>5} {:>7}  placed",
        "path",
        "mode",
        "in",
        "orders/s",
        "p50",
        "p95",
        "p99",
        "worker ms",
        "server ms",
        "shards ms",
        "events",
        "tasks",
        "actions"
    );
    let mut cells = Vec::new();
    for mode in MODES {
        for (in_flight, orders) in LOADS {
            for path in [StepPath::Remote, StepPath::Local] {
                let cell = bench.load(path, mode, in_flight, orders).await?;
                print_cell(&cell);
                cells.push(cell);
            }
        }
    }
    print_ratios(&cells);
    println!("  first status change (ship) of orders placed by the saga loads at 64 in flight:");
    let mut ships = Vec::new();
    for path in [StepPath::Remote, StepPath::Local] {
        let placed = cells
            .iter()
            .find(|c| c.path == path && c.mode == "saga" && c.in_flight == 64)
            .expect("every cell ran");
        let ship = bench.ship(path, &placed.sample).await?;
        println!(
            "    {:<13} {} orders: server CPU {:.1} ms/order, worker CPU {:.1} ms/order, {:.1} events and {:.1} workflow tasks per order; with the placement: {:.1} events, {:.1} tasks",
            path.label(),
            ship.orders,
            ship.server_cpu_ms,
            ship.worker_cpu_ms,
            ship.events,
            ship.workflow_tasks,
            placed.events + ship.events,
            placed.workflow_tasks + ship.workflow_tasks,
        );
        ships.push(ship);
    }
    println!(
        "    new / old: server CPU {:.2}×  events {:.2}×  tasks {:.2}×",
        ships[1].server_cpu_ms / ships[0].server_cpu_ms,
        ships[1].events / ships[0].events,
        ships[1].workflow_tasks / ships[0].workflow_tasks,
    );
    let plot = std::env::var_os("THROUGHPUT_PLOT").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/throughput.svg"),
        PathBuf::from,
    );
    draw(&cells, &plot)?;
    println!("  plot: {}", plot.display());
    for (_, worker) in &mut bench.workers {
        worker.stop(Duration::from_secs(10));
    }
    drop(bench.temporal);
    Ok(())
}

impl Bench {
    fn start_worker(&self, path: StepPath) -> anyhow::Result<orders_dev::process::ChildService> {
        let mut command = Command::new(&self.orders_bin);
        command
            .arg("worker")
            .env("ORDERS_STEPS", path.setting())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.point_at(&mut command, path);
        Ok(orders_dev::process::ChildService::spawn(
            &format!("orders worker ({})", path.setting()),
            command,
            nix::sys::signal::Signal::SIGTERM,
        )?)
    }

    /// Points an `orders` command at this deployment and `path`'s task queue.
    fn point_at(&self, command: &mut Command, path: StepPath) {
        common::deployment_env(
            command,
            &self.temporal.address(),
            &path.task_queue(),
            &self.urls,
        );
    }

    /// CPU the shards have used so far, in ms: each postmaster's own, its ended backends'
    /// (counted into it when it reaps them) and its live backends'.
    fn shards_cpu_ms(&self) -> anyhow::Result<f64> {
        let mut total = 0.0;
        for &postmaster in &self.postmasters {
            let stat = ProcStat::read(postmaster)?;
            total += stat.own_ms + stat.reaped_children_ms;
        }
        for entry in std::fs::read_dir("/proc")? {
            let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // A backend may end between the listing and the read: it is then counted in
            // its postmaster's reaped children at the next reading.
            if let Ok(stat) = ProcStat::read(pid)
                && self.postmasters.contains(&stat.parent)
            {
                total += stat.own_ms;
            }
        }
        Ok(total)
    }

    fn worker_pid(&self, path: StepPath) -> u32 {
        self.workers
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, worker)| worker.pid())
            .expect("both workers run")
    }

    /// One `orders load` through `path`'s worker, measured.
    async fn load(
        &self,
        path: StepPath,
        mode: &'static str,
        in_flight: usize,
        orders: u64,
    ) -> anyhow::Result<Cell> {
        let server_pid = self
            .temporal
            .pid()
            .context("the benchmark starts its own server")?;
        let worker_pid = self.worker_pid(path);
        let (server_before, worker_before) = (cpu_ms(server_pid)?, cpu_ms(worker_pid)?);
        let shards_before = self.shards_cpu_ms()?;
        let actions_before = server_actions(self.metrics_port)?;
        let mut load = Command::new(&self.orders_bin);
        load.args(["load", "--orders", &orders.to_string()])
            .args(["--concurrency", &in_flight.to_string()])
            .args(["--consistency", mode])
            .args(["--customers", "100", "--products", "50", "--seed", "42"])
            .arg("--json")
            .stderr(Stdio::null());
        self.point_at(&mut load, path);
        let output = load.output()?;
        let (server_after, worker_after) = (cpu_ms(server_pid)?, cpu_ms(worker_pid)?);
        let shards_after = self.shards_cpu_ms()?;
        let actions = server_actions(self.metrics_port)? - actions_before;
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).with_context(|| {
                format!("orders load ({mode}, {}) printed no report", path.setting())
            })?;
        anyhow::ensure!(
            report["client_errors"].as_u64() == Some(0),
            "orders load ({mode}, {}) met client errors: {report}",
            path.setting()
        );
        let (events, workflow_tasks, sample) = self.history_cost(&report).await?;
        let number = |key: &str| report[key].as_f64().unwrap_or_default();
        let per_order = |total: f64| total / orders as f64;
        Ok(Cell {
            path,
            mode,
            in_flight,
            orders,
            placed: report["placed"].as_u64().unwrap_or_default(),
            orders_per_sec: number("orders_per_sec"),
            p50_ms: number("p50_ms"),
            p95_ms: number("p95_ms"),
            p99_ms: number("p99_ms"),
            worker_cpu_ms: per_order(worker_after - worker_before),
            server_cpu_ms: per_order(server_after - server_before),
            shards_cpu_ms: per_order(shards_after - shards_before),
            events,
            workflow_tasks,
            actions: per_order(actions),
            sample,
        })
    }

    /// Ships `order_ids` through `path`'s task queue (`SetStatus`, 8 at a time), measured.
    async fn ship(&self, path: StepPath, order_ids: &[i64]) -> anyhow::Result<ShipCost> {
        use futures::StreamExt;
        let lifecycles: Vec<String> = order_ids
            .iter()
            .map(|id| orders_workflows::order_lifecycle::workflow_id(*id))
            .collect();
        let (events_before, tasks_before) = self.lifecycle_cost(&lifecycles).await;
        let server_pid = self.temporal.pid().context("own server")?;
        let worker_pid = self.worker_pid(path);
        let (server_before, worker_before) = (cpu_ms(server_pid)?, cpu_ms(worker_pid)?);
        let task_queue = path.task_queue();
        let shipped: Vec<anyhow::Result<_>> = futures::stream::iter(order_ids)
            .map(|id| {
                orders_worker::client::set_order_status(
                    &self.client,
                    &task_queue,
                    *id,
                    orders_entities::order::OrderStatus::Shipped,
                )
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let (server_after, worker_after) = (cpu_ms(server_pid)?, cpu_ms(worker_pid)?);
        for result in shipped {
            result.with_context(|| format!("shipping through {}", path.setting()))?;
        }
        let (events_after, tasks_after) = self.lifecycle_cost(&lifecycles).await;
        let n = order_ids.len().max(1) as f64;
        Ok(ShipCost {
            orders: order_ids.len(),
            server_cpu_ms: (server_after - server_before) / n,
            worker_cpu_ms: (worker_after - worker_before) / n,
            events: (events_after - events_before) as f64 / n,
            workflow_tasks: (tasks_after - tasks_before) as f64 / n,
        })
    }

    /// History events and workflow tasks of these workflows, together; one that does not
    /// exist (a lifecycle not started yet) counts nothing.
    async fn lifecycle_cost(&self, workflow_ids: &[String]) -> (usize, usize) {
        let (mut events, mut tasks) = (0, 0);
        for id in workflow_ids {
            if let Ok((e, t)) = self.history_of(id).await {
                events += e;
                tasks += t;
            }
        }
        (events, tasks)
    }

    /// History events and workflow tasks of `workflow_id`.
    async fn history_of(&self, workflow_id: &str) -> anyhow::Result<(usize, usize)> {
        let history = self
            .client
            .get_workflow_handle::<UntypedWorkflow>(workflow_id)
            .fetch_history(WorkflowFetchHistoryOptions::default())
            .into_events()
            .await
            .with_context(|| format!("cannot read the history of {workflow_id}"))?;
        let tasks = history
            .iter()
            .filter(|e| e.event_type == EventType::WorkflowTaskCompleted as i32)
            .count();
        Ok((history.len(), tasks))
    }

    /// Mean history events and workflow tasks per order over a sample of the load's orders
    /// (PlaceOrder's history, plus the lifecycle's of an order it confirmed, where PlaceOrder
    /// started one), and the sample's placed order ids.
    async fn history_cost(
        &self,
        report: &serde_json::Value,
    ) -> anyhow::Result<(f64, f64, Vec<i64>)> {
        let results = report["results"].as_array().context("no results")?;
        let step = (results.len() / HISTORY_SAMPLE).max(1);
        let sample: Vec<&serde_json::Value> = results.iter().step_by(step).collect();
        let (mut events, mut tasks) = (0usize, 0usize);
        let mut placed = Vec::new();
        for order in &sample {
            let workflow_id = order["workflow_id"].as_str().context("no workflow id")?;
            let (e, t) = self.history_of(workflow_id).await?;
            events += e;
            tasks += t;
            if order["outcome"] == "placed"
                && let Some(order_id) = order["order_id"].as_i64()
            {
                placed.push(order_id);
                let lifecycle = orders_workflows::order_lifecycle::workflow_id(order_id);
                let (e, t) = self.lifecycle_cost(&[lifecycle]).await;
                events += e;
                tasks += t;
            }
        }
        let n = sample.len().max(1) as f64;
        Ok((events as f64 / n, tasks as f64 / n, placed))
    }
}

/// CPU time (user + system) a process has used so far, in ms.
fn cpu_ms(pid: u32) -> anyhow::Result<f64> {
    Ok(ProcStat::read(pid)?.own_ms)
}

/// What `/proc/<pid>/stat` says of a process, as the benchmark reads it.
struct ProcStat {
    parent: u32,
    /// CPU time (user + system) it has used itself, in ms.
    own_ms: f64,
    /// CPU time its children that ended (and were waited for) used, in ms.
    reaped_children_ms: f64,
}

impl ProcStat {
    fn read(pid: u32) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("process {pid} is gone"))?;
        // Fields after the command name (which may hold spaces), numbered from 3 (state):
        // ppid is field 4, utime 14, stime 15, cutime 16, cstime 17.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("unexpected /proc stat")?
            .1
            .split_whitespace()
            .collect();
        let ms = |a: usize, b: usize| -> anyhow::Result<f64> {
            let ticks = fields[a].parse::<u64>()? + fields[b].parse::<u64>()?;
            Ok(ticks as f64 * 1000.0 / TICKS_PER_SEC)
        };
        Ok(Self {
            parent: fields[1].parse()?,
            own_ms: ms(11, 12)?,
            reaped_children_ms: ms(13, 14)?,
        })
    }
}

/// The dev server's `action` counter for the `default` namespace, from its `/metrics`.
fn server_actions(metrics_port: u16) -> anyhow::Result<f64> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", metrics_port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body
        .lines()
        .filter(|line| line.starts_with("action{") && line.contains("namespace=\"default\""))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

fn print_cell(cell: &Cell) {
    println!(
        "  {:<13} {:<9} {:>3}  {:>8.1}  {:>6.0} {:>6.0} {:>6.0}  {:>9.1} {:>9.1} {:>9.1}  {:>6.1} {:>5.1} {:>7.1}  {}/{}",
        cell.path.label(),
        cell.mode,
        cell.in_flight,
        cell.orders_per_sec,
        cell.p50_ms,
        cell.p95_ms,
        cell.p99_ms,
        cell.worker_cpu_ms,
        cell.server_cpu_ms,
        cell.shards_cpu_ms,
        cell.events,
        cell.workflow_tasks,
        cell.actions,
        cell.placed,
        cell.orders
    );
}

fn print_ratios(cells: &[Cell]) {
    println!("  new / old:");
    for mode in MODES {
        for (in_flight, _) in LOADS {
            let find = |path| {
                cells
                    .iter()
                    .find(|c| c.path == path && c.mode == mode && c.in_flight == in_flight)
                    .expect("every cell ran")
            };
            let (old, new) = (find(StepPath::Remote), find(StepPath::Local));
            println!(
                "    {mode:<9} {in_flight:>2} in flight: orders/s {:.2}×  p50 {:.2}×  p99 {:.2}×  server CPU/order {:.2}×  worker CPU/order {:.2}×  shards CPU/order {:.2}×  events {:.2}×  tasks {:.2}×  actions {:.2}×",
                new.orders_per_sec / old.orders_per_sec,
                new.p50_ms / old.p50_ms,
                new.p99_ms / old.p99_ms,
                new.server_cpu_ms / old.server_cpu_ms,
                new.worker_cpu_ms / old.worker_cpu_ms,
                new.shards_cpu_ms / old.shards_cpu_ms,
                new.events / old.events,
                new.workflow_tasks / old.workflow_tasks,
                new.actions / old.actions,
            );
        }
    }
}

/// Orders/s against orders in flight, one line per path and mode.
fn draw(cells: &[Cell], file: &Path) -> anyhow::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let top = cells.iter().map(|c| c.orders_per_sec).fold(0.0, f64::max) * 1.15;
    let root = SVGBackend::new(file, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "PlaceOrder throughput on one Temporal dev server",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((1f64..64f64).log_scale(), 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("orders in flight")
        .y_desc("orders/s")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .light_line_style(RGBColor(238, 238, 238))
        .draw()?;
    let styles = [
        (StepPath::Remote, "saga", RGBColor(200, 90, 40)),
        (StepPath::Remote, "two_phase", RGBColor(230, 160, 60)),
        (StepPath::Local, "saga", RGBColor(30, 90, 200)),
        (StepPath::Local, "two_phase", RGBColor(60, 170, 120)),
    ];
    for (path, mode, color) in styles {
        let points: Vec<(f64, f64)> = cells
            .iter()
            .filter(|c| c.path == path && c.mode == mode)
            .map(|c| (c.in_flight as f64, c.orders_per_sec))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(format!("{mode}, {}", path.label()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
