//! Stock, sharded by product: `inventory` holds each product's stock on the shard that owns
//! the product id (the same buckets and map as customers), and `stock_holds` records what
//! each order reserved there.
//!
//! A hold row is keyed by (order, product) and written in the same transaction as the change
//! to `inventory.reserved`, so a release flips it to `released` exactly once, and `orders
//! audit` can check that `reserved` equals the sum of the held quantities.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE TABLE inventory (
                 product_id bigint PRIMARY KEY CHECK (product_id > 0),
                 name text CHECK (length(name) BETWEEN 1 AND 200),
                 on_hand integer NOT NULL CHECK (on_hand >= 0),
                 reserved integer NOT NULL DEFAULT 0
                     CHECK (reserved >= 0 AND reserved <= on_hand),
                 created_at timestamptz NOT NULL DEFAULT now(),
                 updated_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
        db.execute_unprepared(
            "CREATE TABLE stock_holds (
                 order_id bigint NOT NULL,
                 product_id bigint NOT NULL REFERENCES inventory (product_id),
                 quantity integer NOT NULL CHECK (quantity > 0),
                 status text NOT NULL CHECK (status IN ('held', 'released')),
                 created_at timestamptz NOT NULL DEFAULT now(),
                 updated_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (order_id, product_id)
             )",
        )
        .await?;
        db.execute_unprepared(
            "CREATE INDEX idx_stock_holds_held_product ON stock_holds (product_id)
                 WHERE status = 'held'",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE stock_holds; DROP TABLE inventory")
            .await?;
        Ok(())
    }
}
