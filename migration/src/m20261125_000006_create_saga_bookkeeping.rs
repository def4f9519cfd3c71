//! Bookkeeping that makes the saga's activities safe to retry.
//!
//! - `idempotency_keys`: one row per (workflow run, step), written in the same transaction as
//!   the step's effect, holding the step's result. A retry finds the row and returns the
//!   stored result instead of writing again. A compensation marks the row `compensated`, so a
//!   late duplicate of the forward step cannot resurrect what was undone.
//! - `credit_holds`: the credit an order reserved on its customer, `held` or `released`.
//!   Releasing flips the row once, so credit is given back exactly once however often the
//!   release runs, and a release that runs first leaves a tombstone a late reserve respects.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    Key,
    Result,
    Compensated,
    CreatedAt,
}

#[derive(DeriveIden)]
enum CreditHolds {
    Table,
    OrderId,
    CustomerId,
    Amount,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .col(text(IdempotencyKeys::Key).primary_key())
                    .col(json_binary_null(IdempotencyKeys::Result))
                    .col(boolean(IdempotencyKeys::Compensated).default(false))
                    .col(
                        timestamp_with_time_zone(IdempotencyKeys::CreatedAt)
                            .default(Expr::current_timestamp()),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(CreditHolds::Table)
                    .col(big_integer(CreditHolds::OrderId).primary_key())
                    .col(big_integer(CreditHolds::CustomerId))
                    .col(
                        decimal_len(CreditHolds::Amount, 12, 2)
                            .check(Expr::col(CreditHolds::Amount).gte(0)),
                    )
                    .col(
                        text(CreditHolds::Status)
                            .check(Expr::col(CreditHolds::Status).is_in(["held", "released"])),
                    )
                    .col(
                        timestamp_with_time_zone(CreditHolds::CreatedAt)
                            .default(Expr::current_timestamp()),
                    )
                    .col(
                        timestamp_with_time_zone(CreditHolds::UpdatedAt)
                            .default(Expr::current_timestamp()),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(CreditHolds::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(IdempotencyKeys::Table).to_owned())
            .await
    }
}
