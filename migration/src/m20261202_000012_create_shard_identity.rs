//! Which deployment a shard belongs to and where it sits in it: one row, written by
//! `orders migrate up` the first time it migrates the shard. A worker compares it with
//! `ORDERS_SHARDS` before it polls, so shards listed in another order, or a shard of another
//! deployment, are refused instead of receiving the wrong customers' orders.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE shard_identity (
                     -- at most one row: the primary key can only be true
                     singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                     deployment  uuid NOT NULL,
                     shard_index smallint NOT NULL CHECK (shard_index >= 0),
                     recorded_at timestamptz NOT NULL DEFAULT now()
                 )",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE shard_identity")
            .await?;
        Ok(())
    }
}
