//! The dashboards and alerts in `deploy/` are valid, and name only metrics a worker serves:
//! `promtool` checks the rules and the Prometheus config, and every metric an alert or a
//! dashboard panel names appears in a live scrape of a worker that placed orders of both
//! modes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use orders_core::Consistency;

use crate::helpers::{BuildOrder, TestApp, http_get, order};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn promtool(args: &[&str], file: &Path) {
    let output = Command::new("promtool")
        .args(args)
        .arg(file)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is not installed ({e}): apt-get install prometheus (scripts/test.sh does)"
            )
        });
    assert!(
        output.status.success(),
        "promtool {args:?} {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_the_alert_rules_and_the_prometheus_config() {
    promtool(&["check", "rules"], &deploy("prometheus/alerts.yml"));
    promtool(&["check", "config"], &deploy("prometheus/prometheus.yml"));
}

/// Every `orders_*` and `temporal_*` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word && (rest.starts_with("orders_") || rest.starts_with("temporal_")) {
            let len = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..len].to_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

/// The expressions of the alert rules and of every dashboard panel.
fn referenced_metrics() -> BTreeSet<String> {
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let expressions: String = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr:"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = metric_names(&expressions);
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/dashboards/orders.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            names.extend(metric_names(target["expr"].as_str().expect("an expr")));
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_alerts_and_dashboard_name_is_served_by_a_worker_that_placed_orders() {
    let referenced = referenced_metrics();
    assert!(
        referenced.len() >= 10,
        "the rules and panels name metrics: {referenced:?}"
    );
    let app = TestApp::spawn().await;
    let customer = app.add_customer("Margaret Hamilton", "500.00").await;
    for consistency in [Consistency::Saga, Consistency::TwoPhase] {
        app.place_confirmed_order(order(customer).item(8, 1, "5.00").in_mode(consistency))
            .await;
    }
    // A read through the order cache, for the hit-ratio panel.
    http_get(app.api_port, "/orders/1");
    // Shard samples are taken every two seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    let missing = loop {
        let (status, body) = http_get(app.metrics_port, "/metrics");
        assert_eq!(status, 200, "{body}");
        let served: BTreeSet<&str> = body
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split(['{', ' ']).next())
            .collect();
        let missing: Vec<&String> = referenced
            .iter()
            .filter(|name| !served.contains(name.as_str()))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        missing.is_empty(),
        "named by an alert or panel but not served: {missing:?}"
    );
}
