//! `orders restore`: every shard's stanza restored to a point into new local clusters,
//! never over the live ones, started detached so they outlive the command.
//!
//! Which backup each shard restores from: the newest that reaches the point, when the live
//! deployment says where the point is ([`PointOnShard`]); otherwise pgBackRest's newest,
//! which fails to recover if it ended after the point.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::future::join_all;
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};

use crate::pgbackrest::{BackupLabel, Lsn, PgBackRestError, Repository};

/// Where a restore point lies on one shard, as the live shard recorded it.
#[derive(Debug, Clone, Copy)]
pub struct PointOnShard {
    pub lsn: Lsn,
    pub timeline: u32,
}

/// Where the restored clusters go.
#[derive(Debug, Clone)]
pub struct RestoreTarget {
    /// Shard i's data directory is `<into>/shard-<i>`; it must not exist yet, or be empty.
    pub into: PathBuf,
    /// Shard i listens on `first_port + i`, on 127.0.0.1.
    pub first_port: u16,
}

/// One restored, running shard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestoredShard {
    pub index: usize,
    pub data_dir: PathBuf,
    pub port: u16,
    /// The shard's database on the restored cluster (the one database it holds).
    pub url: String,
    /// The backup it was restored from; `None`: pgBackRest's newest.
    pub backup: Option<String>,
}

/// Why a restore stopped.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    PgBackRest(#[from] PgBackRestError),
    #[error(
        "no backup of shard {shard} reaches point {point:?} (at {lsn} on its WAL): a point taken before a shard's first backup, or after its archive's newest segment, cannot be restored; run `orders backup`, and take points after it"
    )]
    Unreachable {
        shard: usize,
        point: String,
        lsn: Lsn,
    },
    #[error(
        "shard {shard}'s WAL archive has not received point {point:?}'s segment after {waited:?}: check that the shard archives (`pgbackrest --stanza=shard-{shard} check`), then restore again"
    )]
    NotArchived {
        shard: usize,
        point: String,
        waited: Duration,
    },
    #[error("shard {shard}'s restored cluster did not start: {cause}")]
    Start { shard: usize, cause: String },
    #[error(
        "shard {shard}'s restored cluster holds {found:?}: restore expects exactly one database besides postgres and the templates"
    )]
    Databases { shard: usize, found: Vec<String> },
    #[error("reading shard {shard}'s restored cluster: {cause}")]
    Read { shard: usize, cause: String },
}

