//! Settings shared by every subcommand, from flags with environment fallbacks.
//! These names are part of the public contract (README, "Public contract").

use std::time::Duration;

use orders_activities::Shards;
use orders_activities::shards::PoolSettings;

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
}

/// The PostgreSQL shards and how to pool connections to them.
#[derive(Debug, Clone, clap::Args)]
pub struct ShardSettings {
    /// Comma-separated PostgreSQL URLs; shard i is the i-th URL. Defaults to the local
    /// shards `orders dev` runs.
    #[arg(long = "shards", env = "ORDERS_SHARDS", value_delimiter = ',')]
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
}

impl ShardSettings {
    /// The configured URLs, or the local dev shards.
    pub fn urls(&self) -> Vec<String> {
        if self.urls.is_empty() {
            crate::local::dev_shard_urls()
        } else {
            self.urls.clone()
        }
    }

    /// Lazily connected pools, one per shard.
    pub async fn connect(&self) -> anyhow::Result<Shards> {
        let pool = PoolSettings {
            max_connections: self.pool_size,
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
        };
        Ok(Shards::connect_lazy(&self.urls(), pool).await?)
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
        if self.addr == "off" {
            return Ok(None);
        }
        let addr = self.addr.parse().map_err(|e| {
            anyhow::anyhow!("ORDERS_METRICS_ADDR {:?} is not host:port: {e}", self.addr)
        })?;
        Ok(Some(addr))
    }
}
