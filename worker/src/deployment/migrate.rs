//! `orders migrate`: the same migrations on every shard, concurrently.
//!
//! Each migration runs in its own transaction on its shard, so a shard that fails stays at
//! the last migration that succeeded there; the error names it. Other shards finish
//! normally: re-running the command later brings the failed one up to the same version.
//!
//! `up` first refuses shards that sort text differently (nothing is migrated then), and
//! afterwards records identities, stores the shard map and puts every shard's id sequences
//! in a class of their own ([`super::id_sequences`]).

use anyhow::bail;
use futures::future::join_all;
use orders_core::store::server;
use orders_core::{Shard, Shards};
use orders_migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait, DbErr};
use sea_orm_migration::MigrationStatus;

use super::{Problem, collation};

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Apply pending migrations (all, or the next N).
    Up(Option<u32>),
    /// Roll back the last N applied migrations.
    Down(u32),
    /// Change nothing; report versions.
    Status,
}

/// A shard's schema version after the plan ran.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ShardVersion {
    pub shard: usize,
    pub url: String,
    /// Name of the newest applied migration, `None` for an empty schema.
    pub version: Option<String>,
    pub applied: usize,
    pub pending: usize,
}

/// Runs `plan` on every shard and returns each shard's version. Fails if any shard failed,
/// naming every failed shard; the shards that succeeded are reported in the log.
pub async fn run(shards: &Shards, plan: Plan) -> anyhow::Result<Vec<ShardVersion>> {
    if matches!(plan, Plan::Up(_))
        && let Some(problem) = collation::mismatch(&collation::read(shards).await)
    {
        bail!(
            "nothing was migrated: {}\nfix: {}",
            problem.what,
            problem.fix
        );
    }
    let results = join_all(shards.iter().map(|shard| async move {
        let conn = &shard.conn;
        let outcome = match plan {
            Plan::Up(steps) => Migrator::up(conn, steps).await,
            Plan::Down(steps) => Migrator::down(conn, Some(steps)).await,
            Plan::Status => Ok(()),
        };
        let outcome = match outcome {
            Ok(()) => version(conn).await,
            Err(e) => Err(e),
        };
        outcome
            .map(|(version, applied, pending)| ShardVersion {
                shard: shard.index,
                url: shard.url.clone(),
                version,
                applied,
                pending,
            })
            .map_err(|e| shard.error(e))
    }))
    .await;
    let mut versions = Vec::new();
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(v) => versions.push(v),
            Err(e) => failures.push(e.to_string()),
        }
    }
    if !failures.is_empty() {
        for v in &versions {
            tracing::info!(shard = v.shard, version = ?v.version, "shard migrated");
        }
        bail!(
            "migration failed on {} of {} shards (each failed shard stays at its last complete migration; fix the cause and re-run):\n  {}",
            failures.len(),
            shards.len(),
            failures.join("\n  ")
        );
    }
    if matches!(plan, Plan::Up(None)) {
        // New shards learn who they are and get their id class; then a fresh deployment
        // gets its first shard map, and a shard that missed a version gets it.
        crate::deployment::shard_identity::record_missing(shards).await?;
        super::id_sequences::make_disjoint(shards).await?;
        shards.refresh_map().await?;
        let version = shards.publish_map().await?;
        tracing::info!(version, "shard map stored on every shard");
    }
    Ok(versions)
}

/// The newest migration applied on this shard, if any.
pub async fn newest_applied(
    conn: &sea_orm::DatabaseConnection,
) -> Result<Option<String>, sea_orm::DbErr> {
    Ok(version(conn).await?.0)
}

async fn version(
    conn: &sea_orm::DatabaseConnection,
) -> Result<(Option<String>, usize, usize), sea_orm::DbErr> {
    let migrations = Migrator::get_migration_with_status(conn).await?;
    let applied: Vec<_> = migrations
        .iter()
        .filter(|m| m.status() == MigrationStatus::Applied)
        .collect();
    let version = applied.last().map(|m| m.name().to_owned());
    Ok((version, applied.len(), migrations.len() - applied.len()))
}

/// A shard's applied migrations against this build's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaComparison {
    /// This build's migrations the shard has not applied, oldest first.
    pub pending: Vec<String>,
    /// Migrations the shard has applied that this build does not know: a newer build
    /// migrated it.
    pub unknown: Vec<String>,
}

impl SchemaComparison {
    /// Whether the shard is exactly at this build's schema.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty() && self.unknown.is_empty()
    }

    /// What is wrong with `shard`'s schema, and the fix; `None` when it is current.
    pub fn problem(&self, shard: &Shard) -> Option<Problem> {
        let newest = Migrator::migrations()
            .last()
            .map(|m| m.name().to_owned())
            .unwrap_or_default();
        if !self.unknown.is_empty() {
            return Some(Problem {
                what: format!(
                    "shard {} ({}) has migrations this worker does not know ({}; this build's newest is {newest}): this worker is older than the schema",
                    shard.index,
                    shard.url,
                    self.unknown.join(", ")
                ),
                fix: "deploy the build that migrated the shard (or newer); to go back to this build's schema instead, run `orders migrate down` with that newer build".into(),
            });
        }
        if !self.pending.is_empty() {
            return Some(Problem {
                what: format!(
                    "shard {} ({}) is behind this build's schema: {} migration(s) pending, up to {newest}",
                    shard.index,
                    shard.url,
                    self.pending.len()
                ),
                fix: "orders migrate up (with the same ORDERS_SHARDS as this worker)".into(),
            });
        }
        None
    }
}

/// Compares the migrations recorded on a shard with this build's, without failing on
/// unknown ones as sea-orm's own status does.
pub async fn compare_with_build(conn: &impl ConnectionTrait) -> Result<SchemaComparison, DbErr> {
    let applied = server::applied_migrations(conn).await?;
    let known: Vec<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    Ok(SchemaComparison {
        pending: known
            .iter()
            .filter(|name| !applied.contains(name))
            .cloned()
            .collect(),
        unknown: applied
            .into_iter()
            .filter(|name| !known.contains(name))
            .collect(),
    })
}
