//! What the dev crate's integration tests share.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement, TryGetable,
};

/// This run's directory under /tmp, kept when the test fails (its logs say why).
pub(crate) struct RunDir {
    pub(crate) path: PathBuf,
}

impl RunDir {
    /// `/tmp/<prefix>-<pid>-<test>`: `test` tells apart the directories of tests that run at
    /// the same time. Directories of earlier runs whose process is gone are deleted first.
    pub(crate) fn create(prefix: &str, test: &str) -> anyhow::Result<Self> {
        let tmp = std::env::temp_dir();
        remove_stale_runs(&tmp, prefix);
        let path = tmp.join(format!("{prefix}-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        // The clusters (and pgBackRest) run as an unprivileged OS user when we are root: it
        // must reach in.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        eprintln!("logs under {}", path.display());
        Ok(Self { path })
    }

    pub(crate) fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn remove_stale_runs(tmp: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    let prefix = format!("{prefix}-");
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

pub(crate) async fn connect(url: &str) -> anyhow::Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(1)
        .connect_timeout(Duration::from_secs(2))
        .sqlx_logging(false);
    Database::connect(options)
        .await
        .with_context(|| format!("failed to connect to {url}"))
}

/// The single value `sql` returns.
pub(crate) async fn scalar<T: TryGetable>(db: &DatabaseConnection, sql: &str) -> anyhow::Result<T> {
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await?
        .with_context(|| format!("no row from {sql}"))?;
    Ok(row.try_get_by_index(0)?)
}

/// Retries `attempt` every 100 ms until it succeeds; fails with its last error after `timeout`.
pub(crate) async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut attempt: impl AsyncFnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("gave up after {timeout:?} waiting for {what}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
