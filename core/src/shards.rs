//! One connection pool per shard, the shard map that routes to them, and the errors that
//! name the shard they came from.

use futures::future::join_all;
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::Notify;

use crate::primary::ShardHosts;
use crate::shard_map::ShardMap;
use crate::{shard_url, store};

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

/// The longest any statement of ours waits for a row lock before failing (and its step being
/// retried): shorter than the steps' start-to-close timeout (5 s), so a blocked step fails
/// by itself, and bounds how long an attempt Temporal gave up on can hold what it claimed.
/// Prepared two-phase parts keep their locks until they are resolved; that resolution never
/// queues behind the work it unblocks, since it has its own connections ([`Shard::resolver`]).
pub const LOCK_TIMEOUT: &str = "3s";

/// What the order steps' sessions (and every other write) are called in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "orders";

/// Connections per shard reserved for phase two of two-phase commit (COMMIT PREPARED,
/// ROLLBACK PREPARED and their bookkeeping).
pub const RESOLVER_CONNECTIONS: u32 = 3;

/// How long [`Shards::through_moves`] keeps trying a write a bucket's fence refuses: a
/// freeze lasts well under a second (see docs/operations.md, "Growing and shrinking a deployment").
pub const THROUGH_MOVES_FOR: Duration = Duration::from_secs(30);

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

/// One shard: its position, its printable URL and its pools.
#[derive(Debug, Clone)]
pub struct Shard {
    pub index: usize,
    pub url: String,
    /// Every forward step, read and maintenance statement.
    pub conn: DatabaseConnection,
    /// Phase two only. Steps waiting for a row that a prepared part holds each keep a
    /// connection of `conn` while they wait; if they took all of them, the COMMIT PREPARED
    /// that would release the row could not get one, and everything would stall until the
    /// waiters timed out. With its own few connections, phase two never waits for them.
    pub resolver: DatabaseConnection,
    /// Shared by every shard: woken when a shard refuses a write because the bucket moved,
    /// so the worker re-reads the map before the step's retry.
    map_stale: Arc<Notify>,
    /// Whether the last ping ([`Shard::answers`]) found the shard down.
    seems_down: Arc<AtomicBool>,
    /// The shard's hosts (one, or a primary and its standbys) and which is primary now.
    pub hosts: Arc<ShardHosts>,
}

/// How long [`Shard::answers`] waits for a shard.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

impl Shard {
    /// Whether the shard's primary answers a ping within [`PING_TIMEOUT`]: how a failing step
    /// tells a shard that is down (wait for it, release what is held meanwhile) from an
    /// error of its own. Asked on a connection of its own ([`ShardHosts::primary_answers`]),
    /// so a crashed shard is known in a millisecond and a busy one is not taken for down.
    /// Remembered for [`Shard::seems_down`].
    pub async fn answers(&self) -> bool {
        let up = tokio::time::timeout(PING_TIMEOUT, self.hosts.primary_answers())
            .await
            .unwrap_or(false);
        self.seems_down.store(!up, Ordering::Relaxed);
        up
    }

    /// Whether the last ping found the shard down (the worker pings every shard every two
    /// seconds): a step that would hold rows elsewhere while it waits for this shard fails at
    /// once instead of paying the connect timeout first.
    pub fn seems_down(&self) -> bool {
        self.seems_down.load(Ordering::Relaxed)
    }

    /// Tags `source` with this shard. A refusal by a bucket fence also asks for the shard
    /// map to be read again ([`Shards::map_stale`]).
    pub fn error(&self, source: DbErr) -> ShardError {
        if store::fences::is_refusal(&source) {
            self.map_stale.notify_one();
        } else if may_have_lost_primary(&source) {
            if lost_connection(&source) {
                // Until the next ping says otherwise: steps that would hold rows elsewhere
                // stop trying this shard now, not after their connect timeout.
                self.seems_down.store(true, Ordering::Relaxed);
            }
            self.hosts.suspect_primary();
        }
        ShardError {
            shard: self.index,
            url: self.url.clone(),
            source,
        }
    }
}

/// Every shard of the deployment, in `ORDERS_SHARDS` order, and the current shard map.
/// Clones share the pools and the map.
#[derive(Debug, Clone)]
pub struct Shards {
    shards: Vec<Shard>,
    map: Arc<RwLock<Arc<ShardMap>>>,
    map_stale: Arc<Notify>,
}

/// What [`Shards::refresh_map`] found.
#[derive(Debug)]
pub struct MapRefresh {
    /// The version in use afterwards.
    pub version: i32,
    /// Whether that version is newer than the one in use before.
    pub changed: bool,
    /// Shards that could not be asked; the map came from the others.
    pub unreachable: Vec<ShardError>,
}

