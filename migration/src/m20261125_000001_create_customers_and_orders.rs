//! Customers and their orders, the article's first migration.
//!
//! Ids are not `SERIAL`: they are allocated by the application from the sequences created
//! here, tagged with the shard that allocated them, so they stay unique across all shards.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Customers {
    Table,
    Id,
    Name,
    Email,
    CreditLimit,
    CreditUsed,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
    CustomerId,
    Status,
    TotalAmount,
    CreatedAt,
    UpdatedAt,
}

const ORDER_STATUSES: [&str; 5] = ["pending", "confirmed", "shipped", "delivered", "cancelled"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Customers::Table)
                    .col(big_integer(Customers::Id).primary_key())
                    .col(text(Customers::Name))
                    .col(text(Customers::Email))
                    .col(
                        decimal_len(Customers::CreditLimit, 12, 2)
                            .check(Expr::col(Customers::CreditLimit).gte(0)),
                    )
                    .col(
                        decimal_len(Customers::CreditUsed, 12, 2)
                            .default(0)
                            .check(Expr::col(Customers::CreditUsed).gte(0)),
                    )
                    .col(
                        timestamp_with_time_zone(Customers::CreatedAt)
                            .default(Expr::current_timestamp()),
                    )
                    .col(
                        timestamp_with_time_zone(Customers::UpdatedAt)
                            .default(Expr::current_timestamp()),
                    )
                    .check((
                        "customers_credit_within_limit",
                        Expr::col(Customers::CreditUsed).lte(Expr::col(Customers::CreditLimit)),
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Orders::Table)
                    .col(big_integer(Orders::Id).primary_key())
                    .col(big_integer(Orders::CustomerId))
                    .col(
                        text(Orders::Status)
                            .default("pending")
                            .check(Expr::col(Orders::Status).is_in(ORDER_STATUSES)),
                    )
                    .col(
                        decimal_len(Orders::TotalAmount, 12, 2)
                            .check(Expr::col(Orders::TotalAmount).gte(0)),
                    )
                    .col(
                        timestamp_with_time_zone(Orders::CreatedAt)
                            .default(Expr::current_timestamp()),
                    )
                    .col(
                        timestamp_with_time_zone(Orders::UpdatedAt)
                            .default(Expr::current_timestamp()),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("orders_customer_id_fkey")
                            .from(Orders::Table, Orders::CustomerId)
                            .to(Customers::Table, Customers::Id),
                    )
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        db.execute_unprepared("CREATE SEQUENCE customer_id_seq")
            .await?;
        db.execute_unprepared("CREATE SEQUENCE order_id_seq")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared("DROP SEQUENCE order_id_seq").await?;
        db.execute_unprepared("DROP SEQUENCE customer_id_seq")
            .await?;
        manager
            .drop_table(Table::drop().table(Orders::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Customers::Table).to_owned())
            .await
    }
}
