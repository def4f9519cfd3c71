//! `orders backup` (every shard through pgBackRest), `orders backup list`, `orders backup
//! point` and `orders restore`, and their reports. The work is `orders_backup`'s.

mod list;
mod restore;
mod run;

pub use list::{BackupList, list};
pub use restore::{RestoreReport, restore};
pub use run::{BackupRun, back_up};

use std::fmt;
use std::time::Duration;

use orders_backup::point::{self, PointTaken};
use orders_core::Shards;
use serde::Serialize;

use super::report::Report;

/// What `orders backup point` reports.
#[derive(Debug, Serialize)]
pub struct PointReport {
    pub name: String,
    /// The longest any commit waited for the point.
    pub pause_ms: f64,
    /// Each shard's restore point position, in shard order.
    pub positions: Vec<String>,
}

impl From<PointTaken> for PointReport {
    fn from(taken: PointTaken) -> Self {
        Self {
            name: taken.name,
            pause_ms: taken.pause.as_secs_f64() * 1000.0,
            positions: taken.positions.into_iter().map(|at| at.lsn).collect(),
        }
    }
}

impl Report for PointReport {}

impl fmt::Display for PointReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "restore point {:?} written on {} shards; writes paused {:.1} ms",
            self.name,
            self.positions.len(),
            self.pause_ms
        )?;
        for (shard, position) in self.positions.iter().enumerate() {
            writeln!(f, "  shard {shard}: {position}")?;
        }
        write!(
            f,
            "restore it with: orders restore --point {} --into <new directory>",
            self.name
        )
    }
}

/// Takes restore point `name` on every shard (see [`orders_backup::point`]).
pub async fn take_point(shards: &Shards, name: &str) -> anyhow::Result<PointReport> {
    let taken = point::take(shards, name).await?;
    tracing::info!(
        point = name,
        pause_ms = taken.pause.as_millis() as u64,
        "restore point written on every shard"
    );
    Ok(taken.into())
}

fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 100.0).round() / 100.0
}
