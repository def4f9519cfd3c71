//! The test harness: real services started once, and a [`TestApp`] per test.
//!
//! Nothing here is skipped when a service is missing: if PostgreSQL, the `temporal` CLI or
//! the `orders` binary cannot be started, every test fails with the reason.
//! Set `TEST_LOG=1` to see service and worker logs on stderr; they are always written to
//! files under the run's directory in /tmp, whose path failures print.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use orders_activities::PlacedOrder;
use orders_core::shards::PoolSettings;
use orders_core::store::customers::NewCustomer;
use orders_core::store::inventory::Stock;
use orders_core::{Consistency, OrderLine, OrderRequest, RequestedItem, Shards, ValidOrder};
use orders_dev::auto_failover::{FailoverMonitor, FailoverTimings, HaShard};
use orders_dev::process::ChildService;
use orders_dev::{self, PostgresCluster, PostgresOptions, TemporalDevServer, TemporalOptions};
use orders_worker::client::{self, OrderOutcome};
use orders_worker::config::TemporalSettings;
use orders_worker::deployment::migrate;
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use std::str::FromStr;
use temporalio_client::Client;

pub(crate) const SHARD_COUNT: usize = 4;

/// Namespaces created on the test server; each test takes its own, as each deployment owns
/// its namespace (order lifecycle workflow ids are unique per deployment, not globally).
const NAMESPACES: usize = 160;
static NEXT_NAMESPACE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn take_namespace() -> String {
    let n = NEXT_NAMESPACE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    assert!(
        n < NAMESPACES,
        "more than {NAMESPACES} tests: raise NAMESPACES in helpers.rs"
    );
    format!("orders-test-{n}")
}

/// The services shared by every test in this binary.
pub(crate) struct Services {
    pub(crate) root: PathBuf,
    pub(crate) temporal: TemporalDevServer,
    pub(crate) clusters: Vec<PostgresCluster>,
    pub(crate) orders_bin: PathBuf,
}

/// Starts the services on first use. Panics with the reason if they cannot start.
pub(crate) fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(|| {
        start_services()
            .unwrap_or_else(|e| panic!("the real services these tests need did not start: {e:#}"))
    })
}

fn start_services() -> anyhow::Result<Services> {
    let root = std::env::temp_dir().join(format!("orders-tests-{}", std::process::id()));
    remove_stale_runs(&std::env::temp_dir());
    std::fs::create_dir_all(&root)?;
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let orders_bin = orders_binary().to_owned();
    let temporal = TemporalDevServer::start(TemporalOptions {
        port: orders_dev::free_port()?,
        ui_port: Some(orders_dev::free_port()?),
        db_file: None,
        metrics_port: None,
        log_file: root.join("temporal.log"),
        search_attributes: orders_worker::cli::dev::search_attribute_flags(),
        namespaces: (0..NAMESPACES)
            .map(|n| format!("orders-test-{n}"))
            .collect(),
    })?;
    let clusters = (0..SHARD_COUNT)
        .map(|i| {
            Ok(PostgresCluster::start(PostgresOptions {
                data_dir: root.join(format!("shard-{i}")),
                port: orders_dev::free_port()?,
                ephemeral: true,
            })?)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    eprintln!("test services up under {}", root.display());
    Ok(Services {
        root,
        temporal,
        clusters,
        orders_bin,
    })
}

/// Deletes directories of earlier runs whose process is gone.
fn remove_stale_runs(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix("orders-tests-")
            .and_then(|p| p.parse::<u32>().ok())
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The `orders` binary, built (or confirmed up to date) on first use.
pub(crate) fn orders_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        build_orders_binary().unwrap_or_else(|e| panic!("the orders binary is unavailable: {e:#}"))
    })
}

fn build_orders_binary() -> anyhow::Result<PathBuf> {
    // `--workspace`, as the test command builds it: the same features, so no rebuild.
    let status = crate::nested_cargo::cargo()
        .args(["build", "--quiet", "--workspace", "--bin", "orders"])
        .status()
        .context("failed to run cargo build for the orders binary")?;
    anyhow::ensure!(status.success(), "cargo build --bin orders failed");
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("unexpected test binary location")?;
    let bin = profile_dir.join("orders");
    anyhow::ensure!(
        bin.is_file(),
        "the orders binary is not at {}",
        bin.display()
    );
    Ok(bin)
}

/// A new, empty database on `cluster`; its URL.
async fn fresh_database_on(cluster: &PostgresCluster) -> String {
    let database = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    cluster
        .create_database(&database)
        .await
        .expect("test database is created");
    cluster.url(&database)
}

