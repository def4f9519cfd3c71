//! The worker's Prometheus endpoint serves the SDK's metrics and ours.

use std::time::{Duration, Instant};

use orders_worker::client::OrderOutcome;

use crate::helpers::{BuildOrder, TestApp, http_get, order};

pub(crate) fn scrape(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the first sample whose line starts with `name` and contains every label.
pub(crate) fn sample(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_serves_order_outcomes_shard_timings_pool_use_and_sdk_metrics() {
    let app = TestApp::spawn().await;
    let rich = app.add_customer("Hedy Lamarr", "100.00").await;
    let poor = app.add_customer("Ada Byron", "1.00").await;
    assert!(matches!(
        app.place_order(order(rich).item(4, 1, "3.00")).await,
        OrderOutcome::Placed(_)
    ));
    assert!(matches!(
        app.place_order(order(poor).item(4, 1, "3.00")).await,
        OrderOutcome::Failed { .. }
    ));
    assert!(matches!(
        app.place_order(order(rich)).await,
        OrderOutcome::Failed { .. }
    ));

    // Pool gauges are sampled every two seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = scrape(app.metrics_port);
        if sample(&body, "orders_shard_pool_connections", &["state=\"idle\""]).is_some()
            || Instant::now() > deadline
        {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    assert_eq!(sample(&body, "orders_placed", &[]), Some(1.0), "{body}");
    assert_eq!(
        sample(&body, "orders_failed", &["reason=\"PaymentDeclined\""]),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "orders_failed", &["reason=\"InvalidOrder\""]),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "orders_compensated", &[]),
        Some(1.0),
        "the declined order was compensated: {body}"
    );
    assert!(
        sample(
            &body,
            "orders_shard_call_duration_count",
            &["activity=\"CreateOrder\"", "shard=\""]
        )
        .is_some_and(|n| n >= 1.0),
        "{body}"
    );
    assert!(
        sample(&body, "orders_shard_pool_connections", &["state=\"idle\""]).is_some(),
        "{body}"
    );
    assert!(
        sample(
            &body,
            "temporal_workflow_completed",
            &["workflow_type=\"PlaceOrder\""]
        )
        .is_some_and(|n| n >= 1.0),
        "the SDK's own metrics are served too: {body}"
    );
}
