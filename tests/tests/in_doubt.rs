//! Two-phase orders under crashes: a worker killed between PREPARE and COMMIT, activities
//! that run twice, and in-doubt transactions resolved by `orders recover` and by the
//! periodic recovery workflow.

use std::time::{Duration, Instant};

use orders_core::Consistency;
use orders_core::store::two_phase::{Gid, GidParts};
use orders_core::store::{idempotency, two_phase};
use orders_operations::recovery::{DECISION_MEMO, Decision};
use orders_worker::client::OrderOutcome;
use orders_workflows::PlaceOrderWorkflow;
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, TransactionTrait};
use temporalio_client::WorkflowTerminateOptions;

use crate::consistency::{
    assert_audit_clean, prepared_everywhere, three_shard_order, three_shard_order_avoiding,
};
use crate::helpers::{TestApp, expect_failure, until};

/// The gids of `workflow_id` that are prepared on some shard.
async fn prepared_of(app: &TestApp, workflow_id: &str) -> Vec<String> {
    prepared_everywhere(app)
        .await
        .into_iter()
        .filter(|gid| {
            gid.parse::<Gid>()
                .is_ok_and(|gid| gid.parts().workflow_id == workflow_id)
        })
        .collect()
}

/// The gid the workflow `workflow_id` (first run `run_id`) gives its part on `shard`.
fn gid(workflow_id: &str, run_id: &str, shard: usize, home_shard: usize) -> Gid {
    GidParts {
        workflow_id: workflow_id.to_owned(),
        run_id: run_id.to_owned(),
        shard,
        home_shard,
        round: two_phase::FIRST_ROUND,
    }
    .gid()
    .expect("short enough")
}

/// Leaves an empty prepared transaction under someone else's `gid` on `shard`.
async fn prepare_foreign(app: &TestApp, shard: usize, gid: &str) {
    app.shards
        .get(shard)
        .conn
        .execute_unprepared(&format!("BEGIN; PREPARE TRANSACTION '{gid}'"))
        .await
        .expect("it prepares");
}

pub(crate) async fn terminate(app: &TestApp, workflow_id: &str) {
    app.client
        .get_workflow_handle::<PlaceOrderWorkflow>(workflow_id)
        .terminate(WorkflowTerminateOptions::builder().reason("test").build())
        .await
        .expect("the workflow can be terminated");
}

/// Leaves an empty prepared transaction under `gid` on `shard`.
pub(crate) async fn prepare_stray(app: &TestApp, shard: usize, gid: &Gid) {
    let shard = app.shards.get(shard);
    let txn = shard.conn.begin().await.expect("a transaction starts");
    two_phase::prepare(txn, gid).await.expect("it prepares");
}

/// Waits until `workflow_id`'s two-phase decision, commit, is in its memo (so in its history,
/// where `orders recover` reads it). A local step's decision gets there when the workflow
/// task completes or heartbeats; the failure says what the workflow was doing instead.
pub(crate) async fn wait_for_commit_decision(app: &TestApp, workflow_id: &str) {
    let what = format!("{workflow_id} records its commit decision");
    until(&what, Duration::from_secs(60), async || {
        let described = app
            .client
            .get_workflow_handle::<PlaceOrderWorkflow>(workflow_id)
            .describe(temporalio_client::WorkflowDescribeOptions::default())
            .await
            .map_err(|e| format!("describe failed: {e}"))?;
        let decision: Option<Decision> = described
            .memo()
            .get(DECISION_MEMO)
            .expect("the decision memo is readable");
        if decision == Some(Decision::Commit) {
            return Ok(());
        }
        let raw = described.raw();
        Err(format!(
            "decision {decision:?}, status {:?}, {} history events, pending workflow task {:?}",
            described.status(),
            raw.workflow_execution_info
                .as_ref()
                .map_or(0, |info| info.history_length),
            raw.pending_workflow_task
        ))
    })
    .await
}

