//! Customers: creating them on the shard their id routes to, and reading them back.

use orders_entities::customer;
use rust_decimal::Decimal;
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, PaginatorTrait, Set,
    Statement,
};

use crate::routing;

/// What `orders customer add` needs to create a customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCustomer {
    /// Use this id instead of allocating one. It must route to the shard written to.
    pub id: Option<i64>,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub credit_limit: Decimal,
}

impl NewCustomer {
    /// Splits a full name at its first space, the same rule the name-split migration uses.
    pub fn split_name(full_name: &str) -> (String, String) {
        let full_name = full_name.trim();
        match full_name.split_once(' ') {
            Some((first, last)) => (first.to_owned(), last.trim().to_owned()),
            None => (full_name.to_owned(), String::new()),
        }
    }
}

/// Inserts `new` on shard `shard`, allocating a shard-tagged id unless one was given.
#[tracing::instrument(skip_all, fields(shard))]
pub async fn insert(
    conn: &impl ConnectionTrait,
    shard: usize,
    new: &NewCustomer,
) -> Result<customer::Model, DbErr> {
    let id = match new.id {
        Some(id) => id,
        None => {
            let seq: i64 = conn
                .query_one_raw(Statement::from_string(
                    DbBackend::Postgres,
                    "SELECT nextval('customer_id_seq') AS seq",
                ))
                .await?
                .ok_or_else(|| DbErr::Custom("nextval returned no row".into()))?
                .try_get("", "seq")?;
            routing::tagged_id(seq, shard)
        }
    };
    customer::ActiveModel {
        id: Set(id),
        first_name: Set(new.first_name.clone()),
        last_name: Set(new.last_name.clone()),
        email: Set(new.email.clone()),
        credit_limit: Set(new.credit_limit),
        ..Default::default()
    }
    .insert(conn)
    .await
}

/// The customer with `id`, if this shard has it.
pub async fn find(conn: &impl ConnectionTrait, id: i64) -> Result<Option<customer::Model>, DbErr> {
    customer::Entity::find_by_id(id).one(conn).await
}

/// How many customers this shard holds.
pub async fn count(conn: &impl ConnectionTrait) -> Result<u64, DbErr> {
    customer::Entity::find().count(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_name_splits_at_its_first_space() {
        assert_eq!(
            NewCustomer::split_name("Ada King Lovelace"),
            ("Ada".into(), "King Lovelace".into())
        );
        assert_eq!(
            NewCustomer::split_name("  Cher "),
            ("Cher".into(), String::new())
        );
    }
}