/// One test's world: its own databases on every shard, its own task queue and worker.
pub(crate) struct TestApp {
    pub(crate) shards: Shards,
    pub(crate) shard_urls: Vec<String>,
    pub(crate) task_queue: String,
    pub(crate) client: Client,
    pub(crate) temporal_address: String,
    pub(crate) namespace: String,
    worker: Option<ChildService>,
    worker_log: PathBuf,
    /// Where the current worker serves Prometheus metrics.
    pub(crate) metrics_port: u16,
    /// Where the current worker serves its read API.
    pub(crate) api_port: u16,
    /// Extra environment for the workers this test starts.
    pub(crate) worker_env: Vec<(&'static str, String)>,
}

impl TestApp {
    /// A migrated set of shards and a running worker.
    pub(crate) async fn spawn() -> Self {
        let mut app = Self::spawn_without_worker().await;
        app.start_worker(None);
        app
    }

    /// A migrated set of shards with [`STOCKED_PRODUCTS`] in stock, and no worker yet.
    pub(crate) async fn spawn_without_worker() -> Self {
        Self::migrated_and_stocked(Self::with_empty_databases().await).await
    }

    /// Like [`Self::spawn_without_worker`], but shard `shard` lives on a cluster of its own,
    /// which the test may stop and start (the shared clusters serve every other test).
    pub(crate) async fn spawn_with_own_cluster_for(shard: usize) -> (Self, OwnCluster) {
        let services = services();
        let own = OwnCluster::start().await;
        let clusters: Vec<&PostgresCluster> = services
            .clusters
            .iter()
            .enumerate()
            .map(|(i, c)| if i == shard { &own.cluster } else { c })
            .collect();
        let app = Self::migrated_and_stocked(Self::on_clusters(&clusters).await).await;
        (app, own)
    }

    pub(crate) async fn migrated_and_stocked(app: Self) -> Self {
        migrate::run(&app.shards, migrate::Plan::Up(None))
            .await
            .expect("migrations apply on every shard");
        for id in STOCKED_PRODUCTS {
            app.add_product(id, AMPLE_STOCK).await;
        }
        app
    }

    /// Sets product `id`'s stock on hand, on its shard.
    pub(crate) async fn add_product(&self, id: i64, stock: i32) {
        orders_worker::cli::catalog::products::add(&self.shards, id, None, stock)
            .await
            .expect("product is stocked");
    }

    /// Product `id`'s stock as its shard has it.
    pub(crate) async fn stock(&self, id: i64) -> orders_core::store::inventory::Stock {
        orders_worker::cli::catalog::products::get(&self.shards, id)
            .await
            .expect("stock can be read")
            .unwrap_or_else(|| panic!("product {id} exists"))
    }

    /// Fresh, empty databases on every shard, not migrated.
    pub(crate) async fn with_empty_databases() -> Self {
        let clusters: Vec<&PostgresCluster> = services().clusters.iter().collect();
        Self::on_clusters(&clusters).await
    }

    /// Fresh, empty databases on `clusters` (one per shard), not migrated.
    pub(crate) async fn on_clusters(clusters: &[&PostgresCluster]) -> Self {
        let mut shard_urls = Vec::new();
        for cluster in clusters {
            shard_urls.push(fresh_database_on(cluster).await);
        }
        Self::on_urls(shard_urls).await
    }

    /// Like [`Self::spawn_without_worker`], but shard `shard` is a pg_auto_failover formation
    /// of its own (a primary and a synchronous standby, [`HaCluster`]), given to every
    /// command as a multi-host URL; the other shards are databases on the shared clusters.
    pub(crate) async fn spawn_with_ha_shard(shard: usize) -> (Self, HaCluster) {
        let ha = HaCluster::start().await;
        let mut shard_urls = Vec::new();
        for (i, cluster) in services().clusters.iter().enumerate() {
            shard_urls.push(if i == shard {
                ha.shard.url()
            } else {
                fresh_database_on(cluster).await
            });
        }
        let app = Self::migrated_and_stocked(Self::on_urls(shard_urls).await).await;
        (app, ha)
    }

    /// A test's world over `shard_urls`, whose databases exist and are empty.
    async fn on_urls(shard_urls: Vec<String>) -> Self {
        let services = services();
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let shards = Shards::connect_lazy(
            &shard_urls,
            PoolSettings {
                max_connections: 4,
                connect_timeout: Duration::from_secs(5),
            },
        )
        .await
        .expect("shard pools open");
        let temporal_address = services.temporal.address();
        let namespace = take_namespace();
        let task_queue = format!("orders-test-{id}");
        let client = client::connect(&TemporalSettings {
            address: temporal_address.clone(),
            namespace: namespace.clone(),
            task_queue: task_queue.clone(),
            tls: Default::default(),
        })
        .await
        .expect("client connects to the test Temporal server");
        let worker_log = services.root.join(format!("worker-{id}.log"));
        Self {
            shards,
            shard_urls,
            task_queue,
            client,
            temporal_address,
            namespace,
            worker: None,
            worker_log,
            metrics_port: 0,
            api_port: 0,
            worker_env: Vec::new(),
        }
    }

