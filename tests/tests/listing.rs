//! Reads across shards: keyset pages that stay exact while orders arrive, a customer's orders
//! from their shard, counts that name the shards they miss, and customer copies on orders.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use orders_core::Shards;
use orders_read::pages::{self, ListError};

use crate::helpers::TestApp;

const ITEM: &[(i64, i32, &str)] = &[(7, 1, "10.00")];

/// Customers spread over the shards, one order each to start with.
async fn customers_with_orders(
    app: &TestApp,
    customers: usize,
    orders_each: usize,
) -> (Vec<i64>, Vec<i64>) {
    let mut customer_ids = Vec::new();
    let mut order_ids = Vec::new();
    for i in 0..customers {
        let customer = app.add_customer(&format!("Buyer{i} Test"), "1000.00").await;
        customer_ids.push(customer);
        for _ in 0..orders_each {
            order_ids.push(app.insert_order(customer, ITEM).await);
        }
    }
    (customer_ids, order_ids)
}

/// One pass through every order from the top, `limit` at a time.
struct Pass {
    /// The first page's `complete_before`.
    complete_before: chrono::DateTime<chrono::FixedOffset>,
    /// Every order seen, in order, with its `created_at`.
    orders: Vec<(i64, chrono::DateTime<chrono::FixedOffset>)>,
}

impl Pass {
    fn ids(&self) -> Vec<i64> {
        self.orders.iter().map(|(id, _)| *id).collect()
    }
}

