//! Customers: creating them on the shard their id routes to, and reading them back.

use orders_entities::customer;
use rust_decimal::Decimal;
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    PaginatorTrait, Set, Statement, TransactionTrait,
};

use super::id_sequences;
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

/// Inserts `new` on this shard. Unless an id was given, allocates one in a bucket this shard
/// owns (`owned_buckets`, from the shard map), taking the buckets in turn so they fill evenly.
#[tracing::instrument(skip_all)]
pub async fn insert(
    conn: &impl ConnectionTrait,
    owned_buckets: &[u16],
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
            if owned_buckets.is_empty() {
                return Err(DbErr::Custom(
                    "this shard owns no buckets to allocate ids in".into(),
                ));
            }
            let turn = id_sequences::turn(seq).rem_euclid(owned_buckets.len() as i64);
            let bucket = owned_buckets[turn as usize];
            routing::tagged_id(seq, bucket)
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

/// Changes a customer's name and email, and the copies on their orders, in one transaction:
/// a customer and their orders share a shard, so the copies never disagree with the customer
/// once it commits. Returns whether the customer exists.
#[tracing::instrument(skip_all, fields(customer_id))]
pub async fn update_contact(
    conn: &DatabaseConnection,
    customer_id: i64,
    first_name: &str,
    last_name: &str,
    email: &str,
) -> Result<bool, DbErr> {
    let txn = conn.begin().await?;
    let updated = txn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE customers SET first_name = $2, last_name = $3, email = $4, updated_at = now()
             WHERE id = $1",
            [
                customer_id.into(),
                first_name.into(),
                last_name.into(),
                email.into(),
            ],
        ))
        .await?
        .rows_affected();
    if updated == 0 {
        return Ok(false);
    }
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "UPDATE orders SET customer_name = btrim($2 || ' ' || $3), customer_email = $4
         WHERE customer_id = $1",
        [
            customer_id.into(),
            first_name.into(),
            last_name.into(),
            email.into(),
        ],
    ))
    .await?;
    txn.commit().await?;
    Ok(true)
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