    /// Adds a shard the way docs/operations.md says: a new database (on one of the shared clusters),
    /// its URL appended to the list, `orders migrate up`. The worker, if running, keeps the
    /// old list until [`Self::restart_worker`].
    pub(crate) async fn add_shard(&mut self) -> usize {
        let index = self.shard_urls.len();
        let cluster = &services().clusters[index % SHARD_COUNT];
        let database = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        cluster
            .create_database(&database)
            .await
            .expect("the new shard's database is created");
        self.shard_urls.push(cluster.url(&database));
        self.shards = Shards::connect_lazy(
            &self.shard_urls,
            PoolSettings {
                max_connections: 4,
                connect_timeout: Duration::from_secs(5),
            },
        )
        .await
        .expect("shard pools open");
        self.cli_ok(&["migrate", "up"]);
        self.shards
            .refresh_map()
            .await
            .expect("the map is readable");
        index
    }

    /// Another `orders worker` on this test's task queue, owned by the caller (no metrics or
    /// read API): a worker to take over from one that is killed.
    pub(crate) fn extra_worker(&self) -> ChildService {
        let mut command = self.orders_command();
        command
            .arg("worker")
            .env("ORDERS_METRICS_ADDR", "off")
            .env("ORDERS_API_ADDR", "off")
            .env("ORDERS_RECOVERY_EVERY_SECS", "3600")
            .envs(self.worker_env.iter().map(|(k, v)| (*k, v.as_str())));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.worker_log.with_extension("extra.log"))
            .expect("worker log opens");
        command
            .stderr(log.try_clone().expect("log handle"))
            .stdout(log)
            .stdin(Stdio::null());
        ChildService::spawn("orders worker", command, Signal::SIGTERM)
            .expect("orders worker starts")
    }

    /// The running worker's process id.
    pub(crate) fn worker_pid(&self) -> Option<u32> {
        self.worker.as_ref().map(ChildService::pid)
    }

    /// Stops the worker and starts a new one with this test's current configuration.
    pub(crate) fn restart_worker(&mut self, failpoints: Option<&str>) {
        if let Some(mut worker) = self.worker.take() {
            worker.kill();
        }
        self.start_worker(failpoints);
    }

    /// The environment every `orders` process of this test runs with.
    pub(crate) fn orders_command(&self) -> Command {
        let mut command = Command::new(&services().orders_bin);
        command
            .env("TEMPORAL_ADDRESS", &self.temporal_address)
            .env("TEMPORAL_NAMESPACE", &self.namespace)
            .env("ORDERS_TASK_QUEUE", &self.task_queue)
            .env("ORDERS_SHARDS", self.shard_urls.join(","))
            .env_remove("ORDERS_FAILPOINTS");
        command
    }

    /// Starts `orders worker` as a separate process, with `failpoints` armed if given.
    pub(crate) fn start_worker(&mut self, failpoints: Option<&str>) {
        let mut command = self.orders_command();
        self.metrics_port = orders_dev::free_port().expect("a free port for metrics");
        self.api_port = orders_dev::free_port().expect("a free port for the read API");
        command
            .arg("worker")
            .env(
                "ORDERS_METRICS_ADDR",
                format!("127.0.0.1:{}", self.metrics_port),
            )
            .env("ORDERS_API_ADDR", format!("127.0.0.1:{}", self.api_port))
            // Long enough that only invalidation can explain a fresh read.
            .env("ORDERS_CACHE_TTL_SECS", "3600")
            // Tests resolve in-doubt transactions themselves, unless they ask otherwise.
            .env("ORDERS_RECOVERY_EVERY_SECS", "3600")
            .envs(self.worker_env.iter().map(|(k, v)| (*k, v.as_str())));
        if let Some(points) = failpoints {
            command.env("ORDERS_FAILPOINTS", points);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.worker_log)
            .expect("worker log opens");
        if std::env::var_os("TEST_LOG").is_some() {
            command.stderr(Stdio::inherit());
        } else {
            command.stderr(log.try_clone().expect("log handle"));
        }
        command.stdout(log).stdin(Stdio::null());
        self.worker = Some(
            ChildService::spawn("orders worker", command, Signal::SIGTERM)
                .expect("orders worker starts"),
        );
    }