/// Pages through every order with `limit`, calling `between` after each page.
async fn page_through(shards: &Shards, limit: u64, mut between: impl AsyncFnMut()) -> Pass {
    let mut pass: Option<Pass> = None;
    let mut cursor: Option<String> = None;
    loop {
        let page = pages::orders_page(shards, cursor.as_deref(), limit)
            .await
            .expect("a page is served");
        let seen = page.orders.iter().map(|o| (o.order.id, o.order.created_at));
        match &mut pass {
            None => {
                pass = Some(Pass {
                    complete_before: page
                        .complete_before
                        .expect("a first page says what it is complete before"),
                    orders: seen.collect(),
                })
            }
            Some(pass) => pass.orders.extend(seen),
        }
        between().await;
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return pass.expect("at least one page"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keyset_pages_never_skip_or_repeat_an_order_while_orders_keep_arriving() {
    let app = Arc::new(TestApp::spawn_without_worker().await);
    let (customers, before) = customers_with_orders(&app, 8, 15).await;
    let shards_used: HashSet<usize> = customers
        .iter()
        .map(|&c| app.shards.for_customer(c).index)
        .collect();
    assert_eq!(
        shards_used.len(),
        4,
        "the orders are spread over every shard"
    );

    // A writer keeps placing orders for the whole walk, and more land between pages.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (app, stop, customers) = (app.clone(), stop.clone(), customers.clone());
        async move {
            let mut placed = 0;
            while !stop.load(Ordering::Relaxed) {
                app.insert_order(customers[placed % customers.len()], ITEM)
                    .await;
                placed += 1;
            }
            placed
        }
    });
    let mut turn = 0;
    let seen = page_through(&app.shards, 7, async || {
        turn += 1;
        app.insert_order(customers[turn % customers.len()], ITEM)
            .await;
    })
    .await
    .ids();
    stop.store(true, Ordering::Relaxed);
    let placed_meanwhile = writer.await.unwrap();

    let unique: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "an order was shown twice: {seen:?}"
    );
    let missing: Vec<i64> = before
        .iter()
        .filter(|id| !unique.contains(id))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "orders that existed before paging were skipped: {missing:?}"
    );
    assert!(
        placed_meanwhile > 0,
        "the writer placed orders during the walk"
    );

    // The same walk by OFFSET, with orders landing between pages, shows orders twice.
    let mut offset_seen = Vec::new();
    for page in 0..(before.len() / 7) {
        let rows = pages::orders_page_at_offset(&app.shards, (page * 7) as u64, 7)
            .await
            .unwrap();
        offset_seen.extend(rows.iter().map(|o| o.order.id));
        app.insert_order(customers[page % customers.len()], ITEM)
            .await;
    }
    let offset_unique: HashSet<i64> = offset_seen.iter().copied().collect();
    assert!(
        offset_unique.len() < offset_seen.len(),
        "OFFSET pagination repeats orders when new ones arrive (that is why keyset is the default)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_is_newest_first_and_a_bad_cursor_or_size_is_refused() {
    let app = TestApp::spawn_without_worker().await;
    customers_with_orders(&app, 4, 3).await;
    let page = pages::orders_page(&app.shards, None, 12).await.unwrap();
    let positions: Vec<_> = page.orders.iter().map(|o| o.order.position()).collect();
    let mut sorted = positions.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(positions, sorted, "newest first, ties broken by id");
    assert!(page.orders.iter().all(|o| {
        o.order
            .customer_name
            .as_deref()
            .is_some_and(|n| n.starts_with("Buyer"))
    }));

    assert!(matches!(
        pages::orders_page(&app.shards, Some("bm9wZQ"), 10).await,
        Err(ListError::BadCursor(_))
    ));
    assert!(matches!(
        pages::orders_page(&app.shards, None, 0).await,
        Err(ListError::BadPageSize(0))
    ));
    let cli = app.cli(&["list", "--limit", "100000"]);
    assert!(!cli.status.success());
    assert!(String::from_utf8_lossy(&cli.stderr).contains("page size must be between 1 and"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customers_orders_come_from_their_shard_newest_first_by_keyset() {
    let app = TestApp::spawn_without_worker().await;
    let (customers, _) = customers_with_orders(&app, 3, 2).await;
    let customer = customers[1];
    let mut mine = Vec::new();
    for _ in 0..5 {
        mine.push(app.insert_order(customer, ITEM).await);
    }
    let first = pages::customer_orders_page(&app.shards, customer, None, 3)
        .await
        .unwrap();
    let second =
        pages::customer_orders_page(&app.shards, customer, first.next_cursor.as_deref(), 3)
            .await
            .unwrap();
    let third =
        pages::customer_orders_page(&app.shards, customer, second.next_cursor.as_deref(), 3)
            .await
            .unwrap();
    assert_eq!(
        (first.orders.len(), second.orders.len(), third.orders.len()),
        (3, 3, 1)
    );
    assert_eq!(third.next_cursor, None);
    let listed: Vec<i64> = [first, second, third]
        .iter()
        .flat_map(|p| p.orders.iter().map(|o| o.order.id))
        .collect();
    assert!(
        listed
            .iter()
            .all(|id| app.shards.for_order(*id).index == app.shards.for_customer(customer).index)
    );
    let all: HashSet<i64> = listed.iter().copied().collect();
    assert_eq!(
        all.len(),
        7,
        "the customer's 7 orders, each once: {listed:?}"
    );
    // Newest first: the last orders inserted come first.
    assert_eq!(
        &listed[..5],
        mine.iter().rev().copied().collect::<Vec<_>>().as_slice()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_shard_down_counts_name_it_and_calls_that_do_not_need_it_still_work() {
    let app = TestApp::spawn_without_worker().await;
    let (customers, _) = customers_with_orders(&app, 8, 2).await;
    let (urls, degraded) = app.shards_with_shard_down(2).await;

    let started = Instant::now();
    let counts = pages::count_by_status(&degraded).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a dead shard fails fast: {:?}",
        started.elapsed()
    );
    assert_eq!(
        counts
            .missing_shards
            .iter()
            .map(|m| m.shard)
            .collect::<Vec<_>>(),
        vec![2]
    );
    assert!(
        counts.missing_shards[0].error.contains("shard 2"),
        "{:?}",
        counts.missing_shards
    );
    let on_live_shards = customers
        .iter()
        .filter(|&&c| app.shards.for_customer(c).index != 2)
        .count() as i64
        * 2;
    assert_eq!(
        counts.total, on_live_shards,
        "the live shards' orders are all counted"
    );
    assert_eq!(counts.by_status.get("pending"), Some(&on_live_shards));

    let page = pages::orders_page(&degraded, None, 10).await;
    assert!(
        matches!(&page, Err(ListError::Shard(e)) if e.shard == 2),
        "a page needs every shard and names the one missing: {page:?}"
    );
    let elsewhere = customers
        .iter()
        .find(|&&c| app.shards.for_customer(c).index != 2)
        .unwrap();
    let theirs = pages::customer_orders_page(&degraded, *elsewhere, None, 10)
        .await
        .unwrap();
    assert_eq!(
        theirs.orders.len(),
        2,
        "a customer on a live shard is served"
    );

    let mut cli = app.orders_command();
    let output = cli
        .env("ORDERS_SHARDS", urls.join(","))
        .env("ORDERS_CONNECT_TIMEOUT_SECS", "2")
        .arg("counts")
        .output()
        .unwrap();
    assert!(!output.status.success(), "incomplete counts exit non-zero");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("missing shard 2") && stderr.contains("1 of 4 shards did not answer"),
        "{stderr}"
    );
    let complete = app.cli(&["counts", "--json"]);
    assert!(complete.status.success());
    let json: serde_json::Value = serde_json::from_slice(&complete.stdout).unwrap();
    assert_eq!(json["total"], 16);
    assert_eq!(json["missing_shards"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn changing_a_customer_changes_the_copies_on_their_orders() {
    let app = TestApp::spawn_without_worker().await;
    let customer = app.add_customer("Grace Hopper", "100.00").await;
    let order = app.insert_order(customer, ITEM).await;
    app.cli_ok(&[
        "customer",
        "update",
        &customer.to_string(),
        "--name",
        "Grace Brewster Hopper",
        "--email",
        "amazing.grace@navy.example",
    ]);
    let page = pages::customer_orders_page(&app.shards, customer, None, 10)
        .await
        .unwrap();
    let listed = &page.orders[0].order;
    assert_eq!(listed.id, order);
    assert_eq!(
        listed.customer_name.as_deref(),
        Some("Grace Brewster Hopper")
    );
    assert_eq!(
        listed.customer_email.as_deref(),
        Some("amazing.grace@navy.example")
    );
    let refused = app.cli(&["customer", "update", "999999", "--name", "Nobody"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("customer 999999 does not exist"));
}

#[tokio::test(flavor = "multi_thread")]
async fn paging_during_a_two_phase_load_with_slow_commits_skips_nothing_created_before_its_horizon()
{
    let mut app = TestApp::spawn_without_worker().await;
    // Every part waits 1.5 s before COMMIT PREPARED: orders become visible late.
    app.start_worker(Some("commit_part.before=sleep:1500"));
    let mut load = app
        .orders_command()
        .args(["load", "--orders", "24", "--concurrency", "6"])
        .args([
            "--consistency",
            "two_phase",
            "--customers",
            "6",
            "--products",
            "6",
        ])
        .args(["--stock", "1000", "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("orders load starts");
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut passes = Vec::new();
    let status = loop {
        if let Some(status) = load.try_wait().expect("the load can be waited for") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = load.kill();
            panic!("the load did not finish within 3 minutes");
        }
        passes.push(page_through(&app.shards, 4, async || {}).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(status.success(), "orders load failed ({status})");
    let everything = page_through(&app.shards, 4, async || {}).await.orders;
    assert_eq!(
        everything.len(),
        24,
        "every order of the load is listed in the end"
    );

    let mut incomplete = 0;
    for pass in &passes {
        let horizon = pass.complete_before;
        let expected: Vec<i64> = everything
            .iter()
            .filter(|(_, created_at)| *created_at < horizon)
            .map(|(id, _)| *id)
            .collect();
        let seen_ids = pass.ids();
        assert_eq!(
            seen_ids, expected,
            "a pass complete before {horizon} must list exactly the orders created before it, newest first"
        );
        if seen_ids.len() < everything.len() {
            incomplete += 1;
        }
    }
    assert!(
        incomplete >= 2,
        "the passes ran while orders were still arriving ({} passes, {incomplete} before the end)",
        passes.len()
    );
}
