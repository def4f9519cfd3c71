//! A shard's primary can die. Shard 1 runs as a pg_auto_failover formation (a primary and a
//! synchronous standby, `HaCluster`), given to the worker and the CLI as a multi-host URL;
//! the other shards are single servers. Under a load of orders touching shard 1 and others,
//! its primary's postmaster is killed (its keeper restarts it in place) and then its whole
//! node is lost (keeper and postgres, as a machine loss): the monitor promotes the standby,
//! the worker follows without a restart, every order the client saw confirmed is on the new
//! primary exactly once, none is stuck, nothing stays prepared, and `orders audit` is clean.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use orders_core::{Consistency, OrderRequest};
use orders_worker::client::OrderOutcome;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};

use crate::consistency::{assert_audit_clean, prepared_everywhere, product_on};
use crate::helpers::{
    BuildOrder, HaCluster, STOCKED_PRODUCTS, TestApp, eventually, expect_failure, http_get, order,
    run_load, until,
};

/// The shard with a standby.
const HA: usize = 1;
/// Orders in flight during the load.
const IN_FLIGHT: usize = 4;

/// A direct connection to node `node` of the formation, outside the shard layer.
async fn node_conn(ha: &HaCluster, node: usize) -> DatabaseConnection {
    let url = format!(
        "postgres://orders@127.0.0.1:{}/orders",
        ha.shard.node(node).port()
    );
    Database::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("node {node} of the formation answers: {e}"))
}

async fn scalar_i64(conn: &DatabaseConnection, sql: &str) -> i64 {
    conn.query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .expect("the statement runs")
        .expect("a row")
        .try_get_by_index::<i64>(0)
        .expect("an integer")
}

async fn in_recovery(conn: &DatabaseConnection) -> bool {
    conn.query_one_raw(Statement::from_string(
        DbBackend::Postgres,
        "SELECT pg_is_in_recovery()",
    ))
    .await
    .expect("the statement runs")
    .expect("a row")
    .try_get_by_index::<bool>(0)
    .expect("a boolean")
}

/// Customers on the HA shard and off it, and orders touching it (its customer, or one of
/// its products) and not.
async fn orders_around_the_ha_shard(app: &TestApp) -> Vec<OrderRequest> {
    let on_ha: Vec<i64> = STOCKED_PRODUCTS
        .filter(|p| app.shards.for_product(*p).index == HA)
        .collect();
    let off_ha: Vec<i64> = STOCKED_PRODUCTS
        .filter(|p| app.shards.for_product(*p).index != HA)
        .collect();
    let (mut on, mut off) = (Vec::new(), Vec::new());
    while on.len() < 3 || off.len() < 3 {
        let customer = app.add_customer("Failover Customer", "1000000.00").await;
        if app.shards.for_customer(customer).index == HA {
            on.push(customer);
        } else {
            off.push(customer);
        }
    }
    (0..12)
        .map(|i| match i % 3 {
            0 => order(on[i % on.len()]).item(off_ha[i % off_ha.len()], 1, "1.00"),
            1 => order(off[i % off.len()])
                .item(off_ha[i % off_ha.len()], 1, "1.00")
                .item(on_ha[i % on_ha.len()], 1, "2.00"),
            _ => order(off[i % off.len()]).item(off_ha[(i + 3) % off_ha.len()], 1, "3.00"),
        })
        .collect()
}

/// Whether `request` writes to the HA shard: its customer's, or one of its products'.
fn touches_ha(app: &TestApp, request: &OrderRequest) -> bool {
    app.shards.for_customer(request.customer_id).index == HA
        || request
            .items
            .iter()
            .any(|item| app.shards.for_product(item.product_id).index == HA)
}

