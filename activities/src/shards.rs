//! One connection pool per shard, and the errors that name the shard they came from.

use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};
use std::time::Duration;

use crate::routing;

/// How each shard's pool is sized.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    /// Upper bound of open connections per shard.
    pub max_connections: u32,
    /// How long a call waits to connect or to get a pooled connection before it fails.
    pub connect_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A database error, tagged with the shard that produced it.
#[derive(Debug, thiserror::Error)]
#[error("shard {shard} ({url}): {source}")]
pub struct ShardError {
    /// 0-based index of the shard in `ORDERS_SHARDS`.
    pub shard: usize,
    /// The shard's URL with any password removed.
    pub url: String,
    /// What went wrong.
    #[source]
    pub source: DbErr,
}

/// One shard: its position, its printable URL and its pool.
#[derive(Debug, Clone)]
pub struct Shard {
    pub index: usize,
    pub url: String,
    pub conn: DatabaseConnection,
}

impl Shard {
    /// Tags `source` with this shard.
    pub fn error(&self, source: DbErr) -> ShardError {
        ShardError {
            shard: self.index,
            url: self.url.clone(),
            source,
        }
    }
}

/// Every shard of the deployment, in `ORDERS_SHARDS` order.
#[derive(Debug, Clone)]
pub struct Shards {
    shards: Vec<Shard>,
}

impl Shards {
    /// Opens a lazy pool per URL: nothing connects until a call needs the shard, so a shard
    /// that is down fails only the calls that touch it.
    pub async fn connect_lazy(urls: &[String], pool: PoolSettings) -> Result<Self, ShardError> {
        assert!(!urls.is_empty(), "at least one shard URL is required");
        let mut shards = Vec::with_capacity(urls.len());
        for (index, url) in urls.iter().enumerate() {
            let mut options = ConnectOptions::new(url.clone());
            options
                .max_connections(pool.max_connections)
                .min_connections(0)
                .connect_timeout(pool.connect_timeout)
                .acquire_timeout(pool.connect_timeout)
                .connect_lazy(true)
                .sqlx_logging(false);
            let url = redact_password(url);
            let conn = Database::connect(options)
                .await
                .map_err(|source| ShardError {
                    shard: index,
                    url: url.clone(),
                    source,
                })?;
            shards.push(Shard { index, url, conn });
        }
        Ok(Self { shards })
    }

    /// How many shards there are.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Always false: a deployment has at least one shard.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// The shard at `index`.
    pub fn get(&self, index: usize) -> &Shard {
        &self.shards[index]
    }

    /// All shards, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Shard> {
        self.shards.iter()
    }

    /// The shard that owns `customer_id`.
    pub fn for_customer(&self, customer_id: i64) -> &Shard {
        self.get(routing::shard_for_customer(customer_id, self.len()))
    }

    /// Closes every pool.
    pub async fn close(self) {
        for shard in self.shards {
            let _ = shard.conn.close().await;
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user@host/db`, for logs and output.
pub fn redact_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_printed_urls() {
        assert_eq!(
            redact_password("postgres://ada:s3cret@db:5432/orders"),
            "postgres://ada@db:5432/orders"
        );
        assert_eq!(
            redact_password("postgres://ada@db/orders"),
            "postgres://ada@db/orders"
        );
    }
}
