//! Why a local service could not be set up. Each message says what to do next: these reach
//! a developer at a terminal, through `orders dev` or a test's failure.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// A local service that could not be started, stopped or prepared.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// A program the local services run is not installed.
    #[error("{program} was not found: {fix}")]
    NotInstalled { program: String, fix: &'static str },
    /// PostgreSQL refuses to run as root, and the OS user meant to own the clusters is missing.
    #[error(
        "PostgreSQL cannot run as root and the OS user {0:?} does not exist: create it with `useradd --system --user-group {0}` or set ORDERS_PG_OS_USER"
    )]
    NoClusterOwner(String),
    /// Another program holds the port a service was told to use.
    #[error("port {0} is taken by another program; stop it or choose another port")]
    PortTaken(u16),
    /// A child process could not be spawned.
    #[error("failed to start {name}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// A child process exited before it was ready.
    #[error("{name} exited early with {status}")]
    ExitedEarly { name: String, status: ExitStatus },
    /// A child process exited before it was ready; its log says why.
    #[error("{name} did not start; see {}", log.display())]
    DidNotStart {
        name: String,
        log: PathBuf,
        #[source]
        source: Box<DevError>,
    },
    /// A service did not become ready in time.
    #[error("timed out after {timeout:?} waiting for {what}")]
    TimedOut { what: String, timeout: Duration },
    /// A one-shot command (`initdb`, `temporal operator …`) failed; `output` is its stderr.
    #[error("{what} failed: {output}")]
    CommandFailed { what: String, output: String },
    /// A pg_auto_failover formation is not in the state a caller needs, or did not reach it
    /// in time; `states` is what its monitor last reported, for debugging.
    #[error("{what} in formation {formation}; the monitor last reported: {states}")]
    Formation {
        formation: String,
        what: String,
        states: String,
    },
    /// A service an operation needs is not running.
    #[error("{0} is not running; start it first")]
    NotRunning(String),
    /// A name that cannot be used as given.
    #[error("{0}")]
    InvalidName(String),
    /// A file, directory or process call failed.
    #[error("failed to {action}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    /// An OS call failed (user lookup, ownership).
    #[error("failed to {action}")]
    Os {
        action: String,
        #[source]
        source: nix::Error,
    },
    /// A statement on a local cluster failed.
    #[error("{action} failed")]
    Database {
        action: String,
        #[source]
        source: sea_orm::DbErr,
    },
}

/// What the services of this crate return.
pub(crate) type Result<T, E = DevError> = std::result::Result<T, E>;

/// Tags an I/O error with what was being done.
pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> DevError {
    let action = action.into();
    move |source| DevError::Io { action, source }
}

/// Tags a database error with what was being done.
pub(crate) fn sql(action: impl Into<String>) -> impl FnOnce(sea_orm::DbErr) -> DevError {
    let action = action.into();
    move |source| DevError::Database { action, source }
}
