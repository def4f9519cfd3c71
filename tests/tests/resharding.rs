//! Moving buckets between shards while orders flow (`orders reshard`, the Reshard workflow):
//! every order ends on its bucket's owner and nowhere else, a worker with the old map is
//! refused, a checksum mismatch rolls the bucket back, a cancel leaves the bucket in flight
//! with its old owner, and a deployment grows onto a fifth shard and drains back.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orders_activities::Shards;
use orders_activities::routing::{bucket_of, tagged_id};
use orders_activities::shard_map::ShardMap;
use orders_activities::store::fences::{self, FenceState};
use orders_worker::client::OrderOutcome;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};

use crate::helpers::TestApp;

/// Orders placed for `customers` while a move runs: `count` orders, `in_flight` at a time,
/// alternating saga and two-phase, each naming `products`.
async fn place_while_moving(
    app: Arc<TestApp>,
    customers: Vec<i64>,
    products: Vec<i64>,
    count: usize,
    in_flight: usize,
) -> Vec<(String, OrderOutcome)> {
    let mut outcomes = Vec::new();
    let mut next = 0;
    while next < count {
        let batch: Vec<_> = (next..(next + in_flight).min(count))
            .map(|i| {
                let app = app.clone();
                let customer = customers[i % customers.len()];
                let items: Vec<Value> = products
                    .iter()
                    .map(|&p| json!({"product_id": p, "quantity": 1, "unit_price": "1.00"}))
                    .collect();
                let consistency = if i % 2 == 0 { "saga" } else { "two_phase" };
                tokio::spawn(async move {
                    let input = json!({"customer_id": customer, "items": items, "consistency": consistency});
                    let id = app.start_order(input).await;
                    let outcome = app.outcome_within(&id, Duration::from_secs(120)).await;
                    (id, outcome)
                })
            })
            .collect();
        for handle in batch {
            outcomes.push(handle.await.expect("the order task ran"));
        }
        next += in_flight;
    }
    outcomes
}

/// The ids of the placed orders; every other outcome must be a two-phase order refused
/// because its bucket moved between its plan and its prepare (nothing written).
fn placed_ids(outcomes: &[(String, OrderOutcome)]) -> Vec<i64> {
    outcomes
        .iter()
        .filter_map(|(id, outcome)| match outcome {
            OrderOutcome::Placed(placed) => Some(placed.order_id),
            OrderOutcome::Failed { failure_type, .. } if failure_type == "ShardMapChanged" => None,
            other => panic!("{id} ended {other:?}"),
        })
        .collect()
}

async fn count(shards: &Shards, shard: usize, sql: &str, id: i64) -> i64 {
    shards
        .get(shard)
        .conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [id.into()],
        ))
        .await
        .expect("the count runs")
        .expect("one row")
        .try_get_by_index(0)
        .expect("a count")
}

