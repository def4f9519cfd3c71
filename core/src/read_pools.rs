//! The read API's own connections: a few per shard, each statement cut off after a timeout.
//! However many readers there are, and however stuck their shard, they can never hold the
//! connections the order steps wait for, nor keep one of theirs for long. They route by the
//! same shard map as the order steps (see [`Shards::over_pools`]).

use std::time::Duration;

use sea_orm::SqlxPostgresConnector;
use sea_orm::sqlx::postgres::PgPoolOptions;

use crate::shards::Shards;

/// How the read API's pools are sized and bounded.
#[derive(Debug, Clone, Copy)]
pub struct ReadPoolSettings {
    /// Connections per shard, besides the order steps' pool.
    pub connections: u32,
    /// The longest one read statement may run (PostgreSQL's `statement_timeout`).
    pub statement_timeout: Duration,
    /// How long a read waits for a connection (connecting included) before it fails.
    pub acquire_timeout: Duration,
}

impl Default for ReadPoolSettings {
    fn default() -> Self {
        Self {
            connections: 4,
            statement_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(2),
        }
    }
}

/// What the read API's sessions are called in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "orders-read-api";

/// `shards` over lazy pools of their own, opened with the order pools' connect options (the
/// same server, credentials, TLS and lock timeout) plus the statement timeout.
pub fn read_pools(shards: &Shards, settings: ReadPoolSettings) -> Shards {
    let statement_timeout = format!("{}ms", settings.statement_timeout.as_millis());
    let pools = shards
        .iter()
        .map(|shard| {
            let options = (*shard.conn.get_postgres_connection_pool().connect_options())
                .clone()
                .application_name(APPLICATION_NAME)
                .options([("statement_timeout", statement_timeout.as_str())]);
            let pool = PgPoolOptions::new()
                .max_connections(settings.connections)
                .min_connections(0)
                .acquire_timeout(settings.acquire_timeout)
                .connect_lazy_with(options);
            SqlxPostgresConnector::from_sqlx_postgres_pool(pool)
        })
        .collect();
    shards.over_pools(pools)
}
