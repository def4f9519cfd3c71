//! The read API faces clients the worker cannot trust: a shard that is down is named by its
//! number alone, an order is looked for on its own shard rather than on every one, readers
//! stuck on a shard never hold the connections orders need, a client that never finishes its
//! headers is disconnected, and an address already in use stops the worker.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use orders_worker::client::{self, OrderOutcome};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

use crate::helpers::{BuildOrder, STOCKED_PRODUCTS, TestApp, http_get, order};

/// What identifies the unreachable shard's server; no client may see any of it.
const DOWN_USER: &str = "reporting_reader";
const DOWN_DATABASE: &str = "orders_secret_db";
const DOWN_CERT: &str = "/etc/orders/tls/shard2-root.crt";

/// A worker whose shard `down` is a server nothing listens on, named by a URL that carries a
/// user, a password, a database and a certificate path. Returns the app and that URL's port.
async fn app_with_shard_down(down: usize) -> (TestApp, u16) {
    let mut app = TestApp::spawn_without_worker().await;
    let port = orders_dev::free_port().expect("a free port");
    app.shard_urls[down] = format!(
        "postgres://{DOWN_USER}:s3cret@127.0.0.1:{port}/{DOWN_DATABASE}?sslrootcert={DOWN_CERT}"
    );
    app.start_worker(None);
    (app, port)
}

/// An order id that no shard holds, homed on `shard`.
fn absent_order_on(app: &TestApp, shard: usize) -> i64 {
    (9_000_000_000..)
        .find(|&id| app.shards.for_order(id).index == shard)
        .expect("some id is homed on every shard")
}

