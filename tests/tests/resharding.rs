//! Moving buckets between shards while orders flow (`orders reshard`, the Reshard workflow):
//! every order ends on its bucket's owner and nowhere else, a worker with the old map is
//! refused, a checksum mismatch rolls the bucket back, a cancel leaves the bucket in flight
//! with its old owner, and a deployment grows onto a fifth shard and drains back.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use orders_core::routing::{bucket_of, tagged_id};
use orders_core::shard_map::ShardMap;
use orders_core::store::bucket_rows;
use orders_core::store::fences::{self, FenceState};
use orders_core::store::two_phase::{self, GidParts};
use orders_core::{Consistency, Shards};
use orders_operations::recovery::{DECISION_MEMO, Decision, ROUND_MEMO};
use orders_worker::client::OrderOutcome;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::Value;

use crate::consistency::{assert_audit_clean, prepared_everywhere, product_on, wait_for_order_id};
use crate::helpers::{BuildOrder, TestApp, eventually, order, until};
use crate::in_doubt::{prepare_stray, wait_for_commit_decision};
use crate::load_process::LoadProcess;
use crate::step_paths::recorded;

/// A new customer whose bucket a test moves: from its shard to the one `hop` shards on.
pub(crate) struct Mover {
    pub(crate) customer: i64,
    pub(crate) bucket: u16,
    pub(crate) from: usize,
    pub(crate) to: usize,
}

impl Mover {
    pub(crate) async fn new(app: &TestApp, name: &str, credit_limit: &str, hop: usize) -> Self {
        let customer = app.add_customer(name, credit_limit).await;
        let from = app.shards.for_customer(customer).index;
        Self {
            customer,
            bucket: bucket_of(customer),
            from,
            to: (from + hop) % app.shards.len(),
        }
    }
}

