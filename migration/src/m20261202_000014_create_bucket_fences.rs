//! What moving a bucket between shards needs on every shard (see the README, "Growing and
//! shrinking a deployment"):
//! - `bucket_fences`: the buckets this shard must not serve as usual, and why: `copying`
//!   (still served, every change logged for the catch-up), `frozen` (no write may commit),
//!   `incoming` (a copy arriving from another shard, not served yet), `moved` (owned
//!   elsewhere now; a worker still routing here is refused);
//! - `bucket_changes`: the log of rows written in a `copying` bucket;
//! - a guard trigger on every table that holds a bucket's rows. It runs inside each writing
//!   transaction on the shard itself, so it holds whatever shard map a worker has cached;
//! - an index per table on the bucket, so a bucket is read without scanning the table;
//! - `idempotency_keys.bucket`: the bucket whose rows a key protects, for keys that must move
//!   with them (NULL: the key stays with its shard).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

/// Tables holding a bucket's rows, in the order a copy must write them (foreign keys), with
/// the column whose value names the bucket.
const GUARDED: [(&str, &str); 7] = [
    ("customers", "id"),
    ("orders", "id"),
    ("order_items", "order_id"),
    ("credit_holds", "order_id"),
    ("inventory", "product_id"),
    ("stock_holds", "product_id"),
    ("idempotency_keys", "bucket"),
];

pub(crate) const GUARD_FUNCTION: &str = r#"
CREATE FUNCTION orders_bucket_guard() RETURNS trigger LANGUAGE plpgsql AS $guard$
DECLARE
    r record;
    b bigint;
    k text;
    fence record;
BEGIN
    -- The mover's own writes (the copy, the catch-up, the clean-up) pass.
    IF current_setting('orders.bucket_mover', true) = 'on' THEN
        IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;
    CASE TG_TABLE_NAME
        WHEN 'customers', 'orders' THEN b := r.id % 1024; k := r.id::text;
        WHEN 'order_items', 'credit_holds' THEN b := r.order_id % 1024; k := r.order_id::text;
        WHEN 'inventory', 'stock_holds' THEN b := r.product_id % 1024; k := r.product_id::text;
        WHEN 'idempotency_keys' THEN b := r.bucket; k := r.key;
    END CASE;
    IF b IS NOT NULL THEN
        SELECT state, peer INTO fence FROM bucket_fences WHERE bucket = b;
        IF FOUND THEN
            IF fence.state = 'copying' THEN
                INSERT INTO bucket_changes (bucket, table_name, row_key)
                VALUES (b, TG_TABLE_NAME, k);
            ELSE
                RAISE EXCEPTION 'bucket % is % on this shard (%)', b, fence.state,
                    CASE fence.state
                        WHEN 'frozen' THEN 'moving to shard ' || fence.peer || ', cut-over imminent'
                        WHEN 'moved' THEN 'owned by shard ' || fence.peer || ' now'
                        ELSE 'arriving from shard ' || fence.peer || ', not served here yet'
                    END
                    USING ERRCODE = 'OB001',
                          HINT = 'the write is retried; it lands on the bucket''s owner once the worker reads the new shard map';
            END IF;
        END IF;
    END IF;
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
END
$guard$"#;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE TABLE bucket_fences (
                 bucket  smallint PRIMARY KEY CHECK (bucket >= 0 AND bucket < 1024),
                 state   text NOT NULL CHECK (state IN ('copying', 'frozen', 'incoming', 'moved')),
                 -- the other shard of the move: the target, or for 'incoming' the source
                 peer    smallint NOT NULL CHECK (peer >= 0),
                 move_id text NOT NULL,
                 since   timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
        db.execute_unprepared(
            "CREATE TABLE bucket_changes (
                 id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                 bucket     smallint NOT NULL,
                 table_name text NOT NULL,
                 row_key    text NOT NULL
             )",
        )
        .await?;
        db.execute_unprepared(
            "CREATE INDEX idx_bucket_changes_bucket_id ON bucket_changes (bucket, id)",
        )
        .await?;
        db.execute_unprepared("ALTER TABLE idempotency_keys ADD COLUMN bucket smallint")
            .await?;
        db.execute_unprepared(GUARD_FUNCTION).await?;
        for (table, column) in GUARDED {
            let index = if column == "bucket" {
                format!(
                    "CREATE INDEX idx_{table}_bucket ON {table} (bucket, key) WHERE bucket IS NOT NULL"
                )
            } else {
                format!("CREATE INDEX idx_{table}_bucket ON {table} (({column} % 1024), {column})")
            };
            db.execute_unprepared(&index).await?;
            db.execute_unprepared(&format!(
                "CREATE TRIGGER {table}_bucket_guard BEFORE INSERT OR UPDATE OR DELETE ON {table}
                 FOR EACH ROW EXECUTE FUNCTION orders_bucket_guard()"
            ))
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let busy = db
            .query_one_raw(sea_orm_migration::sea_orm::Statement::from_string(
                sea_orm_migration::sea_orm::DbBackend::Postgres,
                "SELECT count(*) AS n FROM bucket_fences WHERE state <> 'moved'",
            ))
            .await?
            .map(|row| row.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0);
        if busy > 0 {
            return Err(DbErr::Migration(format!(
                "{busy} bucket(s) are being moved on this shard: finish or cancel the move \
                 (`orders reshard status`, `orders reshard cancel`) before rolling this migration back"
            )));
        }
        for (table, _) in GUARDED.iter().rev() {
            db.execute_unprepared(&format!("DROP TRIGGER {table}_bucket_guard ON {table}"))
                .await?;
            db.execute_unprepared(&format!("DROP INDEX idx_{table}_bucket"))
                .await?;
        }
        db.execute_unprepared("DROP FUNCTION orders_bucket_guard()")
            .await?;
        db.execute_unprepared("ALTER TABLE idempotency_keys DROP COLUMN bucket")
            .await?;
        db.execute_unprepared("DROP TABLE bucket_changes").await?;
        db.execute_unprepared("DROP TABLE bucket_fences").await?;
        Ok(())
    }
}
