//! The statements of a bulk import, run on one shard inside a chunk's transaction (the
//! import's flow, chunks and retries are `orders_operations::import`).

use std::collections::HashMap;

use sea_orm::sqlx::{self, PgConnection, Row};

use crate::copy_text::CopyText;
use crate::order_input::ValidOrder;
use crate::routing::{bucket_of, tagged_id};
use crate::store::batch::copy_in;

/// A customer's "first last" name and email, copied onto each of their orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub name: String,
    pub email: String,
}

/// Which import, and which line of its file, wrote an order (`None` for orders not imported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    pub import_id: Option<String>,
    pub line: Option<i64>,
}

/// One order to COPY in.
#[derive(Debug, Clone, Copy)]
pub struct ImportedOrder<'a> {
    pub id: i64,
    pub order: &'a ValidOrder,
    pub contact: &'a Contact,
    pub order_ref: &'a str,
    pub line: u64,
}

/// Holds (import, `chunk`) until the transaction ends: a retried segment whose earlier
/// attempt is still writing waits for it, then sees exactly what it wrote.
pub async fn lock_chunk(
    conn: &mut PgConnection,
    import_id: &str,
    chunk: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, $2))")
        .bind(import_id)
        .bind(chunk)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The contacts of the customers among `ids` that live on this shard.
pub async fn contacts(
    conn: &mut PgConnection,
    ids: &[i64],
) -> Result<HashMap<i64, Contact>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, btrim(first_name || ' ' || last_name) AS name, email
         FROM customers WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let contact = Contact {
                name: r.try_get("name")?,
                email: r.try_get("email")?,
            };
            Ok((r.try_get("id")?, contact))
        })
        .collect()
}

/// Which of the (customer, reference) pairs in `keys` are already on this shard, and who
/// wrote each.
pub async fn present_refs(
    conn: &mut PgConnection,
    keys: &[(i64, &str)],
) -> Result<HashMap<(i64, String), Provenance>, sqlx::Error> {
    let (customers, refs): (Vec<i64>, Vec<&str>) = keys.iter().copied().unzip();
    let rows = sqlx::query(
        "SELECT o.customer_id, o.order_ref, o.import_id, o.import_line
         FROM orders o
         JOIN unnest($1::bigint[], $2::text[]) AS wanted(customer_id, order_ref)
           ON o.customer_id = wanted.customer_id AND o.order_ref = wanted.order_ref",
    )
    .bind(customers)
    .bind(refs)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            let provenance = Provenance {
                import_id: r.try_get("import_id")?,
                line: r.try_get("import_line")?,
            };
            Ok((
                (r.try_get("customer_id")?, r.try_get("order_ref")?),
                provenance,
            ))
        })
        .collect()
}

/// A new order id for each customer in `customers`, from this shard's sequence, carrying
/// the customer's bucket.
pub async fn order_ids(
    conn: &mut PgConnection,
    customers: &[i64],
) -> Result<Vec<i64>, sqlx::Error> {
    let sequence: Vec<i64> =
        sqlx::query_scalar("SELECT nextval('order_id_seq') FROM generate_series(1, $1)")
            .bind(customers.len() as i64)
            .fetch_all(&mut *conn)
            .await?;
    Ok(sequence
        .into_iter()
        .zip(customers)
        .map(|(seq, &customer)| tagged_id(seq, bucket_of(customer)))
        .collect())
}

/// COPYs the orders, then their items. Imported orders are `confirmed`: they are history,
/// so they skip payment (no credit is reserved).
pub async fn copy_orders(
    conn: &mut PgConnection,
    rows: &[ImportedOrder<'_>],
    import_id: &str,
) -> Result<(), sqlx::Error> {
    let mut orders = CopyText::new();
    let mut items = CopyText::new();
    for row in rows {
        let order = row.order;
        orders
            .plain(row.id)
            .plain(order.customer_id)
            .plain("confirmed")
            .plain(order.total())
            .text(order.notes.as_deref())
            .text(Some(&row.contact.name))
            .text(Some(&row.contact.email))
            .text(Some(row.order_ref))
            .text(Some(import_id))
            .plain(row.line)
            .end_row();
        for item in &order.items {
            items
                .plain(row.id)
                .plain(item.product_id)
                .plain(item.quantity)
                .plain(item.unit_price)
                .end_row();
        }
    }
    copy_in(
        conn,
        "COPY orders (id, customer_id, status, total_amount, notes, customer_name,
                      customer_email, order_ref, import_id, import_line) FROM STDIN",
        orders,
    )
    .await?;
    copy_in(
        conn,
        "COPY order_items (order_id, product_id, quantity, price) FROM STDIN",
        items,
    )
    .await?;
    Ok(())
}