    /// Runs `orders worker`, expecting it to refuse to start, and returns its exit status and
    /// stderr. Fails the test if it is still running after 60 s: it started instead.
    pub(crate) fn worker_refusal(&self) -> (std::process::ExitStatus, String) {
        let stderr_path = self.worker_log.with_extension("refusal.log");
        let stderr = std::fs::File::create(&stderr_path).expect("refusal log opens");
        let mut command = self.orders_command();
        command
            .arg("worker")
            .env(
                "ORDERS_METRICS_ADDR",
                format!(
                    "127.0.0.1:{}",
                    orders_dev::free_port().expect("a free port")
                ),
            )
            .env("ORDERS_API_ADDR", "off")
            .envs(self.worker_env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut child = command.spawn().expect("orders worker starts");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().expect("the worker can be waited for") {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the worker was expected to refuse to start, but it ran for 60 s; its log: {}",
                    stderr_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stderr = std::fs::read_to_string(&stderr_path).expect("refusal log reads");
        (status, stderr)
    }

    /// Moves this test to a namespace created now, with none of the search attributes the
    /// harness registers: a namespace prepared by hand. Returns its name.
    pub(crate) async fn use_fresh_namespace(&mut self) -> String {
        let namespace = format!("fresh-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let temporal = &services().temporal;
        let name = namespace.clone();
        tokio::task::block_in_place(|| temporal.create_namespace(&name))
            .expect("the namespace is created");
        self.client = client::connect(&TemporalSettings {
            address: self.temporal_address.clone(),
            namespace: namespace.clone(),
            task_queue: self.task_queue.clone(),
            tls: Default::default(),
        })
        .await
        .expect("client connects to the fresh namespace");
        self.namespace = namespace.clone();
        namespace
    }

    /// Sends the worker SIGTERM, as an orchestrator stopping it would, and returns at once;
    /// [`Self::worker_exits_within`] then says whether it stopped.
    pub(crate) fn terminate_worker(&self) {
        let pid = self.worker.as_ref().expect("a worker was started").pid();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM)
            .expect("SIGTERM reaches the worker");
    }

    /// SIGKILLs the worker: no draining, no goodbye, as a crash would.
    pub(crate) fn kill_worker(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            worker.kill();
        }
    }

    /// Waits up to `timeout` for the worker to exit by itself (e.g. at a failpoint).
    pub(crate) fn worker_exits_within(&mut self, timeout: Duration) -> bool {
        self.worker
            .as_mut()
            .expect("a worker was started")
            .wait_for_exit(timeout)
    }

    /// Where this test's worker logs go.
    pub(crate) fn worker_log(&self) -> &Path {
        &self.worker_log
    }

    /// Runs the `orders` CLI with this test's configuration.
    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        self.orders_command()
            .args(args)
            .output()
            .expect("orders CLI runs")
    }

