//! Which host of a shard is its primary, followed through promotions.
//!
//! A shard given as several hosts (a primary and its standbys under a failover engine, see
//! docs/decisions/failover-engine.md) is probed every [`PROBE_EVERY`]: each host says whether
//! it is in recovery and how far its WAL goes. The pools that write (the order steps' and
//! phase two's) connect to the host found primary; when another host becomes primary, their
//! connect options are pointed at it and every connection opened before is dropped as it is
//! next acquired. A new connection that lands on a standby fails its `after_connect` check
//! and asks for a probe at once; sqlx retries the connect with the options in force, so a
//! step waiting for a connection finds the new primary without failing. Steps in flight on
//! the old primary fail with a connection error and are retried by Temporal like any other.
//!
//! The same probes tell the read pools how stale each standby is ([`HostState::stale_by`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use futures::future::join_all;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sea_orm::sqlx::{self, ConnectOptions as _, Row};
use tokio::sync::Notify;

use crate::shard_url;

/// How often the hosts of a multi-host shard are probed.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How long a probe waits for one host.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How many primary WAL positions are kept to date a standby's replay: one per probe, so
/// about a minute; a standby further behind is reported that far behind, no further.
const POSITIONS_KEPT: usize = 120;
/// What the probe connections are called in `pg_stat_activity`.
const PROBE_APPLICATION_NAME: &str = "orders-probe";

/// What a host of a shard was found to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Standby,
    /// It did not answer the last probe.
    Down,
}

impl Role {
    /// The name metrics and reports use.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Down => "down",
        }
    }
}

/// What the last probe saw of one host.
#[derive(Debug, Clone)]
pub struct HostState {
    /// `host:port`, no credentials.
    pub address: String,
    pub role: Role,
    /// For a standby: how far behind the primary its replay was at the probe.
    pub replay_lag: Option<Duration>,
    /// For a standby: whether its WAL receiver is streaming from a primary.
    pub streaming: Option<bool>,
    /// For the primary: how many standbys it waits for at commit (`sync` or `quorum`).
    pub sync_standbys: Option<u32>,
    /// Why the host did not answer.
    pub error: Option<String>,
    /// For a standby: the newest moment at which it is known to have replayed everything
    /// the primary had committed.
    caught_up_to: Option<Instant>,
}

impl HostState {
    /// An upper bound on how stale a read from this host is now: the time since the newest
    /// moment it had replayed everything committed. `None` when not known (never caught up
    /// within the positions kept, or not a standby).
    pub fn stale_by(&self) -> Option<Duration> {
        self.caught_up_to.map(|at| at.elapsed())
    }
}

/// The hosts of one shard and which of them is primary now. Shared by the shard's pools.
#[derive(Debug)]
pub struct ShardHosts {
    shard: usize,
    /// `host:port` of each host, as given.
    addresses: Vec<String>,
    /// Connect options of each host (credentials, TLS and parameters of the shard's URL).
    options: Vec<PgConnectOptions>,
    /// One connection per host, for the probes: opened by the probe itself, so a host that
    /// is down is reported with the connect's own error (refused, unknown host, bad password).
    probes: Vec<Probe>,
    primary: AtomicUsize,
    /// When the primary last changed: connections opened before are not reused.
    changed_at: RwLock<Instant>,
    /// The pools that write, pointed at the primary.
    following: Mutex<Vec<PgPool>>,
    probe_now: Notify,
    states: RwLock<Vec<HostState>>,
    /// The primary's WAL position at each recent probe, newest last.
    positions: Mutex<VecDeque<(Instant, i64)>>,
    failovers: AtomicU64,
}

impl ShardHosts {
    /// The hosts of `url` (one, or several in libpq's multi-host form), none contacted yet.
    pub fn new(shard: usize, url: &str) -> Result<Arc<Self>, sqlx::Error> {
        let options = shard_url::host_urls(url)
            .iter()
            .map(|host| host.parse::<PgConnectOptions>())
            .collect::<Result<Vec<_>, _>>()?;
        let probes = options
            .iter()
            .map(|host| Probe {
                options: host
                    .clone()
                    .application_name(PROBE_APPLICATION_NAME)
                    .disable_statement_logging(),
                conn: tokio::sync::Mutex::new(None),
                last_answer: std::sync::Mutex::new(None),
            })
            .collect();
        let addresses = shard_url::host_addresses(url);
        let states = addresses
            .iter()
            .map(|address| HostState {
                address: address.clone(),
                role: Role::Down,
                replay_lag: None,
                streaming: None,
                sync_standbys: None,
                error: Some("not probed yet".to_owned()),
                caught_up_to: None,
            })
            .collect();
        Ok(Arc::new(Self {
            shard,
            addresses,
            options,
            probes,
            primary: AtomicUsize::new(0),
            changed_at: RwLock::new(Instant::now()),
            following: Mutex::new(Vec::new()),
            probe_now: Notify::new(),
            states: RwLock::new(states),
            positions: Mutex::new(VecDeque::new()),
            failovers: AtomicU64::new(0),
        }))
    }

