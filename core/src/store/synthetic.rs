//! Synthetic rows at volume, made server-side with `generate_series`, through the same id
//! sequences and buckets as real ones, so they route, list and audit like real orders.
//! For development and load-test databases (`orders fill`), never production.

use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};

use crate::routing::ID_STRIDE;

/// Makes `count` customers whose ids take `buckets` in turn (as `orders customer add` does)
/// and returns their ids.
pub async fn make_customers(
    conn: &impl ConnectionTrait,
    buckets: &[i32],
    count: u32,
) -> Result<Vec<i64>, DbErr> {
    conn.query_all_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO customers (id, first_name, last_name, email, credit_limit)
         SELECT id, 'Customer', id::text, 'customer' || id || '@example.com', 100000
         FROM (SELECT nextval('customer_id_seq') * $3
                      + ($1::int[])[g % cardinality($1::int[]) + 1] AS id
               FROM generate_series(1, $2::int) g) new
         RETURNING id",
        [
            Value::from(buckets.to_vec()),
            count.into(),
            ID_STRIDE.into(),
        ],
    ))
    .await?
    .iter()
    .map(|row| row.try_get("", "id"))
    .collect()
}

/// Makes `count` orders spread over `customers`, a second apart going back in time, two
/// items each; each order id carries its customer's bucket.
pub async fn make_orders(
    conn: &impl ConnectionTrait,
    customers: &[i64],
    count: u32,
) -> Result<(), DbErr> {
    conn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
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
        [
            Value::from(customers.to_vec()),
            count.into(),
            ID_STRIDE.into(),
        ],
    ))
    .await?;
    Ok(())
}

/// Refreshes the planner's statistics of the order tables after a bulk change.
pub async fn analyze(conn: &impl ConnectionTrait) -> Result<(), DbErr> {
    conn.execute_unprepared("ANALYZE customers, orders, order_items")
        .await?;
    Ok(())
}