    /// Runs the `orders` CLI and fails the test, with its stderr, unless it succeeds.
    #[track_caller]
    pub(crate) fn cli_ok(&self, args: &[&str]) -> Output {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "orders {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// This test's shard URLs with shard `down` replaced by a port nothing listens on.
    pub(crate) fn urls_with_shard_down(&self, down: usize) -> Vec<String> {
        let mut urls = self.shard_urls.clone();
        let dead_port = orders_dev::free_port().expect("a free port");
        urls[down] = orders_dev::shard_url(dead_port, "nowhere");
        urls
    }

    /// Pools for this test's shards with shard `down` unreachable (2 s connect timeout).
    pub(crate) async fn shards_with_shard_down(&self, down: usize) -> (Vec<String>, Shards) {
        let urls = self.urls_with_shard_down(down);
        let shards = Shards::connect_lazy(
            &urls,
            PoolSettings {
                max_connections: 2,
                connect_timeout: Duration::from_secs(2),
            },
        )
        .await
        .expect("lazy pools open");
        (urls, shards)
    }

    /// Creates a customer through the store and returns its id.
    pub(crate) async fn add_customer(&self, name: &str, credit_limit: &str) -> i64 {
        let (first_name, last_name) = NewCustomer::split_name(name);
        let new = NewCustomer {
            id: None,
            first_name,
            last_name,
            email: format!("{}@example.com", first_name_lower(name)),
            credit_limit: Decimal::from_str(credit_limit).expect("credit limit is a decimal"),
        };
        orders_worker::cli::catalog::customers::add(&self.shards, new)
            .await
            .expect("customer is added")
            .id
    }

    /// Starts PlaceOrder for `request` and returns its workflow id.
    pub(crate) async fn start_order(&self, request: OrderRequest) -> String {
        let workflow_id = format!("order-{}", uuid::Uuid::new_v4());
        client::start_order(&self.client, &self.task_queue, &workflow_id, &request)
            .await
            .expect("PlaceOrder starts");
        workflow_id
    }

    /// Starts PlaceOrder with `input` sent as it is, valid or not, as a client in another
    /// language may send it; returns its workflow id. For tests of the wire format only:
    /// every other test builds an [`OrderRequest`] with [`order`].
    pub(crate) async fn start_order_raw(&self, input: serde_json::Value) -> String {
        let workflow_id = format!("order-{}", uuid::Uuid::new_v4());
        client::start_order_raw(&self.client, &self.task_queue, &workflow_id, input)
            .await
            .expect("PlaceOrder starts");
        workflow_id
    }

    /// Waits for PlaceOrder `workflow_id` to end, for at most a minute.
    pub(crate) async fn outcome(&self, workflow_id: &str) -> OrderOutcome {
        self.outcome_within(workflow_id, Duration::from_secs(60))
            .await
    }

    /// Waits for PlaceOrder `workflow_id` to end, for at most `limit`.
    pub(crate) async fn outcome_within(&self, workflow_id: &str, limit: Duration) -> OrderOutcome {
        tokio::time::timeout(limit, client::order_outcome(&self.client, workflow_id))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{workflow_id} did not finish within {limit:?}; worker log: {}",
                    self.worker_log.display()
                )
            })
            .expect("the outcome can be read")
    }

    /// Places an order that must be confirmed, and returns it with its workflow id.
    pub(crate) async fn place_confirmed_order(
        &self,
        request: OrderRequest,
    ) -> (String, PlacedOrder) {
        let workflow_id = self.start_order(request).await;
        match self.outcome(&workflow_id).await {
            OrderOutcome::Placed(placed) => (workflow_id, placed),
            other => panic!("expected {workflow_id} to be confirmed, got {other:?}"),
        }
    }

    /// Places an order and waits for its outcome.
    pub(crate) async fn place_order(&self, request: OrderRequest) -> OrderOutcome {
        let workflow_id = self.start_order(request).await;
        self.outcome(&workflow_id).await
    }

    /// Row counts of shard `shard`.
    pub(crate) async fn rows_on_shard(&self, shard: usize) -> ShardRows {
        let row = self
            .shards
            .get(shard)
            .conn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT (SELECT count(*) FROM orders) AS orders,
                        (SELECT count(*) FROM order_items) AS items,
                        (SELECT count(*) FROM credit_holds WHERE status = 'held') AS holds,
                        (SELECT count(*) FROM idempotency_keys) AS keys",
            ))
            .await
            .expect("counts query runs")
            .expect("one row");
        ShardRows {
            orders: row.try_get("", "orders").unwrap(),
            items: row.try_get("", "items").unwrap(),
            held_credit: row.try_get("", "holds").unwrap(),
            idempotency_keys: row.try_get("", "keys").unwrap(),
        }
    }

    /// What shard `shard` holds of customer `customer_id`: wherever its bucket lives now.
    pub(crate) async fn customer_rows_on_shard(
        &self,
        customer_id: i64,
        shard: usize,
    ) -> CustomerRows {
        let row = self
            .count_on_shard(
                shard,
                "SELECT (SELECT count(*) FROM customers WHERE id = $1) AS customers,
                        (SELECT count(*) FROM orders WHERE customer_id = $1) AS orders,
                        (SELECT count(*) FROM orders
                          WHERE customer_id = $1 AND status = 'confirmed') AS confirmed,
                        (SELECT count(*) FROM order_items i JOIN orders o ON o.id = i.order_id
                          WHERE o.customer_id = $1) AS items,
                        (SELECT count(*) FROM credit_holds
                          WHERE customer_id = $1 AND status = 'held') AS holds",
                customer_id,
            )
            .await;
        CustomerRows {
            customer: row.try_get("", "customers").unwrap(),
            orders: row.try_get("", "orders").unwrap(),
            confirmed_orders: row.try_get("", "confirmed").unwrap(),
            items: row.try_get("", "items").unwrap(),
            held_credit: row.try_get("", "holds").unwrap(),
        }
    }

    /// What shard `shard` holds of order `order_id`.
    pub(crate) async fn order_rows_on_shard(&self, order_id: i64, shard: usize) -> OrderRows {
        let row = self
            .count_on_shard(
                shard,
                "SELECT (SELECT count(*) FROM orders WHERE id = $1) AS orders,
                        (SELECT count(*) FROM orders
                          WHERE id = $1 AND status = 'confirmed') AS confirmed,
                        (SELECT count(*) FROM order_items WHERE order_id = $1) AS items,
                        (SELECT count(*) FROM stock_holds WHERE order_id = $1) AS stock_holds",
                order_id,
            )
            .await;
        OrderRows {
            orders: row.try_get("", "orders").unwrap(),
            confirmed: row.try_get("", "confirmed").unwrap(),
            items: row.try_get("", "items").unwrap(),
            stock_holds: row.try_get("", "stock_holds").unwrap(),
        }
    }

    /// Product `product_id`'s stock on shard `shard`, if that shard has the product (whoever
    /// the map says owns it).
    pub(crate) async fn stock_on_shard(&self, product_id: i64, shard: usize) -> Option<Stock> {
        orders_core::store::inventory::find(&self.shards.get(shard).conn, product_id)
            .await
            .expect("stock can be read")
    }

    /// Runs the counts `sql` (one row, `$1` bound to `id`) on shard `shard`.
    async fn count_on_shard(&self, shard: usize, sql: &str, id: i64) -> sea_orm::QueryResult {
        self.shards
            .get(shard)
            .conn
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                [id.into()],
            ))
            .await
            .expect("counts query runs")
            .expect("one row")
    }

    /// The ids of this test's workflows that Temporal's visibility store lists for `query`
    /// now (it lags the histories by a moment).
    pub(crate) async fn workflow_ids(&self, query: &str) -> Vec<String> {
        use futures::StreamExt;
        self.client
            .list_workflows(
                query.to_owned(),
                temporalio_client::WorkflowListOptions::builder().build(),
            )
            .filter_map(|found| async move { found.ok().map(|w| w.id().to_owned()) })
            .collect()
            .await
    }

    /// Row counts of every shard, in order.
    pub(crate) async fn rows_everywhere(&self) -> Vec<ShardRows> {
        let mut all = Vec::new();
        for shard in 0..self.shards.len() {
            all.push(self.rows_on_shard(shard).await);
        }
        all
    }

    /// Writes an order straight to its customer's shard (no workflow), as test data.
    pub(crate) async fn insert_order(&self, customer_id: i64, items: &[(i64, i32, &str)]) -> i64 {
        let order = ValidOrder {
            customer_id,
            items: items
                .iter()
                .map(|&(product_id, quantity, price)| OrderLine {
                    product_id,
                    quantity,
                    unit_price: Decimal::from_str(price).expect("price is a decimal"),
                })
                .collect(),
            notes: None,
            consistency: Default::default(),
        };
        let shard = self.shards.for_customer(customer_id);
        orders_core::store::orders::create_with_items(&shard.conn, &order)
            .await
            .expect("the order is inserted")
            .expect("the customer is on its shard")
    }

    /// The customer's `credit_used`.
    pub(crate) async fn credit_used(&self, customer_id: i64) -> Decimal {
        let shard = self.shards.for_customer(customer_id);
        orders_core::store::customers::find(&shard.conn, customer_id)
            .await
            .expect("customer query runs")
            .expect("customer exists")
            .credit_used
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            worker.kill();
        }
    }
}

