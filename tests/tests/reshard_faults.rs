//! A bucket move under the faults users see: a worker killed when the server's heartbeat is
//! older than the copy, a phase that keeps failing, a shard the move does not involve down
//! during its cut-over, and a run terminated on either side of publishing its map. Each move
//! must finish or roll back on its own, never lose the copy the newest map names, and say
//! which step holds it.

use std::time::Duration;

use orders_core::store::fences::{self, FenceState};
use orders_core::store::shard_map;
use orders_core::store::{bucket_checks, bucket_rows};
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::consistency::product_on;
use crate::helpers::{BuildOrder, TestApp, eventually, order};
use crate::in_doubt::terminate;
use crate::resharding::{
    Mover, assert_rolled_back, finished, insert_orders, owner_now, reshard_report, routing_now,
};

/// `orders reshard --move-bucket B --to S --detach` with small chunks and a quick clean-up.
fn start_move(app: &TestApp, bucket: u16, to: usize) {
    app.cli_ok(&[
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
}

/// `orders reshard status --json` (which exits non-zero once the reshard failed).
fn status(app: &TestApp) -> serde_json::Value {
    reshard_report(&app.cli(&["reshard", "status", "--json"]))
}

/// A new order of `customer`, for a product on its own shard, is confirmed: its bucket
/// takes writes on its owner.
async fn takes_orders(app: &TestApp, customer: i64) {
    let owner = owner_now(app, customer).await;
    let product = product_on(app, owner, &[]);
    app.place_confirmed_order(order(customer).item(product, 1, "4.00"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_resumed_from_a_heartbeat_older_than_its_last_chunk_still_finishes() {
    let mut app = TestApp::spawn_without_worker().await;
    let Mover {
        customer,
        bucket,
        from,
        to,
    } = Mover::new(&app, "Edgar Codd", "10000.00", 1).await;
    insert_orders(&app, customer, 6, &[(6, 1, "1.50"), (7, 2, "2.25")]).await;
    // The worker dies while copying order items, a few milliseconds after its first chunk:
    // the server holds only that first heartbeat (they are throttled), so the retry resumes
    // at the customers, whose orders and items are already on the target.
    app.start_worker(Some("copy_bucket.in_order_items"));
    start_move(&app, bucket, to);
    assert!(
        app.worker_exits_within(Duration::from_secs(60)),
        "the worker died copying order items"
    );
    app.start_worker(None);
    let report = finished(&app).await;
    assert_eq!(report["buckets_moved"], 1, "{report}");
    let moved = app.customer_rows_on_shard(customer, to).await;
    assert_eq!((moved.orders, moved.items), (6, 12), "every row once");
    assert_eq!(app.customer_rows_on_shard(customer, from).await.orders, 0);
    takes_orders(&app, customer).await;
    app.cli_ok(&["audit", "--grace", "0"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_phase_that_keeps_failing_is_named_by_status_logged_once_and_rolled_back() {
    let mut app = TestApp::spawn_without_worker().await;
    let Mover {
        customer,
        bucket,
        from,
        to,
    } = Mover::new(&app, "Leslie Lamport", "10000.00", 1).await;
    insert_orders(&app, customer, 2, &[(6, 1, "1.50")]).await;
    app.start_worker(Some("copy_bucket.before=fail"));
    start_move(&app, bucket, to);
    let failing = eventually(
        "orders reshard status names the failing copy",
        Duration::from_secs(60),
        async || {
            let report = status(&app);
            report["failing"]
                .as_array()
                .and_then(|steps| steps.first().cloned())
                .filter(|step| step["attempt"].as_i64() >= Some(3))
        },
    )
    .await;
    assert_eq!(failing["step"], "CopyBucket", "{failing}");
    assert!(
        failing["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("copy_bucket.before")),
        "{failing}"
    );
    let human = String::from_utf8_lossy(&app.cli_ok(&["reshard", "status"]).stdout).into_owned();
    assert!(
        human.contains("step CopyBucket failing (attempt"),
        "{human}"
    );
    // With both shards answering, the move gives up by itself and is rolled back.
    let ended = eventually(
        "the reshard gives up and fails",
        Duration::from_secs(180),
        async || Some(status(&app)).filter(|r| r["phase"] == "failed"),
    )
    .await;
    let stopped = ended["stopped"].as_str().unwrap_or_default();
    assert!(
        stopped.contains("CopyBucket") && stopped.contains("failed 12 times"),
        "{ended}"
    );
    assert_rolled_back(&app, customer, from, to).await;
    takes_orders(&app, customer).await;
    let log = std::fs::read_to_string(app.worker_log()).unwrap();
    let warnings = log
        .lines()
        .filter(|l| l.contains("step failed") && l.contains("CopyBucket"))
        .count();
    assert_eq!(warnings, 1, "one warning per distinct error:\n{log}");
    app.cli_ok(&["audit", "--grace", "0"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_move_cuts_over_while_a_shard_it_does_not_involve_is_down() {
    const DOWN: usize = 3;
    let (mut app, mut own) = TestApp::spawn_with_own_cluster_for(DOWN).await;
    app.worker_env
        .push(("ORDERS_SHARD_MAP_REFRESH_SECS", "1".into()));
    app.restart_worker(None);
    let mut customer = app.add_customer("Jim Gray", "10000.00").await;
    while app.shards.for_customer(customer).index == DOWN {
        customer = app.add_customer("Jim Gray", "10000.00").await;
    }
    let from = app.shards.for_customer(customer).index;
    let to = (0..DOWN).find(|&s| s != from).unwrap();
    let bucket = orders_core::routing::bucket_of(customer);
    insert_orders(&app, customer, 3, &[(6, 1, "1.50")]).await;
    own.stop().await;
    start_move(&app, bucket, to);
    let report = finished(&app).await;
    assert_eq!(report["buckets_moved"], 1, "{report}");
    assert_eq!(owner_now(&app, customer).await, to);
    assert_eq!(app.customer_rows_on_shard(customer, to).await.orders, 3);
    takes_orders(&app, customer).await;
    // Back up, the shard gets the newest map from the worker's next refresh.
    own.restart().await;
    let newest = routing_now(&app).await.map().version();
    eventually(
        "the shard that was down stores the newest map",
        Duration::from_secs(30),
        async || {
            let stored = shard_map::latest(&app.shards.get(DOWN).conn).await.ok()??;
            (stored.0 == newest).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_terminated_after_publishing_is_finished_by_the_next_never_rolled_back() {
    let mut app = TestApp::spawn_without_worker().await;
    let Mover {
        customer,
        bucket,
        from,
        to,
    } = Mover::new(&app, "Barbara Liskov", "10000.00", 1).await;
    insert_orders(&app, customer, 4, &[(6, 1, "1.50"), (7, 2, "2.25")]).await;
    app.start_worker(Some("cut_over_bucket.after_publish"));
    start_move(&app, bucket, to);
    assert!(
        app.worker_exits_within(Duration::from_secs(90)),
        "the worker died between publishing the map and opening the target"
    );
    terminate(&app, orders_workflows::reshard::WORKFLOW_ID).await;
    assert_eq!(owner_now(&app, customer).await, to, "the map was published");
    app.start_worker(None);
    // The next reshard finds the target still fenced `incoming` under a map that names it
    // the owner: it opens the target, and deletes nothing there.
    start_move(&app, bucket, to);
    finished(&app).await;
    let kept = app.customer_rows_on_shard(customer, to).await;
    assert_eq!((kept.orders, kept.items), (4, 8), "the copy in use is kept");
    let fenced = fences::list(&app.shards.get(to).conn).await.unwrap();
    assert!(fenced.is_empty(), "the target is open: {fenced:?}");
    assert_eq!(
        app.customer_rows_on_shard(customer, from).await.orders,
        0,
        "the next run cleans up the old copy the terminated one left"
    );
    takes_orders(&app, customer).await;
    app.cli_ok(&["audit", "--grace", "0"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_terminated_before_publishing_is_rolled_back_by_the_next_and_its_source_reopens() {
    let mut app = TestApp::spawn_without_worker().await;
    let Mover {
        customer,
        bucket,
        from,
        to,
    } = Mover::new(&app, "Butler Lampson", "10000.00", 1).await;
    insert_orders(&app, customer, 3, &[(6, 1, "1.50")]).await;
    app.start_worker(Some("cut_over_bucket.after_source"));
    start_move(&app, bucket, to);
    assert!(
        app.worker_exits_within(Duration::from_secs(90)),
        "the worker died between fencing the source and publishing the map"
    );
    terminate(&app, orders_workflows::reshard::WORKFLOW_ID).await;
    let fenced = fences::list(&app.shards.get(from).conn).await.unwrap();
    assert!(
        fenced
            .iter()
            .any(|f| f.bucket == bucket && f.state == FenceState::Moved),
        "{fenced:?}"
    );
    app.start_worker(None);
    // Any next reshard settles it: here one that moves nothing else.
    let other = (0..1024u16).find(|b| *b != bucket).unwrap();
    let owner = routing_now(&app).await.map().shard_of_bucket(other);
    start_move(&app, other, owner);
    finished(&app).await;
    assert_rolled_back(&app, customer, from, to).await;
    assert_eq!(app.customer_rows_on_shard(customer, from).await.orders, 3);
    takes_orders(&app, customer).await;
    app.cli_ok(&["audit", "--grace", "0"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bucket_moves_between_shards_that_sort_text_differently() {
    let app = TestApp::spawn().await;
    let Mover {
        customer,
        bucket,
        from,
        to,
    } = Mover::new(&app, "Grace Hopper", "10000.00", 1).await;
    // The target sorts text as a shard created with an ICU locale would (punctuation and
    // case ignored first), the source byte by byte: the keys below come in another order.
    app.shards
        .get(to)
        .conn
        .execute_unprepared(
            r#"ALTER TABLE idempotency_keys ALTER COLUMN key TYPE text COLLATE "und-x-icu""#,
        )
        .await
        .unwrap();
    let keys = ["k-b", "k_a", "kc", "K-d", "k.e", "ka"];
    for key in keys {
        app.shards
            .get(from)
            .conn
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO idempotency_keys (key, result, bucket) VALUES ($1, '1'::jsonb, $2)",
                [key.into(), i16::try_from(bucket).unwrap().into()],
            ))
            .await
            .unwrap();
    }
    start_move(&app, bucket, to);
    let report = finished(&app).await;
    assert_eq!(report["buckets_moved"], 1, "{report}");
    let copied = app
        .shards
        .get(to)
        .conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM idempotency_keys WHERE key = ANY($1)",
            [keys.map(str::to_owned).to_vec().into()],
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    assert_eq!(
        copied,
        keys.len() as i64,
        "every key copied, none deleted by a later chunk"
    );
    takes_orders(&app, customer).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_to_one_stock_hold_of_a_hot_product_rewrites_that_hold_only() {
    let app = TestApp::spawn_without_worker().await;
    let product = 7;
    let bucket = orders_core::routing::bucket_of(product);
    let source = app.shards.for_product(product);
    let target = app.shards.get((source.index + 1) % app.shards.len());
    let run = async |conn: &sea_orm::DatabaseConnection, sql: &str| {
        conn.execute_unprepared(sql).await.unwrap();
    };
    // Two holds of the product on both sides; the target's second differs, so a rewrite of
    // the whole group would show.
    run(
        &source.conn,
        &format!(
            "INSERT INTO stock_holds (order_id, product_id, quantity, status)
         VALUES (1001, {product}, 1, 'held'), (1002, {product}, 1, 'held')"
        ),
    )
    .await;
    run(&target.conn, &format!(
        "BEGIN; SELECT set_config('orders.bucket_mover', 'on', true);
         INSERT INTO inventory (product_id, name, on_hand, reserved) VALUES ({product}, 'hot', 10, 0);
         INSERT INTO stock_holds (order_id, product_id, quantity, status)
         VALUES (1001, {product}, 1, 'held'), (1002, {product}, 99, 'held'); COMMIT"
    ))
    .await;
    fences::set_all(
        &source.conn,
        &[bucket],
        FenceState::Copying,
        target.index,
        "test",
    )
    .await
    .unwrap();
    run(
        &source.conn,
        &format!(
            "UPDATE stock_holds SET quantity = 5 WHERE order_id = 1001 AND product_id = {product}"
        ),
    )
    .await;
    let pool = |shard: &orders_core::Shard| shard.conn.get_postgres_connection_pool().clone();
    let (mut on_source, mut on_target) = (
        pool(source).acquire().await.unwrap(),
        pool(target).acquire().await.unwrap(),
    );
    let caught_up = bucket_rows::catch_up(&mut on_source, &mut on_target, &[bucket], 100)
        .await
        .unwrap();
    assert_eq!(caught_up.changes, 1);
    let quantities: Vec<(i64, i32)> = sea_orm::sqlx::query_as(
        "SELECT order_id, quantity FROM stock_holds WHERE product_id = $1 ORDER BY order_id",
    )
    .bind(product)
    .fetch_all(&mut *on_target)
    .await
    .unwrap();
    assert_eq!(
        quantities,
        [(1001, 5), (1002, 99)],
        "the changed hold is rewritten, its product's other holds are not"
    );
    fences::clear_all(&source.conn, &[bucket], &[FenceState::Copying])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_check_during_the_pause_compares_the_rows_written_since_the_one_before() {
    let app = TestApp::spawn_without_worker().await;
    let customer = app.add_customer("Tony Hoare", "100.00").await;
    let source = app.shards.for_customer(customer);
    let target = app.shards.get((source.index + 1) % app.shards.len());
    let copy = format!(
        "BEGIN; SELECT set_config('orders.bucket_mover', 'on', true);
         INSERT INTO customers (id, email, credit_limit, credit_used, created_at, updated_at, first_name, last_name)
         VALUES {}; COMMIT",
        {
            let row = source
                .conn
                .query_one_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT format('(%s, %L, %s, %s, %L, %L, %L, %L)', id, email, credit_limit,
                            credit_used, created_at, updated_at, first_name, last_name) AS v
                     FROM customers WHERE id = $1",
                    [customer.into()],
                ))
                .await
                .unwrap()
                .unwrap();
            row.try_get::<String>("", "v").unwrap()
        }
    );
    target.conn.execute_unprepared(&copy).await.unwrap();
    let mut touched = bucket_rows::Touched::default();
    touched.keys[0].push(customer.to_string());
    let pool = |shard: &orders_core::Shard| shard.conn.get_postgres_connection_pool().clone();
    let (mut on_source, mut on_target) = (
        pool(source).acquire().await.unwrap(),
        pool(target).acquire().await.unwrap(),
    );
    let same = bucket_checks::touched_difference(&mut on_source, &mut on_target, &touched)
        .await
        .unwrap();
    assert_eq!(same, None, "a row copied as it is compares equal");
    target
        .conn
        .execute_unprepared(&format!(
            "BEGIN; SELECT set_config('orders.bucket_mover', 'on', true);
             UPDATE customers SET credit_used = 1 WHERE id = {customer}; COMMIT"
        ))
        .await
        .unwrap();
    let differs = bucket_checks::touched_difference(&mut on_source, &mut on_target, &touched)
        .await
        .unwrap();
    assert_eq!(differs, Some(("customers", customer.to_string())));
}
