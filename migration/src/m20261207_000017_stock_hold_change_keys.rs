//! The bucket guard logs a stock hold's change under its product *and* order
//! (`<product_id>:<order_id>`), not its product alone.
//!
//! A hold is one row per (order, product), and a hot product has as many as it had orders.
//! Logged under the product, every change to one hold made the mover's catch-up re-read and
//! rewrite all of that product's holds: under load on a hot product, each pass moved the
//! whole group and the catch-up could stop converging. Logged under both, it rewrites the
//! one hold. A change logged in the old form (during the upgrade) still rewrites the group.

use sea_orm_migration::prelude::*;

use crate::m20261202_000015_bucket_guard_takes_xid::guard_taking_xid;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const BY_PRODUCT: &str =
    "WHEN 'inventory', 'stock_holds' THEN b := r.product_id % 1024; k := r.product_id::text;";
const BY_PRODUCT_AND_ORDER: &str =
    "WHEN 'inventory' THEN b := r.product_id % 1024; k := r.product_id::text;
        WHEN 'stock_holds' THEN b := r.product_id % 1024;
            k := r.product_id::text || ':' || r.order_id::text;";

fn guard_by_hold() -> String {
    let previous = guard_taking_xid();
    assert!(previous.contains(BY_PRODUCT));
    previous.replacen(BY_PRODUCT, BY_PRODUCT_AND_ORDER, 1)
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(&guard_by_hold())
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(&guard_taking_xid())
            .await?;
        Ok(())
    }
}
