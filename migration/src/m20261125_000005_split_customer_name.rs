//! Splits `customers.name` into `first_name` and `last_name`, moving the data both ways.
//!
//! Unlike the article's `split_part(name, ' ', 2)`, everything after the first space goes to
//! `last_name`, so "Ada King Lovelace" survives up → down intact. A name without a space
//! becomes a first name with an empty last name, and comes back unchanged.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Customers {
    Table,
    Name,
    FirstName,
    LastName,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Customers::Table)
                    .add_column(text_null(Customers::FirstName))
                    .add_column(text(Customers::LastName).default(""))
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "UPDATE customers SET
                     first_name = split_part(name, ' ', 1),
                     last_name = CASE WHEN position(' ' IN name) > 0
                                      THEN substr(name, position(' ' IN name) + 1)
                                      ELSE '' END",
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Customers::Table)
                    .modify_column(ColumnDef::new(Customers::FirstName).not_null())
                    .drop_column(Customers::Name)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Customers::Table)
                    .add_column(text_null(Customers::Name))
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared(
                "UPDATE customers SET name = concat_ws(' ', first_name, NULLIF(last_name, ''))",
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Customers::Table)
                    .modify_column(ColumnDef::new(Customers::Name).not_null())
                    .drop_column(Customers::FirstName)
                    .drop_column(Customers::LastName)
                    .to_owned(),
            )
            .await
    }
}
