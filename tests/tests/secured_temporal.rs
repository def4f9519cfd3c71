//! A secured Temporal: a TLS-terminating gRPC proxy (Debian's nginx, `grpc_pass`) in front
//! of the test server, with certificates made here with openssl. One listener requires a
//! client certificate (mutual TLS), another an API key. The worker and the CLI connect
//! through them with the `temporal` CLI's variables; each wrong setting fails at once,
//! naming the setting. Through the API-key listener, which (like a hosted Temporal) refuses
//! to add search attributes, a worker for a namespace without them refuses to start and
//! prints the commands that register them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use orders_dev::process::ChildService;

use crate::certificates;
use crate::helpers::{TestApp, eventually, services};

/// The name on the proxy's certificate; the address connected to is 127.0.0.1.
const SERVER_NAME: &str = "temporal.orders.test";
const API_KEY: &str = "test-api-key-7f3a";

/// Certificates and the running proxy.
struct TlsProxy {
    dir: PathBuf,
    /// Requires a client certificate signed by the CA.
    mtls_port: u16,
    /// Requires `Authorization: Bearer API_KEY`.
    api_key_port: u16,
    nginx: Option<ChildService>,
}

impl TlsProxy {
    fn start() -> Self {
        let dir = services().root.join(format!(
            "tls-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        certificates::make_ca(&dir, "ca");
        certificates::make_ca(&dir, "other-ca");
        certificates::make_signed(&dir, "server", &format!("DNS:{SERVER_NAME}"), "serverAuth");
        certificates::make_signed(&dir, "client", "DNS:orders-worker", "clientAuth");
        let mtls_port = orders_dev::free_port().unwrap();
        let api_key_port = orders_dev::free_port().unwrap();
        let temporal_port = services().temporal.address();
        let d = dir.display();
        let config = format!(
            "daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{}}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/body;
  ssl_certificate {d}/server.pem;
  ssl_certificate_key {d}/server-key.pem;
  server {{
    listen 127.0.0.1:{mtls_port} ssl http2;
    ssl_client_certificate {d}/ca.pem;
    ssl_verify_client on;
    location / {{ grpc_pass grpc://{temporal_port}; }}
  }}
  server {{
    listen 127.0.0.1:{api_key_port} ssl http2;
    location / {{
      if ($http_authorization != \"Bearer {API_KEY}\") {{ return 401; }}
      grpc_pass grpc://{temporal_port};
    }}
    # As on a hosted Temporal, this key may not change the namespace's search attributes.
    location = /temporal.api.operatorservice.v1.OperatorService/AddSearchAttributes {{
      return 403;
    }}
  }}
}}
"
        );
        std::fs::write(dir.join("nginx.conf"), config).unwrap();
        let nginx = which("nginx").unwrap_or_else(|| {
            panic!("nginx is not installed: apt-get install nginx-light (scripts/test.sh does)")
        });
        let mut command = Command::new(nginx);
        command
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("nginx.stderr")).unwrap());
        let nginx = ChildService::spawn("nginx", command, Signal::SIGQUIT).expect("nginx starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(orders_dev::port_is_open(mtls_port) && orders_dev::port_is_open(api_key_port)) {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen within 20 s: {}",
                std::fs::read_to_string(dir.join("nginx.stderr")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            dir,
            mtls_port,
            api_key_port,
            nginx: Some(nginx),
        }
    }

    /// Stops the proxy: every connection through it breaks.
    fn stop(&mut self) {
        if let Some(mut nginx) = self.nginx.take() {
            nginx.kill();
        }
    }

    /// The variables of a correct API-key connection through the proxy.
    fn api_key_env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "TEMPORAL_ADDRESS",
                format!("127.0.0.1:{}", self.api_key_port),
            ),
            ("TEMPORAL_TLS_SERVER_CA_CERT_PATH", self.path("ca.pem")),
            ("TEMPORAL_TLS_SERVER_NAME", SERVER_NAME.to_owned()),
            ("TEMPORAL_API_KEY", API_KEY.to_owned()),
        ]
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// The variables of a correct mutual-TLS connection through the proxy.
    fn mtls_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TEMPORAL_ADDRESS", format!("127.0.0.1:{}", self.mtls_port)),
            ("TEMPORAL_TLS_SERVER_CA_CERT_PATH", self.path("ca.pem")),
            ("TEMPORAL_TLS_SERVER_NAME", SERVER_NAME.to_owned()),
            ("TEMPORAL_TLS_CLIENT_CERT_PATH", self.path("client.pem")),
            ("TEMPORAL_TLS_CLIENT_KEY_PATH", self.path("client-key.pem")),
        ]
    }
}

