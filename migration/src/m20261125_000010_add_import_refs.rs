//! What makes bulk imports idempotent: `order_ref`, the client's reference for an imported
//! order (unique on its shard, so importing the same line twice adds nothing), and
//! `import_id`, the import that wrote it (so a retried chunk recognises its own rows).
//! Orders placed through PlaceOrder leave both null.

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
             ADD COLUMN import_id text",
        )
        .await?;
        db.execute_unprepared("CREATE UNIQUE INDEX idx_orders_order_ref ON orders (order_ref)")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE orders DROP COLUMN order_ref, DROP COLUMN import_id")
            .await?;
        Ok(())
    }
}
