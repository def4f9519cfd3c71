//! `orders restore`: every shard restored to a point into new local clusters, what the point
//! caught mid-way settled, a new deployment id, and the audit of the result.

use std::fmt;
use std::time::{Duration, Instant};

use futures::future::join_all;
use orders_backup::pgbackrest::{Lsn, Repository};
use orders_backup::restore::{PointOnShard, RestoreTarget, RestoredShard, restore_clusters};
use orders_backup::settle::{Settled, settle};
use orders_core::Shards;
use orders_core::shards::PoolSettings;
use orders_core::store::{backup_points, shard_identity};
use serde::Serialize;

use super::seconds;
use crate::cli::maintenance::audit::{self, AuditReport};
use crate::cli::report::Report;

/// What `orders restore` reports.
#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub point: String,
    pub shards: Vec<RestoredShard>,
    /// `ORDERS_SHARDS` for the restored copy.
    pub orders_shards: String,
    pub deployment: String,
    pub committed_parts: usize,
    pub rolled_back_parts: usize,
    pub sagas_undone: usize,
    pub cancellations_finished: usize,
    pub stray_holds_released: usize,
    pub audit: AuditReport,
    pub seconds: f64,
}

impl Report for RestoreReport {
    fn failure(&self) -> Option<String> {
        (!self.audit.violations.is_empty()).then(|| {
            format!(
                "the restored copy breaks {} invariant(s): see the audit above",
                self.audit.violations.len()
            )
        })
    }
}

impl fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "restored {} shards to point {:?} in {:.1} s, as deployment {}",
            self.shards.len(),
            self.point,
            self.seconds,
            self.deployment
        )?;
        for shard in &self.shards {
            writeln!(
                f,
                "  shard {}: {} (from {})",
                shard.index,
                shard.data_dir.display(),
                shard.backup.as_deref().unwrap_or("the newest backup")
            )?;
        }
        writeln!(
            f,
            "settled: {} prepared parts committed, {} rolled back; {} sagas undone; {} cancellations finished; stray stock holds of {} orders released",
            self.committed_parts,
            self.rolled_back_parts,
            self.sagas_undone,
            self.cancellations_finished,
            self.stray_holds_released
        )?;
        writeln!(f, "{}", self.audit)?;
        writeln!(f, "ORDERS_SHARDS={}", self.orders_shards)?;
        write!(
            f,
            "the clusters keep running: stop each with `pg_ctl -D <dir> stop` (as their OS user)"
        )
    }
}

/// Restores every shard of `repository` to `point` under `target` (see the module).
/// `live`: the live deployment's shards, asked where the point lies on each.
pub async fn restore(
    repository: &Repository,
    point: &str,
    target: &RestoreTarget,
    live: Option<&Shards>,
) -> anyhow::Result<RestoreReport> {
    anyhow::ensure!(
        orders_backup::point::valid_name(point),
        "{point:?} is not a point `orders backup point` could have taken: names are 1 to 63 letters, digits, '.', '_' or '-'"
    );
    let started = Instant::now();
    let shard_count = stanza_count(repository).await?;
    let points = match live {
        Some(shards) => points_on(shards, point).await,
        None => None,
    };
    if points.is_none() {
        tracing::warn!(
            point,
            "the live shards did not say where the point lies: each shard restores from its newest backup, which must have ended before the point"
        );
    }
    eprintln!(
        "restoring {shard_count} shards to {point:?} under {}",
        target.into.display()
    );
    let restored =
        restore_clusters(repository, shard_count, point, points.as_deref(), target).await?;
    let urls: Vec<String> = restored.iter().map(|shard| shard.url.clone()).collect();
    let shards = Shards::connect_lazy(
        &urls,
        PoolSettings {
            max_connections: 4,
            connect_timeout: Duration::from_secs(10),
        },
    )
    .await?;
    // A new identity first: whatever happens next, no live worker takes these shards for its own.
    let deployment = uuid::Uuid::new_v4().to_string();
    for shard in shards.iter() {
        shard_identity::renew_deployment(&shard.conn, &deployment).await?;
    }
    shards.refresh_map().await?;
    let settled: Settled = settle(&shards).await?;
    let audit = audit::run(&shards, Duration::ZERO).await?;
    Ok(RestoreReport {
        point: point.to_owned(),
        orders_shards: urls.join(","),
        shards: restored,
        deployment,
        committed_parts: settled.committed.len(),
        rolled_back_parts: settled.rolled_back.len(),
        sagas_undone: settled.sagas_undone.len(),
        cancellations_finished: settled.cancellations_finished.len(),
        stray_holds_released: settled.stray_holds_released.len(),
        audit,
        seconds: seconds(started.elapsed()),
    })
}

/// How many shards the repository holds: its stanzas `shard-0` .. `shard-<n-1>`.
async fn stanza_count(repository: &Repository) -> anyhow::Result<usize> {
    let mut found: Vec<usize> = repository
        .info()
        .await?
        .iter()
        .filter_map(|stanza| stanza.shard())
        .collect();
    found.sort_unstable();
    anyhow::ensure!(
        !found.is_empty(),
        "the pgBackRest configuration has no stanza shard-<i>: nothing to restore"
    );
    anyhow::ensure!(
        found.iter().copied().eq(0..found.len()),
        "the pgBackRest configuration's stanzas are {found:?}: expected shard-0 .. shard-{}",
        found.len() - 1
    );
    Ok(found.len())
}

/// Where `point` lies on every live shard; `None` if a shard does not answer or lacks it.
async fn points_on(shards: &Shards, point: &str) -> Option<Vec<PointOnShard>> {
    let answers = join_all(shards.iter().map(|shard| async move {
        let recorded = backup_points::list(&shard.conn)
            .await
            .ok()?
            .into_iter()
            .find(|p| p.name == point)?;
        let lsn: Lsn = recorded.lsn?.parse().ok()?;
        let timeline = match recorded.timeline {
            Some(timeline) => i64::from(timeline),
            None => backup_points::timeline(&shard.conn).await.ok()?,
        };
        Some(PointOnShard {
            lsn,
            timeline: timeline as u32,
        })
    }))
    .await;
    answers.into_iter().collect()
}
