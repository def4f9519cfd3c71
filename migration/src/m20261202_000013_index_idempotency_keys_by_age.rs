//! An index for the idempotency-key retention: it deletes keys oldest first, in batches,
//! and must not scan the whole table to find them.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS idx_idempotency_keys_created_at_key
                 ON idempotency_keys (created_at, key)",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX idx_idempotency_keys_created_at_key")
            .await?;
        Ok(())
    }
}
