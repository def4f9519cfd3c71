//! The backup gate, and the restore points taken through it (table `backup_points`).
//!
//! `orders backup point` must name one instant on every shard: no order step may commit on
//! any shard between the first shard's restore point and the last one's. So every
//! transaction that writes an order or an idempotency key takes a shared advisory lock as it
//! commits (a deferred constraint trigger, so it holds the lock for the commit alone, not
//! while it waits on row locks); the point takes the same lock exclusively on every shard,
//! which waits for the commits in progress and holds the next ones back, writes its restore
//! points, and releases.
//!
//! Prepared two-phase parts do not take it (their transactions set `orders.prepared_part`):
//! a prepared part would hold the lock until its COMMIT PREPARED, and a point would wait for
//! every order in phase two. A restore settles the parts a point caught prepared instead.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

/// The advisory lock key of the gate: `ordersbg` read as ASCII.
pub const BACKUP_GATE_LOCK: i64 = 0x6f72_6465_7273_6267;

/// Tables whose rows make a transaction pass the gate: nearly every order step, compensation
/// and two-phase decision records an idempotency key in its transaction, the credit
/// compensation (`ReleaseCredit`) writes a credit hold, and imports, status changes and
/// bucket copies write orders. One gated row gates the whole transaction, so three tables
/// do, at the price of a trigger call per row written to them.
pub const GATED_TABLES: [&str; 3] = ["orders", "credit_holds", "idempotency_keys"];

fn gate_function() -> String {
    format!(
        "CREATE FUNCTION orders_backup_gate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('orders.prepared_part', true), '') <> 'on' THEN
        PERFORM pg_advisory_xact_lock_shared({BACKUP_GATE_LOCK});
    END IF;
    RETURN NULL;
END
$$"
    )
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE TABLE backup_points (
                 name text PRIMARY KEY,
                 requested_at timestamptz NOT NULL DEFAULT now(),
                 taken_at timestamptz,
                 lsn pg_lsn,
                 timeline integer,
                 pause_ms integer
             )",
        )
        .await?;
        db.execute_unprepared(&gate_function()).await?;
        for table in GATED_TABLES {
            db.execute_unprepared(&format!(
                "CREATE CONSTRAINT TRIGGER {table}_backup_gate
                 AFTER INSERT OR UPDATE OR DELETE ON {table}
                 DEFERRABLE INITIALLY DEFERRED
                 FOR EACH ROW EXECUTE FUNCTION orders_backup_gate()"
            ))
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        for table in GATED_TABLES.iter().rev() {
            db.execute_unprepared(&format!("DROP TRIGGER {table}_backup_gate ON {table}"))
                .await?;
        }
        db.execute_unprepared("DROP FUNCTION orders_backup_gate()")
            .await?;
        db.execute_unprepared("DROP TABLE backup_points").await?;
        Ok(())
    }
}