/// Restores shards `0..shard_count` to `point` under `target` and starts them; `points`
/// (shard order) say where the point lies on each, when the live shards could tell.
pub async fn restore_clusters(
    repository: &Repository,
    shard_count: usize,
    point: &str,
    points: Option<&[PointOnShard]>,
    target: &RestoreTarget,
) -> Result<Vec<RestoredShard>, RestoreError> {
    let results = join_all((0..shard_count).map(|shard| {
        let on_shard = points.and_then(|points| points.get(shard).copied());
        restore_one(repository, shard, point, on_shard, target)
    }))
    .await;
    if results.iter().all(Result::is_ok) {
        return Ok(results.into_iter().map_while(Result::ok).collect());
    }
    // One shard failed: the others' clusters stop too, rather than run as a partial copy.
    let mut first_error = None;
    for result in results {
        match result {
            Ok(started) => {
                let dir = started.data_dir.clone();
                let stopped =
                    tokio::task::spawn_blocking(move || orders_dev::stop_detached(&dir)).await;
                if !matches!(stopped, Ok(Ok(()))) {
                    tracing::warn!(shard = started.index, dir = %started.data_dir.display(), "could not stop a restored cluster after another shard failed: stop it with pg_ctl");
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.expect("a failure was found"))
}

async fn restore_one(
    repository: &Repository,
    shard: usize,
    point: &str,
    on_shard: Option<PointOnShard>,
    target: &RestoreTarget,
) -> Result<RestoredShard, RestoreError> {
    let data_dir = target.into.join(format!("shard-{shard}"));
    let port = u16::try_from(shard)
        .ok()
        .and_then(|offset| target.first_port.checked_add(offset))
        .ok_or_else(|| RestoreError::Start {
            shard,
            cause: format!("--first-port {} leaves no port for it", target.first_port),
        })?;
    if orders_dev::port_is_open(port) {
        return Err(RestoreError::Start {
            shard,
            cause: format!("port {port} is taken: choose another --first-port"),
        });
    }
    let backup = match on_shard {
        Some(at) => {
            let label = backup_reaching(repository, shard, point, at).await?;
            repository
                .restore_from(shard, &label, point, &data_dir)
                .await?;
            Some(label.to_string())
        }
        None => {
            repository.restore(shard, point, &data_dir).await?;
            None
        }
    };
    tracing::info!(shard, port, dir = %data_dir.display(), "restored; starting it to replay up to the point");
    let dir = data_dir.clone();
    tokio::task::spawn_blocking(move || orders_dev::start_detached(&dir, port))
        .await
        .map_err(|e| RestoreError::Start {
            shard,
            cause: e.to_string(),
        })?
        .map_err(|e| RestoreError::Start {
            shard,
            cause: e.to_string(),
        })?;
    let database = only_database(shard, port, &data_dir).await?;
    Ok(RestoredShard {
        index: shard,
        data_dir,
        port,
        url: orders_dev::shard_url(port, &database),
        backup,
    })
}

/// How long a restore waits for the archive to receive the segment holding the point: the
/// point switches segments, but the archiver pushes them in its own time.
const ARCHIVE_WAIT: Duration = Duration::from_secs(60);

/// The newest backup of `shard` a restore to `at` can start from, once the archive holds
/// the point's segment (waited for up to [`ARCHIVE_WAIT`]).
async fn backup_reaching(
    repository: &Repository,
    shard: usize,
    point: &str,
    at: PointOnShard,
) -> Result<BackupLabel, RestoreError> {
    let deadline = Instant::now() + ARCHIVE_WAIT;
    loop {
        let info = repository.stanza_info(shard).await?;
        if let Some(backup) = info.backup_reaching(at.lsn, at.timeline) {
            return Ok(backup.label.clone());
        }
        let backed_up_before = info.backups.iter().any(|b| b.stop_lsn <= at.lsn);
        if !backed_up_before {
            return Err(RestoreError::Unreachable {
                shard,
                point: point.to_owned(),
                lsn: at.lsn,
            });
        }
        if Instant::now() > deadline {
            return Err(RestoreError::NotArchived {
                shard,
                point: point.to_owned(),
                waited: ARCHIVE_WAIT,
            });
        }
        tracing::info!(
            shard,
            point,
            "waiting for the archive to receive the point's WAL segment"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The one database the restored cluster holds besides `postgres` and the templates, once
/// the server on `port` is known to be the one serving `data_dir`.
async fn only_database(shard: usize, port: u16, data_dir: &Path) -> Result<String, RestoreError> {
    let read = |e: sea_orm::DbErr| RestoreError::Read {
        shard,
        cause: e.to_string(),
    };
    let conn = Database::connect(orders_dev::shard_url(port, "postgres"))
        .await
        .map_err(read)?;
    let served: String = conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT current_setting('data_directory') AS dir",
        ))
        .await
        .map_err(read)?
        .ok_or_else(|| RestoreError::Read {
            shard,
            cause: "no data_directory".into(),
        })?
        .try_get("", "dir")
        .map_err(read)?;
    let ours = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    if std::fs::canonicalize(&served).unwrap_or_else(|_| PathBuf::from(&served)) != ours {
        return Err(RestoreError::Start {
            shard,
            cause: format!(
                "the server on port {port} serves {served}, not the restored {}",
                data_dir.display()
            ),
        });
    }
    let rows = conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT datname FROM pg_database
             WHERE datname NOT IN ('postgres', 'template0', 'template1') ORDER BY datname",
        ))
        .await
        .map_err(read)?;
    let found: Vec<String> = rows
        .iter()
        .map(|row| row.try_get("", "datname"))
        .collect::<Result<_, _>>()
        .map_err(read)?;
    conn.close().await.map_err(read)?;
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(RestoreError::Databases { shard, found }),
    }
}

/// Stops the clusters a restore started (fast shutdown).
pub fn stop_restored(data_dirs: &[&Path]) -> Result<(), orders_dev::DevError> {
    for dir in data_dirs {
        orders_dev::stop_detached(dir)?;
    }
    Ok(())
}