/// `count` pending orders of `customer`, written straight to its shard; their ids.
pub(crate) async fn insert_orders(
    app: &TestApp,
    customer: i64,
    count: usize,
    items: &[(i64, i32, &str)],
) -> Vec<i64> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(app.insert_order(customer, items).await);
    }
    ids
}

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
                let consistency = if i % 2 == 0 {
                    Consistency::Saga
                } else {
                    Consistency::TwoPhase
                };
                let request = products
                    .iter()
                    .fold(order(customer).in_mode(consistency), |request, &p| {
                        request.item(p, 1, "1.00")
                    });
                tokio::spawn(async move {
                    let id = app.start_order(request).await;
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

/// The ids of the placed orders: every order must be placed, a two-phase one whose bucket
/// moved between its plan and its prepare included (it plans again).
fn placed_ids(outcomes: &[(String, OrderOutcome)]) -> Vec<i64> {
    outcomes
        .iter()
        .map(|(id, outcome)| match outcome {
            OrderOutcome::Placed(placed) => placed.order_id,
            other => panic!("{id} ended {other:?}"),
        })
        .collect()
}

/// `orders load` in `consistency` (as a user runs it, its own process and pool), one run of
/// 12 orders after another until `moving` is cleared: every order must be placed, none
/// refused or lost by the client. Returns their order ids.
async fn load_while_moving(
    app: Arc<TestApp>,
    consistency: &'static str,
    moving: Arc<AtomicBool>,
) -> Vec<i64> {
    let mut ids = Vec::new();
    loop {
        let report = LoadProcess::start(&app, consistency, 12, 3, 1_000_000)
            .report(Duration::from_secs(180))
            .await;
        assert_eq!(
            (report["placed"].as_u64(), report["client_errors"].as_u64()),
            (Some(12), Some(0)),
            "{consistency}: every order placed during the move: {}",
            report["failures"]
        );
        ids.extend(
            report["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["order_id"].as_i64().expect("a placed order's id")),
        );
        if !moving.load(Ordering::SeqCst) {
            return ids;
        }
    }
}

/// Every one of `ids` once, on its bucket's owner and nowhere else, and no other order.
async fn assert_each_once_on_its_owner(app: &TestApp, ids: &[i64]) {
    let distinct: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "an order id repeats");
    let shards = routing_now(app).await;
    let mut stored = BTreeSet::new();
    for shard in 0..shards.len() {
        for id in order_ids_on(&shards, shard).await {
            assert_eq!(shards.for_order(id).index, shard, "order {id} is misplaced");
            assert!(stored.insert(id), "order {id} is stored twice");
        }
    }
    assert_eq!(
        stored, distinct,
        "stored orders differ from the placed ones"
    );
}

pub(crate) fn reshard_report(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "orders reshard printed no JSON report ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Waits (up to 2 minutes) for the detached reshard to finish, and returns its report.
pub(crate) async fn finished(app: &TestApp) -> Value {
    eventually(
        "the reshard finishes",
        Duration::from_secs(120),
        async || {
            let output = app.cli(&["reshard", "status", "--json"]);
            output
                .status
                .success()
                .then(|| reshard_report(&output))
                .filter(|report| report["phase"] == "done")
        },
    )
    .await
}

/// A fresh set of pools on the newest stored map, as a worker started now would route.
pub(crate) async fn routing_now(app: &TestApp) -> Shards {
    let shards = Shards::connect_lazy(&app.shard_urls, Default::default())
        .await
        .unwrap();
    shards.refresh_map().await.unwrap();
    shards
}

/// After a move was undone: the newest map still gives `customer`'s bucket to `from`, and
/// neither `from` nor `to` keeps a fence.
pub(crate) async fn assert_rolled_back(app: &TestApp, customer: i64, from: usize, to: usize) {
    let shards = routing_now(app).await;
    assert_eq!(shards.for_customer(customer).index, from);
    for shard in [from, to] {
        let fenced = fences::list(&shards.get(shard).conn).await.unwrap();
        assert!(fenced.is_empty(), "shard {shard}: {fenced:?}");
    }
}

/// Runs `orders reshard ARGS --json` on a blocking thread.
pub(crate) async fn reshard(app: &Arc<TestApp>, args: &[&str]) -> std::process::Output {
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
    let Mover {
        customer,
        bucket,
        from,
        to,
    } = Mover::new(&app, "Barbara Liskov", "100000.00", 1).await;
    // A product in the same bucket, so the move carries its stock and holds too.
    let product = tagged_id(77, bucket);
    app.add_product(product, 10_000).await;
    let before: Vec<i64> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            let request = order(customer).item(product, 1, "1.00").item(1, 1, "1.00");
            ids.push(app.place_confirmed_order(request).await.1.order_id);
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
    assert_eq!(placed.len(), 40);
    let all: BTreeSet<i64> = before.iter().chain(&placed).copied().collect();
    assert_eq!(
        all.len(),
        before.len() + placed.len(),
        "an order id repeats"
    );

    app.shards.refresh_map().await.expect("the map is readable");
    // Every order, its items and credit hold on the new owner, none left on the old one.
    let at_from = app.customer_rows_on_shard(customer, from).await;
    let at_to = app.customer_rows_on_shard(customer, to).await;
    assert_eq!(at_to.orders, all.len() as i64);
    assert_eq!(at_from.orders, 0);
    assert_eq!(at_to.items, 2 * all.len() as i64);
    assert_eq!(at_to.held_credit, all.len() as i64);
    assert_eq!((at_from.customer, at_to.customer), (0, 1));
    // The product's stock moved with its bucket, and holds exactly what the orders took.
    let routed = routing_now(&app).await;
    assert_eq!(routed.for_customer(customer).index, to);
    let stock = app.stock(product).await;
    assert_eq!(stock.reserved, all.len() as i32, "{stock:?}");
    assert_eq!(app.stock_on_shard(product, from).await, None);

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
    let Mover {
        customer,
        bucket,
        from,
        to,
    } = Mover::new(&app, "Butler Lampson", "1000.00", 2).await;
    let (_, placed) = app
        .place_confirmed_order(order(customer).item(3, 2, "4.50"))
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
    let at_to = app.customer_rows_on_shard(customer, to).await;
    assert_eq!(at_to.customer, 0);
    assert_eq!(at_to.orders, 0);
    assert_eq!(app.customer_rows_on_shard(customer, from).await.orders, 1);
    let output = app.cli_ok(&["get", &placed.order_id.to_string(), "--json"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("confirmed"));
    app.place_confirmed_order(order(customer).item(3, 1, "4.50"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_reshard_leaves_the_bucket_in_flight_with_its_old_owner_and_a_restart_moves_it()
{
    let mut app = TestApp::spawn_without_worker().await;
    // One row per chunk, a second per chunk: the copy is still running when the cancel comes.
    app.start_worker(Some("copy_bucket.after_chunk=sleep:1000"));
    let Mover {
        customer,
        bucket,
        from,
        to,
    } = Mover::new(&app, "Frances Allen", "1000.00", 3).await;
    insert_orders(&app, customer, 3, &[(5, 1, "2.00")]).await;
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
    while app.customer_rows_on_shard(customer, to).await.orders == 0 {
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
    let at_to = app.customer_rows_on_shard(customer, to).await;
    assert_eq!(at_to.customer, 0);
    assert_eq!(at_to.orders, 0);
    assert_eq!(app.customer_rows_on_shard(customer, from).await.orders, 3);
    // Writes go on at the old owner.
    app.place_confirmed_order(order(customer).item(5, 1, "2.00"))
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
    assert_eq!(app.customer_rows_on_shard(customer, to).await.orders, 4);
    assert_eq!(app.customer_rows_on_shard(customer, from).await.orders, 0);
}

/// `orders get` of each of `ids`, over and over while `moving` holds: each must find its
/// order, at most after a brief retry (2 s). Returns the reads done and how many retried.
async fn get_while_moving(
    app: Arc<TestApp>,
    ids: Vec<i64>,
    moving: Arc<AtomicBool>,
) -> (usize, usize) {
    let (mut found, mut retried) = (0, 0);
    while moving.load(Ordering::SeqCst) {
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

/// The ids of the orders stored on `shard`.
async fn order_ids_on(shards: &Shards, shard: usize) -> Vec<i64> {
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
        .collect()
}

/// Orders on `shard` whose bucket the current map gives to another shard.
async fn misplaced_orders(shards: &Shards, shard: usize) -> Vec<i64> {
    let mut ids = order_ids_on(shards, shard).await;
    ids.retain(|&id| shards.for_order(id).index != shard);
    ids
}

/// SIGKILLs the worker `pid` at a moment drawn from `seed` (0.5–6.5 s from now, printed so
/// a failing run can be replayed), and starts another: the move in flight must resume.
fn kill_at_random(
    app: Arc<TestApp>,
    pid: u32,
    seed: u64,
    what: &'static str,
) -> tokio::task::JoinHandle<orders_dev::process::ChildService> {
    let after = Duration::from_millis(500 + seed % 6_000);
    eprintln!(
        "{what}: the worker is killed {} ms in (seed {seed})",
        after.as_millis()
    );
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("the worker is killed");
        app.extra_worker()
    })
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
            .place_confirmed_order(order(customer).item(2, 1, "3.00"))
            .await;
        earlier.push(placed.order_id);
    }
    // The documented way (docs/operations.md): the URL appended, `orders migrate up`, workers restarted with it.
    let fifth = app.add_shard().await;
    assert_eq!(fifth, 4);
    app.worker_env
        .push(("ORDERS_SHARD_MAP_REFRESH_SECS", "1".into()));
    app.restart_worker(None);
    assert!(
        app.shards.map().buckets_of(fifth).is_empty(),
        "a new shard owns nothing yet"
    );
    let (_, extra) = app
        .place_confirmed_order(order(customers[0]).item(2, 1, "3.00"))
        .await;

    let app = Arc::new(app);
    let planned = ShardMap::initial(4).grown_to(5);
    let expected = app.shards.map().moved_buckets(&planned).len();
    let moving = Arc::new(AtomicBool::new(true));
    let loads = ["saga", "two_phase"]
        .map(|mode| tokio::spawn(load_while_moving(app.clone(), mode, moving.clone())));
    let reads = tokio::spawn(get_while_moving(
        app.clone(),
        earlier.clone(),
        moving.clone(),
    ));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let pid = app.worker_pid().expect("a worker runs");
    let heir = kill_at_random(app.clone(), pid, seed, "growth");
    let output = reshard(
        &app,
        &["--to", "5", "--clean-up-after", "3", "--chunk-rows", "1000"],
    )
    .await;
    moving.store(false, Ordering::SeqCst);
    let heir = heir.await.expect("the worker was replaced");
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
    let mut all = earlier;
    all.push(extra.order_id);
    for load in loads {
        all.extend(load.await.expect("the load ran"));
    }
    eprintln!(
        "orders load placed {} orders during the move",
        all.len() - 9
    );

    app.shards.refresh_map().await.unwrap();
    assert_eq!(app.shards.map().buckets_of(fifth).len(), expected);
    assert_each_once_on_its_owner(&app, &all).await;
    for id in all.iter().rev().take(10) {
        let output = app.cli_ok(&["get", &id.to_string(), "--json"]);
        let order: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(order["id"], *id, "{order}");
    }
    assert!(prepared_everywhere(&app).await.is_empty());
    assert_audit_clean(&app);

    // Drain the fifth shard back onto the others, orders arriving and the worker killed
    // again: it ends with nothing.
    let moving = Arc::new(AtomicBool::new(true));
    let loads = ["saga", "two_phase"]
        .map(|mode| tokio::spawn(load_while_moving(app.clone(), mode, moving.clone())));
    let second_heir = kill_at_random(app.clone(), heir.pid(), seed / 7_919, "drain");
    let output = reshard(
        &app,
        &["--to", "4", "--clean-up-after", "3", "--chunk-rows", "1000"],
    )
    .await;
    moving.store(false, Ordering::SeqCst);
    let _second_heir = second_heir.await.expect("the worker was replaced");
    for load in loads {
        all.extend(load.await.expect("the load ran"));
    }
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
    assert_each_once_on_its_owner(&app, &all).await;
    assert!(prepared_everywhere(&app).await.is_empty());
    app.cli_ok(&["audit", "--grace", "0"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_move_survives_its_worker_dying_mid_copy_and_again_mid_cut_over() {
    let mut app = TestApp::spawn_without_worker().await;
    let Mover {
        customer,
        bucket,
        from,
        to,
    } = Mover::new(&app, "Jim Gray", "10000.00", 1).await;
    let ids = insert_orders(&app, customer, 6, &[(6, 1, "1.50"), (7, 2, "2.25")]).await;
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
    let report = finished(&app).await;
    assert_eq!(report["buckets_moved"], 1, "{report}");
    let at_to = app.customer_rows_on_shard(customer, to).await;
    assert_eq!(at_to.orders, 6);
    assert_eq!(app.customer_rows_on_shard(customer, from).await.orders, 0);
    assert_eq!(at_to.items, 12, "no item copied twice");
    for id in ids {
        app.cli_ok(&["get", &id.to_string()]);
    }
    app.cli_ok(&["audit", "--grace", "0"]);
}

/// The reshard's progress, from `orders reshard status --json`, once it answers.
pub(crate) async fn status(app: &Arc<TestApp>) -> Value {
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
    let what = format!("the reshard moves more than {buckets} buckets");
    eventually(&what, Duration::from_secs(180), async || {
        let report = status(app).await;
        (report["buckets_moved"].as_u64().unwrap_or_default() > buckets).then_some(report)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_growth_survives_a_killed_worker_and_a_cancel_and_restart_under_load() {
    let mut app = TestApp::spawn().await;
    let fifth = app.add_shard().await;
    app.worker_env
        .push(("ORDERS_SHARD_MAP_REFRESH_SECS", "1".into()));
    app.restart_worker(None);
    let doomed = app.worker_pid().expect("a worker runs");
    let app = Arc::new(app);
    let expected = ShardMap::initial(4)
        .moved_buckets(&ShardMap::initial(4).grown_to(5))
        .len();
    let moving = Arc::new(AtomicBool::new(true));
    let loads = ["saga", "two_phase"]
        .map(|mode| tokio::spawn(load_while_moving(app.clone(), mode, moving.clone())));

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

    moving.store(false, Ordering::SeqCst);
    let mut placed = Vec::new();
    for load in loads {
        placed.extend(load.await.expect("the load ran"));
    }
    app.shards.refresh_map().await.unwrap();
    assert_eq!(app.shards.map().buckets_of(fifth).len(), expected);
    assert_each_once_on_its_owner(&app, &placed).await;
    for shard in 0..5 {
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
    for id in placed.iter().rev().take(10) {
        app.cli_ok(&["get", &id.to_string()]);
    }
    assert!(prepared_everywhere(&app).await.is_empty());
    assert_audit_clean(&app);
}

/// Waits until `shard` fences `bucket` in `state`.
async fn wait_for_fence(app: &TestApp, shard: usize, bucket: u16, state: FenceState) {
    let what = format!("shard {shard} fences bucket {bucket} {state:?}");
    eventually(&what, Duration::from_secs(60), async || {
        let fenced = fences::list(&app.shards.get(shard).conn).await.unwrap();
        fenced
            .iter()
            .any(|f| f.bucket == bucket && f.state == state)
            .then_some(())
    })
    .await
}

/// The shard the newest stored map gives `customer`'s bucket to.
pub(crate) async fn owner_now(app: &TestApp, customer: i64) -> usize {
    routing_now(app).await.for_customer(customer).index
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_phase_order_planned_before_its_bucket_moved_plans_again_and_lands_on_the_new_owner()
{
    let mut app = TestApp::spawn_without_worker().await;
    let Mover {
        customer,
        bucket,
        from,
        to,
    } = Mover::new(&app, "Jim Gray", "1000.00", 1).await;
    let product = tagged_id(78, bucket);
    app.add_product(product, 100).await;
    let elsewhere = product_on(&app, (from + 2) % app.shards.len(), &[]);
    // The order is held between its plan and its prepare: every PreparePart attempt fails.
    app.start_worker(Some("prepare_part.before=fail"));
    let id = app
        .start_order(
            order(customer)
                .two_phase()
                .item(product, 2, "3.00")
                .item(elsewhere, 1, "4.00"),
        )
        .await;
    let order_id = wait_for_order_id(&app, &id).await;
    let output = app.cli_ok(&[
        "reshard",
        "--move-bucket",
        &bucket.to_string(),
        "--to",
        &to.to_string(),
        "--clean-up-after",
        "1",
        "--json",
    ]);
    assert_eq!(reshard_report(&output)["buckets_moved"], 1);
    assert_eq!(owner_now(&app, customer).await, to);

    // Released, its first plan's parts are refused where they were planned (the customer's
    // and the product's bucket now live on `to`); it plans again and commits there.
    app.restart_worker(None);
    let placed = match app.outcome_within(&id, Duration::from_secs(90)).await {
        OrderOutcome::Placed(placed) => placed,
        other => panic!("{id} ended {other:?}"),
    };
    assert_eq!((placed.order_id, placed.shard), (order_id, to));
    let described = app
        .client
        .get_workflow_handle::<orders_workflows::PlaceOrderWorkflow>(&id)
        .describe(temporalio_client::WorkflowDescribeOptions::default())
        .await
        .unwrap();
    let round: Option<u32> = described.memo().get(ROUND_MEMO).unwrap();
    let decision: Option<Decision> = described.memo().get(DECISION_MEMO).unwrap();
    assert_eq!((round, decision), (Some(2), Some(Decision::Commit)));
    // Its history (kept in target/test-artifacts) replays on the current workflows.
    let artifacts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let (history, shape) = recorded(&app, &id, &artifacts);
    assert_eq!(shape.activity_tasks, 0, "{shape:?}");
    let replay = app.cli(&["replay", history.to_str().unwrap()]);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stdout)
    );

    // A part of the superseded first round found prepared (as if a worker had died between
    // its PREPARE and the round's rollback) is rolled back by `orders recover`.
    let first_round = GidParts {
        workflow_id: id.clone(),
        run_id: described
            .raw()
            .workflow_execution_info
            .as_ref()
            .unwrap()
            .first_run_id
            .clone(),
        shard: from,
        home_shard: from,
        round: two_phase::FIRST_ROUND,
    }
    .gid()
    .unwrap();
    prepare_stray(&app, from, &first_round).await;
    let recovered: Value =
        serde_json::from_slice(&app.cli_ok(&["recover", "--json"]).stdout).unwrap();
    let resolution = &recovered["resolutions"][0];
    assert_eq!(
        (resolution["gid"].as_str(), resolution["action"].as_str()),
        (Some(first_round.as_str()), Some("rolled_back")),
        "{recovered}"
    );
    assert!(
        resolution["reason"].as_str().unwrap().contains("round 2"),
        "{recovered}"
    );

    let at_from = app.order_rows_on_shard(order_id, from).await;
    let at_to = app.order_rows_on_shard(order_id, to).await;
    assert_eq!((at_from.confirmed, at_to.confirmed), (0, 1));
    assert_eq!(at_to.items, 2);
    assert_eq!(at_to.stock_holds, 1, "the moved product's hold");
    let elsewhere_shard = app.shards.for_product(elsewhere).index;
    assert_eq!(
        app.order_rows_on_shard(order_id, elsewhere_shard)
            .await
            .stock_holds,
        1,
        "the other product's hold"
    );
    assert_eq!(
        app.stock_on_shard(product, to)
            .await
            .map(|stock| stock.reserved),
        Some(2)
    );
    assert!(prepared_everywhere(&app).await.is_empty());
    assert_audit_clean(&app);
}

/// Waits until a two-phase part of workflow `workflow_id` is prepared on `shard`, and returns its gid.
async fn wait_for_prepared(app: &TestApp, shard: usize, workflow_id: &str) -> String {
    let what = format!("{workflow_id} prepares a part on shard {shard}");
    eventually(&what, Duration::from_secs(30), async || {
        let prepared = two_phase::in_doubt(&app.shards.get(shard).conn)
            .await
            .unwrap();
        prepared
            .into_iter()
            .find(|p| p.gid.parts().workflow_id == workflow_id)
            .map(|p| p.gid.to_string())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn prepared_parts_hold_a_move_until_they_are_resolved_never_skipped() {
    let mut app = TestApp::spawn_without_worker().await;
    let Mover {
        customer,
        bucket,
        from,
        to,
    } = Mover::new(&app, "C. Mohan", "1000.00", 3).await;
    let mut ids = insert_orders(&app, customer, 3, &[(6, 1, "1.00")]).await;
    // No commit gets through, and the copy is slow enough to place an order while it runs.
    app.start_worker(Some(
        "commit_part.before=fail,copy_bucket.after_chunk=sleep:700",
    ));
    let two_phase_order = order(customer).two_phase().item(5, 1, "7.00");

    // A part prepared before the move holds it before anything is copied: its rows were
    // written before the change log began, so the copy must see them committed.
    let first = app.start_order(two_phase_order.clone()).await;
    wait_for_prepared(&app, from, &first).await;
    app.cli_ok(&[
        "reshard",
        "--move-bucket",
        &bucket.to_string(),
        "--to",
        &to.to_string(),
        "--chunk-rows",
        "1",
        "--clean-up-after",
        "1",
        "--detach",
    ]);
    wait_for_fence(&app, from, bucket, FenceState::Copying).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = reshard_report(&app.cli_ok(&["reshard", "status", "--json"]));
    assert_eq!(
        held["rows_copied"], 0,
        "copied past a prepared part: {held}"
    );
    // `orders recover` resolves it from the workflow's decision (commit, in its memo once
    // the order's workflow task heartbeats), and the move goes on.
    wait_for_commit_decision(&app, &first).await;
    until(
        "orders recover commits it",
        Duration::from_secs(30),
        async || {
            let recovered: Value =
                serde_json::from_slice(&app.cli_ok(&["recover", "--json"]).stdout).unwrap();
            (recovered["resolutions"][0]["action"] == "committed")
                .then_some(())
                .ok_or(recovered)
        },
    )
    .await;

    // A part prepared while the copy runs holds the freeze: the move waits, frozen.
    let second = app.start_order(two_phase_order).await;
    wait_for_prepared(&app, from, &second).await;
    let fenced = fences::list(&app.shards.get(from).conn).await.unwrap();
    assert!(
        fenced
            .iter()
            .any(|f| f.bucket == bucket && f.state == FenceState::Copying),
        "the second order was meant to prepare mid-copy: {fenced:?}"
    );
    wait_for_fence(&app, from, bucket, FenceState::Frozen).await;

    // Meanwhile `orders shards` shows the bucket moving, and a second reshard is refused
    // naming the one running.
    let shards = app.cli_ok(&["shards"]);
    let shards = String::from_utf8_lossy(&shards.stdout);
    assert!(
        shards.contains(&format!("bucket {bucket} moving to shard {to} (frozen)"))
            && shards.contains(&format!(
                "bucket {bucket} arriving from shard {from} (incoming)"
            )),
        "{shards}"
    );
    let refused = app.cli(&["reshard", "--move-bucket", "1", "--to", &from.to_string()]);
    let refusal = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && refusal.contains("a reshard is already running (orders-reshard, frozen"),
        "{refusal}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    wait_for_fence(&app, from, bucket, FenceState::Frozen).await;
    assert_eq!(
        owner_now(&app, customer).await,
        from,
        "cut over past a prepared part"
    );

    // Once the parts commit, the move takes both orders along and finishes.
    app.restart_worker(None);
    for id in [&first, &second] {
        match app.outcome_within(id, Duration::from_secs(90)).await {
            OrderOutcome::Placed(placed) => ids.push(placed.order_id),
            other => panic!("{id} ended {other:?}"),
        }
    }
    let report = finished(&app).await;
    assert_eq!(report["buckets_moved"], 1, "{report}");
    assert_eq!(owner_now(&app, customer).await, to);
    let at_from = app.customer_rows_on_shard(customer, from).await;
    let at_to = app.customer_rows_on_shard(customer, to).await;
    assert_eq!((at_from.orders, at_to.orders), (0, 5));
    assert_eq!(at_to.confirmed_orders, 2, "both two-phase orders");
    assert!(prepared_everywhere(&app).await.is_empty());
    assert_audit_clean(&app);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_that_commits_after_a_later_one_is_still_caught_up() {
    let app = TestApp::spawn_without_worker().await;
    let Mover {
        customer,
        bucket,
        from,
        to,
    } = Mover::new(&app, "Leslie Lamport", "1000.00", 1).await;
    let (source, target) = (app.shards.get(from), app.shards.get(to));
    fences::set_all(&source.conn, &[bucket], FenceState::Copying, to, "test")
        .await
        .unwrap();
    fences::set_all(&target.conn, &[bucket], FenceState::Incoming, from, "test")
        .await
        .unwrap();
    let pool =
        |shard: &orders_core::shards::Shard| shard.conn.get_postgres_connection_pool().clone();
    let (source_pool, target_pool) = (pool(source), pool(target));
    let mut on_source = source_pool.acquire().await.unwrap();
    let mut on_target = target_pool.acquire().await.unwrap();
    let order = |n: i64| tagged_id(900_000 + n, bucket);
    let insert =
        "INSERT INTO orders (id, customer_id, status, total_amount, customer_name, customer_email)
                  SELECT $1, id, 'pending', 1.00, first_name, email FROM customers WHERE id = $2";
    // The customer, changed while copying, comes over with the first pass.
    sea_orm::sqlx::query("UPDATE customers SET first_name = first_name WHERE id = $1")
        .bind(customer)
        .execute(&mut *on_source)
        .await
        .unwrap();
    // The first order's change is logged first but commits last.
    let mut early = source_pool.begin().await.unwrap();
    sea_orm::sqlx::query(insert)
        .bind(order(1))
        .bind(customer)
        .execute(&mut *early)
        .await
        .unwrap();
    sea_orm::sqlx::query(insert)
        .bind(order(2))
        .bind(customer)
        .execute(&mut *on_source)
        .await
        .unwrap();
    let first = bucket_rows::catch_up(&mut on_source, &mut on_target, &[bucket], 100)
        .await
        .unwrap();
    assert!(first.changes >= 1, "{first:?}");
    early.commit().await.unwrap();
    bucket_rows::catch_up(&mut on_source, &mut on_target, &[bucket], 100)
        .await
        .unwrap();
    for n in [1, 2] {
        assert_eq!(
            app.order_rows_on_shard(order(n), to).await.orders,
            1,
            "order {n} on the target"
        );
    }
}
