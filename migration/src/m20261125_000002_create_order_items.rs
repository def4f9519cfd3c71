//! The items of an order, the article's second migration.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum OrderItems {
    Table,
    Id,
    OrderId,
    ProductId,
    Quantity,
    Price,
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(OrderItems::Table)
                    .col(big_pk_auto(OrderItems::Id))
                    .col(big_integer(OrderItems::OrderId))
                    .col(big_integer(OrderItems::ProductId))
                    .col(integer(OrderItems::Quantity).check(Expr::col(OrderItems::Quantity).gt(0)))
                    .col(
                        decimal_len(OrderItems::Price, 10, 2)
                            .check(Expr::col(OrderItems::Price).gte(0)),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("order_items_order_id_fkey")
                            .from(OrderItems::Table, OrderItems::OrderId)
                            .to(Orders::Table, Orders::Id),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(OrderItems::Table).to_owned())
            .await
    }
}