fn first_name_lower(name: &str) -> String {
    name.split(' ').next().unwrap_or("someone").to_lowercase()
}

/// `GET path` on 127.0.0.1:`port`; returns the status code and the body.
pub(crate) fn http_get(port: u16, path: &str) -> (u16, String) {
    http_get_with(port, path, None)
}

/// `GET path` with an `Authorization` header, if given.
pub(crate) fn http_get_with(port: u16, path: &str, authorization: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("127.0.0.1:{port} accepts connections: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let authorization = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{authorization}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("the response is text");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head}"));
    (status, body.to_owned())
}

/// A directory under the run's directory that one test owns. Removed when the test passes,
/// kept (with its logs) when it fails. A struct holding servers that run inside it declares it
/// last, so they stop before it goes.
pub(crate) struct TestDir(PathBuf);

impl TestDir {
    /// `<run dir>/<kind>-<8 hex>`, readable by the clusters' OS user.
    pub(crate) fn create(kind: &str) -> Self {
        let path = services().root.join(format!(
            "{kind}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("{} is not created: {e}", path.display()));
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap_or_else(|e| {
                panic!(
                    "{} is not readable by the cluster owner: {e}",
                    path.display()
                )
            });
        Self(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A shard served by a pg_auto_failover formation of its own: a monitor (with the fast
/// timings, so a lost primary is replaced in seconds), a primary and a synchronous standby,
/// which a test may lose, crash and rejoin. One per test that needs it, never four.
pub(crate) struct HaCluster {
    pub(crate) shard: HaShard,
    pub(crate) monitor: FailoverMonitor,
    _dir: TestDir,
}

impl HaCluster {
    async fn start() -> Self {
        let dir = TestDir::create("ha");
        let port = || orders_dev::free_port().expect("a free port");
        let monitor =
            FailoverMonitor::start(&dir.path().join("monitor"), port(), FailoverTimings::fast())
                .await
                .unwrap_or_else(|e| panic!("the pg_auto_failover monitor did not start: {e:#}"));
        let shard = HaShard::start(&monitor, "shard", dir.path(), [port(), port()], true)
            .await
            .unwrap_or_else(|e| panic!("the pg_auto_failover formation did not start: {e:#}"));
        Self {
            shard,
            monitor,
            _dir: dir,
        }
    }

    /// The node the monitor reports primary now.
    pub(crate) async fn primary(&self) -> usize {
        self.shard
            .primary(&self.monitor)
            .await
            .expect("the monitor names a primary")
    }

    /// Loses the primary's node (its keeper and its postgres, as a machine loss) and waits
    /// until the monitor has promoted the other; returns (lost, promoted).
    pub(crate) async fn lose_primary(&mut self) -> (usize, usize) {
        let lost = self.primary().await;
        self.shard.node_mut(lost).lose();
        let promoted = self
            .shard
            .wait_for_primary_other_than(&self.monitor, lost, Duration::from_secs(90))
            .await
            .unwrap_or_else(|e| panic!("no standby was promoted: {e:#}"));
        (lost, promoted)
    }
}

pub(crate) struct OwnCluster {
    cluster: PostgresCluster,
    options: PostgresOptions,
    _dir: TestDir,
}

impl OwnCluster {
    async fn start() -> Self {
        let dir = TestDir::create("own");
        let options = PostgresOptions {
            data_dir: dir.path().join("data"),
            port: orders_dev::free_port().expect("a free port"),
            ephemeral: true,
        };
        Self {
            cluster: start_cluster(options.clone()).await,
            options,
            _dir: dir,
        }
    }

    /// Fast shutdown: sessions end, open transactions roll back, prepared ones survive.
    pub(crate) async fn stop(&mut self) {
        let mut cluster = std::mem::replace(
            &mut self.cluster,
            PostgresCluster::detached(self.options.clone()),
        );
        tokio::task::spawn_blocking(move || cluster.stop())
            .await
            .expect("stop task");
    }

    /// Immediate shutdown (`pg_ctl stop -m immediate`): a crash, recovered from the WAL at
    /// the next start; prepared transactions survive it too.
    pub(crate) async fn crash(&mut self) {
        let mut cluster = std::mem::replace(
            &mut self.cluster,
            PostgresCluster::detached(self.options.clone()),
        );
        tokio::task::spawn_blocking(move || cluster.stop_immediately())
            .await
            .expect("stop task");
    }

    /// The cluster's data directory.
    pub(crate) fn data_dir(&self) -> &Path {
        &self.options.data_dir
    }

    /// Starts the postmaster again on the same data directory and port.
    pub(crate) async fn restart(&mut self) {
        self.cluster = start_cluster(self.options.clone()).await;
    }
}

async fn start_cluster(options: PostgresOptions) -> PostgresCluster {
    tokio::task::spawn_blocking(move || PostgresCluster::start(options))
        .await
        .expect("start task")
        .expect("the test's own cluster starts")
}

/// Products every [`TestApp::spawn`] stocks, so tests can order them.
pub(crate) const STOCKED_PRODUCTS: std::ops::RangeInclusive<i64> = 1..=20;
/// Their stock: more than any test orders.
pub(crate) const AMPLE_STOCK: i32 = 1_000_000;

/// What one shard holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ShardRows {
    pub(crate) orders: i64,
    pub(crate) items: i64,
    pub(crate) held_credit: i64,
    pub(crate) idempotency_keys: i64,
}

/// What one shard holds of one customer (see [`TestApp::customer_rows_on_shard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CustomerRows {
    /// The customer's own row: 0 or 1.
    pub(crate) customer: i64,
    pub(crate) orders: i64,
    /// Those of [`Self::orders`] that are confirmed.
    pub(crate) confirmed_orders: i64,
    /// The items of its orders.
    pub(crate) items: i64,
    /// Its credit holds still `held`.
    pub(crate) held_credit: i64,
}

/// What one shard holds of one order (see [`TestApp::order_rows_on_shard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct OrderRows {
    /// The order's row: 0 or 1.
    pub(crate) orders: i64,
    /// The order's row if it is confirmed: 0 or 1.
    pub(crate) confirmed: i64,
    pub(crate) items: i64,
    /// Its stock holds, whatever their status.
    pub(crate) stock_holds: i64,
}

/// A saga order of customer `customer_id`, no items yet; the [`BuildOrder`] verbs add the
/// rest: `order(42).item(7, 2, "19.99").two_phase()`. What a Rust client sends; a test of
/// the wire format itself sends JSON through [`TestApp::start_order_raw`] instead.
pub(crate) fn order(customer_id: i64) -> OrderRequest {
    OrderRequest {
        customer_id,
        items: Vec::new(),
        notes: None,
        consistency: Consistency::default(),
    }
}

/// `quantity` of product `product_id` at `unit_price`, a decimal such as `"19.99"`.
pub(crate) fn item(product_id: i64, quantity: i64, unit_price: &str) -> RequestedItem {
    RequestedItem {
        product_id,
        quantity,
        unit_price: Decimal::from_str(unit_price)
            .unwrap_or_else(|_| panic!("unit price {unit_price:?} is a decimal"))
            .into(),
    }
}

/// The verbs that build an [`OrderRequest`] started with [`order`].
pub(crate) trait BuildOrder {
    /// Adds `quantity` of `product_id` at `unit_price` (see [`item`]).
    fn item(self, product_id: i64, quantity: i64, unit_price: &str) -> Self;
    /// Places the order in `consistency` mode.
    fn in_mode(self, consistency: Consistency) -> Self;
    /// Places the order with two-phase commit.
    fn two_phase(self) -> Self;
    /// Attaches `notes`.
    fn notes(self, notes: &str) -> Self;
}

impl BuildOrder for OrderRequest {
    fn item(mut self, product_id: i64, quantity: i64, unit_price: &str) -> Self {
        self.items.push(item(product_id, quantity, unit_price));
        self
    }

    fn in_mode(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }

    fn two_phase(self) -> Self {
        self.in_mode(Consistency::TwoPhase)
    }

    fn notes(mut self, notes: &str) -> Self {
        self.notes = Some(notes.to_owned());
        self
    }
}

/// Asserts that `outcome` is a failure of type `failure_type` and returns its message.
#[track_caller]
pub(crate) fn expect_failure(outcome: &OrderOutcome, failure_type: &str) -> String {
    match outcome {
        OrderOutcome::Failed {
            failure_type: actual,
            message,
        } if actual == failure_type => message.clone(),
        other => panic!("expected a {failure_type} failure, got {other:?}"),
    }
}

/// Polls `check` every 100 ms until it gives a value, and returns it; fails the test naming
/// `what` if `limit` passes first.
pub(crate) async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    until(what, limit, async || check().await.ok_or("nothing yet")).await
}

/// [`eventually`] for a check that says what it saw instead of a value: a test that runs out
/// of time fails with the last of those, so it tells why.
pub(crate) async fn until<T, E: std::fmt::Display>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let seen = match check().await {
            Ok(found) => return found,
            Err(seen) => seen,
        };
        assert!(
            std::time::Instant::now() < deadline,
            "{what} within {limit:?}; last seen: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One order of a test's load: what was asked, when it started and ended (since the load
/// began), and how it ended.
pub(crate) struct LoadRecord {
    pub(crate) request: OrderRequest,
    pub(crate) started: Duration,
    pub(crate) ended: Duration,
    pub(crate) outcome: OrderOutcome,
}

/// Places orders `lanes` at a time until `stop`, each lane waiting for its order to end
/// before the next; the n-th order (counting across lanes) is `request(n)`.
pub(crate) async fn run_load(
    app: std::sync::Arc<TestApp>,
    lanes: usize,
    request: std::sync::Arc<dyn Fn(usize) -> OrderRequest + Send + Sync>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    began: std::time::Instant,
) -> Vec<LoadRecord> {
    let lanes = (0..lanes).map(|lane| {
        let (app, request, stop) = (app.clone(), request.clone(), stop.clone());
        tokio::spawn(async move {
            let mut records = Vec::new();
            let mut next = lane;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let asked = request(next);
                next += lanes;
                let started = began.elapsed();
                let id = app.start_order(asked.clone()).await;
                let outcome = app.outcome_within(&id, Duration::from_secs(240)).await;
                records.push(LoadRecord {
                    request: asked,
                    started,
                    ended: began.elapsed(),
                    outcome,
                });
            }
            records
        })
    });
    let mut all = Vec::new();
    for lane in futures::future::join_all(lanes).await {
        all.extend(lane.expect("a load lane"));
    }
    all
}
