//! A shard over TLS: a local cluster restarted with `ssl = on` and a certificate made here,
//! reached with `sslmode=verify-full` and the CA in the URL. A password in the URL's query
//! string never reaches `orders shards` output or the worker's log.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use orders_core::Shards;
use orders_core::shards::PoolSettings;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::certificates;
use crate::helpers::{BuildOrder, TestApp, order};

const TLS_SHARD: usize = 2;
/// Trust authentication ignores it; it is there to be kept out of output and logs.
const QUERY_PASSWORD: &str = "s3cret-in-the-query";

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_reached_with_verify_full_serves_orders_and_its_url_password_stays_secret() {
    let (mut app, mut own) = TestApp::spawn_with_own_cluster_for(TLS_SHARD).await;
    let dir = own.data_dir().with_extension("tls");
    std::fs::create_dir_all(&dir).unwrap();
    certificates::make_ca(&dir, "ca");
    certificates::make_ca(&dir, "other-ca");
    certificates::make_signed(&dir, "server", "IP:127.0.0.1,DNS:localhost", "serverAuth");
    // PostgreSQL reads its key only if its own user owns it and nobody else can read it.
    let owner = std::fs::metadata(own.data_dir()).unwrap();
    for file in ["server.pem", "server-key.pem"] {
        let target = own.data_dir().join(file);
        std::fs::copy(dir.join(file), &target).unwrap();
        std::os::unix::fs::chown(&target, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    for setting in [
        "ALTER SYSTEM SET ssl = on",
        "ALTER SYSTEM SET ssl_cert_file = 'server.pem'",
        "ALTER SYSTEM SET ssl_key_file = 'server-key.pem'",
    ] {
        app.shards
            .get(TLS_SHARD)
            .conn
            .execute_raw(Statement::from_string(DbBackend::Postgres, setting))
            .await
            .expect("the TLS setting is written");
    }
    own.stop().await;
    own.restart().await;

    let plain = app.shard_urls[TLS_SHARD].clone();
    let with_ca = |ca: &str| {
        format!(
            "{plain}?sslmode=verify-full&sslrootcert={}&password={QUERY_PASSWORD}",
            dir.join(ca).display()
        )
    };
    app.shard_urls[TLS_SHARD] = with_ca("ca.pem");
    let shards = Shards::connect_lazy(&app.shard_urls, PoolSettings::default())
        .await
        .expect("pools open");
    let row = shards
        .get(TLS_SHARD)
        .conn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ))
        .await
        .expect("the shard answers over verify-full")
        .expect("a row");
    assert!(
        row.try_get::<bool>("", "ssl").unwrap(),
        "the session uses TLS"
    );

    let report = app.cli_ok(&["shards", "--json"]);
    let report_text = String::from_utf8_lossy(&report.stdout);
    let parsed: serde_json::Value = serde_json::from_str(&report_text).unwrap();
    let tls_shard = &parsed[TLS_SHARD];
    assert_eq!(tls_shard["reachable"], true, "{tls_shard}");
    assert!(
        !report_text.contains(QUERY_PASSWORD),
        "orders shards printed the password: {report_text}"
    );
    assert!(
        report_text.contains("password=***"),
        "orders shards shows where the password was: {report_text}"
    );

    app.start_worker(None);
    // New customers go to the shard with the fewest: add them until one lands on the TLS shard.
    let mut customer = app.add_customer("Frances Allen", "300.00").await;
    while app.shards.for_customer(customer).index != TLS_SHARD {
        customer = app.add_customer("Frances Allen", "300.00").await;
    }
    let order = order(customer).item(2, 1, "4.00");
    app.place_confirmed_order(order).await;

    app.shard_urls[TLS_SHARD] = with_ca("other-ca.pem");
    let refused = app.cli(&["shards", "--json"]);
    assert!(
        !refused.status.success(),
        "a shard with the wrong CA answered"
    );
    let refused_text = String::from_utf8_lossy(&refused.stdout);
    assert!(
        refused_text.contains("certificate"),
        "the error says the certificate is the problem: {refused_text}"
    );
    let log = std::fs::read_to_string(app.worker_log()).unwrap();
    assert!(
        !log.contains(QUERY_PASSWORD) && !refused_text.contains(QUERY_PASSWORD),
        "the password reached a log or output"
    );
}
