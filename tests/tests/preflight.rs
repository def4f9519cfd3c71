//! The worker checks its deployment before it polls: it registers the search attributes a
//! namespace prepared by hand lacks, and refuses, naming the fix, a search attribute of the
//! wrong type, a shard behind or ahead of its schema, a shard without prepared
//! transactions, shards listed out of their order or from another deployment, a shard whose
//! id sequences are not disjoint from the others', and shards whose databases sort text
//! differently (docs/operations.md, "Deployment checks").

use orders_core::shards::PoolSettings;
use orders_core::{OrderRequest, Shards, store};
use orders_migration::{Migrator, MigratorTrait};
use orders_worker::deployment::shard_identity;
use orders_worker::deployment::{id_sequences, preflight};
use orders_workflows::search_attributes::{REGISTRATION, cli_type_name};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use temporalio_client::tonic;
use temporalio_common::protos::temporal::api::operatorservice::v1::ListSearchAttributesRequest;

use crate::helpers::{BuildOrder, TestApp, order, services};

/// A one-item order for a new customer of this app.
async fn an_order(app: &TestApp) -> OrderRequest {
    let customer = app.add_customer("Edsger Dijkstra", "500.00").await;
    order(customer).item(3, 1, "9.99")
}

#[track_caller]
fn assert_refused(refusal: &(std::process::ExitStatus, String), expected: &[&str]) {
    let (status, stderr) = refusal;
    assert_eq!(status.code(), Some(1), "exit status; stderr:\n{stderr}");
    assert!(
        stderr.contains("the worker did not start"),
        "no refusal in stderr:\n{stderr}"
    );
    for text in expected {
        assert!(stderr.contains(text), "stderr lacks {text:?}:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_prepared_by_hand_gets_the_missing_search_attributes_and_orders_complete() {
    let mut app = TestApp::spawn_without_worker().await;
    let namespace = app.use_fresh_namespace().await;
    app.start_worker(None);
    let order = an_order(&app).await;
    let (_, placed) = app.place_confirmed_order(order).await;
    assert!(placed.order_id > 0);
    let listed = app
        .client
        .connection()
        .operator_service()
        .list_search_attributes(tonic::Request::new(ListSearchAttributesRequest {
            namespace: namespace.clone(),
        }))
        .await
        .expect("search attributes list")
        .into_inner()
        .custom_attributes;
    for (name, kind) in REGISTRATION {
        assert_eq!(
            listed.get(name).copied(),
            Some(kind as i32),
            "{name} is registered as {} in {namespace}",
            cli_type_name(kind)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_search_attribute_of_the_wrong_type_is_refused_with_the_commands_that_fix_it() {
    let mut app = TestApp::spawn_without_worker().await;
    let namespace = app.use_fresh_namespace().await;
    services()
        .temporal
        .register_search_attributes(&namespace, &["OrderId=Keyword".to_owned()])
        .expect("OrderId registers as a keyword");
    assert_refused(
        &app.worker_refusal(),
        &[
            &format!("search attribute OrderId is Keyword in namespace \"{namespace}\""),
            &format!(
                "temporal operator search-attribute remove --namespace {namespace} --name OrderId"
            ),
            &format!(
                "temporal operator search-attribute create --namespace {namespace} --name OrderId --type Int"
            ),
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_behind_the_build_is_refused_until_migrate_up_runs() {
    let mut app = TestApp::spawn_without_worker().await;
    Migrator::down(&app.shards.get(2).conn, Some(1))
        .await
        .expect("shard 2 goes one migration back");
    assert_refused(
        &app.worker_refusal(),
        &[
            "shard 2 (",
            "is behind this build's schema",
            "fix: orders migrate up",
        ],
    );
    app.cli_ok(&["migrate", "up"]);
    app.start_worker(None);
    let order = an_order(&app).await;
    app.place_confirmed_order(order).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_migrated_by_a_newer_build_is_refused() {
    let app = TestApp::spawn_without_worker().await;
    app.shards
        .get(1)
        .conn
        .execute_raw(Statement::from_string(
            DbBackend::Postgres,
            "INSERT INTO seaql_migrations (version, applied_at)
             VALUES ('m20990101_000001_from_a_newer_build', 0)",
        ))
        .await
        .expect("a newer build's migration is recorded");
    assert_refused(
        &app.worker_refusal(),
        &[
            "shard 1 (",
            "m20990101_000001_from_a_newer_build",
            "this worker is older than the schema",
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_without_prepared_transactions_is_refused() {
    let (app, mut own) = TestApp::spawn_with_own_cluster_for(1).await;
    app.shards
        .get(1)
        .conn
        .execute_raw(Statement::from_string(
            DbBackend::Postgres,
            "ALTER SYSTEM SET max_prepared_transactions = 0",
        ))
        .await
        .expect("the setting is written");
    own.stop().await;
    own.restart().await;
    assert_refused(
        &app.worker_refusal(),
        &[
            "shard 1 (",
            "max_prepared_transactions = 0",
            "ALTER SYSTEM SET max_prepared_transactions",
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shards_listed_in_another_order_are_refused_by_the_worker_and_by_migrate() {
    let mut app = TestApp::spawn_without_worker().await;
    let recorded = app.shard_urls.clone();
    app.shard_urls.swap(0, 3);
    assert_refused(
        &app.worker_refusal(),
        &[
            "ORDERS_SHARDS lists shard 3 (",
            "at position 0",
            "not in the order the deployment was created with",
        ],
    );
    let migrate = app.cli(&["migrate", "up"]);
    assert!(
        !migrate.status.success(),
        "migrate up accepted the swapped shards"
    );
    assert!(
        String::from_utf8_lossy(&migrate.stderr)
            .contains("position 0 in ORDERS_SHARDS holds the deployment's shard 3"),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    app.shard_urls = recorded;
    app.start_worker(None);
    let order = an_order(&app).await;
    app.place_confirmed_order(order).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_of_another_deployment_is_refused() {
    let mut app = TestApp::spawn_without_worker().await;
    let other = TestApp::spawn_without_worker().await;
    app.shard_urls[3] = other.shard_urls[3].clone();
    assert_refused(
        &app.worker_refusal(),
        &["shard 3 (", "belongs to another deployment"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_added_at_the_end_is_new_not_a_stranger() {
    // Routing a new shard needs a map that names it (growth, `orders shards plan`); what
    // this checks is the identity: appended and migrated, the shard joins the deployment.
    let app = TestApp::spawn_without_worker().await;
    let database = format!("added_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let cluster = &services().clusters[0];
    cluster
        .create_database(&database)
        .await
        .expect("the new shard's database is created");
    let mut urls = app.shard_urls.clone();
    urls.push(cluster.url(&database));
    let grown = Shards::connect_lazy(&urls, PoolSettings::default())
        .await
        .expect("pools open");
    let refusal = preflight::check(&app.client, &grown)
        .await
        .expect_err("an unmigrated shard is refused");
    assert_eq!(refusal.0.len(), 1, "{refusal}");
    assert!(refusal.0[0].what.starts_with("shard 4 ("), "{refusal}");
    assert_eq!(
        refusal.0[0].fix,
        "orders migrate up (with the same ORDERS_SHARDS as this worker)"
    );

    Migrator::up(&grown.get(4).conn, None)
        .await
        .expect("the new shard migrates");
    shard_identity::record_missing(&grown)
        .await
        .expect("the appended shard's identity is recorded");
    id_sequences::make_disjoint(&grown)
        .await
        .expect("the appended shard's id sequences get their class");
    let recorded = store::shard_identity::read(&grown.get(4).conn)
        .await
        .expect("its identity reads")
        .expect("it has one");
    let first = store::shard_identity::read(&grown.get(0).conn)
        .await
        .expect("shard 0's identity reads")
        .expect("shard 0 has one");
    assert_eq!(recorded.index, 4);
    assert_eq!(recorded.deployment, first.deployment);
    preflight::check(&app.client, &grown)
        .await
        .expect("the grown deployment passes the checks");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_whose_id_sequences_are_not_disjoint_is_refused_until_migrate_up_runs() {
    let mut app = TestApp::spawn_without_worker().await;
    // Shard 2's order ids as an earlier build allocated them: one after another.
    app.shards
        .get(2)
        .conn
        .execute_unprepared("ALTER SEQUENCE order_id_seq INCREMENT BY 1")
        .await
        .expect("shard 2's sequence goes back to the old scheme");
    assert_refused(
        &app.worker_refusal(),
        &[
            "shard 2 (",
            "order_id_seq",
            "can issue values another shard issues",
            "fix: orders migrate up",
        ],
    );
    app.cli_ok(&["migrate", "up"]);
    app.start_worker(None);
    let order = an_order(&app).await;
    app.place_confirmed_order(order).await;
}

/// Creates on `cluster` a database whose default collation is ICU's `en-US`, where the test
/// clusters' databases sort in "C" (`initdb --no-locale`): what a shard created on a host
/// image with another locale has. Returns its URL.
async fn database_sorting_as_en_us(cluster: &orders_dev::PostgresCluster) -> String {
    let database = format!("icu_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let admin = sea_orm::Database::connect(cluster.url("postgres"))
        .await
        .expect("the cluster's admin database connects");
    admin
        .execute_unprepared(&format!(
            "CREATE DATABASE \"{database}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
        ))
        .await
        .expect("a database with an ICU collation is created");
    admin.close().await.ok();
    cluster.url(&database)
}

#[tokio::test(flavor = "multi_thread")]
async fn shards_whose_collations_differ_are_refused_by_migrate_and_by_the_worker() {
    let mut app = TestApp::spawn_without_worker().await;
    app.shard_urls[3] = database_sorting_as_en_us(&services().clusters[3]).await;
    let expected = [
        "the shards sort text differently",
        "shard 0 (",
        "LC_COLLATE=C LC_CTYPE=C",
        "shard 3 (",
        "ICU en-US",
        "TEMPLATE template0 LOCALE_PROVIDER libc LC_COLLATE 'C' LC_CTYPE 'C'",
    ];

    let migrate = app.cli(&["migrate", "up"]);
    let stderr = String::from_utf8_lossy(&migrate.stderr);
    assert!(
        !migrate.status.success(),
        "migrate up accepted a shard with another collation:\n{stderr}"
    );
    for text in expected {
        assert!(
            stderr.contains(text),
            "migrate's stderr lacks {text:?}:\n{stderr}"
        );
    }
    let odd = Shards::connect_lazy(&app.shard_urls[3..], PoolSettings::default())
        .await
        .expect("a pool opens");
    assert_eq!(
        store::server::applied_migrations(&odd.get(0).conn)
            .await
            .expect("its migrations read"),
        Vec::<String>::new(),
        "migrate up changed nothing on the shard it refused"
    );

    assert_refused(&app.worker_refusal(), &expected);
}
