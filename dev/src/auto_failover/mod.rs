//! One shard as a pg_auto_failover formation: a monitor, a primary and a synchronous standby
//! on loopback, for failover tests and `orders dev`.
//!
//! - A commit the primary acknowledged is on the standby: [`HaShard::start`] returns only once
//!   replication is synchronous, so losing the primary loses no acknowledged commit and no
//!   prepared transaction.
//! - Nothing outlives its handle: each `pg_autoctl` leads its own process group, which holds
//!   its sub-processes and the postgres it starts, and that whole group is killed when the
//!   handle is dropped, when a node is [lost](FailoverNode::lose), and, by a watchdog, when
//!   this process dies. (`PR_SET_PDEATHSIG` reaches only `pg_autoctl` itself: measured, its
//!   sub-processes and postgres kept running without it.)
//!
//! As in [`crate::postgres`]: trust authentication on 127.0.0.1 only, and clusters owned by an
//! unprivileged OS user when we are root. Each service (the monitor, each node) has its own
//! directory: `pgdata/`, `pg_autoctl.log`, and pg_autoctl's XDG directories `config/`,
//! `data/` and `run/`.
//!
//! A reader's map: [`HaShard`] (`shard.rs`) is the story, from an empty directory to a
//! synchronous pair, or from a stopped formation back to one; `settled.rs` says when the
//! monitor's states can be believed (it keeps them across a stop). It runs on a
//! [`FailoverMonitor`] (`monitor.rs`) tuned by [`FailoverTimings`] (`timings.rs`), and is
//! made of [`FailoverNode`]s (`node.rs`). Beneath them, `service.rs` runs one `pg_autoctl`
//! process group and `service_dir.rs` lays out its directory and environment;
//! `postmaster.rs` finds a postmaster that escaped its group, and `connection.rs` opens the
//! SQL connections the waits use.

mod connection;
mod monitor;
mod node;
mod postmaster;
mod service;
mod service_dir;
mod settled;
mod shard;
mod timings;

pub use monitor::{FailoverMonitor, NodeState};
pub use node::FailoverNode;
pub use shard::{HaShard, StartupTimes};
pub use timings::FailoverTimings;

use std::time::Duration;

/// Where pg_autoctl and its postgres keep Unix sockets: Debian's default, /var/run/postgresql,
/// is not writable by the cluster owner.
const SOCKET_DIR: &str = "/tmp";
/// What to install when pg_auto_failover is missing.
const INSTALL_HINT: &str = "install pg_auto_failover: apt-get install pg-auto-failover-cli postgresql-15-auto-failover (the server package of your PostgreSQL major version)";
/// How often waits look at the monitor or a process again.
const POLL: Duration = Duration::from_millis(100);