fn reshard_report(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "orders reshard printed no JSON report ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// After a move was undone: the newest map still gives `customer`'s bucket to `from`, and
/// neither `from` nor `to` keeps a fence.
async fn assert_rolled_back(app: &TestApp, customer: i64, from: usize, to: usize) {
    let shards = Shards::connect_lazy(&app.shard_urls, Default::default())
        .await
        .unwrap();
    shards.refresh_map().await.unwrap();
    assert_eq!(shards.for_customer(customer).index, from);
    for shard in [from, to] {
        let fenced = fences::list(&shards.get(shard).conn).await.unwrap();
        assert!(fenced.is_empty(), "shard {shard}: {fenced:?}");
    }
}

/// Runs `orders reshard ARGS --json` on a blocking thread.
async fn reshard(app: &Arc<TestApp>, args: &[&str]) -> std::process::Output {
    let app = app.clone();
    let mut all: Vec<String> = vec!["reshard".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.push("--json".into());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        app.cli(&args)
    })
    .await
    .expect("orders reshard ran")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_moves_under_live_orders_and_every_order_ends_on_its_new_owner() {
    let mut app = TestApp::spawn().await;
    app.worker_env
        .push(("ORDERS_SHARD_MAP_REFRESH_SECS", "1".into()));
    app.restart_worker(None);
    let customer = app.add_customer("Barbara Liskov", "100000.00").await;
    let bucket = bucket_of(customer);
    let from = app.shards.for_customer(customer).index;
    let to = (from + 1) % app.shards.len();
    // A product in the same bucket, so the move carries its stock and holds too.
    let product = tagged_id(77, bucket);
    app.add_product(product, 10_000).await;
    let before: Vec<i64> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            let input = json!({"customer_id": customer, "items": [
                {"product_id": product, "quantity": 1, "unit_price": "1.00"},
                {"product_id": 1, "quantity": 1, "unit_price": "1.00"}]});
            ids.push(app.place_confirmed_order(input).await.1.order_id);
        }
        ids
    };

    let app = Arc::new(app);
    let load = tokio::spawn(place_while_moving(
        app.clone(),
        vec![customer],
        vec![product, 1],
        40,
        4,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bucket_arg = bucket.to_string();
    let to_arg = to.to_string();
    let output = reshard(
        &app,
        &[
            "--move-bucket",
            &bucket_arg,
            "--to",
            &to_arg,
            "--clean-up-after",
            "3",
            "--chunk-rows",
            "2",
        ],
    )
    .await;
    assert!(
        output.status.success(),
        "orders reshard: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = reshard_report(&output);
    assert_eq!(report["phase"], "done", "{report}");
    assert_eq!(report["buckets_moved"], 1, "{report}");
    assert_eq!(report["cleaned"], 1, "{report}");
    let pause = report["pauses_ms"][0].as_i64().expect("a write pause");
    assert!((0..10_000).contains(&pause), "{report}");

    let outcomes = load.await.expect("the orders ran");
    let placed = placed_ids(&outcomes);
    assert!(
        placed.len() >= 20,
        "only {} of 40 placed: {outcomes:?}",
        placed.len()
    );
    let all: BTreeSet<i64> = before.iter().chain(&placed).copied().collect();
    assert_eq!(
        all.len(),
        before.len() + placed.len(),
        "an order id repeats"
    );

    app.shards.refresh_map().await.expect("the map is readable");
    // Every order, its items and credit hold on the new owner, none left on the old one.
    let on = |shard, sql| count(&app.shards, shard, sql, customer);
    let orders_sql = "SELECT count(*) FROM orders WHERE customer_id = $1";
    assert_eq!(on(to, orders_sql).await, all.len() as i64);
    assert_eq!(on(from, orders_sql).await, 0);
    let items_sql = "SELECT count(*) FROM order_items i JOIN orders o ON o.id = i.order_id WHERE o.customer_id = $1";
    assert_eq!(on(to, items_sql).await, 2 * all.len() as i64);
    let holds_sql = "SELECT count(*) FROM credit_holds WHERE customer_id = $1 AND status = 'held'";
    assert_eq!(on(to, holds_sql).await, all.len() as i64);
    let customers_sql = "SELECT count(*) FROM customers WHERE id = $1";
    assert_eq!(
        (on(from, customers_sql).await, on(to, customers_sql).await),
        (0, 1)
    );
    // The product's stock moved with its bucket, and holds exactly what the orders took.
    let routed = Shards::connect_lazy(&app.shard_urls, Default::default())
        .await
        .unwrap();
    routed.refresh_map().await.unwrap();
    assert_eq!(routed.for_customer(customer).index, to);
    let stock = app.stock(product).await;
    assert_eq!(stock.reserved, all.len() as i32, "{stock:?}");
    let stock_sql = "SELECT count(*) FROM inventory WHERE product_id = $1";
    assert_eq!(count(&app.shards, from, stock_sql, product).await, 0);

    for id in all.iter().take(5) {
        let output = app.cli_ok(&["get", &id.to_string(), "--json"]);
        let order: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(order["id"], *id, "{order}");
    }
    app.cli_ok(&["audit", "--grace", "0"]);

    // The old owner keeps a `moved` fence, and a writer still on the old map is refused there.
    let left = fences::list(&app.shards.get(from).conn).await.unwrap();
    assert!(
        left.iter()
            .any(|f| f.bucket == bucket && f.state == FenceState::Moved && f.peer == to),
        "{left:?}"
    );
    let old_map = Shards::connect_lazy(&app.shard_urls, Default::default())
        .await
        .unwrap();
    assert_eq!(
        old_map.for_customer(customer).index,
        from,
        "the initial map"
    );
    // After the clean-up the old owner holds none of the bucket's rows; any write there that
    // would create one (a customer with an id in the bucket, here) is refused, not committed.
    let refused = old_map
        .for_customer(customer)
        .conn
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO customers (id, email, credit_limit, first_name) VALUES ($1, $2, 10, 'Stale')",
            [tagged_id(999_999, bucket).into(), "stale@example.com".into()],
        ))
        .await
        .expect_err("the old owner refuses the write");
    assert!(fences::is_refusal(&refused), "{refused}");
    assert!(refused.to_string().contains("moved"), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checksum_mismatch_rolls_the_bucket_back_and_names_the_table_and_key() {
    let mut app = TestApp::spawn_without_worker().await;
    app.start_worker(Some("verify_bucket.corrupt_target=fail"));
    let customer = app.add_customer("Butler Lampson", "1000.00").await;
    let bucket = bucket_of(customer);
    let from = app.shards.for_customer(customer).index;
    let to = (from + 2) % app.shards.len();
    let (_, placed) = app
        .place_confirmed_order(json!({"customer_id": customer, "items": [
            {"product_id": 3, "quantity": 2, "unit_price": "4.50"}]}))
        .await;
    let app = Arc::new(app);
    let output = reshard(
        &app,
        &[
            "--move-bucket",
            &bucket.to_string(),
            "--to",
            &to.to_string(),
            "--clean-up-after",
            "1",
        ],
    )
    .await;
    assert!(!output.status.success(), "a mismatch fails the reshard");
    let report = reshard_report(&output);
    assert_eq!(report["phase"], "failed", "{report}");
    let why = report["stopped"].as_str().unwrap_or_default();
    assert!(
        why.contains("table customers") && why.contains(&format!("first differing key {customer}")),
        "{report}"
    );
    assert!(
        report["moved"].as_array().is_some_and(Vec::is_empty),
        "{report}"
    );

    // The source still owns the bucket and serves it; the target holds nothing of it.
    assert_rolled_back(&app, customer, from, to).await;
    let on = |shard, sql| count(&app.shards, shard, sql, customer);
    assert_eq!(
        on(to, "SELECT count(*) FROM customers WHERE id = $1").await,
        0
    );
    assert_eq!(
        on(to, "SELECT count(*) FROM orders WHERE customer_id = $1").await,
        0
    );
    assert_eq!(
        on(from, "SELECT count(*) FROM orders WHERE customer_id = $1").await,
        1
    );
    let output = app.cli_ok(&["get", &placed.order_id.to_string(), "--json"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("confirmed"));
    app.place_confirmed_order(json!({"customer_id": customer, "items": [
        {"product_id": 3, "quantity": 1, "unit_price": "4.50"}]}))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_reshard_leaves_the_bucket_in_flight_with_its_old_owner_and_a_restart_moves_it()
{
    let mut app = TestApp::spawn_without_worker().await;
    // One row per chunk, a second per chunk: the copy is still running when the cancel comes.
    app.start_worker(Some("copy_bucket.after_chunk=sleep:1000"));
    let customer = app.add_customer("Frances Allen", "1000.00").await;
    let bucket = bucket_of(customer);
    let from = app.shards.for_customer(customer).index;
    let to = (from + 3) % app.shards.len();
    for _ in 0..3 {
        app.insert_order(customer, &[(5, 1, "2.00")]).await;
    }
    let app = Arc::new(app);
    let output = reshard(
        &app,
        &[
            "--move-bucket",
            &bucket.to_string(),
            "--to",
            &to.to_string(),
            "--chunk-rows",
            "1",
            "--detach",
        ],
    )
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Wait until the copy has brought orders to the target: they are on two shards now,
    // and listings and counts across shards still show each once.
    let started = Instant::now();
    let on = |shard, sql| count(&app.shards, shard, sql, customer);
    while on(to, "SELECT count(*) FROM orders WHERE customer_id = $1").await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the copy never reached the orders"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let counts: Value = serde_json::from_slice(&app.cli_ok(&["counts", "--json"]).stdout).unwrap();
    assert_eq!(counts["total"], 3, "{counts}");
    let listed: Value = serde_json::from_slice(&app.cli_ok(&["list", "--json"]).stdout).unwrap();
    let listed: Vec<i64> = listed["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    let output = reshard(&app, &["cancel"]).await;
    let report = reshard_report(&output);
    assert_eq!(report["phase"], "cancelled", "{report}");
    assert!(
        report["moved"].as_array().is_some_and(Vec::is_empty),
        "{report}"
    );

    assert_rolled_back(&app, customer, from, to).await;
    assert_eq!(
        on(to, "SELECT count(*) FROM customers WHERE id = $1").await,
        0
    );
    assert_eq!(
        on(to, "SELECT count(*) FROM orders WHERE customer_id = $1").await,
        0
    );
    assert_eq!(
        on(from, "SELECT count(*) FROM orders WHERE customer_id = $1").await,
        3
    );
    // Writes go on at the old owner.
    app.place_confirmed_order(json!({"customer_id": customer, "items": [
        {"product_id": 5, "quantity": 1, "unit_price": "2.00"}]}))
        .await;

    // Started again, the move finishes: all four orders on the new owner.
    let output = reshard(
        &app,
        &[
            "--move-bucket",
            &bucket.to_string(),
            "--to",
            &to.to_string(),
            "--chunk-rows",
            "1000",
            "--clean-up-after",
            "1",
        ],
    )
    .await;
    let report = reshard_report(&output);
    assert_eq!(report["phase"], "done", "{report}");
    assert_eq!(
        on(to, "SELECT count(*) FROM orders WHERE customer_id = $1").await,
        4
    );
    assert_eq!(
        on(from, "SELECT count(*) FROM orders WHERE customer_id = $1").await,
        0
    );
}

/// `orders get` of each of `ids`, over and over while `moving` holds: each must find its
/// order, at most after a brief retry (2 s). Returns the reads done and how many retried.
async fn get_while_moving(
    app: Arc<TestApp>,
    ids: Vec<i64>,
    moving: Arc<std::sync::atomic::AtomicBool>,
) -> (usize, usize) {
    let (mut found, mut retried) = (0, 0);
    while moving.load(std::sync::atomic::Ordering::SeqCst) {
        for &id in &ids {
            let started = Instant::now();
            loop {
                let app = app.clone();
                let output =
                    tokio::task::spawn_blocking(move || app.cli(&["get", &id.to_string()]))
                        .await
                        .expect("orders get ran");
                if output.status.success() {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "orders get {id} failed for 2 s during the move: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                retried += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            found += 1;
        }
    }
    (found, retried)
}

/// Orders on `shard` whose bucket the current map gives to another shard.
async fn misplaced_orders(shards: &Shards, shard: usize) -> Vec<i64> {
    let rows = shards
        .get(shard)
        .conn
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT id FROM orders ORDER BY id",
        ))
        .await
        .expect("orders are listed");
    rows.iter()
        .map(|r| r.try_get_by_index::<i64>(0).unwrap())
        .filter(|&id| shards.for_order(id).index != shard)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_grows_onto_a_fifth_shard_under_load_and_drains_back() {
    let mut app = TestApp::spawn().await;
    let mut customers = Vec::new();
    for name in [
        "Ada Lovelace",
        "Alan Turing",
        "Edsger Dijkstra",
        "Donald Knuth",
        "John Backus",
        "Niklaus Wirth",
        "Tony Hoare",
        "Robin Milner",
    ] {
        customers.push(app.add_customer(name, "100000.00").await);
    }
    let mut earlier = Vec::new();
    for &customer in &customers {
        let (_, placed) = app
            .place_confirmed_order(json!({"customer_id": customer, "items": [
                {"product_id": 2, "quantity": 1, "unit_price": "3.00"}]}))
            .await;
        earlier.push(placed.order_id);
    }
    // The README's way: the URL appended, `orders migrate up`, workers restarted with it.
    let fifth = app.add_shard().await;
    assert_eq!(fifth, 4);
    app.worker_env
        .push(("ORDERS_SHARD_MAP_REFRESH_SECS", "1".into()));
    app.restart_worker(None);
    assert!(
        app.shards.map().buckets_of(fifth).is_empty(),
        "a new shard owns nothing yet"
    );
    app.place_confirmed_order(json!({"customer_id": customers[0], "items": [
        {"product_id": 2, "quantity": 1, "unit_price": "3.00"}]}))
        .await;

    let app = Arc::new(app);
    let planned = ShardMap::initial(4).grown_to(5);
    let expected = app.shards.map().moved_buckets(&planned).len();
    let load = tokio::spawn(place_while_moving(
        app.clone(),
        customers.clone(),
        vec![2, 7],
        40,
        4,
    ));
    let moving = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reads = tokio::spawn(get_while_moving(app.clone(), earlier, moving.clone()));
    let output = reshard(
        &app,
        &["--to", "5", "--clean-up-after", "3", "--chunk-rows", "1000"],
    )
    .await;
    moving.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (found, retried) = reads.await.expect("the reads ran");
    assert!(found > 0, "no read ran during the move");
    eprintln!("orders get during the move: {found} reads, {retried} needed a retry");
    let grown = reshard_report(&output);
    assert_eq!(grown["phase"], "done", "{grown}");
    assert_eq!(grown["buckets_moved"], expected, "{grown}");
    let pauses: Vec<i64> = grown["pauses_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect();
    let mut sorted = pauses.clone();
    sorted.sort_unstable();
    eprintln!(
        "grew 4→5: {expected} buckets, write pause p50 {} ms, max {} ms",
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
    let placed = placed_ids(&load.await.expect("the orders ran"));
    assert!(placed.len() >= 20, "only {} of 40 placed", placed.len());

    app.shards.refresh_map().await.unwrap();
    assert_eq!(app.shards.map().buckets_of(fifth).len(), expected);
    for shard in 0..5 {
        let misplaced = misplaced_orders(&app.shards, shard).await;
        assert!(
            misplaced.is_empty(),
            "shard {shard} still holds orders it does not own: {misplaced:?}"
        );
    }
    for id in &placed {
        let output = app.cli_ok(&["get", &id.to_string(), "--json"]);
        let order: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(order["id"], *id, "{order}");
    }
    app.cli_ok(&["audit", "--grace", "0"]);

    // Drain the fifth shard back onto the others: it ends with nothing.
    let output = reshard(
        &app,
        &["--to", "4", "--clean-up-after", "3", "--chunk-rows", "1000"],
    )
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let drained = reshard_report(&output);
    assert_eq!(drained["buckets_moved"], expected, "{drained}");
    app.shards.refresh_map().await.unwrap();
    assert!(app.shards.map().buckets_of(fifth).is_empty());
    let left = app.rows_on_shard(fifth).await;
    assert_eq!((left.orders, left.items), (0, 0), "{left:?}");
    for shard in 0..4 {
        assert!(misplaced_orders(&app.shards, shard).await.is_empty());
    }
    app.cli_ok(&["audit", "--grace", "0"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_move_survives_its_worker_dying_mid_copy_and_again_mid_cut_over() {
    let mut app = TestApp::spawn_without_worker().await;
    let customer = app.add_customer("Jim Gray", "10000.00").await;
    let bucket = bucket_of(customer);
    let from = app.shards.for_customer(customer).index;
    let to = (from + 1) % app.shards.len();
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(
            app.insert_order(customer, &[(6, 1, "1.50"), (7, 2, "2.25")])
                .await,
        );
    }
    // The first worker dies (as a SIGKILL would) after its first COPY chunk, the second
    // after fencing the source `moved` and before publishing the map; the third finishes.
    app.start_worker(Some("copy_bucket.after_chunk"));
    let output = app.cli_ok(&[
        "reshard",
        "--move-bucket",
        &bucket.to_string(),
        "--to",
        &to.to_string(),
        "--chunk-rows",
        "2",
        "--clean-up-after",
        "1",
        "--detach",
    ]);
    assert!(output.status.success());
    assert!(
        app.worker_exits_within(Duration::from_secs(60)),
        "the worker died mid-copy"
    );
    app.start_worker(Some("cut_over_bucket.after_source"));
    assert!(
        app.worker_exits_within(Duration::from_secs(90)),
        "the worker died mid-cut-over"
    );
    app.start_worker(None);
    let started = Instant::now();
    let report = loop {
        let output = app.cli(&["reshard", "status", "--json"]);
        if output.status.success() {
            let report = reshard_report(&output);
            if report["phase"] == "done" {
                break report;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the move did not finish"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(report["buckets_moved"], 1, "{report}");
    let on = |shard, sql| count(&app.shards, shard, sql, customer);
    assert_eq!(
        on(to, "SELECT count(*) FROM orders WHERE customer_id = $1").await,
        6
    );
    assert_eq!(
        on(from, "SELECT count(*) FROM orders WHERE customer_id = $1").await,
        0
    );
    let items_sql = "SELECT count(*) FROM order_items i JOIN orders o ON o.id = i.order_id WHERE o.customer_id = $1";
    assert_eq!(on(to, items_sql).await, 12, "no item copied twice");
    for id in ids {
        app.cli_ok(&["get", &id.to_string()]);
    }
    app.cli_ok(&["audit", "--grace", "0"]);
}

/// The reshard's progress, from `orders reshard status --json`, once it answers.
async fn status(app: &Arc<TestApp>) -> Value {
    loop {
        let output = reshard(app, &["status"]).await;
        if output.status.success() {
            return reshard_report(&output);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the running reshard has moved more than `buckets` buckets.
async fn moved_past(app: &Arc<TestApp>, buckets: u64) -> Value {
    let started = Instant::now();
    loop {
        let report = status(app).await;
        if report["buckets_moved"].as_u64().unwrap_or_default() > buckets {
            return report;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the reshard stalled: {report}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_growth_survives_a_killed_worker_and_a_cancel_and_restart_under_load() {
    let mut app = TestApp::spawn().await;
    let mut customers = Vec::new();
    for name in [
        "Leslie Lamport",
        "Nancy Lynch",
        "Michael Stonebraker",
        "Pat Helland",
    ] {
        customers.push(app.add_customer(name, "100000.00").await);
    }
    let fifth = app.add_shard().await;
    app.worker_env
        .push(("ORDERS_SHARD_MAP_REFRESH_SECS", "1".into()));
    app.restart_worker(None);
    let doomed = app.worker_pid().expect("a worker runs");
    let app = Arc::new(app);
    let expected = ShardMap::initial(4)
        .moved_buckets(&ShardMap::initial(4).grown_to(5))
        .len();
    let load = tokio::spawn(place_while_moving(
        app.clone(),
        customers,
        vec![3, 8],
        60,
        4,
    ));

    let started = reshard(
        &app,
        &[
            "--to",
            "5",
            "--buckets-per-move",
            "4",
            "--clean-up-after",
            "2",
            "--detach",
        ],
    )
    .await;
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    // SIGKILL the worker a few moves in; another takes over once the phase in flight times out.
    moved_past(&app, 8).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(doomed as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("the worker is killed");
    let _heir = app.extra_worker();
    let before_cancel = moved_past(&app, 40).await;
    let cancelled = reshard(&app, &["cancel"]).await;
    let cancelled = reshard_report(&cancelled);
    assert_eq!(cancelled["phase"], "cancelled", "{cancelled}");
    let kept = cancelled["buckets_moved"].as_u64().unwrap();
    assert!(
        kept > 8 && kept < expected as u64,
        "{before_cancel} then {cancelled}"
    );

    // Started again, it moves what is left, and only that.
    let output = reshard(&app, &["--to", "5", "--clean-up-after", "2"]).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let finished = reshard_report(&output);
    assert_eq!(
        finished["buckets_moved"].as_u64().unwrap() + kept,
        expected as u64,
        "{finished}"
    );

    let placed = placed_ids(&load.await.expect("the orders ran"));
    assert!(placed.len() >= 30, "only {} of 60 placed", placed.len());
    app.shards.refresh_map().await.unwrap();
    assert_eq!(app.shards.map().buckets_of(fifth).len(), expected);
    for shard in 0..5 {
        let misplaced = misplaced_orders(&app.shards, shard).await;
        assert!(misplaced.is_empty(), "shard {shard}: {misplaced:?}");
        let fenced: Vec<_> = fences::list(&app.shards.get(shard).conn)
            .await
            .unwrap()
            .into_iter()
            .filter(|f| f.state != FenceState::Moved)
            .collect();
        assert!(
            fenced.is_empty(),
            "shard {shard} is left mid-move: {fenced:?}"
        );
    }
    for id in &placed {
        app.cli_ok(&["get", &id.to_string()]);
    }
    app.cli_ok(&["audit", "--grace", "0"]);
}
