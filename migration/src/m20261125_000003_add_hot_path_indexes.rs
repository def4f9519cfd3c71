//! The article's indexes: the join from orders to their items, a customer's orders, and
//! filtering by status.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Orders {
    Table,
    CustomerId,
    Status,
}

#[derive(DeriveIden)]
enum OrderItems {
    Table,
    OrderId,
}

const ORDER_ITEMS_ORDER_ID: &str = "idx_order_items_order_id";
const ORDERS_CUSTOMER_ID: &str = "idx_orders_customer_id";
const ORDERS_STATUS: &str = "idx_orders_status";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(ORDER_ITEMS_ORDER_ID)
                    .table(OrderItems::Table)
                    .col(OrderItems::OrderId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(ORDERS_CUSTOMER_ID)
                    .table(Orders::Table)
                    .col(Orders::CustomerId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(ORDERS_STATUS)
                    .table(Orders::Table)
                    .col(Orders::Status)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in [ORDERS_STATUS, ORDERS_CUSTOMER_ID, ORDER_ITEMS_ORDER_ID] {
            manager
                .drop_index(Index::drop().name(name).to_owned())
                .await?;
        }
        Ok(())
    }
}
