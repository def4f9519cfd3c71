//! Connections for reads outside the order steps (the read API, `orders list` and `orders
//! counts`): a few per host of each shard, each statement cut off after a timeout. However
//! many readers there are, and however stuck their shard, they can never hold the
//! connections the order steps wait for, nor keep one of theirs for long. They route by the
//! same shard map as the order steps (see [`Shards::over_pools`]).
//!
//! A shard given as a primary and standbys can serve reads that tolerate staleness from a
//! standby: one whose replay is known to be at most [`ReadPoolSettings::max_lag`] behind
//! ([`crate::primary::HostState::stale_by`]); otherwise, and for every read that must see
//! the latest writes, from the primary.

use std::time::Duration;

use sea_orm::sqlx::ConnectOptions as _;
use sea_orm::sqlx::postgres::PgPoolOptions;
use sea_orm::{DatabaseConnection, SqlxPostgresConnector};

use crate::primary::Role;
use crate::shards::{LOCK_TIMEOUT, Shards};

/// How the read pools are sized and bounded.
#[derive(Debug, Clone, Copy)]
pub struct ReadPoolSettings {
    /// Connections per host, besides the order steps' pool.
    pub connections: u32,
    /// The longest one read statement may run (PostgreSQL's `statement_timeout`).
    pub statement_timeout: Duration,
    /// How long a read waits for a connection (connecting included) before it fails.
    pub acquire_timeout: Duration,
    /// How stale a listing or count may be when read from a standby; `None` reads every
    /// shard's primary (`ORDERS_READ_MAX_LAG_MS`).
    pub max_lag: Option<Duration>,
}

impl Default for ReadPoolSettings {
    fn default() -> Self {
        Self {
            connections: 4,
            statement_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(2),
            max_lag: None,
        }
    }
}

/// What the read pools' sessions are called in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "orders-read-api";

/// Lazy pools of their own for every host of every shard.
#[derive(Debug, Clone)]
pub struct ReadPools {
    shards: Shards,
    /// Per shard, one pool per host, in the order the shard's URL gives them.
    hosts: Vec<Vec<DatabaseConnection>>,
    max_lag: Option<Duration>,
}

impl ReadPools {
    /// Pools for every host of `shards`, opened with each host's connect options (the
    /// shard URL's credentials and TLS) plus the lock and statement timeouts.
    pub fn new(shards: &Shards, settings: ReadPoolSettings) -> Self {
        let statement_timeout = format!("{}ms", settings.statement_timeout.as_millis());
        let hosts = shards
            .iter()
            .map(|shard| {
                (0..shard.hosts.addresses().len())
                    .map(|host| {
                        let options = shard
                            .hosts
                            .host_options(host)
                            .clone()
                            .application_name(APPLICATION_NAME)
                            .disable_statement_logging()
                            .options([
                                ("lock_timeout", LOCK_TIMEOUT),
                                ("statement_timeout", statement_timeout.as_str()),
                            ]);
                        let pool = PgPoolOptions::new()
                            .max_connections(settings.connections)
                            .min_connections(0)
                            .acquire_timeout(settings.acquire_timeout)
                            .connect_lazy_with(options);
                        SqlxPostgresConnector::from_sqlx_postgres_pool(pool)
                    })
                    .collect()
            })
            .collect();
        Self {
            shards: shards.clone(),
            hosts,
            max_lag: settings.max_lag,
        }
    }

    /// The shards over their primaries: for reads that must see every confirmed write (an
    /// order by id, read-your-writes).
    pub fn primaries(&self) -> Shards {
        self.over(|shard| shard.hosts.primary())
    }

    /// The shards over, for each, a standby known to be at most `max_lag` behind (the
    /// freshest if several), else its primary: for listings and counts.
    pub fn within_lag(&self) -> Shards {
        let Some(max_lag) = self.max_lag else {
            return self.primaries();
        };
        self.over(|shard| {
            shard
                .hosts
                .states()
                .iter()
                .enumerate()
                .filter(|(_, host)| host.role == Role::Standby)
                .filter_map(|(i, host)| host.stale_by().map(|stale| (i, stale)))
                .filter(|(_, stale)| *stale <= max_lag)
                .min_by_key(|(_, stale)| *stale)
                .map_or_else(|| shard.hosts.primary(), |(i, _)| i)
        })
    }

    fn over(&self, host_of: impl Fn(&crate::Shard) -> usize) -> Shards {
        let pools = self
            .shards
            .iter()
            .zip(&self.hosts)
            .map(|(shard, hosts)| hosts[host_of(shard)].clone())
            .collect();
        self.shards.over_pools(pools)
    }
}
