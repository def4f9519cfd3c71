//! Schema migrations for one order shard.
//!
//! Every shard carries the same schema, so the same [`Migrator`] runs against each of them.
//! On PostgreSQL every migration runs inside its own transaction (sea-orm-migration's default
//! for Postgres): a migration that fails leaves its shard exactly where it was before it.
//!
//! This crate depends on nothing else in the workspace, so an old migration keeps compiling
//! whatever later happens to the entities.

pub use sea_orm_migration::prelude::*;

pub use m20261207_000018_create_backup_gate::{BACKUP_GATE_LOCK, GATED_TABLES};

mod m20261125_000001_create_customers_and_orders;
mod m20261125_000002_create_order_items;
mod m20261125_000003_add_hot_path_indexes;
mod m20261125_000004_add_order_notes;
mod m20261125_000005_split_customer_name;
mod m20261125_000006_create_saga_bookkeeping;
mod m20261125_000007_create_shard_map;
mod m20261125_000008_denormalise_customer_onto_orders;
mod m20261125_000009_add_keyset_indexes;
mod m20261125_000010_add_import_refs;
mod m20261129_000011_create_inventory;
mod m20261202_000012_create_shard_identity;
mod m20261202_000013_index_idempotency_keys_by_age;
mod m20261202_000014_create_bucket_fences;
mod m20261202_000015_bucket_guard_takes_xid;
mod m20261203_000016_record_order_consistency;
mod m20261207_000017_stock_hold_change_keys;
mod m20261207_000018_create_backup_gate;

/// The ordered list of migrations every shard goes through.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261125_000001_create_customers_and_orders::Migration),
            Box::new(m20261125_000002_create_order_items::Migration),
            Box::new(m20261125_000003_add_hot_path_indexes::Migration),
            Box::new(m20261125_000004_add_order_notes::Migration),
            Box::new(m20261125_000005_split_customer_name::Migration),
            Box::new(m20261125_000006_create_saga_bookkeeping::Migration),
            Box::new(m20261125_000007_create_shard_map::Migration),
            Box::new(m20261125_000008_denormalise_customer_onto_orders::Migration),
            Box::new(m20261125_000009_add_keyset_indexes::Migration),
            Box::new(m20261125_000010_add_import_refs::Migration),
            Box::new(m20261129_000011_create_inventory::Migration),
            Box::new(m20261202_000012_create_shard_identity::Migration),
            Box::new(m20261202_000013_index_idempotency_keys_by_age::Migration),
            Box::new(m20261202_000014_create_bucket_fences::Migration),
            Box::new(m20261202_000015_bucket_guard_takes_xid::Migration),
            Box::new(m20261203_000016_record_order_consistency::Migration),
            Box::new(m20261207_000017_stock_hold_change_keys::Migration),
            Box::new(m20261207_000018_create_backup_gate::Migration),
        ]
    }
}
