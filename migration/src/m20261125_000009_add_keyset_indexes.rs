//! Indexes for keyset pagination, newest first: all of a shard's orders by
//! (created_at, id), and one customer's orders by (customer_id, created_at, id). The second
//! makes the article's single-column customer index redundant, so it replaces it.
//! `orders explain` shows the plans that use them.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE INDEX IF NOT EXISTS idx_orders_created_at_id ON orders (created_at, id)",
        )
        .await?;
        db.execute_unprepared(
            "CREATE INDEX IF NOT EXISTS idx_orders_customer_created_at_id
             ON orders (customer_id, created_at, id)",
        )
        .await?;
        db.execute_unprepared("DROP INDEX idx_orders_customer_id")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("CREATE INDEX idx_orders_customer_id ON orders (customer_id)")
            .await?;
        db.execute_unprepared("DROP INDEX idx_orders_customer_created_at_id")
            .await?;
        db.execute_unprepared("DROP INDEX idx_orders_created_at_id")
            .await?;
        Ok(())
    }
}
