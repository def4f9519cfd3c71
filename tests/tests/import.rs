//! `orders import`: every good line lands on its shard, every bad line is reported with its
//! number and the rule it broke (never its values), a re-run adds nothing, and a worker
//! killed mid-import resumes to the same result. A client of the namespace cannot make the
//! worker read anything outside `ORDERS_IMPORT_DIR`, nor anything but a regular file of
//! bounded size.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use orders_workflows::ImportOrdersWorkflow;
use orders_workflows::import_orders::{ImportInput, ImportReport};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};
use temporalio_client::errors::WorkflowGetResultError;
use temporalio_client::{WorkflowGetResultOptions, WorkflowStartOptions};
use temporalio_common::error::IncomingError;

use crate::helpers::{TestApp, services};

/// This test's import directory, under the run's directory.
fn import_dir(app: &TestApp) -> PathBuf {
    let dir = services().root.join(format!("imports-{}", app.task_queue));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Lets the workers this test starts import from [`import_dir`], and returns it.
pub(crate) fn allow_imports(app: &mut TestApp) -> PathBuf {
    let dir = import_dir(app);
    app.worker_env
        .push(("ORDERS_IMPORT_DIR", dir.display().to_string()));
    dir
}

/// A worker that may import from [`import_dir`].
async fn spawn_importer() -> TestApp {
    let mut app = TestApp::spawn_without_worker().await;
    allow_imports(&mut app);
    app.start_worker(None);
    app
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut file = std::fs::File::create(path).unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
}

/// Writes `lines` to `name` in the test's import directory.
fn write_file(app: &TestApp, name: &str, lines: &[String]) -> PathBuf {
    let path = import_dir(app).join(format!("{name}.jsonl"));
    write_lines(&path, lines);
    path
}

/// A line of the import file. Import lines are a format of their own (with `order_ref`, which
/// an `OrderRequest` refuses), so these tests write them as JSON, bad lines included.
fn good_line(order_ref: &str, customer: i64, quantity: u32) -> String {
    json!({"order_ref": order_ref, "customer_id": customer, "items": [
        {"product_id": 7, "quantity": quantity, "unit_price": "19.99"},
        {"product_id": 8, "quantity": 1, "unit_price": "0.01"}]})
    .to_string()
}

fn import(app: &TestApp, path: &std::path::Path, chunk: &str) -> (bool, Value) {
    let output = app.cli(&[
        "import",
        path.to_str().unwrap(),
        "--chunk-size",
        chunk,
        "--json",
    ]);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "import printed no report ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.success(), report)
}

/// Orders imported over all shards, from a report's or progress's `imported` map.
fn imported_total(report: &Value) -> u64 {
    report["imported"]
        .as_object()
        .expect("imported is a map of shard to count")
        .values()
        .map(|n| n.as_u64().expect("a count"))
        .sum()
}

/// Orders and items on each shard, and their total, straight from the databases.
async fn shard_totals(app: &TestApp) -> Vec<(i64, i64, String)> {
    let mut totals = Vec::new();
    for shard in 0..app.shards.len() {
        let rows = app.rows_on_shard(shard).await;
        let total = app
            .shards
            .get(shard)
            .conn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT COALESCE(sum(total_amount), 0)::text AS total FROM orders",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get("", "total")
            .unwrap();
        totals.push((rows.orders, rows.items, total));
    }
    totals
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_lands_every_good_line_reports_every_bad_one_and_a_rerun_adds_nothing() {
    let app = spawn_importer().await;
    let mut customers = Vec::new();
    for name in [
        "Ada Lovelace",
        "Grace Hopper",
        "Alan Turing",
        "Katherine Johnson",
        "John Backus",
    ] {
        customers.push(app.add_customer(name, "100.00").await);
    }
    let mut lines: Vec<String> = (0..30)
        .map(|i| {
            good_line(
                &format!("R-{i}"),
                customers[i % customers.len()],
                1 + i as u32 % 3,
            )
        })
        .collect();
    // Bad lines, at known line numbers (1-based).
    let bad = [
        (5, "{\"customer_id\": 1, \"items\": [".to_owned(), "malformed JSON"),
        (9, json!({"customer_id": customers[0], "items": [{"product_id": 1, "quantity": -2, "unit_price": "1.00"}]}).to_string(), "quantity"),
        (12, json!({"customer_id": customers[1], "items": [{"product_id": 1, "quantity": 1, "unit_price": "1.999"}]}).to_string(), "decimals"),
        (17, json!({"customer_id": customers[2], "items": []}).to_string(), "at least one item"),
        (21, json!({"order_ref": "NOBODY", "customer_id": 987_654_321, "items": [{"product_id": 1, "quantity": 1, "unit_price": "1.00"}]}).to_string(), "UnknownCustomer"),
        // The same reference as line 1, for the same customer: refused before writing.
        (26, good_line("R-0", customers[0], 1), "order_ref"),
    ];
    for (line, text, _) in &bad {
        lines.insert(line - 1, text.clone());
    }
    lines.insert(14, String::new()); // a blank line is skipped, not rejected
    let path = write_file(&app, "mixed", &lines);

    let (success, report) = import(&app, &path, "4");
    assert!(!success, "rejections make the command exit non-zero");
    let rejected: Vec<(u64, String)> = report["rejected_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected_lines: Vec<u64> = bad
        .iter()
        .map(|(line, _, _)| *line as u64 + u64::from(*line > 14))
        .collect();
    assert_eq!(
        rejected.iter().map(|r| r.0).collect::<Vec<_>>(),
        expected_lines,
        "{rejected:?}"
    );
    for ((_, reason), (_, _, expected)) in rejected.iter().zip(&bad) {
        assert!(
            reason.contains(expected),
            "{reason:?} should mention {expected:?}"
        );
    }
    assert_eq!(imported_total(&report), 30);
    assert_eq!(report["rejected"], 6);
    assert_eq!(report["done"], true);

    // Every good line is on its customer's shard, with its items; the report's per-shard
    // counts are the databases'.
    let totals = shard_totals(&app).await;
    let mut expected: BTreeMap<usize, i64> = BTreeMap::new();
    for i in 0..30 {
        *expected
            .entry(
                app.shards
                    .for_customer(customers[i % customers.len()])
                    .index,
            )
            .or_default() += 1;
    }
    for (shard, (orders, items, _)) in totals.iter().enumerate() {
        assert_eq!(
            *orders,
            expected.get(&shard).copied().unwrap_or(0),
            "shard {shard}"
        );
        assert_eq!(*items, 2 * orders, "shard {shard}");
        assert_eq!(
            report["imported"][shard.to_string()].as_i64().unwrap_or(0),
            *orders,
            "{report}"
        );
    }
    for &customer in &customers {
        assert_eq!(
            app.credit_used(customer).await,
            rust_decimal::Decimal::ZERO,
            "imports skip payment"
        );
    }
    // Imported orders are history: no lifecycle moves them on.
    let imported = app
        .shards
        .for_customer(customers[0])
        .conn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id FROM orders WHERE customer_id = $1 AND import_id IS NOT NULL LIMIT 1",
            [customers[0].into()],
        ))
        .await
        .unwrap()
        .expect("an imported order")
        .try_get::<i64>("", "id")
        .unwrap();
    let refused = app.cli(&["set-status", &imported.to_string(), "shipped"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("imported orders are history"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let (_, again) = import(&app, &path, "4");
    assert_eq!(
        imported_total(&again),
        0,
        "a re-run imports nothing: {again}"
    );
    assert_eq!(again["already_present"], 30, "every good line: {again}");
    assert_eq!(
        again["rejected"], 6,
        "the same lines are refused again: {again}"
    );
    assert_eq!(
        shard_totals(&app).await,
        totals,
        "the databases are unchanged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_import_resumes_and_the_result_matches_an_uninterrupted_run() {
    let mut app = TestApp::spawn_without_worker().await;
    let mut customers = Vec::new();
    for i in 0..8 {
        customers.push(
            app.add_customer(&format!("Importer{i} Test"), "10.00")
                .await,
        );
    }
    let lines: Vec<String> = (0..6000)
        .map(|i| good_line(&format!("K-{i}"), customers[i % customers.len()], 1))
        .collect();
    allow_imports(&mut app);
    let path = write_file(&app, "big", &lines);

    // The first worker commits the first segment on every shard, then dies before Temporal
    // hears of it.
    app.start_worker(Some("import_segment.after_write"));
    let started = app.cli_ok(&[
        "import",
        path.to_str().unwrap(),
        "--chunk-size",
        "100",
        "--detach",
    ]);
    let workflow_id = String::from_utf8(started.stdout).unwrap().trim().to_owned();
    assert!(
        app.worker_exits_within(Duration::from_secs(60)),
        "the worker should have aborted at the failpoint; log: {}",
        app.worker_log().display()
    );
    let committed: i64 = shard_totals(&app).await.iter().map(|t| t.0).sum();
    assert_eq!(
        committed, 2000,
        "the first segment (2000 lines, the least a segment reads) was committed before the crash"
    );

    app.start_worker(None);
    let status = loop {
        let output = app.cli(&["import-status", &workflow_id, "--json"]);
        let status: Value = serde_json::from_slice(&output.stdout).unwrap();
        if status["done"] == true {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(imported_total(&status), 6000, "{status}");
    assert_eq!(
        status["already_present"], 0,
        "the retried segment counts its own rows once: {status}"
    );
    assert_eq!(status["rejected"], 0);
    let totals = shard_totals(&app).await;
    assert_eq!(
        totals.iter().map(|t| t.0).sum::<i64>(),
        6000,
        "every order exactly once"
    );
    assert_eq!(totals.iter().map(|t| t.1).sum::<i64>(), 12000);
    for (shard, (orders, _, _)) in totals.iter().enumerate() {
        let expected = (0..6000)
            .filter(|i| {
                app.shards
                    .for_customer(customers[i % customers.len()])
                    .index
                    == shard
            })
            .count();
        assert_eq!(*orders, expected as i64, "shard {shard}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_in_savepoint_chunks_keeps_every_good_row_and_names_each_bad_one() {
    use orders_core::store::batch::{self, NewItem};

    let app = TestApp::spawn_without_worker().await;
    let customer = app.add_customer("Niklaus Wirth", "100.00").await;
    let order = app.insert_order(customer, &[(1, 1, "1.00")]).await;
    let shard = app.shards.for_customer(customer);
    let item = |order_id: i64, quantity: i32| NewItem {
        order_id,
        product_id: 42,
        quantity,
        price: rust_decimal::Decimal::new(250, 2),
    };
    // 40 rows; row 7 breaks the quantity CHECK, row 23 the foreign key to orders.
    let rows: Vec<NewItem> = (0..40)
        .map(|i| match i {
            7 => item(order, 0),
            23 => item(order + 1024 * 1000, 1),
            _ => item(order, 1),
        })
        .collect();
    let mut tx = shard
        .conn
        .get_postgres_connection_pool()
        .begin()
        .await
        .unwrap();
    let failed = batch::isolate_failures(&mut tx, &rows, 16, |conn, rows| {
        Box::pin(async move { batch::copy_items(conn, rows).await.map(|_| ()) })
    })
    .await
    .expect("data errors are isolated, not raised");
    tx.commit().await.unwrap();

    assert_eq!(
        failed.iter().map(|f| f.index).collect::<Vec<_>>(),
        vec![7, 23]
    );
    assert!(
        failed[0].error.contains("check constraint"),
        "{:?}",
        failed[0]
    );
    assert!(failed[1].error.contains("foreign key"), "{:?}", failed[1]);
    let written = app.rows_on_shard(shard.index).await.items;
    assert_eq!(written, 1 + 38, "the order's own item and every good row");
}

/// Starts ImportOrders on `path` as any client of the namespace could (no CLI in between),
/// and waits up to `limit` for how it ended: its report, or its failure's type and message.
async fn import_as_client(
    app: &TestApp,
    path: &str,
    limit: Duration,
) -> Result<ImportReport, (String, String)> {
    let workflow_id = format!("import-{}", uuid::Uuid::new_v4());
    let input = ImportInput {
        path: path.to_owned(),
        chunk_size: None,
    };
    app.client
        .start_workflow(
            ImportOrdersWorkflow::run,
            input,
            WorkflowStartOptions::new(&app.task_queue, &workflow_id).build(),
        )
        .await
        .expect("ImportOrders starts");
    let handle = app
        .client
        .get_workflow_handle::<ImportOrdersWorkflow>(&workflow_id);
    match tokio::time::timeout(
        limit,
        handle.get_result(WorkflowGetResultOptions::default()),
    )
    .await
    {
        Err(_) => Err((
            "still running".to_owned(),
            format!("{workflow_id} had not ended after {limit:?}"),
        )),
        Ok(Ok(report)) => Ok(report),
        Ok(Err(WorkflowGetResultError::Failed(failure))) => match *failure {
            IncomingError::Application(failure) => Err((
                failure.type_name().unwrap_or_default().to_owned(),
                failure.to_string(),
            )),
            other => Err(("other".to_owned(), other.to_string())),
        },
        Ok(Err(other)) => Err(("other".to_owned(), other.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_cannot_make_the_worker_read_outside_the_import_dir_or_a_non_regular_file() {
    let mut app = TestApp::spawn_without_worker().await;
    let dir = allow_imports(&mut app);
    app.worker_env
        .push(("ORDERS_IMPORT_MAX_BYTES", "4096".to_owned()));
    app.start_worker(None);
    // A JSON Lines file the worker can read, outside the import directory: importing it used
    // to echo its values back in the rejected lines.
    let secret = services()
        .root
        .join(format!("secret-{}.jsonl", app.task_queue));
    write_lines(&secret, &[json!({"customer_id": "TOP-SECRET"}).to_string()]);
    std::os::unix::fs::symlink(&secret, dir.join("link-out.jsonl")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.jsonl")).unwrap();
    std::fs::create_dir(dir.join("a-directory.jsonl")).unwrap();
    let fifo = dir.join("fifo.jsonl");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo makes a FIFO");
    let big = dir.join("big.jsonl");
    write_lines(&big, &vec![good_line("B", 1, 1); 40]);
    assert!(std::fs::metadata(&big).unwrap().len() > 4096);
    let name = |p: &Path| p.display().to_string();
    let secret_name = secret.file_name().unwrap().to_str().unwrap();
    let cases = [
        (name(&secret), "outside ORDERS_IMPORT_DIR"),
        (
            name(&dir.join("link-out.jsonl")),
            "outside ORDERS_IMPORT_DIR",
        ),
        (
            format!("{}/../{secret_name}", dir.display()),
            "outside ORDERS_IMPORT_DIR",
        ),
        (format!("../{secret_name}"), "outside ORDERS_IMPORT_DIR"),
        ("/dev/zero".to_owned(), "outside ORDERS_IMPORT_DIR"),
        (name(&dir.join("zero.jsonl")), "outside ORDERS_IMPORT_DIR"),
        (name(&dir.join("a-directory.jsonl")), "not a regular file"),
        (name(&fifo), "not a regular file"),
        (name(&big), "ORDERS_IMPORT_MAX_BYTES"),
        (name(&dir.join("missing.jsonl")), "does not exist"),
    ];
    let started = Instant::now();
    let outcomes = futures::future::join_all(
        cases
            .iter()
            .map(|(path, _)| import_as_client(&app, path, Duration::from_secs(30))),
    )
    .await;
    for ((path, expected), outcome) in cases.iter().zip(outcomes) {
        let (failure_type, message) = match outcome {
            Err(failure) => failure,
            Ok(report) => panic!("importing {path} was not refused: {report}"),
        };
        assert_eq!(failure_type, "ImportFileUnreadable", "{path}: {message}");
        assert!(
            message.contains(expected),
            "{path}: {message:?} should say {expected:?}"
        );
        assert!(!message.contains("TOP-SECRET"), "{path}: {message}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "refusals are not retried: {:?}",
        started.elapsed()
    );

    // A file inside the directory, named relative to it, is imported.
    let customer = app.add_customer("Relative Path", "10.00").await;
    write_file(&app, "inside", &[good_line("IN-1", customer, 1)]);
    let report = import_as_client(&app, "inside.jsonl", Duration::from_secs(60))
        .await
        .expect("a file in the import directory is imported");
    assert_eq!(report.progress.imported_total(), 1, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_orders_import_dir_imports_are_refused_saying_to_set_it() {
    let app = TestApp::spawn().await;
    let path = write_file(&app, "anywhere", &[good_line("X-1", 1, 1)]);
    let output = app.cli(&["import", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("failed with ImportFileUnreadable")
            && stderr.matches("ORDERS_IMPORT_DIR is not set").count() == 1,
        "the failure's type and reason, once: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hash_that_outlasts_the_heartbeat_timeout_still_finishes() {
    let mut app = TestApp::spawn_without_worker().await;
    allow_imports(&mut app);
    // Hashing that takes 32 s: longer than the 20 s heartbeat timeout and than the 30 s the
    // inspection used to be allowed.
    app.start_worker(Some("inspect_import_file.hash=sleep:32000"));
    let customer = app.add_customer("Slow Disk", "10.00").await;
    write_file(&app, "slow", &[good_line("S-1", customer, 1)]);
    let report = import_as_client(&app, "slow.jsonl", Duration::from_secs(120))
        .await
        .expect("the import finishes once the hash does");
    assert_eq!(report.progress.imported_total(), 1, "{report}");
}
