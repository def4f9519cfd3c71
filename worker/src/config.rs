//! Settings shared by every subcommand, from flags with environment fallbacks.
//! These names are part of the public contract (docs/contract.md, "Environment").

use std::time::Duration;

use orders_core::Shards;
use orders_core::read_pools::ReadPoolSettings;
use orders_core::shard_url::split_shard_list;
use orders_core::shards::PoolSettings;
use orders_operations::import::policy::{DEFAULT_MAX_BYTES, ImportPolicy};
use orders_operations::retention::RetentionPolicy;
use orders_read::CacheSettings;
use orders_workflows::idempotency_retention::RetentionSchedule;
use orders_workflows::in_doubt_recovery::RecoverySchedule;

use crate::deployment::shard_identity;

/// Where Temporal is and which task queue the order workflows use.
#[derive(Debug, Clone, clap::Args)]
pub struct TemporalSettings {
    /// Temporal frontend, host:port.
    #[arg(
        long = "temporal-address",
        env = "TEMPORAL_ADDRESS",
        default_value = "127.0.0.1:7233"
    )]
    pub address: String,
    /// Temporal namespace.
    #[arg(
        long = "temporal-namespace",
        env = "TEMPORAL_NAMESPACE",
        default_value = "default"
    )]
    pub namespace: String,
    /// Task queue the worker polls and clients submit to.
    #[arg(
        long = "task-queue",
        env = "ORDERS_TASK_QUEUE",
        default_value = "orders"
    )]
    pub task_queue: String,
    #[command(flatten)]
    pub tls: TemporalTls,
}

/// How to reach a secured Temporal (Temporal Cloud, or a self-hosted frontend behind TLS),
/// with the flags and environment variables the `temporal` CLI uses.
#[derive(Clone, Default, clap::Args)]
pub struct TemporalTls {
    /// Connect over TLS; implied by any setting below.
    #[arg(long = "tls", env = "TEMPORAL_TLS")]
    pub enabled: bool,
    /// Client certificate (PEM) for mutual TLS; needs --tls-key-path.
    #[arg(long = "tls-cert-path", env = "TEMPORAL_TLS_CLIENT_CERT_PATH")]
    pub client_cert: Option<std::path::PathBuf>,
    /// Client private key (PEM) for mutual TLS; needs --tls-cert-path.
    #[arg(long = "tls-key-path", env = "TEMPORAL_TLS_CLIENT_KEY_PATH")]
    pub client_key: Option<std::path::PathBuf>,
    /// CA certificate (PEM) that signed the server's certificate; the system's roots when unset.
    #[arg(long = "tls-ca-path", env = "TEMPORAL_TLS_SERVER_CA_CERT_PATH")]
    pub server_ca: Option<std::path::PathBuf>,
    /// Name the server's certificate must carry, when it is not the address's host.
    #[arg(long = "tls-server-name", env = "TEMPORAL_TLS_SERVER_NAME")]
    pub server_name: Option<String>,
    /// API key, sent as `Authorization: Bearer <key>` (Temporal Cloud); implies TLS.
    #[arg(long = "api-key", env = "TEMPORAL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl TemporalTls {
    /// Whether the connection uses TLS.
    pub fn in_use(&self) -> bool {
        self.enabled
            || self.client_cert.is_some()
            || self.client_key.is_some()
            || self.server_ca.is_some()
            || self.server_name.is_some()
            || self.api_key.is_some()
    }
}

impl std::fmt::Debug for TemporalTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemporalTls")
            .field("enabled", &self.in_use())
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("server_ca", &self.server_ca)
            .field("server_name", &self.server_name)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The PostgreSQL shards and how to pool connections to them.