fn which(program: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

/// Runs `orders submit` with `env`: it connects to Temporal first, so a bad connection
/// setting fails it before anything is started. Returns success, stderr and how long it took.
fn temporal_probe(app: &TestApp, env: &[(&str, String)]) -> (bool, String, Duration) {
    let started = Instant::now();
    let output = app
        .orders_command()
        .args(["submit", "--customer", "1", "--item", "1:1:1.00"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("orders runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        started.elapsed(),
    )
}

/// `orders submit --wait` with `env` (a way through the proxy); the order must be confirmed.
fn place_through(app: &TestApp, customer: &str, env: &[(&str, String)]) {
    let submitted = app
        .orders_command()
        .args(["submit", "--customer", customer, "--item", "5:1:3.50"])
        .args(["--wait", "--json"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("orders submit runs");
    assert!(
        submitted.status.success(),
        "an order through the proxy: {}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let placed: serde_json::Value = serde_json::from_slice(&submitted.stdout).unwrap();
    assert_eq!(placed["status"], "confirmed", "{placed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_go_through_a_mutual_tls_proxy_and_each_wrong_setting_fails_at_once_naming_it() {
    let proxy = TlsProxy::start();
    let mut app = TestApp::spawn_without_worker().await;
    app.worker_env = proxy.mtls_env();
    app.start_worker(None);
    let customer = app
        .add_customer("Radia Perlman", "100.00")
        .await
        .to_string();
    place_through(&app, &customer, &proxy.mtls_env());

    let without_client_cert: Vec<_> = proxy
        .mtls_env()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("TEMPORAL_TLS_CLIENT_"))
        .collect();
    let mut wrong_ca = proxy.mtls_env();
    wrong_ca[1].1 = proxy.path("other-ca.pem");
    let mut wrong_name = proxy.mtls_env();
    wrong_name[2].1 = "elsewhere.orders.test".into();
    for (case, env, expected) in [
        (
            "no client certificate",
            without_client_cert,
            "over TLS: the server requires a client certificate: set TEMPORAL_TLS_CLIENT_CERT_PATH",
        ),
        (
            "a wrong CA",
            wrong_ca,
            "over TLS: the server's certificate is not signed by TEMPORAL_TLS_SERVER_CA_CERT_PATH",
        ),
        (
            "a wrong server name",
            wrong_name,
            "over TLS: the server's certificate is not issued for TEMPORAL_TLS_SERVER_NAME (elsewhere.orders.test)",
        ),
    ] {
        let (ok, stderr, took) = temporal_probe(&app, &env);
        assert!(!ok, "{case}: the CLI connected anyway");
        assert!(stderr.contains(expected), "{case}: {stderr}");
        assert!(
            took < Duration::from_secs(8),
            "{case}: failed only after {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_key_is_sent_as_a_bearer_token_and_a_missing_one_is_named() {
    let proxy = TlsProxy::start();
    let app = TestApp::spawn().await;
    let customer = app
        .add_customer("Leslie Lamport", "100.00")
        .await
        .to_string();
    let with_key = proxy.api_key_env();
    place_through(&app, &customer, &with_key);
    let without_key: Vec<_> = with_key[..3].to_vec();
    let (ok, stderr, _) = temporal_probe(&app, &without_key);
    assert!(!ok, "connected without the API key");
    assert!(
        stderr.contains("over TLS: the server requires an API key: set TEMPORAL_API_KEY"),
        "{stderr}"
    );
    let log = std::fs::read_to_string(app.worker_log()).unwrap_or_default();
    assert!(!log.contains(API_KEY), "the API key reached a log");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_may_not_register_search_attributes_refuses_with_the_commands() {
    let proxy = TlsProxy::start();
    let mut app = TestApp::spawn_without_worker().await;
    let namespace = app.use_fresh_namespace().await;
    app.worker_env = proxy.api_key_env();
    let (status, stderr) = app.worker_refusal();
    assert_eq!(status.code(), Some(1), "{stderr}");
    for (name, kind) in orders_workflows::search_attributes::REGISTRATION {
        let command = format!(
            "fix: temporal operator search-attribute create --namespace {namespace} --name {name} --type {}",
            orders_workflows::search_attributes::cli_type_name(kind)
        );
        assert!(
            stderr.contains(&command),
            "{command} missing from:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("registering it failed"),
        "the refusal says registering was tried: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_load_that_loses_its_connection_counts_client_errors_apart_and_finishes() {
    let mut proxy = TlsProxy::start();
    // The worker talks to Temporal directly; only the load goes through the proxy.
    let mut app = TestApp::spawn().await;
    let report_file = app.worker_log().with_extension("load.json");
    let stderr_file = app.worker_log().with_extension("load.stderr");
    let mut load = app
        .orders_command()
        .args(["load", "--orders", "24", "--concurrency", "4", "--json"])
        .args(["--customers", "4", "--products", "4"])
        .envs(proxy.api_key_env())
        .stdout(std::fs::File::create(&report_file).unwrap())
        .stderr(std::fs::File::create(&stderr_file).unwrap())
        .spawn()
        .expect("orders load starts");
    // The break comes after the first order completes and the worker is gone, so some
    // orders are placed and the rest cannot be, however fast orders go.
    eventually(
        "an order of the load completes",
        Duration::from_secs(60),
        async || {
            (!app
                .workflow_ids("ExecutionStatus = 'Completed'")
                .await
                .is_empty())
            .then_some(())
        },
    )
    .await;
    app.kill_worker();
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.stop();
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = load.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = load.kill();
            panic!("the load did not finish after losing its connection");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let stderr = std::fs::read_to_string(&stderr_file).unwrap();
    assert_eq!(
        status.code(),
        Some(1),
        "incomplete figures fail the command: {stderr}"
    );
    assert!(
        stderr.contains("could not be started or followed by this client"),
        "{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_file).unwrap()).expect("the report is JSON");
    let client_errors = report["client_errors"].as_u64().unwrap();
    let placed = report["placed"].as_u64().unwrap();
    let failed: u64 = report["failures"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(
        report["orders"], 24,
        "every order is accounted for: {report}"
    );
    assert!(placed > 0, "orders were placed before the break: {report}");
    assert!(
        client_errors > 0,
        "the break shows as client errors: {report}"
    );
    assert_eq!(placed + failed + client_errors, 24, "{report}");
    for reason in report["failures"].as_object().unwrap().keys() {
        assert!(
            orders_core::FailureType::from_wire(reason).is_some(),
            "only orders' own failures count as failures, not {reason:?}: {report}"
        );
    }
}
