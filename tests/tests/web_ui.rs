//! The Temporal Web UI, seen through a real browser (Debian's headless Chromium): a user can
//! find a PlaceOrder run by its search attributes and read its type, status and attributes.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helpers::{BuildOrder, TestApp, order, services};

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(
        path.is_file(),
        "Chromium is not installed at {}: apt-get install chromium (or set CHROMIUM)",
        path.display()
    );
    path
}

/// Loads `url` in a fresh headless browser, lets the page's scripts settle, and returns the
/// DOM, or writes a screenshot to `screenshot` instead.
fn browse(url: &str, screenshot: Option<&Path>) -> String {
    let profile = tempdir();
    let mut command = Command::new(chromium());
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=20000",
        "--window-size=1400,1000",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    match screenshot {
        Some(path) => command.arg(format!("--screenshot={}", path.display())),
        None => command.arg("--dump-dom"),
    };
    let output = command.arg(url).output().expect("chromium runs");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn tempdir() -> PathBuf {
    let dir = services()
        .root
        .join(format!("chromium-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Visible text of an HTML document, roughly: tags dropped, whitespace squeezed.
fn text_of(html: &str) -> String {
    let mut text = String::with_capacity(html.len() / 4);
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_web_ui_finds_a_place_order_run_and_shows_its_type_status_and_search_attributes() {
    let app = TestApp::spawn().await;
    let customer = app.add_customer("Margaret Hamilton", "100.00").await;
    let (workflow_id, placed) = app
        .place_confirmed_order(order(customer).item(8, 2, "4.25"))
        .await;
    let ui = services()
        .temporal
        .ui_url()
        .expect("the test server runs its Web UI");

    // Find the run through the UI's own search, by customer.
    let list_url = format!(
        "{ui}/namespaces/{}/workflows?query=CustomerId%3D{customer}",
        app.namespace
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut list_dom = String::new();
    let link_prefix = format!("/namespaces/{}/workflows/{workflow_id}/", app.namespace);
    while !list_dom.contains(&link_prefix) {
        assert!(
            std::time::Instant::now() < deadline,
            "the UI never listed {workflow_id} for CustomerId={customer}"
        );
        list_dom = tokio::task::spawn_blocking({
            let url = list_url.clone();
            move || browse(&url, None)
        })
        .await
        .unwrap();
    }
    let run_id: String = list_dom
        .split(&link_prefix)
        .nth(1)
        .unwrap()
        .chars()
        .take_while(|c| *c != '/')
        .collect();

    let page = format!(
        "{ui}/namespaces/{}/workflows/{workflow_id}/{run_id}/search-attributes",
        app.namespace
    );
    let dom = tokio::task::spawn_blocking({
        let page = page.clone();
        move || browse(&page, None)
    })
    .await
    .unwrap();
    let text = text_of(&dom);
    assert!(text.contains("PlaceOrder"), "workflow type shown: {page}");
    assert!(
        text.to_lowercase().contains("completed"),
        "status shown: {page}"
    );
    for shown in [
        format!("\"CustomerId\" : {customer}"),
        "\"OrderStatus\" : \"confirmed\"".to_owned(),
        format!("\"Shard\" : {}", placed.shard),
        "\"Consistency\" : \"saga\"".to_owned(),
    ] {
        assert!(text.contains(&shown), "{shown} is shown on {page}");
    }

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("web-ui-place-order.png");
    tokio::task::spawn_blocking({
        let screenshot = screenshot.clone();
        move || browse(&page, Some(&screenshot))
    })
    .await
    .unwrap();
    let size = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot saved at {} ({size} bytes)",
        screenshot.display()
    );
}
