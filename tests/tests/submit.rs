//! `orders submit` learns at once, through update-with-start, whether an order was accepted.

use orders_worker::client::OrderOutcome;

use crate::helpers::TestApp;

fn submit(app: &TestApp, args: &[&str]) -> (bool, serde_json::Value) {
    let mut full = vec!["submit", "--json"];
    full.extend_from_slice(args);
    let output = app.cli(&full);
    let printed = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "submit prints JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    (output.status.success(), printed)
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_reports_acceptance_before_the_order_completes_and_refusals_with_their_reason() {
    let app = TestApp::spawn().await;
    let customer = app
        .add_customer("Shafi Goldwasser", "100.00")
        .await
        .to_string();

    let (ok, accepted) = submit(&app, &["--customer", &customer, "--item", "7:2:19.99"]);
    assert!(ok, "{accepted}");
    assert_eq!(accepted["accepted"], true);
    let order_id = accepted["order_id"]
        .as_i64()
        .expect("an accepted order has its id");
    let workflow_id = accepted["workflow_id"].as_str().unwrap();
    let OrderOutcome::Placed(placed) = app.outcome(workflow_id).await else {
        panic!("the accepted order completes")
    };
    assert_eq!(placed.order_id, order_id);

    let (ok, invalid) = submit(&app, &["--customer", &customer, "--item", "7:1:19.999"]);
    assert!(!ok, "an invalid order exits non-zero");
    assert_eq!(invalid["accepted"], false);
    assert!(
        invalid["failure"]
            .as_str()
            .unwrap()
            .starts_with("InvalidOrder: "),
        "{invalid}"
    );

    let (ok, unknown) = submit(&app, &["--customer", "987654", "--item", "7:1:1.00"]);
    assert!(!ok);
    assert!(
        unknown["failure"]
            .as_str()
            .unwrap()
            .starts_with("UnknownCustomer: "),
        "{unknown}"
    );
    assert_eq!(
        app.rows_everywhere()
            .await
            .iter()
            .map(|r| r.orders)
            .sum::<i64>(),
        1,
        "only the accepted order exists"
    );
}
