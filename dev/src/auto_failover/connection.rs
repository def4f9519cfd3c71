//! SQL connections to the monitor and the nodes, for set-up and the waits on them: one
//! connection each, and the role pg_autoctl connects as (the `orders` role comes later).

use sea_orm::{ConnectOptions, Database, DatabaseConnection};
use std::time::Duration;

use crate::error::{DevError, Result, sql};
use crate::postgres::OsUser;

/// The PostgreSQL role pg_autoctl connects as: initdb's default superuser, named after the
/// OS user the clusters run as.
pub(super) fn cluster_role(owner: &Option<OsUser>) -> Result<String> {
    if let Some(user) = owner {
        return Ok(user.name.clone());
    }
    let uid = nix::unistd::geteuid();
    let action = || format!("look up the name of OS user {uid}");
    nix::unistd::User::from_uid(uid)
        .map_err(|source| DevError::Os {
            action: action(),
            source,
        })?
        .map(|user| user.name)
        .ok_or_else(|| DevError::Os {
            action: action(),
            source: nix::Error::ENOENT,
        })
}

/// One connection to a local cluster, without sqlx's statement logging.
pub(super) async fn connect(url: &str) -> Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(1)
        .connect_timeout(Duration::from_secs(2))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    Database::connect(options)
        .await
        .map_err(sql(format!("connecting to {url}")))
}