#[derive(Clone, clap::Args)]
pub struct ShardSettings {
    /// Comma-separated PostgreSQL URLs; shard i is the i-th URL. A shard given as
    /// several hosts (a primary and its standbys) uses libpq's form,
    /// `postgres://user@h1:5432,h2:5432/orders`: a new shard starts only at `postgres://` or
    /// `postgresql://`. Required: `orders dev` prints the value for its local shards. Its
    /// value is never shown: URLs carry passwords.
    #[arg(long = "shards", env = "ORDERS_SHARDS", hide_env_values = true)]
    pub urls: Vec<String>,
    /// Connections per shard pool.
    #[arg(long = "pool-size", env = "ORDERS_POOL_SIZE", default_value_t = 10)]
    pub pool_size: u32,
    /// Seconds to wait for a shard connection before failing the call.
    #[arg(
        long = "connect-timeout",
        env = "ORDERS_CONNECT_TIMEOUT_SECS",
        default_value_t = 5
    )]
    pub connect_timeout_secs: u64,
    /// Seconds between the worker's reads of the shard map (see docs/architecture.md, "Routing").
    #[arg(
        long = "shard-map-refresh",
        env = "ORDERS_SHARD_MAP_REFRESH_SECS",
        default_value_t = 30
    )]
    pub map_refresh_secs: u64,
    /// Milliseconds a listing or count (the read API's, `orders list`, `orders counts`) may
    /// lag the shards' writes when read from a standby; unset, they read each primary.
    #[arg(long = "read-max-lag-ms", env = "ORDERS_READ_MAX_LAG_MS")]
    pub read_max_lag_ms: Option<u64>,
}

/// Without the URLs, which carry passwords.
impl std::fmt::Debug for ShardSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardSettings")
            .field(
                "urls",
                &format_args!("<{} URLs, not shown>", self.urls.len()),
            )
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_secs", &self.connect_timeout_secs)
            .field("map_refresh_secs", &self.map_refresh_secs)
            .field("read_max_lag_ms", &self.read_max_lag_ms)
            .finish()
    }
}

/// How to point a command at the shards `orders dev` runs, in a build that has it.
fn dev_shards_hint() -> String {
    #[cfg(feature = "dev")]
    return format!(
        "; for the local shards `orders dev` runs, that is\n  export ORDERS_SHARDS={}",
        orders_dev::dev_shard_urls().join(",")
    );
    #[cfg(not(feature = "dev"))]
    String::new()
}

impl ShardSettings {
    /// The configured URLs. None configured is an error that says how to configure them:
    /// a deployment must never find itself writing to shards it was not pointed at.
    pub fn urls(&self) -> anyhow::Result<Vec<String>> {
        let urls: Vec<String> = self
            .urls
            .iter()
            .flat_map(|list| split_shard_list(list))
            .collect();
        anyhow::ensure!(
            !urls.is_empty(),
            "ORDERS_SHARDS is not set: set it (or --shards) to the shards' PostgreSQL URLs, comma-separated, shard i being the i-th URL{}",
            dev_shards_hint()
        );
        Ok(urls)
    }

    /// Lazily connected pools, one per shard, routing by the newest stored shard map, once
    /// every shard that answers is the one `ORDERS_SHARDS` says it is (see
    /// [`shard_identity::verify`]): with two URLs swapped, a command would write to, or read
    /// from, the wrong shard.
    pub async fn connect(&self) -> anyhow::Result<Shards> {
        let shards = self.connect_for_worker().await?;
        shard_identity::verify(&shards).await?;
        Ok(shards)
    }

    /// [`Self::connect`] without the identity check, for the worker: its deployment checks
    /// verify identities along with everything else it refuses to start on.
    pub async fn connect_for_worker(&self) -> anyhow::Result<Shards> {
        let shards = self.connect_without_map().await?;
        let refresh = shards.refresh_map().await?;
        for unreachable in &refresh.unreachable {
            tracing::warn!(error = %unreachable, "shard unreachable while reading the shard map");
        }
        Ok(shards)
    }

    /// Lazily connected pools routing by the initial map, for commands that must work before
    /// any map is stored (migrations) or while shards are down (the shard report).
    pub async fn connect_without_map(&self) -> anyhow::Result<Shards> {
        Ok(Shards::connect_lazy(&self.urls()?, self.pool()).await?)
    }

    /// How the read pools are bounded: the defaults, with `ORDERS_READ_MAX_LAG_MS`.
    pub fn reads(&self) -> ReadPoolSettings {
        ReadPoolSettings {
            max_lag: self.read_max_lag_ms.map(Duration::from_millis),
            ..ReadPoolSettings::default()
        }
    }