/// The whole scenario in one mode; `rejoin` also restarts the lost node afterwards and
/// checks it came back as a standby that nothing writes to.
async fn lose_the_primary_under_load(mode: Consistency, rejoin: bool) {
    let (mut app, mut ha) = TestApp::spawn_with_ha_shard(HA).await;
    app.start_worker(None);
    let requests = Arc::new(orders_around_the_ha_shard(&app).await);
    let app = Arc::new(app);
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let request = move |n: usize| requests[n % requests.len()].clone().in_mode(mode);
    let running = tokio::spawn(run_load(
        app.clone(),
        IN_FLIGHT,
        Arc::new(request),
        stop.clone(),
        began,
    ));

    tokio::time::sleep(Duration::from_secs(4)).await;
    let first = ha.primary().await;
    ha.shard
        .node(first)
        .crash_postmaster()
        .expect("the primary's postmaster is killed");
    let crashed_at = began.elapsed();
    // The keeper restarts the postmaster in place, unless it tells the monitor that
    // postgres is not running before it has: then the monitor fails over at once (under load
    // it often does). Either way the orders must not notice more than a retry.
    tokio::time::sleep(Duration::from_secs(6)).await;
    ha.shard
        .wait_settled(&ha.monitor, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("the formation settles after the crash: {e:#}"));
    let after_crash = if ha.primary().await == first {
        "restarted in place"
    } else {
        "failed over"
    };

    let lost_at = began.elapsed();
    let (lost, promoted) = ha.lose_primary().await;
    let promoted_at = began.elapsed();
    tokio::time::sleep(Duration::from_secs(8)).await;
    if rejoin {
        ha.shard
            .node_mut(lost)
            .rejoin()
            .expect("the old primary's keeper starts again");
        ha.shard
            .wait_settled(&ha.monitor, Duration::from_secs(90))
            .await
            .unwrap_or_else(|e| panic!("the old primary rejoins: {e:#}"));
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let records = running.await.expect("the load ends");

    // Every order ended, placed or refused for a business reason, none stuck.
    let business = ["OutOfStock", "PaymentDeclined"];
    let placed: Vec<_> = records
        .iter()
        .filter_map(|r| match &r.outcome {
            OrderOutcome::Placed(order) => Some(order.clone()),
            _ => None,
        })
        .collect();
    for record in &records {
        assert!(
            matches!(&record.outcome, OrderOutcome::Placed(_))
                || matches!(&record.outcome, OrderOutcome::Failed { failure_type, .. } if business.contains(&failure_type.as_str())),
            "every order is placed or refused for a business reason: {:?}",
            record.outcome
        );
    }
    let touched_after = records
        .iter()
        .filter(|r| touches_ha(&app, &r.request) && r.started > promoted_at)
        .filter(|r| matches!(r.outcome, OrderOutcome::Placed(_)))
        .map(|r| r.ended - promoted_at)
        .min();
    eprintln!(
        "{mode:?}: {} orders ({} touching shard {HA}), {} placed; postmaster crashed at {:.1}s ({after_crash}), node lost at {:.1}s, standby promoted {:.1}s later; first order touching the shard placed {:?} after the promotion",
        records.len(),
        records
            .iter()
            .filter(|r| touches_ha(&app, &r.request))
            .count(),
        placed.len(),
        crashed_at.as_secs_f64(),
        lost_at.as_secs_f64(),
        (promoted_at - lost_at).as_secs_f64(),
        touched_after,
    );
    assert!(
        touched_after.is_some(),
        "orders touching shard {HA} are placed again after the promotion"
    );

    // Every confirmed order exactly once on its shard; on the HA shard, read straight from
    // the promoted node.
    let new_primary = node_conn(&ha, promoted).await;
    assert!(
        !in_recovery(&new_primary).await,
        "the promoted node is primary"
    );
    let mut on_ha = BTreeSet::new();
    for order in &placed {
        let rows = app.order_rows_on_shard(order.order_id, order.shard).await;
        assert_eq!(
            rows.confirmed, 1,
            "order {} on shard {}: {rows:?}",
            order.order_id, order.shard
        );
        if order.shard == HA {
            on_ha.insert(order.order_id);
        }
    }
    let ids: Vec<String> = on_ha.iter().map(i64::to_string).collect();
    if !ids.is_empty() {
        let found = scalar_i64(
            &new_primary,
            &format!(
                "SELECT count(*) FROM orders WHERE status = 'confirmed' AND id IN ({})",
                ids.join(",")
            ),
        )
        .await;
        assert_eq!(
            found as usize,
            on_ha.len(),
            "every order confirmed on shard {HA} is on the new primary"
        );
    }
    until(
        "no prepared part is left",
        Duration::from_secs(60),
        async || {
            let left = prepared_everywhere(&app).await;
            left.is_empty().then_some(()).ok_or(format!("{left:?}"))
        },
    )
    .await;
    assert_audit_clean(&app);

    if rejoin {
        let old = node_conn(&ha, lost).await;
        assert!(
            in_recovery(&old).await,
            "the old primary came back as a standby"
        );
        let writers = scalar_i64(
            &old,
            "SELECT count(*) FROM pg_stat_activity
              WHERE backend_type = 'client backend' AND application_name = 'orders'",
        )
        .await;
        assert_eq!(
            writers, 0,
            "no write pool of the worker is on the old primary"
        );
        let replicated = scalar_i64(&old, "SELECT count(*) FROM orders").await;
        let on_primary = scalar_i64(&new_primary, "SELECT count(*) FROM orders").await;
        assert_eq!(
            replicated, on_primary,
            "the rejoined standby has the new primary's orders"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_a_primary_node_under_a_saga_load_loses_no_confirmed_order() {
    lose_the_primary_under_load(Consistency::Saga, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_a_primary_node_under_a_two_phase_load_loses_no_confirmed_order_and_it_rejoins_as_standby()
 {
    lose_the_primary_under_load(Consistency::TwoPhase, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn parts_prepared_on_a_lost_primary_are_settled_on_the_new_one_by_their_decisions() {
    let (mut app, mut ha) = TestApp::spawn_with_ha_shard(HA).await;
    // Both decisions recorded, neither applied.
    app.start_worker(Some("commit_part.before=fail,rollback_part.before=fail"));
    // Two customers, so neither order's part waits for the other's locks.
    let mut customers = Vec::new();
    while customers.len() < 2 {
        let customer = app.add_customer("Prepared Customer", "1000.00").await;
        if app.shards.for_customer(customer).index == HA {
            customers.push(customer);
        }
    }
    let (customer, other) = (customers[0], customers[1]);
    // The customer's shard comes first in shard order, so its part is prepared before the
    // other shard's refuses.
    let later = product_on(&app, 3, &[]);
    let scarce = (STOCKED_PRODUCTS.end() + 1..)
        .find(|id| app.shards.for_product(*id).index == 3)
        .expect("a product id on shard 3");
    app.add_product(scarce, 1).await;
    let committing = app
        .start_order(order(customer).item(later, 1, "4.00").two_phase())
        .await;
    let rolling_back = app
        .start_order(order(other).item(scarce, 5, "4.00").two_phase())
        .await;
    let primary = ha.primary().await;
    let old = node_conn(&ha, primary).await;
    until(
        "both orders' parts are prepared on the HA shard",
        Duration::from_secs(60),
        async || {
            let n = scalar_i64(&old, "SELECT count(*) FROM pg_prepared_xacts").await;
            (n == 2).then_some(()).ok_or(format!("{n} prepared"))
        },
    )
    .await;
    // Both decisions are recorded once phase two's failpoints are reached.
    until(
        "both decisions are recorded",
        Duration::from_secs(30),
        async || {
            let log = std::fs::read_to_string(app.worker_log()).unwrap_or_default();
            let reached = ["commit_part.before", "rollback_part.before"]
                .into_iter()
                .filter(|point| log.contains(&format!("\"{point}\"")))
                .count();
            (reached == 2)
                .then_some(())
                .ok_or(format!("{reached} of 2 failpoints reached"))
        },
    )
    .await;
    drop(old);

    let (_, promoted) = ha.lose_primary().await;
    let new_primary = node_conn(&ha, promoted).await;
    assert_eq!(
        scalar_i64(&new_primary, "SELECT count(*) FROM pg_prepared_xacts").await,
        2,
        "both prepared parts survived the promotion"
    );
    app.restart_worker(None);

    let outcome = app
        .outcome_within(&committing, Duration::from_secs(120))
        .await;
    let OrderOutcome::Placed(placed) = outcome else {
        panic!("the order whose decision was commit is placed: {outcome:?}");
    };
    expect_failure(
        &app.outcome_within(&rolling_back, Duration::from_secs(120))
            .await,
        "OutOfStock",
    );
    let rows = app.order_rows_on_shard(placed.order_id, HA).await;
    assert_eq!(rows.confirmed, 1, "committed on the new primary: {rows:?}");
    assert_eq!(
        scalar_i64(
            &new_primary,
            &format!("SELECT count(*) FROM orders WHERE customer_id = {other}")
        )
        .await,
        0,
        "the rolled-back order left nothing on the new primary"
    );
    assert_eq!(
        scalar_i64(&new_primary, "SELECT count(*) FROM pg_prepared_xacts").await,
        0
    );
    assert!(prepared_everywhere(&app).await.is_empty());
    assert_audit_clean(&app);
}

/// The value of the first sample of `metric` whose labels contain every one of `labels`.
fn sample(metrics: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn listings_read_a_standby_within_the_lag_bound_and_skip_it_once_its_replay_is_paused() {
    let (mut app, ha) = TestApp::spawn_with_ha_shard(HA).await;
    app.worker_env
        .push(("ORDERS_READ_MAX_LAG_MS", "3000".to_owned()));
    app.start_worker(None);
    let customer = loop {
        let customer = app.add_customer("Lagging Reader", "1000.00").await;
        if app.shards.for_customer(customer).index == HA {
            break customer;
        }
    };
    let product = product_on(&app, 0, &[]);
    app.place_confirmed_order(order(customer).item(product, 1, "1.00"))
        .await;
    let listed = |app: &TestApp| {
        let (status, body) = http_get(app.api_port, &format!("/customers/{customer}/orders"));
        assert_eq!(status, 200, "{body}");
        let page: serde_json::Value = serde_json::from_str(&body).expect("a JSON page");
        page["orders"].as_array().map_or(0, Vec::len)
    };
    until(
        "the first order is listed",
        Duration::from_secs(20),
        async || {
            let n = listed(&app);
            (n == 1).then_some(()).ok_or(format!("{n} listed"))
        },
    )
    .await;

    let primary = ha.primary().await;
    let standby_node = 1 - primary;
    let standby = node_conn(&ha, standby_node).await;
    standby
        .execute_unprepared("SELECT pg_wal_replay_pause()")
        .await
        .expect("replay pauses");
    let paused_at = Instant::now();
    app.place_confirmed_order(order(customer).item(product, 1, "1.00"))
        .await;
    // Within the bound, the listing may come from the standby, which has not replayed the
    // second order: the read API does read standbys. A probe that timed out on a loaded
    // machine leaves the standby undated for a moment (listings then read the primary), so
    // a few listings are taken in the first second and the fewest orders seen counts.
    let mut from_standby = usize::MAX;
    let mut within = Duration::ZERO;
    while paused_at.elapsed() < Duration::from_secs(1) && from_standby > 1 {
        from_standby = from_standby.min(listed(&app));
        within = paused_at.elapsed();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past the bound, the standby is skipped: the listing is the primary's.
    until(
        "once the standby is past the bound, listings read the primary",
        Duration::from_secs(15),
        async || {
            let n = listed(&app);
            (n == 2).then_some(()).ok_or(format!("{n} listed"))
        },
    )
    .await;
    let after = paused_at.elapsed();
    eprintln!(
        "listing {within:?} after the pause: {from_standby} order(s); both listed {after:?} after it"
    );
    if within < Duration::from_secs(2) {
        assert_eq!(
            from_standby, 1,
            "a listing within the bound reads the standby, which has not replayed the second order"
        );
    }
    // `orders get` and a fresh `orders list` (which cannot date the standby yet) read the
    // primary.
    let listed_by_cli = app.cli_ok(&["--json", "list", "--customer", &customer.to_string()]);
    let page: serde_json::Value =
        serde_json::from_slice(&listed_by_cli.stdout).expect("orders list prints JSON");
    assert_eq!(page["orders"].as_array().map_or(0, Vec::len), 2, "{page}");

    // Operators see it: `orders shards` and the metrics name each host's role and lag.
    let report = app.cli_ok(&["shards"]);
    let report = String::from_utf8_lossy(&report.stdout);
    let standby_port = ha.shard.node(standby_node).port().to_string();
    let standby_line = report
        .lines()
        .find(|line| line.contains("host") && line.contains(&standby_port))
        .unwrap_or_else(|| panic!("orders shards names the standby:\n{report}"));
    assert!(standby_line.contains("standby"), "{standby_line}");
    assert!(
        report
            .lines()
            .any(|line| line.contains("primary, 1 sync standby")),
        "{report}"
    );
    let metrics = eventually(
        "the standby's lag is served past 3 s while its replay is paused",
        Duration::from_secs(10),
        async || {
            let (_, body) = http_get(app.metrics_port, "/metrics");
            let lag = sample(&body, "orders_replication_lag_seconds", &[&standby_port])
                .filter(|lag| *lag > 3.0);
            lag.map(|_| body)
        },
    )
    .await;
    assert_eq!(
        sample(
            &metrics,
            "orders_shard_role",
            &[&standby_port, "role=\"standby\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            "orders_shard_sync_standbys",
            &[&format!("shard=\"{HA}\"")]
        ),
        Some(1.0)
    );
    standby
        .execute_unprepared("SELECT pg_wal_replay_resume()")
        .await
        .expect("replay resumes");
}