    /// Whether the shard has standbys to follow (several hosts).
    pub fn is_replicated(&self) -> bool {
        self.addresses.len() > 1
    }

    /// `host:port` of each host.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// Index of the host believed primary.
    pub fn primary(&self) -> usize {
        self.primary.load(Ordering::Relaxed)
    }

    /// The connect options of host `index` (with the shard URL's credentials and parameters).
    pub fn host_options(&self, index: usize) -> &PgConnectOptions {
        &self.options[index]
    }

    /// What the last probe saw of each host, in the order given.
    pub fn states(&self) -> Vec<HostState> {
        self.states.read().expect("host states lock").clone()
    }

    /// How many times this process followed the shard's primary to another host.
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// Asks the follower to probe now: a connection failed or met a read-only host.
    pub fn suspect_primary(&self) {
        if self.is_replicated() {
            self.probe_now.notify_one();
        }
    }

    /// Points `pool` at the primary now and whenever it changes.
    pub fn follow(&self, pool: &PgPool) {
        self.point(pool, self.primary());
        self.following
            .lock()
            .expect("following lock")
            .push(pool.clone());
    }

    /// Whether a connection `age` old was opened after the primary last changed.
    fn opened_since_change(&self, age: Duration) -> bool {
        let changed = *self.changed_at.read().expect("changed_at lock");
        changed.elapsed() > age
    }

    fn point(&self, pool: &PgPool, host: usize) {
        let target = &self.options[host];
        let options = (*pool.connect_options())
            .clone()
            .host(target.get_host())
            .port(target.get_port());
        pool.set_connect_options(options);
    }

    /// Asks every host for its role and WAL position, adopts the primary found (if it
    /// changed) and records each host's state. With no host answering as primary, the one
    /// in use is kept: the shard is down, or between its primary's loss and a promotion.
    pub async fn probe(&self) {
        let started = Instant::now();
        let answers = join_all(self.probes.iter().map(Probe::ask)).await;
        let primary_at = answers
            .iter()
            .enumerate()
            .filter_map(|(i, answer)| match answer {
                Ok(found) if !found.in_recovery => Some((i, found.timeline)),
                _ => None,
            })
            // Two hosts claiming to be primary (one being demoted): the newer timeline wins.
            .max_by_key(|(i, timeline)| (*timeline, *i == self.primary()))
            .map(|(i, _)| i);
        let primary_position =
            primary_at.and_then(|i| answers[i].as_ref().ok().map(|a| a.position));
        let positions = {
            let mut positions = self.positions.lock().expect("positions lock");
            if let Some(position) = primary_position {
                positions.push_back((started, position));
                if positions.len() > POSITIONS_KEPT {
                    positions.pop_front();
                }
            }
            positions.clone()
        };
        let states = self
            .addresses
            .iter()
            .zip(answers)
            .map(|(address, answer)| host_state(address, answer, primary_position, &positions))
            .collect();
        *self.states.write().expect("host states lock") = states;
        if let Some(found) = primary_at
            && found != self.primary()
        {
            self.adopt(found);
        }
    }

    fn adopt(&self, primary: usize) {
        let before = self.primary.swap(primary, Ordering::Relaxed);
        *self.changed_at.write().expect("changed_at lock") = Instant::now();
        self.failovers.fetch_add(1, Ordering::Relaxed);
        for pool in self.following.lock().expect("following lock").iter() {
            self.point(pool, primary);
        }
        tracing::warn!(
            shard = self.shard,
            primary = %self.addresses[primary],
            was = %self.addresses[before],
            "the shard's primary moved: following it"
        );
    }

    /// Whether the host in use as primary answers, as a primary, on its probe connection
    /// rather than through the pools: a busy pool is not a down shard, and a refused connect
    /// is known at once where a pool retries it until its timeout. Bounded by twice
    /// [`PROBE_TIMEOUT`] (connect, query). The probe runs as a task of its own: a caller that
    /// stops waiting does not close the connection in the middle of a query.
    pub async fn primary_answers(self: &Arc<Self>) -> bool {
        let (hosts, primary) = (Arc::clone(self), self.primary());
        tokio::spawn(async move { hosts.probes[primary].answers_as_primary().await })
            .await
            .unwrap_or(false)
    }

