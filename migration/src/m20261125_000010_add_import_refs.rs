//! What makes bulk imports idempotent: `order_ref`, the client's reference for an imported
//! order (unique per customer, so importing the same line twice adds nothing), and
//! `import_id` + `import_line`, the import and line that wrote it (so a retried segment
//! recognises its own rows). Orders placed through PlaceOrder leave all three null.
//! A customer's orders share a shard, so the unique index enforces this globally.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "ALTER TABLE orders ADD COLUMN order_ref text
                 CHECK (length(order_ref) BETWEEN 1 AND 200),
             ADD COLUMN import_id text,
             ADD COLUMN import_line bigint",
        )
        .await?;
        db.execute_unprepared(
            "CREATE UNIQUE INDEX IF NOT EXISTS idx_orders_customer_order_ref ON orders (customer_id, order_ref)",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE orders DROP COLUMN order_ref, DROP COLUMN import_id,
                 DROP COLUMN import_line",
            )
            .await?;
        Ok(())
    }
}