    /// How often the worker re-reads the shard map.
    pub fn map_refresh(&self) -> Duration {
        Duration::from_secs(self.map_refresh_secs.max(1))
    }

    fn pool(&self) -> PoolSettings {
        PoolSettings {
            max_connections: self.pool_size,
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
        }
    }
}

/// The worker's HTTP read API and the order cache behind it.
#[derive(Debug, Clone, clap::Args)]
pub struct ReadApiSettings {
    /// Address of the read API (`/orders/{id}`, `/orders`, ...); `off` disables it.
    #[arg(
        long = "api-addr",
        env = "ORDERS_API_ADDR",
        default_value = "127.0.0.1:9465"
    )]
    pub api_addr: String,
    /// Orders the cache holds at most.
    #[arg(
        long = "cache-capacity",
        env = "ORDERS_CACHE_CAPACITY",
        default_value_t = 10_000
    )]
    pub cache_capacity: u64,
    /// Seconds a cached order lives; the most a read can lag another worker's write.
    #[arg(
        long = "cache-ttl",
        env = "ORDERS_CACHE_TTL_SECS",
        default_value_t = 30
    )]
    pub cache_ttl_secs: u64,
    /// When set, every read API request needs `Authorization: Bearer <token>`.
    #[arg(long = "api-token", env = "ORDERS_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ReadApiSettings {
    /// The token requests must carry, if one is configured.
    pub fn token(&self) -> anyhow::Result<Option<crate::api::ApiToken>> {
        self.token
            .as_deref()
            .map(crate::api::ApiToken::new)
            .transpose()
    }

    /// The socket address, or `None` when the API is off.
    pub fn socket_addr(&self) -> anyhow::Result<Option<std::net::SocketAddr>> {
        parse_addr("ORDERS_API_ADDR", &self.api_addr)
    }

    pub fn cache(&self) -> CacheSettings {
        CacheSettings {
            capacity: self.cache_capacity,
            ttl: Duration::from_secs(self.cache_ttl_secs),
        }
    }
}

/// The in-doubt recovery every worker keeps running (see `orders recover`).
#[derive(Debug, Clone, clap::Args)]
pub struct RecoverySettings {
    /// Seconds between two recovery passes.
    #[arg(
        long = "recovery-every",
        env = "ORDERS_RECOVERY_EVERY_SECS",
        default_value_t = 60
    )]
    pub every_secs: u64,
    /// Seconds a prepared transaction of an unknown workflow run is left alone.
    #[arg(
        long = "recovery-grace",
        env = "ORDERS_RECOVERY_GRACE_SECS",
        default_value_t = 300
    )]
    pub grace_secs: u64,
}

impl RecoverySettings {
    pub fn schedule(&self) -> RecoverySchedule {
        RecoverySchedule {
            every_secs: self.every_secs.max(1),
            grace_secs: self.grace_secs,
        }
    }
}

/// The idempotency-key retention every worker keeps running.
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionSettings {
    /// Days an idempotency key is kept at least; older ones go once their workflow is no
    /// longer running. Keep it above the namespace's workflow retention.
    #[arg(
        long = "idempotency-retention-days",
        env = "ORDERS_IDEMPOTENCY_RETENTION_DAYS",
        default_value_t = 40
    )]
    pub retention_days: u32,
    /// Seconds between two retention passes.
    #[arg(
        long = "retention-every",
        env = "ORDERS_RETENTION_EVERY_SECS",
        default_value_t = 3600
    )]
    pub retention_every_secs: u64,
}

impl RetentionSettings {
    pub fn schedule(&self) -> RetentionSchedule {
        RetentionSchedule {
            every_secs: self.retention_every_secs.max(1),
            policy: RetentionPolicy {
                older_than_days: self.retention_days,
            },
        }
    }
}

/// How new orders run their database steps (see `orders_workflows::steps`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StepPlacement {
    /// As local activities, inside the order's workflow task: one task per order.
    #[default]
    Local,
    /// As activities of their own, one server round trip each (orders before the change ran
    /// so; kept to compare, and for a rolling upgrade from workers that do not know it).
    Remote,
}