/// Why the shard map could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("no shard is reachable to read the shard map from:\n  {}", list(.0))]
    NoShardReachable(Vec<ShardError>),
    #[error(transparent)]
    Invalid(#[from] crate::shard_map::InvalidShardMap),
}

fn list(errors: &[ShardError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n  ")
}

impl Shards {
    /// Opens a lazy pool per URL: nothing connects until a call needs the shard, so a shard
    /// that is down fails only the calls that touch it.
    pub async fn connect_lazy(urls: &[String], pool: PoolSettings) -> Result<Self, ShardError> {
        assert!(!urls.is_empty(), "at least one shard URL is required");
        let mut shards = Vec::with_capacity(urls.len());
        let map_stale = Arc::new(Notify::new());
        let hosts_of_shards = urls
            .iter()
            .enumerate()
            .map(|(index, url)| {
                ShardHosts::new(index, url).map_err(|e| ShardError {
                    shard: index,
                    url: printable_url(url),
                    source: DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e.into())),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Side by side: a shard whose host is down costs the others nothing.
        join_all(hosts_of_shards.iter().map(|hosts| hosts.find_primary())).await;
        for ((index, url), hosts) in urls.iter().enumerate().zip(hosts_of_shards) {
            let printable = printable_url(url);
            let primary_url = shard_url::host_urls(url).swap_remove(hosts.primary());
            let connect = |connections: u32| {
                let mut options = ConnectOptions::new(primary_url.clone());
                let keep_on_primary = hosts.clone();
                options
                    .max_connections(connections)
                    .min_connections(0)
                    .connect_timeout(pool.connect_timeout)
                    .acquire_timeout(pool.connect_timeout)
                    .connect_lazy(true)
                    .sqlx_logging(false)
                    .map_sqlx_postgres_opts(|opts| {
                        opts.application_name(APPLICATION_NAME)
                            .options([("lock_timeout", LOCK_TIMEOUT)])
                    })
                    .map_sqlx_postgres_pool_opts(move |opts| keep_on_primary.keep_on_primary(opts));
                let url = printable.clone();
                let hosts = hosts.clone();
                async move {
                    let conn = Database::connect(options)
                        .await
                        .map_err(|source| ShardError {
                            shard: index,
                            url,
                            source,
                        })?;
                    hosts.follow(conn.get_postgres_connection_pool());
                    Ok::<_, ShardError>(conn)
                }
            };
            let conn = connect(pool.max_connections).await?;
            let resolver = connect(RESOLVER_CONNECTIONS).await?;
            hosts.spawn_follower();
            shards.push(Shard {
                index,
                url: printable,
                conn,
                resolver,
                map_stale: map_stale.clone(),
                seems_down: Arc::default(),
                hosts,
            });
        }
        let map = Arc::new(RwLock::new(Arc::new(ShardMap::unstored(urls.len()))));
        Ok(Self {
            shards,
            map,
            map_stale,
        })
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

    /// The shard map in use. Until [`Self::refresh_map`] reads a stored one, this is
    /// [`ShardMap::unstored`]: the layout `orders migrate up` stores as version 1.
    pub fn map(&self) -> Arc<ShardMap> {
        self.map.read().expect("shard map lock").clone()
    }

    /// Resolves when a shard refused a write to a bucket that moved (or is moving) since the
    /// last one: the map in use may be stale, and the worker reads it again at once.
    pub async fn map_stale(&self) {
        self.map_stale.notified().await
    }

    /// The shard that owns `customer_id` under the current map.
    pub fn for_customer(&self, customer_id: i64) -> &Shard {
        self.get(self.map().shard_for(customer_id))
    }

    /// The shard that owns `product_id`'s stock: products use the customers' buckets and map.
    pub fn for_product(&self, product_id: i64) -> &Shard {
        self.for_customer(product_id)
    }

    /// The shard that holds `order_id`: its customer's, named by the bucket the id carries.
    pub fn for_order(&self, order_id: i64) -> &Shard {
        self.for_customer(order_id)
    }

    /// Runs `write` (which routes by [`Self::map`] each time it is called) until no bucket's
    /// fence refuses it: a write that meets a bucket frozen for its cut-over, or moved away,
    /// is tried again on the map read again, for up to [`THROUGH_MOVES_FOR`]. For writes
    /// outside activities (the CLI's), which Temporal does not retry.
    pub async fn through_moves<T>(
        &self,
        mut write: impl AsyncFnMut(&Self) -> Result<T, ShardError>,
    ) -> Result<T, ShardError> {
        let started = std::time::Instant::now();
        loop {
            match write(self).await {
                Err(e)
                    if store::fences::is_refusal(&e.source)
                        && started.elapsed() < THROUGH_MOVES_FOR =>
                {
                    tracing::info!(error = %e, "a bucket is moving: reading the shard map again");
                    if let Err(map) = self.refresh_map().await {
                        tracing::warn!(error = %map, "cannot read the shard map");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                done => return done,
            }
        }
    }

    /// Adopts the highest map version any reachable shard holds, if it is newer than the
    /// one in use, and stores it on the reachable shards that lack it: a cut-over stores its
    /// map only on the two shards it needs, and the others catch up here. Fails only when no
    /// shard answers or the stored map does not fit the configured shards.
    pub async fn refresh_map(&self) -> Result<MapRefresh, MapError> {
        let answers = join_all(self.shards.iter().map(|shard| async move {
            store::shard_map::latest(&shard.conn)
                .await
                .map_err(|e| shard.error(e))
        }))
        .await;
        let mut newest: Option<(i32, Vec<u16>)> = None;
        let mut held = Vec::new();
        let mut unreachable = Vec::new();
        for (shard, answer) in self.shards.iter().zip(answers) {
            match answer {
                Ok(found) => {
                    held.push((shard, found.as_ref().map_or(0, |(v, _)| *v)));
                    if let Some(found) = found
                        && newest.as_ref().is_none_or(|(v, _)| found.0 > *v)
                    {
                        newest = Some(found);
                    }
                }
                Err(e) => unreachable.push(e),
            }
        }
        if held.is_empty() {
            return Err(MapError::NoShardReachable(unreachable));
        }
        let changed = match newest {
            Some((version, owners)) => {
                let stored = ShardMap::from_stored(version, owners, self.len())?;
                let lagging: Vec<&Shard> = held
                    .iter()
                    .filter(|(_, v)| *v < version)
                    .map(|(shard, _)| *shard)
                    .collect();
                spread(&lagging, &stored).await;
                let mut current = self.map.write().expect("shard map lock");
                // Under the lock, so two refreshes cannot move the version backwards.
                if stored.version() > current.version() {
                    // The first read replaces the placeholder (version 0): not news.
                    if current.version() == 0 {
                        tracing::debug!(version, "shard map loaded");
                    } else {
                        tracing::info!(from = current.version(), to = version, "shard map updated");
                    }
                    *current = Arc::new(stored);
                    true
                } else {
                    false
                }
            }
            None => false,
        };
        Ok(MapRefresh {
            version: self.map().version(),
            changed,
            unreachable,
        })
    }

    /// Stores the map in use on every shard that lacks it: version 1 on a fresh deployment,
    /// else the newest version read by [`Self::refresh_map`] (run that first). Run after
    /// migrating; safe to repeat, as a stored version is never overwritten.
    pub async fn publish_map(&self) -> Result<i32, ShardError> {
        let map = {
            let mut current = self.map.write().expect("shard map lock");
            if current.version() == 0 {
                *current = Arc::new(ShardMap::initial(self.len()));
            }
            current.clone()
        };
        for result in self.store_map(&map).await {
            result?;
        }
        Ok(map.version())
    }

    /// Adopts `next` (a version above the one in use) and stores it on every shard; only
    /// the shards in `required` must take it (a cut-over's source and target), the others
    /// get it from the next [`Self::refresh_map`] that reaches them. Safe to repeat.
    pub async fn publish_next(
        &self,
        next: ShardMap,
        required: &[usize],
    ) -> Result<i32, ShardError> {
        let map = {
            let mut current = self.map.write().expect("shard map lock");
            if next.version() > current.version() {
                tracing::info!(
                    from = current.version(),
                    to = next.version(),
                    "shard map updated"
                );
                *current = Arc::new(next);
            }
            current.clone()
        };
        for (shard, result) in self.shards.iter().zip(self.store_map(&map).await) {
            match result {
                Err(e) if required.contains(&shard.index) => return Err(e),
                Err(e) => tracing::warn!(
                    shard = shard.index,
                    version = map.version(),
                    error = %e,
                    "shard map not stored on a shard this move does not involve; it gets it once it answers"
                ),
                Ok(()) => {}
            }
        }
        Ok(map.version())
    }

    /// Stores `map` on every shard, each shard's result in `ORDERS_SHARDS` order.
    async fn store_map(&self, map: &ShardMap) -> Vec<Result<(), ShardError>> {
        join_all(self.shards.iter().map(|shard| async move {
            store::shard_map::publish(&shard.conn, map)
                .await
                .map_err(|e| shard.error(e))
        }))
        .await
    }

    /// The same shards, sharing this map, over `pools` (one per shard, in order) instead of
    /// these: how the read API gets connections the order steps never wait for
    /// ([`crate::read_pools`]).
    pub fn over_pools(&self, pools: Vec<DatabaseConnection>) -> Self {
        assert_eq!(pools.len(), self.len(), "one pool per shard");
        let shards = self
            .shards
            .iter()
            .zip(pools)
            .map(|(shard, pool)| Shard {
                conn: pool.clone(),
                resolver: pool,
                ..shard.clone()
            })
            .collect();
        Self {
            shards,
            map: self.map.clone(),
            map_stale: self.map_stale.clone(),
        }
    }

    /// Closes every pool.
    pub async fn close(self) {
        for shard in self.shards {
            let _ = shard.conn.close().await;
            let _ = shard.resolver.close().await;
        }
    }
}

/// Stores `map` on `shards`, which answered with an older version; a failure is left for
/// the next refresh.
async fn spread(shards: &[&Shard], map: &ShardMap) {
    for shard in shards {
        match store::shard_map::publish(&shard.conn, map).await {
            Ok(()) => tracing::info!(
                shard = shard.index,
                version = map.version(),
                "newest shard map stored on a shard that lacked it"
            ),
            Err(e) => tracing::debug!(shard = shard.index, error = %e, "shard map not spread"),
        }
    }
}

/// Whether `e` may mean the shard's primary is gone or is no longer primary: the connection
/// failed, or a write met a read-only server (SQLSTATE 25006, a demoted primary).
fn may_have_lost_primary(e: &DbErr) -> bool {
    match e {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => match e.as_database_error() {
            Some(db) => db.code().is_some_and(|code| code == READ_ONLY_SQLSTATE),
            None => true,
        },
        _ => false,
    }
}

/// Whether `e` says the connection to the shard broke: reset or refused, or the server
/// shutting down under it (SQLSTATE classes 57P and 08). A pool that is only busy (an acquire
/// timeout) is not.
fn lost_connection(e: &DbErr) -> bool {
    let sqlx = match e {
        DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::ConnectionClosed) => return true,
        DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => e,
        _ => return false,
    };
    match &**sqlx {
        sea_orm::sqlx::Error::Io(_) | sea_orm::sqlx::Error::Tls(_) => true,
        sea_orm::sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("57P") || code.starts_with("08")),
        _ => false,
    }
}

/// `read_only_sql_transaction`: a write sent to a standby.
const READ_ONLY_SQLSTATE: &str = "25006";

/// A shard URL fit for logs and output, multi-host ones included (see [`redact_password`]).
pub(crate) fn printable_url(url: &str) -> String {
    let addresses = shard_url::host_addresses(url);
    if addresses.len() < 2 {
        return redact_password(url);
    }
    let first = redact_password(&shard_url::host_urls(url)[0]);
    first.replacen(&addresses[0], &addresses.join(","), 1)
}

/// Query parameters of a PostgreSQL URL that carry secrets.
const SECRET_PARAMETERS: [&str; 2] = ["password", "sslpassword"];

/// A shard URL fit for logs and output: `postgres://user:secret@host/db?password=x` →
/// `postgres://user@host/db?password=***`. A URL that does not parse is not printed at all,
/// since where its secret would be cannot be known.
pub(crate) fn redact_password(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<a shard URL that does not parse>".to_owned();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(None);
    }
    if parsed
        .query_pairs()
        .any(|(key, _)| SECRET_PARAMETERS.contains(&&*key))
    {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| {
                let value = if SECRET_PARAMETERS.contains(&&*key) {
                    "***".to_owned()
                } else {
                    value.into_owned()
                };
                (key.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_connection_marks_a_shard_down_and_a_busy_pool_does_not() {
        let io = |kind| {
            DbErr::Query(sea_orm::RuntimeErr::SqlxError(Arc::new(
                sea_orm::sqlx::Error::Io(std::io::Error::from(kind)),
            )))
        };
        assert!(lost_connection(&io(std::io::ErrorKind::ConnectionRefused)));
        assert!(lost_connection(&io(std::io::ErrorKind::UnexpectedEof)));
        assert!(lost_connection(&DbErr::ConnectionAcquire(
            sea_orm::error::ConnAcquireErr::ConnectionClosed
        )));
        assert!(!lost_connection(&DbErr::ConnectionAcquire(
            sea_orm::error::ConnAcquireErr::Timeout
        )));
        assert!(!lost_connection(&DbErr::Custom("constraint".into())));
    }

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
        assert_eq!(
            redact_password(
                "postgres://ada@db/orders?sslmode=verify-full&password=s3cret&sslpassword=k3y"
            ),
            "postgres://ada@db/orders?sslmode=verify-full&password=***&sslpassword=***"
        );
        assert!(!redact_password("postgres://ada:s3cret@[db/orders").contains("s3cret"));
    }

    #[test]
    fn a_multi_host_url_is_printed_with_every_host_and_no_password() {
        assert_eq!(
            printable_url(
                "postgres://ada:s3cret@10.0.0.1:5432,10.0.0.2:5432/orders?target_session_attrs=read-write&password=x"
            ),
            "postgres://ada@10.0.0.1:5432,10.0.0.2:5432/orders?password=***"
        );
    }
}
