//! Data-layer benchmark: prints figures, asserts nothing. Run with
//! `cargo bench --workspace --bench data_layer` (see docs/benchmarks.md).
//!
//! It starts four throwaway PostgreSQL clusters (fsync off, as in the tests), migrates them,
//! fills each with synthetic orders, and measures, in one run:
//! - order reads through the cache (warm) against reads from the shards;
//! - the one-statement create (CTE + unnest) against the plain sea-orm create;
//! - a page merged from 4 shards queried concurrently against the same page from one shard;
//! - a deep page by keyset against the same page by OFFSET.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orders_core::metrics::OrderMetrics;
use orders_core::store::{listing, orders};
use orders_core::{OrderLine, Shards, ValidOrder};
use orders_entities::{order, order_item};
use orders_read::{CacheSettings, OrderCache};
use orders_read::{lookup, pages};
use orders_worker::cli::shards::synthetic;
use rust_decimal::Decimal;
use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, Set, TransactionTrait};

mod common;

const SHARDS: usize = 4;
const ORDERS_PER_SHARD: u32 = 50_000;
const PAGE: u64 = 50;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let clusters = common::Clusters::start("bench", SHARDS)?;
    let (_, shards) = clusters.deployment("bench", SHARDS).await?;
    eprintln!("filling: {ORDERS_PER_SHARD} orders per shard");
    synthetic::fill(
        &shards,
        synthetic::Volume {
            customers_per_shard: 1_000,
            orders_per_shard: ORDERS_PER_SHARD,
        },
    )
    .await?;

    println!("\ndata layer benchmark: {SHARDS} shards × {ORDERS_PER_SHARD} orders, page {PAGE}");
    println!("{:<52} {:>12} {:>12}", "measurement", "per op", "ops/s");
    reads(&shards).await?;
    creates(&shards).await?;
    pages(&shards).await?;
    deep_pages(&shards).await?;

    shards.close().await;
    Ok(())
}

/// Runs `op` `n` times (after `n / 10` warm-up runs) and returns the mean time per run.
async fn time<F, Fut>(n: u32, mut op: F) -> anyhow::Result<Duration>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    for i in 0..n / 10 {
        op(i).await?;
    }
    let started = Instant::now();
    for i in 0..n {
        op(i).await?;
    }
    Ok(started.elapsed() / n)
}

fn report(label: &str, per_op: Duration) {
    println!(
        "{label:<52} {:>10.1}µs {:>12.0}",
        per_op.as_secs_f64() * 1e6,
        1.0 / per_op.as_secs_f64()
    );
}

fn ratio(label: &str, numerator: Duration, denominator: Duration) {
    println!(
        "  → {label}: {:.2}×",
        numerator.as_secs_f64() / denominator.as_secs_f64()
    );
}

async fn sample_order_ids(shards: &Shards, n: u64) -> anyhow::Result<Vec<i64>> {
    Ok(pages::orders_page(shards, None, n)
        .await?
        .orders
        .iter()
        .map(|o| o.order.id)
        .collect())
}

async fn reads(shards: &Shards) -> anyhow::Result<()> {
    let ids = sample_order_ids(shards, 200).await?;
    let cache = OrderCache::new(
        CacheSettings {
            capacity: 10_000,
            ttl: Duration::from_secs(600),
        },
        Arc::new(OrderMetrics::disabled()),
    );
    let n = 2_000;
    let uncached = time(n, |i| {
        let id = ids[i as usize % ids.len()];
        async move {
            lookup::find_order(shards, id).await?.expect("order exists");
            Ok(())
        }
    })
    .await?;
    let cache = &cache;
    let cached = time(n, |i| {
        let id = ids[i as usize % ids.len()];
        async move {
            cache.get(shards, id).await?.expect("order exists");
            Ok(())
        }
    })
    .await?;
    report("order read from its shard (json_agg)", uncached);
    report("order read through the cache (warm)", cached);
    ratio("cache speed-up", uncached, cached);
    Ok(())
}

fn sample_order(customer_id: i64) -> ValidOrder {
    ValidOrder {
        customer_id,
        items: (1..=3)
            .map(|p| OrderLine {
                product_id: p,
                quantity: 2,
                unit_price: Decimal::new(1999, 2),
            })
            .collect(),
        notes: None,
        consistency: Default::default(),
    }
}

