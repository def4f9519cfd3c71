//! What the benchmarks share: throwaway PostgreSQL clusters and migrated deployments on them.

use std::path::PathBuf;
use std::time::Duration;

use orders_core::Shards;
use orders_core::shards::PoolSettings;
use orders_dev::{PostgresCluster, PostgresOptions};
use orders_worker::deployment::migrate;

#[path = "../../support/nested_cargo.rs"]
mod nested_cargo;

/// Clusters under a temporary directory, removed on drop.
pub(crate) struct Clusters {
    pub(crate) root: PathBuf,
    pub(crate) clusters: Vec<PostgresCluster>,
}

#[allow(dead_code)] // Not every benchmark starts plain clusters.
impl Clusters {
    /// Starts `count` clusters (fsync off, as in the tests).
    pub(crate) fn start(name: &str, count: usize) -> anyhow::Result<Self> {
        Self::start_with(name, count, true)
    }

    /// Starts `count` clusters; `ephemeral` turns fsync off.
    pub(crate) fn start_with(name: &str, count: usize, ephemeral: bool) -> anyhow::Result<Self> {
        let root = std::env::temp_dir().join(format!("orders-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&root)?;
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        eprintln!(
            "starting {count} PostgreSQL clusters under {}",
            root.display()
        );
        let clusters = (0..count)
            .map(|i| {
                Ok(PostgresCluster::start(PostgresOptions {
                    data_dir: root.join(format!("shard-{i}")),
                    port: orders_dev::free_port()?,
                    ephemeral,
                })?)
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { root, clusters })
    }

    /// A migrated deployment: database `database` on the first `shards` clusters.
    pub(crate) async fn deployment(
        &self,
        database: &str,
        shards: usize,
    ) -> anyhow::Result<(Vec<String>, Shards)> {
        let mut urls = Vec::new();
        for cluster in &self.clusters[..shards] {
            cluster.create_database(database).await?;
            urls.push(cluster.url(database));
        }
        migrated(urls).await
    }
}

/// Pools over `urls`, every shard migrated.
async fn migrated(urls: Vec<String>) -> anyhow::Result<(Vec<String>, Shards)> {
    let pools = Shards::connect_lazy(
        &urls,
        PoolSettings {
            max_connections: 8,
            connect_timeout: Duration::from_secs(5),
        },
    )
    .await?;
    migrate::run(&pools, migrate::Plan::Up(None)).await?;
    Ok((urls, pools))
}

/// The `orders` binary in release mode (what users deploy): `ORDERS_BIN` when set (a binary
/// built beforehand, so running the benchmark compiles nothing), else built here.
#[allow(dead_code)] // Not every benchmark runs a worker.
pub(crate) fn build_release_orders() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ORDERS_BIN") {
        let bin = PathBuf::from(bin);
        anyhow::ensure!(bin.is_file(), "ORDERS_BIN={} is not a file", bin.display());
        return Ok(bin);
    }
    let status = nested_cargo::cargo()
        // `--workspace`, as `cargo bench --workspace` resolves features: no second build.
        .args([
            "build",
            "--release",
            "--quiet",
            "--workspace",
            "--bin",
            "orders",
        ])
        .status()?;
    anyhow::ensure!(status.success(), "cargo build --release of orders failed");
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/orders");
    anyhow::ensure!(bin.is_file(), "no binary at {}", bin.display());
    Ok(bin)
}

/// Points an `orders` command at a benchmark deployment, quietly.
#[allow(dead_code)] // Not every benchmark runs a worker.
pub(crate) fn deployment_env(
    command: &mut std::process::Command,
    temporal_address: &str,
    task_queue: &str,
    urls: &[String],
) {
    command
        .env("TEMPORAL_ADDRESS", temporal_address)
        .env("ORDERS_TASK_QUEUE", task_queue)
        .env("ORDERS_SHARDS", urls.join(","))
        .env("ORDERS_METRICS_ADDR", "off")
        .env("ORDERS_API_ADDR", "off")
        .env("ORDERS_LOG", "warn");
}

/// Starts a release `orders worker` for a benchmark deployment.
#[allow(dead_code)] // Not every benchmark runs a worker.
pub(crate) fn start_worker(
    orders_bin: &std::path::Path,
    temporal_address: &str,
    task_queue: &str,
    urls: &[String],
) -> anyhow::Result<orders_dev::process::ChildService> {
    start_worker_with(orders_bin, temporal_address, task_queue, urls, &[])
}

/// [`start_worker`] with settings of its own (`env`) on top of the deployment's.
#[allow(dead_code)] // Not every benchmark runs a worker.
pub(crate) fn start_worker_with(
    orders_bin: &std::path::Path,
    temporal_address: &str,
    task_queue: &str,
    urls: &[String],
    env: &[(&str, &str)],
) -> anyhow::Result<orders_dev::process::ChildService> {
    let mut command = std::process::Command::new(orders_bin);
    command
        .arg("worker")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    deployment_env(&mut command, temporal_address, task_queue, urls);
    Ok(orders_dev::process::ChildService::spawn(
        "orders worker",
        command,
        nix::sys::signal::Signal::SIGTERM,
    )?)
}

impl Clusters {
    /// A headless Temporal dev server with its default settings (history in memory), its log
    /// beside the clusters, and the search attributes the workflows set.
    #[allow(dead_code)] // Not every benchmark runs Temporal.
    pub(crate) fn temporal(&self) -> anyhow::Result<orders_dev::TemporalDevServer> {
        Ok(orders_dev::TemporalDevServer::start(
            orders_dev::TemporalOptions {
                port: orders_dev::free_port()?,
                ui_port: None,
                db_file: None,
                metrics_port: None,
                log_file: self.root.join("temporal.log"),
                search_attributes: orders_worker::cli::dev::search_attribute_flags(),
                namespaces: vec![],
            },
        )?)
    }
}

impl Drop for Clusters {
    fn drop(&mut self) {
        for cluster in &mut self.clusters {
            cluster.stop();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Shards as pg_auto_failover formations: one monitor, and per shard a primary and a
/// synchronous standby on loopback, each formation's `orders` database reached through a
/// multi-host URL. Fields drop in order: the nodes stop before their monitor.
#[allow(dead_code)] // Not every benchmark runs formations.
pub(crate) struct Formations {
    pub(crate) shards: Vec<orders_dev::auto_failover::HaShard>,
    pub(crate) monitor: orders_dev::auto_failover::FailoverMonitor,
}

#[allow(dead_code)] // Not every benchmark runs formations.
impl Formations {
    /// Starts a monitor with `timings` and `count` formations (`shard0`, `shard1`, …) under
    /// `dir`, one after another; each returns once its standby replicates synchronously.
    /// `ephemeral` turns fsync off on every node, as [`Clusters::start_with`] does.
    pub(crate) async fn start(
        dir: &std::path::Path,
        count: usize,
        timings: orders_dev::auto_failover::FailoverTimings,
        ephemeral: bool,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        std::fs::create_dir_all(dir)?;
        // The cluster owner (an unprivileged user when we are root) must reach its nodes.
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        eprintln!(
            "starting a pg_auto_failover monitor and {count} formations under {}",
            dir.display()
        );
        let monitor = orders_dev::auto_failover::FailoverMonitor::start(
            &dir.join("monitor"),
            orders_dev::free_port()?,
            timings,
        )
        .await
        .context("the pg_auto_failover monitor did not start")?;
        let mut shards = Vec::with_capacity(count);
        for i in 0..count {
            let formation = format!("shard{i}");
            let ports = [orders_dev::free_port()?, orders_dev::free_port()?];
            let shard = orders_dev::auto_failover::HaShard::start(
                &monitor,
                &formation,
                &dir.join(&formation),
                ports,
                ephemeral,
            )
            .await
            .with_context(|| format!("formation {formation} did not start"))?;
            shards.push(shard);
        }
        Ok(Self { shards, monitor })
    }

    /// A migrated deployment over every formation's `orders` database.
    pub(crate) async fn deployment(&self) -> anyhow::Result<(Vec<String>, Shards)> {
        let urls: Vec<String> = self.shards.iter().map(|s| s.url()).collect();
        migrated(urls).await
    }
}
