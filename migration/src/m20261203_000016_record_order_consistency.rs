//! Each placed order records how it was placed (`saga` or `two_phase`), so whatever reads
//! the order later, an order's lifecycle started long after its placement included, knows
//! its mode from the row alone. Nullable: imported and synthetic orders, and orders placed
//! before this migration, have none, and code that does not know the column keeps working
//! while it is rolled out.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                // Every existing row is NULL, which the check admits: NOT VALID skips the scan
                // of the whole table that checking them would take under an exclusive lock.
                // New and updated rows are checked all the same.
                "ALTER TABLE orders ADD COLUMN consistency text;
                 ALTER TABLE orders ADD CONSTRAINT orders_consistency_known
                     CHECK (consistency IN ('saga', 'two_phase')) NOT VALID",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE orders DROP COLUMN consistency")
            .await?;
        Ok(())
    }
}