    /// Finds the primary once, before the pools open: without it, the first connections
    /// would go to the first host given, whatever it is now.
    pub async fn find_primary(&self) {
        if self.is_replicated() {
            self.probe().await;
            // Not a failover: the starting point.
            self.failovers.store(0, Ordering::Relaxed);
        }
    }

    /// Probes every [`PROBE_EVERY`], or at once when asked ([`Self::suspect_primary`]),
    /// for as long as the shard's pools exist.
    pub fn spawn_follower(self: &Arc<Self>) {
        if !self.is_replicated() {
            return;
        }
        let hosts: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(hosts) = hosts.upgrade() else { return };
                tokio::select! {
                    _ = hosts.probe_now.notified() => {}
                    _ = tokio::time::sleep(PROBE_EVERY) => {}
                }
                hosts.probe().await;
            }
        });
    }

    /// The pool options that keep a writing pool on the primary: a new connection that
    /// landed on a standby is refused (and sqlx connects again, to the host in force by
    /// then); a connection opened before the primary last changed is dropped.
    pub fn keep_on_primary(self: &Arc<Self>, options: PgPoolOptions) -> PgPoolOptions {
        if !self.is_replicated() {
            return options;
        }
        let on_connect = Arc::downgrade(self);
        let on_acquire = Arc::downgrade(self);
        options
            .after_connect(move |conn, _| {
                let hosts = on_connect.clone();
                Box::pin(async move {
                    let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                        .fetch_one(&mut *conn)
                        .await?;
                    if standby {
                        if let Some(hosts) = hosts.upgrade() {
                            hosts.suspect_primary();
                        }
                        return Err(sqlx::Error::Io(std::io::Error::other(
                            "connected to a standby (read-only): looking for the shard's primary",
                        )));
                    }
                    Ok(())
                })
            })
            .before_acquire(move |_, meta| {
                let fresh = on_acquire
                    .upgrade()
                    .is_none_or(|hosts| hosts.opened_since_change(meta.age));
                Box::pin(async move { Ok(fresh) })
            })
    }
}

/// What one host answered.
struct HostAnswer {
    in_recovery: bool,
    /// WAL inserted (primary) or replayed (standby), in bytes since 0/0.
    position: i64,
    timeline: i64,
    sync_standbys: i64,
    streaming: bool,
}

/// The connection that probes one host, opened on first use and again after a failure.
struct Probe {
    options: PgConnectOptions,
    conn: tokio::sync::Mutex<Option<PgConnection>>,
    /// When the last [`Probe::answers_as_primary`] ended, and its answer: callers that
    /// queued behind it take that answer instead of asking again.
    last_answer: std::sync::Mutex<Option<(Instant, bool)>>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").finish_non_exhaustive()
    }
}

impl Probe {
    /// The host's role and WAL position.
    async fn ask(&self) -> Result<HostAnswer, String> {
        self.on_connection(async |conn| host_answer(conn).await)
            .await
    }

