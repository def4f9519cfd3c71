//! Copies the customer's name and email onto each order (the article's answer to joins that
//! would cross shards): order listings that merge several shards read one table.
//!
//! A customer and their orders share a bucket, hence a shard, so the copies are kept right
//! by updating them in the same transaction as the customer
//! (`store::customers::update_contact`). Up backfills existing orders; down drops the copies,
//! which loses nothing because the customers table still has the originals.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "ALTER TABLE orders ADD COLUMN customer_name text, ADD COLUMN customer_email text",
        )
        .await?;
        db.execute_unprepared(
            "UPDATE orders o
             SET customer_name = btrim(c.first_name || ' ' || c.last_name),
                 customer_email = c.email
             FROM customers c
             WHERE c.id = o.customer_id",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE orders DROP COLUMN customer_name, DROP COLUMN customer_email",
            )
            .await?;
        Ok(())
    }
}
