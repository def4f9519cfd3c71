//! The bucket guard takes its transaction's id before it reads the bucket's fence.
//!
//! A mover sets a fence, then waits for every transaction running at that moment, so that
//! every write after the wait meets the fence. PostgreSQL gives a transaction its id lazily,
//! at the first row it writes, which comes after the BEFORE trigger: a transaction whose
//! first write read "no fence" just before the fence committed could have had no id yet when
//! the mover listed the transactions running, escape the wait, and commit an unlogged row
//! in a `copying` bucket after the copy read the table. With the id taken first, either the
//! transaction is listed (and waited for) or its fence check runs after the fence committed
//! (a trigger's queries each take a fresh snapshot) and sees it.

use sea_orm_migration::prelude::*;

use crate::m20261202_000014_create_bucket_fences::GUARD_FUNCTION;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

/// Where the id is taken: after the mover's own writes pass, before the fence is read.
const BEFORE_FENCE_CHECK: &str = "    IF TG_OP = 'DELETE' THEN r := OLD; ELSE r := NEW; END IF;\n";
const TAKE_XID: &str = "    PERFORM pg_current_xact_id();\n";

/// Migration 14's guard function, replacing whatever body the shard has.
fn replacing(body: &str) -> String {
    body.replacen("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
}

pub(crate) fn guard_taking_xid() -> String {
    assert!(GUARD_FUNCTION.contains(BEFORE_FENCE_CHECK));
    replacing(&GUARD_FUNCTION.replacen(
        BEFORE_FENCE_CHECK,
        &format!("{TAKE_XID}{BEFORE_FENCE_CHECK}"),
        1,
    ))
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(&guard_taking_xid())
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(&replacing(GUARD_FUNCTION))
            .await?;
        Ok(())
    }
}