    /// Whether the host answers, as a primary. Many steps ask at once while a shard is slow:
    /// one query answers all those that asked before it ended.
    async fn answers_as_primary(&self) -> bool {
        let asked = Instant::now();
        let mut slot = self.conn.lock().await;
        if let Some((ended, answer)) = *self.last_answer.lock().expect("last answer lock")
            && ended >= asked
        {
            return answer;
        }
        let answer = self
            .on_slot(&mut slot, async |conn| {
                sqlx::query_scalar::<_, bool>("SELECT NOT pg_is_in_recovery()")
                    .fetch_one(conn)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or(false);
        *self.last_answer.lock().expect("last answer lock") = Some((Instant::now(), answer));
        answer
    }

    /// Runs `query` on the probe's connection, opening it first if needed; the connect and
    /// the query are each bounded by [`PROBE_TIMEOUT`].
    async fn on_connection<T>(
        &self,
        query: impl AsyncFnOnce(&mut PgConnection) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut slot = self.conn.lock().await;
        self.on_slot(&mut slot, query).await
    }

    async fn on_slot<T>(
        &self,
        slot: &mut Option<PgConnection>,
        query: impl AsyncFnOnce(&mut PgConnection) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut conn = match slot.take() {
            Some(open) => open,
            None => tokio::time::timeout(PROBE_TIMEOUT, self.options.connect())
                .await
                .map_err(|_| format!("no connection within {PROBE_TIMEOUT:?}"))?
                .map_err(|e| e.to_string())?,
        };
        let answer = tokio::time::timeout(PROBE_TIMEOUT, query(&mut conn))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")));
        // Kept only while it works: the next probe opens a new one after a failure.
        if answer.is_ok() {
            *slot = Some(conn);
        }
        answer
    }
}

async fn host_answer(conn: &mut PgConnection) -> Result<HostAnswer, String> {
    let row = sqlx::query(
        "SELECT pg_is_in_recovery() AS in_recovery, \
                (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
                      ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::bigint AS position, \
                (SELECT timeline_id FROM pg_control_checkpoint())::bigint AS timeline, \
                (SELECT count(*) FROM pg_stat_replication \
                  WHERE sync_state IN ('sync', 'quorum')) AS sync_standbys, \
                EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming') AS streaming",
    )
    .fetch_one(conn)
    .await
    .map_err(|e| e.to_string())?;
    let field = |e: sqlx::Error| e.to_string();
    Ok(HostAnswer {
        in_recovery: row.try_get("in_recovery").map_err(field)?,
        position: row
            .try_get::<Option<i64>, _>("position")
            .map_err(field)?
            .unwrap_or(0),
        timeline: row.try_get("timeline").map_err(field)?,
        sync_standbys: row.try_get("sync_standbys").map_err(field)?,
        streaming: row.try_get("streaming").map_err(field)?,
    })
}

/// A host's state from its answer: a standby's lag dates its replay position against the
/// primary positions seen by earlier probes (this process's clock only, so clock skew
/// between hosts does not matter).
fn host_state(
    address: &str,
    answer: Result<HostAnswer, String>,
    primary_position: Option<i64>,
    positions: &VecDeque<(Instant, i64)>,
) -> HostState {
    let mut state = HostState {
        address: address.to_owned(),
        role: Role::Down,
        replay_lag: None,
        streaming: None,
        sync_standbys: None,
        error: None,
        caught_up_to: None,
    };
    match answer {
        Err(error) => state.error = Some(error),
        Ok(found) if !found.in_recovery => {
            state.role = Role::Primary;
            state.sync_standbys = Some(found.sync_standbys as u32);
        }
        Ok(found) => {
            state.role = Role::Standby;
            state.streaming = Some(found.streaming);
            // The newest probe whose primary position the standby has replayed past.
            state.caught_up_to = positions
                .iter()
                .rev()
                .find(|(_, position)| *position <= found.position)
                .map(|(at, _)| *at);
            state.replay_lag = match (primary_position, state.caught_up_to) {
                (Some(primary), _) if found.position >= primary => Some(Duration::ZERO),
                (_, Some(at)) => positions
                    .back()
                    .map(|(newest, _)| newest.duration_since(at)),
                (_, None) => positions.front().map(|(oldest, _)| oldest.elapsed()),
            };
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(in_recovery: bool, position: i64) -> Result<HostAnswer, String> {
        Ok(HostAnswer {
            in_recovery,
            position,
            timeline: 1,
            sync_standbys: 1,
            streaming: in_recovery,
        })
    }

    #[test]
    fn a_standby_is_dated_by_the_newest_primary_position_its_replay_has_passed() {
        let now = Instant::now();
        let positions: VecDeque<(Instant, i64)> = [(3, 100), (2, 200), (1, 300), (0, 400)]
            .into_iter()
            .map(|(secs_ago, position)| (now - Duration::from_secs(secs_ago), position))
            .collect();
        // Caught up with the newest probe: no lag.
        let caught_up = host_state("s:1", answer(true, 400), Some(400), &positions);
        assert_eq!(caught_up.role, Role::Standby);
        assert_eq!(caught_up.replay_lag, Some(Duration::ZERO));
        assert!(caught_up.stale_by().unwrap() < Duration::from_millis(500));
        // Replayed past the position of 2 s ago, not the one of 1 s ago: 2 s stale at least.
        let behind = host_state("s:1", answer(true, 250), Some(400), &positions);
        assert_eq!(behind.replay_lag, Some(Duration::from_secs(2)));
        assert!(behind.stale_by().unwrap() >= Duration::from_secs(2));
        // Behind every position kept: stale by more than the history, undatable.
        let lost = host_state("s:1", answer(true, 50), Some(400), &positions);
        assert_eq!(lost.stale_by(), None);
        assert!(lost.replay_lag.unwrap() >= Duration::from_secs(3));
    }

    #[test]
    fn a_host_that_does_not_answer_is_down_and_a_writable_one_primary() {
        let positions = VecDeque::new();
        let down = host_state("p:1", Err("refused".into()), None, &positions);
        assert_eq!(
            (down.role, down.error.as_deref()),
            (Role::Down, Some("refused"))
        );
        let primary = host_state("p:1", answer(false, 10), Some(10), &positions);
        assert_eq!(
            (primary.role, primary.sync_standbys),
            (Role::Primary, Some(1))
        );
        assert_eq!(primary.stale_by(), None);
    }
}