/// The plain sea-orm path: an order row, then its items with `insert_many`, in a
/// transaction; the benchmark's baseline for the one-statement create.
async fn create_with_sea_orm(
    conn: &sea_orm::DatabaseConnection,
    order: &ValidOrder,
) -> anyhow::Result<i64> {
    let txn = conn.begin().await?;
    let seq: i64 = txn
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT nextval('order_id_seq') AS seq",
        ))
        .await?
        .expect("nextval returns a row")
        .try_get("", "seq")?;
    let customer = orders_entities::customer::Entity::find_by_id(order.customer_id)
        .one(&txn)
        .await?
        .expect("customer exists");
    let id =
        orders_core::routing::tagged_id(seq, orders_core::routing::bucket_of(order.customer_id));
    order::ActiveModel {
        id: Set(id),
        customer_id: Set(order.customer_id),
        status: Set(order::OrderStatus::Pending),
        total_amount: Set(order.total()),
        notes: Set(order.notes.clone()),
        customer_name: Set(Some(format!(
            "{} {}",
            customer.first_name, customer.last_name
        ))),
        customer_email: Set(Some(customer.email)),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    order_item::Entity::insert_many(order.items.iter().map(|item| order_item::ActiveModel {
        order_id: Set(id),
        product_id: Set(item.product_id),
        quantity: Set(item.quantity),
        price: Set(item.unit_price),
        ..Default::default()
    }))
    .exec(&txn)
    .await?;
    txn.commit().await?;
    Ok(id)
}

async fn creates(shards: &Shards) -> anyhow::Result<()> {
    let shard = shards.get(0);
    let customer = listing::newest(&shard.conn, &listing::Served::by(&shards.map(), 0), None, 1)
        .await?[0]
        .customer_id;
    let order = sample_order(customer);
    let n = 1_000;
    let orm = time(n, |_| async {
        create_with_sea_orm(&shard.conn, &order).await?;
        Ok(())
    })
    .await?;
    let cte = time(n, |_| async {
        let txn = shard.conn.begin().await?;
        orders::create_with_items(&txn, &order).await?;
        txn.commit().await?;
        Ok(())
    })
    .await?;
    report("create order + 3 items: sea-orm (4 statements)", orm);
    report("create order + 3 items: one statement (CTE+unnest)", cte);
    ratio("one statement vs sea-orm speed-up", orm, cte);
    Ok(())
}

async fn pages(shards: &Shards) -> anyhow::Result<()> {
    let one_shard = shards.get(0);
    let n = 500;
    let single = time(n, |_| async {
        listing::newest(
            &one_shard.conn,
            &listing::Served::by(&shards.map(), 0),
            None,
            PAGE,
        )
        .await?;
        Ok(())
    })
    .await?;
    let merged = time(n, |_| async {
        pages::orders_page(shards, None, PAGE).await?;
        Ok(())
    })
    .await?;
    // The same four shard queries one after another: what the page would cost if the shards
    // were not queried concurrently.
    let sequential = time(n, |_| async {
        for shard in shards.iter() {
            listing::newest(
                &shard.conn,
                &listing::Served::by(&shards.map(), shard.index),
                None,
                PAGE,
            )
            .await?;
        }
        Ok(())
    })
    .await?;
    report("page of 50 from one shard", single);
    report("4 shard queries one after another (no merge)", sequential);
    report("page of 50 merged from 4 shards (concurrent)", merged);
    ratio(
        "4-shard page / one-shard page (target ≤ 1.5)",
        merged,
        single,
    );
    ratio(
        "sequential / concurrent (concurrency gained)",
        sequential,
        merged,
    );
    Ok(())
}

async fn deep_pages(shards: &Shards) -> anyhow::Result<()> {
    let depth = 20_000u64;
    // The cursor of the order at `depth`, found once by walking pages.
    let mut cursor = None;
    let mut walked = 0;
    while walked < depth {
        let page = pages::orders_page(shards, cursor.as_deref(), 500).await?;
        walked += page.orders.len() as u64;
        cursor = page.next_cursor;
    }
    let cursor = cursor.expect("the data is deeper than the walk");
    let n = 50;
    let keyset = time(n, |_| {
        let cursor = cursor.clone();
        async move {
            pages::orders_page(shards, Some(&cursor), PAGE).await?;
            Ok(())
        }
    })
    .await?;
    let offset = time(n, |_| async {
        pages::orders_page_at_offset(shards, depth, PAGE).await?;
        Ok(())
    })
    .await?;
    report("page at depth 20,000 by keyset cursor", keyset);
    report("page at depth 20,000 by OFFSET", offset);
    ratio("OFFSET / keyset at depth 20,000", offset, keyset);
    Ok(())
}
