//! Recorded histories replay against today's workflow code, and the check really bites.
//! These tests need no running services: replay is pure.

use std::path::{Path, PathBuf};
use std::process::Command;

use orders_activities::{CreditInput, OrderActivities, PlacedOrder};
use orders_core::FailureType;
use orders_core::ValidOrder;
use orders_worker::cli::maintenance::replay::{history_files, replay_files, worker_workflows};
use orders_workflows::steps::forward_options;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::workflow_replayer::WorkflowReplayerOptions;
use temporalio_sdk::{WorkflowContext, WorkflowResult};

use crate::helpers::orders_binary;

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_recorded_history_replays_against_the_current_workflows() {
    let files = history_files(&[tests_dir().join("histories")]).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "confirmed.json",
        "confirmed_with_order_memo.json",
        "payment_declined_compensated.json",
        "cancelled_compensated.json",
        "invalid_order.json",
        "unknown_customer.json",
        "three_imported_one_rejected.json",
        "confirmed_with_stock.json",
        "declined_stock_released.json",
        "two_phase_confirmed.json",
        "two_phase_out_of_stock_rolled_back.json",
        "cancelled_stock_returned.json",
        "one_task_saga_confirmed.json",
        "one_task_two_phase_confirmed.json",
        "one_task_payment_declined_compensated.json",
        "steps_remote_saga_confirmed.json",
        "two_phase_replanned_after_move.json",
        "lean_saga_confirmed.json",
        "lean_saga_payment_declined_compensated.json",
        "lazy_lifecycle_saga_confirmed.json",
        "lazy_lifecycle_two_phase_confirmed.json",
        "lazy_lifecycle_payment_declined_compensated.json",
        "started_by_update_shipped.json",
        "started_by_update_cancelled_two_phase.json",
        "grouped_two_phase_confirmed.json",
        "grouped_saga_confirmed.json",
        "grouped_payment_declined_compensated.json",
        "steps_remote_two_phase_confirmed.json",
        "steps_remote_two_phase_out_of_stock_rolled_back.json",
        "steps_remote_two_phase_payment_declined_rolled_back.json",
        "two_phase_local_steps_confirmed.json",
        "two_phase_local_steps_out_of_stock_rolled_back.json",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "tests/histories lacks {expected}: {names:?}"
        );
    }

    let results = replay_files(&files, worker_workflows().unwrap())
        .await
        .unwrap();

    let failures: Vec<String> = results
        .iter()
        .filter_map(|r| {
            r.failure
                .as_ref()
                .map(|f| format!("{}: {f}", r.path.display()))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "histories that no longer replay:\n{}",
        failures.join("\n")
    );
}

/// PlaceOrder as someone might "improve" it: reserving credit before creating the order.
#[workflow]
#[derive(Default)]
struct CreditFirstPlaceOrder;

#[workflow_methods]
impl CreditFirstPlaceOrder {
    #[run(name = "PlaceOrder")]
    async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: serde_json::Value,
    ) -> WorkflowResult<PlacedOrder> {
        let order = ValidOrder::from_json(&input)
            .map_err(|e| FailureType::InvalidOrder.failure(e.to_string()))?;
        let credit = CreditInput {
            order_id: 0,
            customer_id: order.customer_id,
            amount: order.total(),
        };
        ctx.execute_activity(OrderActivities::reserve_credit, credit, forward_options())
            .await?;
        Err(FailureType::StepFailed
            .failure("replay stops before this")
            .into())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reordered_copy_of_place_order_fails_replay_with_nondeterminism_at_a_named_event() {
    let files = [tests_dir().join("histories/place_order/confirmed.json")];
    let changed = WorkflowReplayerOptions::new()
        .register_workflow::<CreditFirstPlaceOrder>()
        .unwrap()
        .build();

    let results = replay_files(&files, changed).await.unwrap();

    let failure = results[0]
        .failure
        .as_ref()
        .expect("the changed workflow must not replay");
    assert!(failure.nondeterministic, "{failure}");
    assert!(failure.message.contains("Nondeterminism"), "{failure}");
    let (event_id, _) = failure
        .event
        .as_ref()
        .expect("the diverging event is located");
    assert!(*event_id > 1, "{failure}");
}

#[test]
fn the_replay_command_names_the_history_and_event_and_exits_non_zero() {
    let fixture = tests_dir().join("fixtures/nondeterministic");
    let output = Command::new(orders_binary())
        .args(["replay"])
        .arg(&fixture)
        .arg(tests_dir().join("histories"))
        .env("ORDERS_LOG", "error")
        .output()
        .expect("orders replay runs");

    assert!(
        !output.status.success(),
        "a nondeterministic history must fail the command"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("FAIL  ")
            && stdout
                .contains("confirmed_with_charge_card.json: event 14 (ACTIVITY_TASK_SCHEDULED)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("'ChargeCard'"),
        "the reason is shown: {stdout}"
    );
    assert_eq!(
        stdout.matches("ok    ").count(),
        history_files(&[tests_dir().join("histories")])
            .unwrap()
            .len(),
        "the recorded histories still pass: {stdout}"
    );
}
