//! `orders backup`: every shard's stanza created if it is new, then backed up, one shard
//! after another, with a progress bar on stderr.

use std::fmt;
use std::time::Instant;

use orders_backup::pgbackrest::{BackupKind, Repository, StanzaInfo};
use serde::Serialize;

use super::seconds;
use crate::cli::progress_bar::{bar, eta};
use crate::cli::report::Report;

/// One shard's new backup.
#[derive(Debug, Serialize)]
pub struct ShardBackup {
    pub shard: usize,
    pub label: String,
    pub seconds: f64,
}

/// What `orders backup` reports.
#[derive(Debug, Serialize)]
pub struct BackupRun {
    pub kind: &'static str,
    pub shards: Vec<ShardBackup>,
    pub seconds: f64,
}

impl Report for BackupRun {}

impl fmt::Display for BackupRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} backup of {} shards in {:.1} s",
            self.kind,
            self.shards.len(),
            self.seconds
        )?;
        for shard in &self.shards {
            writeln!(
                f,
                "  shard {}: {} ({:.1} s)",
                shard.shard, shard.label, shard.seconds
            )?;
        }
        write!(f, "see them with: orders backup list")
    }
}

/// Whether `stanza` exists in the repository: pgBackRest lists the config's stanzas even
/// before `stanza-create`, with status 1 ("missing stanza path") or 3 ("missing stanza data").
fn stanza_created(stanza: &StanzaInfo) -> bool {
    !matches!(stanza.status.code, 1 | 3)
}

/// Backs up shards `0..shard_count`, creating the stanzas not yet created.
pub async fn back_up(
    repository: &Repository,
    shard_count: usize,
    kind: BackupKind,
) -> anyhow::Result<BackupRun> {
    let started = Instant::now();
    // One `info` instead of a `stanza-create` per shard: most runs find every stanza there.
    let created: Vec<usize> = repository
        .info()
        .await?
        .iter()
        .filter(|stanza| stanza_created(stanza))
        .filter_map(|stanza| stanza.shard())
        .collect();
    let mut shards = Vec::with_capacity(shard_count);
    for shard in 0..shard_count {
        let fraction = shard as f64 / shard_count as f64;
        eprintln!(
            "{} {} backing up shard {shard} of {shard_count}",
            bar(fraction),
            eta(fraction, started.elapsed())
        );
        let began = Instant::now();
        if !created.contains(&shard) {
            repository.create_stanza(shard).await?;
        }
        let label = repository.backup(shard, kind).await?;
        tracing::info!(shard, backup = %label, kind = kind.as_str(), "shard backed up");
        shards.push(ShardBackup {
            shard,
            label: label.to_string(),
            seconds: seconds(began.elapsed()),
        });
    }
    eprintln!("{} done", bar(1.0));
    Ok(BackupRun {
        kind: kind.as_str(),
        shards,
        seconds: seconds(started.elapsed()),
    })
}
