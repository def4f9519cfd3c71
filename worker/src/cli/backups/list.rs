//! `orders backup list`: each shard's backups and WAL archive (pgBackRest's `info`), and
//! each restore point with whether every shard has a backup that reaches it.

use std::fmt;

use futures::future::join_all;
use orders_backup::pgbackrest::{Lsn, Repository, StanzaInfo};
use orders_core::Shards;
use orders_core::store::backup_points::{self, BackupPoint};
use serde::Serialize;

use crate::cli::report::Report;

/// One backup of one shard.
#[derive(Debug, Serialize)]
pub struct ListedBackup {
    pub label: String,
    pub kind: &'static str,
    pub stopped_at: String,
    pub stop_lsn: String,
}

/// One shard's stanza.
#[derive(Debug, Serialize)]
pub struct ListedShard {
    pub shard: usize,
    pub status: String,
    pub backups: Vec<ListedBackup>,
    /// The oldest and newest archived WAL segments.
    pub archive: Option<(String, String)>,
}

/// One restore point, as the shards recorded it.
#[derive(Debug, Serialize)]
pub struct ListedPoint {
    pub name: String,
    pub taken_at: Option<String>,
    pub pause_ms: Option<i32>,
    /// Per shard, the newest backup that reaches the point (`None`: none does).
    pub reached_from: Vec<Option<String>>,
}

/// What `orders backup list` reports.
#[derive(Debug, Serialize)]
pub struct BackupList {
    pub shards: Vec<ListedShard>,
    pub points: Vec<ListedPoint>,
}

impl Report for BackupList {}

impl fmt::Display for BackupList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for shard in &self.shards {
            write!(f, "shard {}: {}", shard.shard, shard.status)?;
            if let Some((min, max)) = &shard.archive {
                write!(f, "; WAL archived {min} .. {max}")?;
            }
            writeln!(f)?;
            for backup in &shard.backups {
                writeln!(
                    f,
                    "  {} {:<5} ended {} at {}",
                    backup.label, backup.kind, backup.stopped_at, backup.stop_lsn
                )?;
            }
        }
        if self.points.is_empty() {
            return write!(
                f,
                "no restore points: take one with `orders backup point NAME`"
            );
        }
        writeln!(f, "restore points:")?;
        for point in &self.points {
            let restorable = point.reached_from.iter().all(Option::is_some);
            writeln!(
                f,
                "  {} taken {} (writes paused {} ms): {}",
                point.name,
                point.taken_at.as_deref().unwrap_or("(not completed)"),
                point
                    .pause_ms
                    .map_or_else(|| "-".to_owned(), |ms| ms.to_string()),
                if restorable {
                    "restorable on every shard".to_owned()
                } else {
                    format!(
                        "not restorable: no backup reaches it on shard(s) {:?}",
                        point
                            .reached_from
                            .iter()
                            .enumerate()
                            .filter(|(_, b)| b.is_none())
                            .map(|(i, _)| i)
                            .collect::<Vec<_>>()
                    )
                },
            )?;
        }
        Ok(())
    }
}

/// Lists the repository's stanzas and the points the shards recorded.
pub async fn list(repository: &Repository, shards: &Shards) -> anyhow::Result<BackupList> {
    let mut stanzas: Vec<StanzaInfo> = repository.info().await?;
    stanzas.retain(|stanza| stanza.shard().is_some());
    stanzas.sort_by_key(|stanza| stanza.shard());
    let recorded = recorded_points(shards).await?;
    let points = recorded
        .first()
        .map(|(first, _)| first.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|point| {
            let reached_from = recorded
                .iter()
                .map(|(points, current_timeline)| {
                    let recorded = points.iter().find(|p| p.name == point.name)?;
                    let lsn: Lsn = recorded.lsn.as_ref()?.parse().ok()?;
                    let timeline = recorded.timeline.map_or(*current_timeline, |t| t as u32);
                    Some((lsn, timeline))
                })
                .enumerate()
                .map(|(index, at)| {
                    let (lsn, timeline) = at?;
                    stanzas
                        .iter()
                        .find(|s| s.shard() == Some(index))?
                        .backup_reaching(lsn, timeline)
                        .map(|backup| backup.label.to_string())
                })
                .collect();
            ListedPoint {
                taken_at: point.taken_at.map(|t| t.to_rfc3339()),
                pause_ms: point.pause_ms,
                name: point.name,
                reached_from,
            }
        })
        .collect();
    let shards = stanzas
        .into_iter()
        .map(|stanza| ListedShard {
            shard: stanza.shard().unwrap_or_default(),
            status: stanza.status.message.clone(),
            archive: stanza
                .archive
                .map(|range| (range.min.to_string(), range.max.to_string())),
            backups: stanza
                .backups
                .iter()
                .map(|backup| ListedBackup {
                    label: backup.label.to_string(),
                    kind: backup.kind.as_str(),
                    stopped_at: backup.stopped_at.to_rfc3339(),
                    stop_lsn: backup.stop_lsn.to_string(),
                })
                .collect(),
        })
        .collect();
    Ok(BackupList { shards, points })
}

/// Each shard's recorded points and timeline, in shard order.
async fn recorded_points(shards: &Shards) -> anyhow::Result<Vec<(Vec<BackupPoint>, u32)>> {
    let answers = join_all(shards.iter().map(|shard| async move {
        let points = backup_points::list(&shard.conn).await?;
        let timeline = backup_points::timeline(&shard.conn).await?;
        Ok::<_, sea_orm::DbErr>((points, timeline as u32))
    }))
    .await;
    answers
        .into_iter()
        .enumerate()
        .map(|(index, answer)| {
            answer.map_err(|e| anyhow::anyhow!("shard {index} cannot list its restore points: {e}"))
        })
        .collect()
}