/// Where the worker runs new orders' steps.
#[derive(Debug, Clone, clap::Args)]
pub struct StepSettings {
    /// `local` or `remote`. Only orders this worker starts follow it: a history follows what
    /// it recorded, whichever worker replays it.
    #[arg(
        long = "steps",
        env = "ORDERS_STEPS",
        value_enum,
        default_value_t = StepPlacement::Local
    )]
    pub steps: StepPlacement,
}

/// How the worker stops on SIGTERM or Ctrl-C.
#[derive(Debug, Clone, clap::Args)]
pub struct ShutdownSettings {
    /// Seconds in-flight tasks get to finish after SIGTERM; then activities still running are
    /// cancelled and the worker exits (Temporal hands their tasks to another worker).
    #[arg(
        long = "shutdown-grace",
        env = "ORDERS_SHUTDOWN_GRACE_SECS",
        default_value_t = 30
    )]
    pub shutdown_grace_secs: u64,
}

impl ShutdownSettings {
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

/// Which files the worker's imports may read: a workflow input is client data, so only what
/// the operator put in one directory.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportSettings {
    /// The directory import files are read from (relative paths too); unset, the worker
    /// refuses every import.
    #[arg(long = "import-dir", env = "ORDERS_IMPORT_DIR")]
    pub import_dir: Option<std::path::PathBuf>,
    /// The largest import file accepted, in bytes.
    #[arg(long = "import-max-bytes", env = "ORDERS_IMPORT_MAX_BYTES", default_value_t = DEFAULT_MAX_BYTES)]
    pub import_max_bytes: u64,
}

impl ImportSettings {
    /// The policy these settings describe.
    pub fn policy(&self) -> ImportPolicy {
        ImportPolicy::from_settings(
            self.import_dir.clone(),
            Some(&self.import_max_bytes.to_string()),
        )
    }
}

/// Where the worker serves Prometheus metrics.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsSettings {
    /// Address for `/metrics`; `off` disables the endpoint.
    #[arg(
        long = "metrics-addr",
        env = "ORDERS_METRICS_ADDR",
        default_value = "127.0.0.1:9464"
    )]
    pub addr: String,
}

impl MetricsSettings {
    /// The socket address, or `None` when metrics are off.
    pub fn socket_addr(&self) -> anyhow::Result<Option<std::net::SocketAddr>> {
        parse_addr("ORDERS_METRICS_ADDR", &self.addr)
    }
}

/// `host:port`, or `None` for `off`.
fn parse_addr(variable: &str, addr: &str) -> anyhow::Result<Option<std::net::SocketAddr>> {
    if addr == "off" {
        return Ok(None);
    }
    let parsed = addr
        .parse()
        .map_err(|e| anyhow::anyhow!("{variable} {addr:?} is not host:port or off: {e}"))?;
    Ok(Some(parsed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        shards: ShardSettings,
    }

    #[test]
    fn debug_output_never_shows_the_shard_urls() {
        let parsed = Command::parse_from(["orders", "--shards", "postgres://o:hunter2@db/orders"]);
        assert!(!format!("{parsed:?}").contains("hunter2"), "{parsed:?}");
    }
}

/// Where pgBackRest keeps the shards' backups: its configuration file, holding a stanza
/// `shard-<i>` for shard i (see docs/operations.md, "Backups and restores").
#[derive(Debug, Clone, clap::Args)]
pub struct BackupSettings {
    /// pgBackRest's configuration file for this deployment's shards.
    #[arg(long = "pgbackrest-config", env = "ORDERS_PGBACKREST_CONFIG")]
    pub pgbackrest_config: Option<std::path::PathBuf>,
}

impl BackupSettings {
    /// The repository the configuration describes; unset is an error that says what to set.
    pub fn repository(&self) -> anyhow::Result<orders_backup::pgbackrest::Repository> {
        let Some(config) = &self.pgbackrest_config else {
            anyhow::bail!(
                "ORDERS_PGBACKREST_CONFIG is not set: set it (or --pgbackrest-config) to the pgBackRest configuration file that has a stanza shard-<i> for each shard (docs/operations.md, \"Backups and restores\")"
            );
        };
        Ok(orders_backup::pgbackrest::Repository::open(config.clone())?)
    }
}
