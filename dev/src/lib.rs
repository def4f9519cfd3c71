//! Local services for development and tests: PostgreSQL clusters (one postmaster per shard,
//! or a pg_auto_failover formation per shard: a primary and a synchronous standby) and a
//! Temporal dev server, started as child processes of the caller.
//!
//! Children are bound to the thread that spawned them with `PR_SET_PDEATHSIG`, so they die
//! with the process that owns them even if it is killed with SIGKILL: a crashed test run or
//! `orders dev` never leaves a postmaster behind on a port. (pg_autoctl's own children are
//! out of that signal's reach; [`auto_failover`] kills their process group instead.)

pub mod auto_failover;
mod error;
pub mod postgres;
pub mod process;
pub mod temporal;

pub use auto_failover::{
    FailoverMonitor, FailoverNode, FailoverTimings, HaShard, NodeState, StartupTimes,
};
pub use error::DevError;
pub use postgres::{
    OsUser, PostgresCluster, PostgresOptions, WalArchive, as_cluster_owner, give_to_cluster_owner,
    os_user, start_detached, stop_detached,
};
pub use temporal::{TemporalDevServer, TemporalOptions};

/// How many shards `orders dev` runs.
pub const DEV_SHARD_COUNT: usize = 4;
/// The first dev shard listens here, the next on the port after, and so on.
pub const DEV_SHARD_BASE_PORT: u16 = 55432;
/// The database each dev shard holds.
pub const DEV_DATABASE: &str = "orders";
/// The PostgreSQL superuser of local clusters (trust authentication on loopback only).
pub(crate) const SUPERUSER: &str = "orders";

/// The URLs of the shards `orders dev` manages, in shard order.
pub fn dev_shard_urls() -> Vec<String> {
    (0..DEV_SHARD_COUNT)
        .map(|i| shard_url(DEV_SHARD_BASE_PORT + i as u16, DEV_DATABASE))
        .collect()
}

/// The URL of database `database` on a local cluster listening on `port`.
pub fn shard_url(port: u16, database: &str) -> String {
    format!("postgres://{SUPERUSER}@127.0.0.1:{port}/{database}")
}

/// A TCP port on loopback that nothing listens on right now, and that this process has not
/// handed out before: the kernel readily offers a just-released port again, and two
/// services told the same port (a cluster and a worker's metrics, say) would collide.
pub fn free_port() -> std::io::Result<u16> {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
}

/// `count` consecutive loopback ports nothing listens on, reserved like [`free_port`]'s: for
/// commands that take a first port and count up (`orders restore --first-port`). Below the
/// kernel's ephemeral range (32768 up), so no `free_port` and no outgoing connection takes
/// one of them in the meantime.
pub fn free_port_run(count: u16) -> std::io::Result<u16> {
    const LOW: u16 = 20_000;
    const HIGH: u16 = 32_000;
    let span = HIGH - LOW - count;
    let offset = (std::process::id() as u16).wrapping_mul(97) % span;
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for step in 0..span {
        let first = LOW + (offset + step) % span;
        let ports = first..first + count;
        let free = ports.clone().all(|port| {
            !handed_out.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        });
        if free {
            handed_out.extend(ports);
            return Ok(first);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no {count} consecutive free ports between {LOW} and {HIGH}"),
    ))
}

/// The ports [`free_port`] and [`free_port_run`] handed out in this process.
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Whether something accepts TCP connections on `127.0.0.1:port`.
pub fn port_is_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        std::time::Duration::from_millis(200),
    )
    .is_ok()
}
