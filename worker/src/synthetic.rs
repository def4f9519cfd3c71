//! `orders fill`: synthetic customers and orders at volume, for `orders explain` and the
//! benchmarks. Rows are made server-side with `generate_series`, through the same id
//! sequences and buckets as real ones, so they route, list and audit like real orders.
//! Meant for development and load-test databases, not for production.

use futures::future::try_join_all;
use orders_activities::Shards;
use orders_activities::routing::ID_STRIDE;
use orders_activities::shards::{Shard, ShardError};
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

/// How much to make on each shard.
#[derive(Debug, Clone, Copy)]
pub struct Volume {
    pub customers_per_shard: u32,
    pub orders_per_shard: u32,
}

/// Fills every shard concurrently, then refreshes planner statistics.
pub async fn fill(shards: &Shards, volume: Volume) -> Result<(), ShardError> {
    let map = shards.map();
    try_join_all(shards.iter().map(|shard| {
        let buckets: Vec<i32> = map
            .buckets_of(shard.index)
            .into_iter()
            .map(i32::from)
            .collect();
        async move {
            fill_shard(shard, &buckets, volume)
                .await
                .map_err(|e| shard.error(e))
        }
    }))
    .await?;
    Ok(())
}

async fn fill_shard(shard: &Shard, buckets: &[i32], volume: Volume) -> Result<(), sea_orm::DbErr> {
    let conn = &shard.conn;
    let run = |sql: &'static str, values: Vec<Value>| async move {
        conn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await
    };
    // Customers take the shard's buckets in turn, as `orders customer add` does.
    let customer_ids: Vec<i64> = conn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO customers (id, first_name, last_name, email, credit_limit)
             SELECT id, 'Customer', id::text, 'customer' || id || '@example.com', 100000
             FROM (SELECT nextval('customer_id_seq') * $3
                          + ($1::int[])[g % cardinality($1::int[]) + 1] AS id
                   FROM generate_series(1, $2::int) g) new
             RETURNING id",
            [
                Value::from(buckets.to_vec()),
                volume.customers_per_shard.into(),
                ID_STRIDE.into(),
            ],
        ))
        .await?
        .iter()
        .map(|row| row.try_get("", "id"))
        .collect::<Result<_, _>>()?;
    tracing::info!(
        shard = shard.index,
        customers = customer_ids.len(),
        "customers made; making orders"
    );
    // Orders a second apart going back in time, two items each; the order id carries its
    // customer's bucket.
    run(
        "WITH customer AS (
             SELECT c.id, btrim(c.first_name || ' ' || c.last_name) AS name, c.email,
                    row_number() OVER (ORDER BY c.id) - 1 AS n
             FROM customers c WHERE c.id = ANY($1::bigint[])
         ), new_orders AS (
             INSERT INTO orders (id, customer_id, status, total_amount, created_at, updated_at,
                                 customer_name, customer_email)
             SELECT nextval('order_id_seq') * $3 + customer.id % $3, customer.id,
                    (ARRAY['pending','confirmed','shipped','delivered','cancelled'])[g % 5 + 1],
                    30.00, now() - g * interval '1 second', now() - g * interval '1 second',
                    customer.name, customer.email
             FROM generate_series(1, $2::int) g
             JOIN customer ON customer.n = g % cardinality($1::bigint[])
             RETURNING id
         )
         INSERT INTO order_items (order_id, product_id, quantity, price)
         SELECT id, product, 1, 15.00 FROM new_orders, generate_series(1, 2) product",
        vec![
            Value::from(customer_ids),
            volume.orders_per_shard.into(),
            ID_STRIDE.into(),
        ],
    )
    .await?;
    run("ANALYZE customers, orders, order_items", vec![]).await?;
    tracing::info!(
        shard = shard.index,
        orders = volume.orders_per_shard,
        "shard filled"
    );
    Ok(())
}