/// `GET path` once the worker listens; the answer may wait for its checks before polling.
fn get_when_up(port: u16, path: &str) -> (u16, String) {
    for _ in 0..600 {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut response = String::new();
            stream
                .read_to_string(&mut response)
                .unwrap_or_else(|e| panic!("GET {path} got no answer: {e}"));
            let (head, body) = response
                .split_once("\r\n\r\n")
                .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
            let status = head.split(' ').nth(1).and_then(|code| code.parse().ok());
            return (status.expect("a status code"), body.to_owned());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the read API never listened on port {port}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_that_is_down_is_named_by_its_number_alone() {
    let (app, port) = app_with_shard_down(2).await;
    let order_on_shard_2 = absent_order_on(&app, 2);
    for path in [
        "/orders?limit=5".to_owned(),
        format!("/orders/{order_on_shard_2}"),
        "/orders/counts".to_owned(),
    ] {
        let (status, body) = tokio::task::block_in_place(|| get_when_up(app.api_port, &path));
        eprintln!("GET {path}: {status} {body}");
        assert!(
            status == 503 || path == "/orders/counts",
            "GET {path}: {status} {body}"
        );
        assert!(
            body.contains("shard 2") || body.contains("\"shard\":2"),
            "{body}"
        );
        for secret in [
            DOWN_USER,
            "s3cret",
            DOWN_DATABASE,
            DOWN_CERT,
            "sslrootcert",
            "127.0.0.1",
            &port.to_string(),
            "postgres://",
        ] {
            assert!(
                !body.contains(secret),
                "GET {path} told a client {secret:?}: {body}"
            );
        }
    }
    let log = std::fs::read_to_string(app.worker_log()).expect("the worker log reads");
    assert!(
        log.contains(&format!("127.0.0.1:{port}")),
        "the worker's log names the shard's server for its operator"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_absent_order_is_looked_for_on_its_own_shard_not_on_every_shard() {
    let (app, _) = app_with_shard_down(2).await;
    let absent = absent_order_on(&app, 0);
    let (status, body) =
        tokio::task::block_in_place(|| get_when_up(app.api_port, &format!("/orders/{absent}")));
    assert_eq!(
        status, 404,
        "an order homed on shard 0, which is up, needs no other shard: {body}"
    );
}

/// Keeps `threads` clients reading `path` until the returned flag is set.
fn flood(
    port: u16,
    path: String,
    threads: usize,
) -> (Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let handles = (0..threads)
        .map(|_| {
            let (stop, path) = (stop.clone(), path.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
                        s.set_read_timeout(Some(Duration::from_secs(20)))?;
                        write!(
                            s,
                            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                        )?;
                        let mut response = Vec::new();
                        s.read_to_end(&mut response)
                    });
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        })
        .collect();
    (stop, handles)
}

/// Connections to `shard`'s test database waiting for a lock.
async fn waiting_on_locks(app: &TestApp, shard: usize) -> i64 {
    app.shards
        .get(shard)
        .conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        ))
        .await
        .expect("pg_stat_activity reads")
        .expect("a row")
        .try_get("", "n")
        .expect("a count")
}

/// The worker's connections per shard in the flood test.
const POOL_SIZE: i64 = 10;

#[tokio::test(flavor = "multi_thread")]
async fn readers_stuck_on_a_shard_leave_orders_their_connections() {
    let mut app = TestApp::spawn_without_worker().await;
    app.worker_env
        .push(("ORDERS_POOL_SIZE", POOL_SIZE.to_string()));
    app.start_worker(None);
    tokio::task::block_in_place(|| get_when_up(app.api_port, "/cache"));
    let customer = app.add_customer("Grace Hopper", "500.00").await;
    let home = app.shards.for_customer(customer).index;
    let product = STOCKED_PRODUCTS
        .clone()
        .find(|&p| app.shards.for_product(p).index != home)
        .expect("a product stocked on another shard");
    let stuck = app.shards.for_product(product).index;

    // Every read of an order on the product's shard waits on this lock; the order's only
    // step there (ReserveStock) touches no table it covers.
    let holder = app
        .shards
        .get(stuck)
        .conn
        .begin()
        .await
        .expect("a transaction");
    holder
        .execute_raw(Statement::from_string(
            DbBackend::Postgres,
            "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE",
        ))
        .await
        .expect("the lock is taken");
    let (stop, readers) = flood(
        app.api_port,
        format!("/orders/{}", absent_order_on(&app, stuck)),
        48,
    );
    // The readers take every connection they may: at most the read API's own, never all of
    // the worker's pool for that shard (its order steps need some).
    let mut most_held = 0;
    for _ in 0..20 {
        most_held = most_held.max(waiting_on_locks(&app, stuck).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let placed = app
        .start_order(order(customer).item(product, 1, "3.00"))
        .await;
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        client::order_outcome(&app.client, &placed),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    holder.rollback().await.expect("the lock is released");
    for reader in readers {
        reader.join().expect("a reader thread");
    }
    let outcome = outcome
        .unwrap_or_else(|_| {
            panic!("{placed} was not placed within 30 s while readers were stuck on shard {stuck}")
        })
        .expect("the outcome can be read");
    assert!(matches!(outcome, OrderOutcome::Placed(_)), "{outcome:?}");
    assert!(
        most_held > 0 && most_held < POOL_SIZE,
        "readers held {most_held} of shard {stuck}'s connections (the worker's pool has {POOL_SIZE})"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let app = TestApp::spawn().await;
    tokio::task::block_in_place(|| get_when_up(app.api_port, "/cache"));
    let started = std::time::Instant::now();
    let closed = tokio::task::block_in_place(|| {
        let mut slow = TcpStream::connect(("127.0.0.1", app.api_port)).expect("the API accepts");
        slow.set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        slow.write_all(b"GET /orders/1 HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .unwrap();
        let mut rest = Vec::new();
        match slow.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    });
    assert!(
        closed,
        "a connection that never finished its headers was still open after {:?}",
        started.elapsed()
    );
    let (status, _) = tokio::task::block_in_place(|| http_get(app.api_port, "/cache"));
    assert_eq!(status, 200, "other clients are still served");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_api_address_in_use_stops_the_worker_naming_it() {
    let mut app = TestApp::spawn_without_worker().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to occupy");
    let addr = taken.local_addr().unwrap().to_string();
    app.worker_env.push(("ORDERS_API_ADDR", addr.clone()));
    let (status, stderr) = tokio::task::block_in_place(|| app.worker_refusal());
    eprintln!("{stderr}");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&addr), "{stderr}");
    assert!(stderr.contains("ORDERS_API_ADDR"), "{stderr}");
}
