//! The versioned bucket → shard map. Every shard keeps a copy of every version, so a worker
//! can learn the current map from any shard that is up; the highest version wins.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE shard_map (
                     version    integer PRIMARY KEY CHECK (version > 0),
                     -- owners[b + 1] is the 0-based shard owning bucket b
                     owners     smallint[] NOT NULL CHECK (cardinality(owners) = 1024),
                     created_at timestamptz NOT NULL DEFAULT now()
                 )",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE shard_map")
            .await?;
        Ok(())
    }
}