fn recover(app: &TestApp, grace: &str) -> serde_json::Value {
    let out = app.cli_ok(&["recover", "--grace", grace, "--json"]);
    serde_json::from_slice(&out.stdout).expect("orders recover --json prints JSON")
}

fn actions_for(report: &serde_json::Value, workflow_id: &str) -> Vec<String> {
    report["resolutions"]
        .as_array()
        .expect("resolutions")
        .iter()
        .filter(|r| r["workflow_id"] == workflow_id)
        .map(|r| r["action"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_between_prepare_and_commit_hides_the_order_until_a_new_worker_commits_it()
{
    let mut app = TestApp::spawn_without_worker().await;
    app.start_worker(Some("commit_part.before"));
    let customer = app.add_customer("Jim Gray", "100.00").await;
    let (input, products) = three_shard_order(&app, customer, Consistency::TwoPhase);
    let workflow_id = app.start_order(input).await;
    assert!(
        app.worker_exits_within(Duration::from_secs(60)),
        "the worker should die at commit_part.before; log: {}",
        app.worker_log().display()
    );

    let prepared = prepared_of(&app, &workflow_id).await;
    assert_eq!(
        prepared.len(),
        3,
        "customer shard + two product shards: {prepared:?}"
    );
    let home = app.shards.for_customer(customer).index;
    assert_eq!(
        app.rows_on_shard(home).await.orders,
        0,
        "readers never see a prepared order"
    );
    assert_eq!(app.stock(products[0]).await.reserved, 0, "nor its stock");
    assert_eq!(
        app.credit_used(customer).await,
        Decimal::ZERO,
        "nor its credit"
    );
    let audit = app.cli(&["audit", "--grace", "0"]);
    assert!(
        !audit.status.success(),
        "a prepared transaction in doubt is a violation"
    );
    assert!(String::from_utf8_lossy(&audit.stdout).contains("orders recover"));

    app.start_worker(None);
    let OrderOutcome::Placed(placed) = app.outcome(&workflow_id).await else {
        panic!("the decision was commit; a new worker carries it out")
    };
    assert_eq!(app.stock(products[0]).await.reserved, 2);
    assert_eq!(app.stock(products[1]).await.reserved, 1);
    assert_eq!(app.credit_used(customer).await, placed.total_amount);
    assert!(prepared_of(&app, &workflow_id).await.is_empty());
    assert_audit_clean(&app);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prepare_or_a_stock_reservation_that_runs_twice_takes_effect_once() {
    let mut app = TestApp::spawn_without_worker().await;
    let customer = app.add_customer("Leslie Lamport", "500.00").await;
    // The worker dies right after a part is PREPAREd, before Temporal hears of it (two-phase),
    // then right after ReserveStock commits (saga). Each time the retry finds the work done.
    for (failpoint, consistency) in [
        ("prepare_part.after_prepare", Consistency::TwoPhase),
        ("reserve_stock.after_commit", Consistency::Saga),
    ] {
        app.start_worker(Some(failpoint));
        let (input, products) = three_shard_order(&app, customer, consistency);
        let before = [app.stock(products[0]).await, app.stock(products[1]).await];
        let used_before = app.credit_used(customer).await;
        let workflow_id = app.start_order(input).await;
        assert!(
            app.worker_exits_within(Duration::from_secs(60)),
            "the worker should die at {failpoint}"
        );
        app.start_worker(None);
        let OrderOutcome::Placed(placed) = app
            .outcome_within(&workflow_id, Duration::from_secs(90))
            .await
        else {
            panic!("{consistency}: the order completes after the restart")
        };
        assert_eq!(
            app.stock(products[0]).await.reserved - before[0].reserved,
            2,
            "{consistency}: stock held once"
        );
        assert_eq!(
            app.stock(products[1]).await.reserved - before[1].reserved,
            1
        );
        assert_eq!(
            app.credit_used(customer).await - used_before,
            placed.total_amount,
            "{consistency}: credit held once"
        );
        app.kill_worker();
    }
    let home = app.shards.for_customer(customer).index;
    assert_eq!(
        app.rows_on_shard(home).await.orders,
        2,
        "one order per workflow"
    );
    assert!(prepared_everywhere(&app).await.is_empty());
    assert_audit_clean(&app);
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_recover_commits_decided_parts_rolls_back_undecided_ones_and_leaves_foreign_ones() {
    let mut app = TestApp::spawn_without_worker().await;
    let customer = app.add_customer("Michael Stonebraker", "500.00").await;

    // Decided commit (the decision is in the history), then the worker died before committing
    // and the workflow was terminated. The steps run inside the workflow task, so the
    // decision reaches the history with the task's heartbeat while the commit is held up.
    app.start_worker(Some("commit_part.before=sleep:30000"));
    let (input, committed_products) = three_shard_order(&app, customer, Consistency::TwoPhase);
    let decided = app.start_order(input).await;
    wait_for_commit_decision(&app, &decided).await;
    app.kill_worker();
    terminate(&app, &decided).await;

    // Prepared but undecided: the worker died right after a PREPARE. (Another customer and
    // other products: the first order's prepared parts hold their rows locked.)
    app.start_worker(Some("prepare_part.after_prepare"));
    let other = app.add_customer("Pat Helland", "500.00").await;
    let (input, undecided_products) =
        three_shard_order_avoiding(&app, other, Consistency::TwoPhase, &committed_products);
    let undecided = app.start_order(input).await;
    assert!(app.worker_exits_within(Duration::from_secs(60)));
    assert!(!prepared_of(&app, &undecided).await.is_empty());

    // Ours but of a run Temporal never heard of, and someone else's.
    let orphan = gid(
        "no-such-order",
        "00000000-0000-0000-0000-000000000000",
        0,
        0,
    );
    prepare_stray(&app, 0, &orphan).await;
    let foreign = format!("foreign-{}", uuid::Uuid::new_v4().simple());
    // One Temporal no longer knows, whose home part (shard 0) committed: the decision was
    // commit, so its part on shard 1 must commit too.
    let ghost_run = "00000000-0000-0000-0000-00000000000a";
    let ghost = gid("ghost-order", ghost_run, 1, 0);
    prepare_stray(&app, 1, &ghost).await;
    // And one whose home part (shard 1) never committed: everything of it rolls back.
    let stray_run = "00000000-0000-0000-0000-00000000000b";
    for shard in [0, 1] {
        let stray = gid("stray-order", stray_run, shard, 1);
        prepare_stray(&app, shard, &stray).await;
    }
    let home = app.shards.get(0);
    let txn = home.conn.begin().await.unwrap();
    let home_key = two_phase::part_key("ghost-order", ghost_run, 0, two_phase::FIRST_ROUND);
    idempotency::claim(&txn, &home_key).await.unwrap();
    idempotency::record_result(&txn, &home_key, &serde_json::json!({}))
        .await
        .unwrap();
    txn.commit().await.unwrap();
    prepare_foreign(&app, 0, &foreign).await;

    // While the undecided workflow runs, its parts are its own business.
    let report = recover(&app, "300");
    assert!(
        actions_for(&report, &decided)
            .iter()
            .all(|a| a == "committed")
            && actions_for(&report, &decided).len() == 3,
        "{report:#}"
    );
    assert!(
        actions_for(&report, &undecided).iter().all(|a| a == "left"),
        "{report:#}"
    );
    assert_eq!(
        actions_for(&report, "no-such-order"),
        ["left"],
        "within the grace period"
    );
    assert!(report["foreign"].as_u64().unwrap() >= 1);

    terminate(&app, &undecided).await;
    let report = recover(&app, "0");
    assert!(
        !actions_for(&report, &undecided).is_empty()
            && actions_for(&report, &undecided)
                .iter()
                .all(|a| a == "rolled_back"),
        "{report:#}"
    );
    assert_eq!(actions_for(&report, "no-such-order"), ["rolled_back"]);
    assert_eq!(
        actions_for(&report, "ghost-order"),
        ["committed"],
        "the home part's commit record decides: {report:#}"
    );
    assert_eq!(
        actions_for(&report, "stray-order"),
        ["rolled_back", "rolled_back"],
        "home part first, then the rest: {report:#}"
    );

    assert_eq!(
        app.stock(committed_products[0]).await.reserved,
        2,
        "the decided order committed"
    );
    assert_eq!(
        app.stock(undecided_products[0]).await.reserved,
        0,
        "the undecided one did not"
    );
    assert_eq!(app.stock(undecided_products[1]).await.reserved, 0);
    assert_eq!(app.credit_used(other).await, Decimal::ZERO);
    let remaining = prepared_everywhere(&app).await;
    assert!(
        remaining.is_empty(),
        "only foreign ones are left: {remaining:?}"
    );
    let shard = app.shards.get(0);
    assert_eq!(
        two_phase::foreign_count(&shard.conn).await.unwrap(),
        1,
        "foreign gid untouched"
    );
    shard
        .conn
        .execute_unprepared(&format!("ROLLBACK PREPARED '{foreign}'"))
        .await
        .unwrap();
    assert_audit_clean(&app);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_periodic_recovery_workflow_resolves_an_orphan_without_anyone_running_recover() {
    let mut app = TestApp::spawn_without_worker().await;
    app.worker_env = vec![
        ("ORDERS_RECOVERY_EVERY_SECS", "1".to_owned()),
        ("ORDERS_RECOVERY_GRACE_SECS", "0".to_owned()),
    ];
    app.start_worker(None);
    let orphan = gid("gone-order", "00000000-0000-0000-0000-000000000001", 0, 0);
    prepare_stray(&app, 0, &orphan).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while two_phase::is_prepared(&app.shards.get(0).conn, &orphan)
        .await
        .unwrap()
    {
        assert!(
            Instant::now() < deadline,
            "InDoubtRecovery did not roll back {orphan}; worker log: {}",
            app.worker_log().display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A home part rolled back by hand (or by a recovery that could not ask the workflow) while
/// the commit was held up: no part committed, so the order rolls its other parts back too
/// and fails with `TwoPhaseIncomplete`, naming the home part, with nothing left prepared.
#[tokio::test(flavor = "multi_thread")]
async fn a_home_part_rolled_back_behind_the_workflow_rolls_the_order_back() {
    let mut app = TestApp::spawn_without_worker().await;
    app.start_worker(Some("commit_part.before=sleep:3000"));
    let customer = app.add_customer("Jim Gray", "500.00").await;
    let (input, products) = three_shard_order(&app, customer, Consistency::TwoPhase);
    let workflow_id = app.start_order(input).await;
    let home = app.shards.for_customer(customer).index;
    // All three parts prepared, the commit held up.
    let home_part = crate::helpers::eventually(
        "the order's three parts prepared",
        Duration::from_secs(20),
        async || {
            let prepared = prepared_of(&app, &workflow_id).await;
            if prepared.len() < 3 {
                return None;
            }
            prepared
                .into_iter()
                .find(|gid| gid.parse::<Gid>().is_ok_and(|g| g.parts().shard == home))
        },
    )
    .await;
    app.shards
        .get(home)
        .conn
        .execute_unprepared(&format!("ROLLBACK PREPARED '{home_part}'"))
        .await
        .expect("the home part rolls back");

    let message = expect_failure(&app.outcome(&workflow_id).await, "TwoPhaseIncomplete");
    assert!(
        message.contains("its home part could not commit")
            && message.contains("PreparedPartMissing"),
        "{message}"
    );
    assert!(
        prepared_of(&app, &workflow_id).await.is_empty(),
        "nothing left prepared"
    );
    assert_eq!(app.rows_on_shard(home).await.orders, 0, "no order");
    assert_eq!(app.stock(products[0]).await.reserved, 0);
    assert_eq!(app.stock(products[1]).await.reserved, 0);
    assert_eq!(app.credit_used(customer).await, Decimal::ZERO);
}
