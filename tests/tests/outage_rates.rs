//! Chaos with a database fault: during a load of both modes, one shard crashes
//! (`pg_ctl stop -m immediate`) for 20 s and starts again. Orders that touch only the other
//! shards keep at least 0.7× their pace and none waits more than 10 s; orders that touch it
//! complete once it is back (or fail for a business reason); nothing is lost or duplicated,
//! nothing stays prepared, and `orders audit` is clean.
//!
//! It measures rates, so `scripts/test.sh` runs this module alone, after the rest of the
//! suite, where no other test shares the machine's two cores with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use orders_core::{Consistency, OrderRequest};
use orders_worker::client::OrderOutcome;

use crate::consistency::{assert_audit_clean, prepared_everywhere};
use crate::helpers::{
    BuildOrder, LoadRecord as Record, STOCKED_PRODUCTS, TestApp, order, run_load,
};

/// The shard that crashes.
const DOWN: usize = 2;
/// Orders in flight per stream.
const IN_FLIGHT: usize = 6;
const WARM_UP: Duration = Duration::from_secs(5);
/// The window before the crash whose pace is the baseline.
const BEFORE: Duration = Duration::from_secs(20);
const OUTAGE: Duration = Duration::from_secs(20);
const AFTER: Duration = Duration::from_secs(10);

/// Places `requests` in turn (alternating saga and two-phase), `IN_FLIGHT` at a time, until
/// `stop`; records each order.
async fn stream(
    app: Arc<TestApp>,
    requests: Arc<Vec<OrderRequest>>,
    stop: Arc<AtomicBool>,
    began: Instant,
) -> Vec<Record> {
    let request = move |n: usize| {
        let mode = if n.is_multiple_of(2) {
            Consistency::Saga
        } else {
            Consistency::TwoPhase
        };
        requests[n % requests.len()].clone().in_mode(mode)
    };
    run_load(app, IN_FLIGHT, Arc::new(request), stop, began).await
}

/// Orders ended within `[from, from + length)`, per second.
fn pace(records: &[Record], from: Duration, length: Duration) -> f64 {
    let ended = records
        .iter()
        .filter(|r| r.ended >= from && r.ended < from + length)
        .count();
    ended as f64 / length.as_secs_f64()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_shard_costs_only_the_orders_that_touch_it() {
    let (mut app, mut own) = TestApp::spawn_with_own_cluster_for(DOWN).await;
    app.start_worker(None);
    let healthy: Vec<i64> = STOCKED_PRODUCTS
        .filter(|p| app.shards.for_product(*p).index != DOWN)
        .collect();
    let on_down: Vec<i64> = STOCKED_PRODUCTS
        .filter(|p| app.shards.for_product(*p).index == DOWN)
        .collect();
    let (mut off, mut on) = (Vec::new(), Vec::new());
    while off.len() < 6 || on.len() < 3 {
        let customer = app.add_customer("Load Customer", "1000000.00").await;
        if app.shards.for_customer(customer).index == DOWN {
            on.push(customer);
        } else {
            off.push(customer);
        }
    }
    // Untouched: customers and products off the crashing shard, two products each (often
    // on two shards). Touched: a customer on it, or one of its products.
    let untouched: Vec<OrderRequest> = (0..12)
        .map(|i| {
            order(off[i % off.len()])
                .item(healthy[i % healthy.len()], 1, "1.00")
                .item(healthy[(i + 5) % healthy.len()], 1, "2.00")
        })
        .collect();
    let touched: Vec<OrderRequest> = (0..12)
        .map(|i| {
            if i % 2 == 0 {
                order(on[i % on.len()]).item(healthy[i % healthy.len()], 1, "1.00")
            } else {
                order(off[i % off.len()])
                    .item(healthy[i % healthy.len()], 1, "1.00")
                    .item(on_down[i % on_down.len()], 1, "2.00")
            }
        })
        .collect();

    let app = Arc::new(app);
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let untouched_load = tokio::spawn(stream(
        app.clone(),
        Arc::new(untouched),
        stop.clone(),
        began,
    ));
    let touched_load = tokio::spawn(stream(app.clone(), Arc::new(touched), stop.clone(), began));
    tokio::time::sleep(WARM_UP + BEFORE).await;
    let crashed_at = began.elapsed();
    own.crash().await;
    tokio::time::sleep(OUTAGE).await;
    own.restart().await;
    let restarted_at = began.elapsed();
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);
    let untouched = untouched_load.await.unwrap();
    let touched = touched_load.await.unwrap();

    let before = pace(&untouched, WARM_UP, BEFORE);
    let during = pace(&untouched, crashed_at, restarted_at - crashed_at);
    let mut waits: Vec<f64> = untouched
        .iter()
        .filter(|r| r.started + Duration::from_secs(10) >= crashed_at && r.started < restarted_at)
        .map(|r| (r.ended - r.started).as_secs_f64())
        .collect();
    waits.sort_by(f64::total_cmp);
    let p99 = waits[(waits.len() * 99 / 100).min(waits.len() - 1)];
    let longest = waits.last().copied().unwrap_or_default();
    let placed = |records: &[Record]| {
        records
            .iter()
            .filter(|r| matches!(r.outcome, OrderOutcome::Placed(_)))
            .count()
    };
    let business = ["OutOfStock", "PaymentDeclined"];
    let failed: Vec<&OrderOutcome> = touched
        .iter()
        .chain(&untouched)
        .map(|r| &r.outcome)
        .filter(|o| !matches!(o, OrderOutcome::Placed(_)))
        .collect();
    eprintln!(
        "shard {DOWN} crashed for {:.0} s: untouched orders {before:.2}/s before, {during:.2}/s during ({:.2}x), wait p99 {p99:.2} s, longest {longest:.2} s; touched orders placed {} of {}, untouched placed {} of {}; other outcomes: {failed:?}",
        (restarted_at - crashed_at).as_secs_f64(),
        during / before,
        placed(&touched),
        touched.len(),
        placed(&untouched),
        untouched.len(),
    );
    assert!(
        during >= 0.7 * before,
        "untouched orders kept {during:.2}/s of {before:.2}/s"
    );
    for slow in untouched
        .iter()
        .filter(|r| r.ended - r.started > Duration::from_secs(5))
    {
        eprintln!(
            "untouched order waited {:.2} s, from {:.2} s after the crash: {:?} {:?}",
            (slow.ended - slow.started).as_secs_f64(),
            slow.started.as_secs_f64() - crashed_at.as_secs_f64(),
            slow.request,
            slow.outcome,
        );
    }
    assert!(longest <= 10.0, "an untouched order waited {longest:.2} s");
    for outcome in &failed {
        assert!(
            matches!(outcome, OrderOutcome::Failed { failure_type, .. } if business.contains(&failure_type.as_str())),
            "every order is placed or refused for a business reason: {outcome:?}"
        );
    }

    // Nothing lost or duplicated: each placed order once, on its owner, and no other order.
    let mut placed_ids = Vec::new();
    for record in untouched.iter().chain(&touched) {
        if let OrderOutcome::Placed(order) = &record.outcome {
            let rows = app.order_rows_on_shard(order.order_id, order.shard).await;
            assert_eq!(
                rows.confirmed, 1,
                "order {} on shard {}",
                order.order_id, order.shard
            );
            placed_ids.push(order.order_id);
        }
    }
    let stored: i64 = app.rows_everywhere().await.iter().map(|r| r.orders).sum();
    assert_eq!(
        stored,
        placed_ids.len() as i64,
        "no order stored but the placed ones"
    );
    assert!(prepared_everywhere(&app).await.is_empty());
    assert_audit_clean(&app);
}
