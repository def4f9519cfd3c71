//! docker-compose.yml describes the whole system for users with Docker. No engine runs here;
//! `docker-compose config` (Debian's docker-compose) validates and resolves the file.

use std::path::Path;
use std::process::Command;

use orders_workflows::search_attributes::{REGISTRATION, cli_type_name};

/// The read API token a user of the file exports before `docker-compose up`.
const TOKEN: &str = "compose-test-token";

/// `docker-compose args` on the file, with `token` as `ORDERS_API_TOKEN` (or none).
fn compose_with(args: &[&str], token: Option<&str>) -> std::process::Output {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml");
    let mut command = Command::new("docker-compose");
    command.arg("--file").arg(&file).args(args);
    match token {
        Some(token) => command.env("ORDERS_API_TOKEN", token),
        None => command.env_remove("ORDERS_API_TOKEN"),
    };
    command.output().unwrap_or_else(|e| {
        panic!("docker-compose is not installed ({e}): apt-get install docker-compose")
    })
}

fn compose(args: &[&str]) -> String {
    let output = compose_with(args, Some(TOKEN));
    assert!(
        output.status.success(),
        "docker-compose {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The ports `service` publishes, one entry each (`127.0.0.1:9465:9465/tcp`, or the long
/// form's lines joined), from the resolved file.
fn ports_of(resolved: &str, service: &str) -> Vec<String> {
    let header = format!("  {service}:");
    let mut ports: Vec<String> = Vec::new();
    for line in resolved
        .lines()
        .skip_while(|line| *line != header)
        .skip(1)
        .take_while(|line| line.starts_with("   "))
        .skip_while(|line| line.trim() != "ports:")
        .skip(1)
        .take_while(|line| line.starts_with("    -") || line.starts_with("      "))
    {
        match ports.last_mut() {
            Some(port) if !line.starts_with("    -") => port.push_str(line),
            _ => ports.push(line.to_owned()),
        }
    }
    ports
}

#[test]
fn docker_compose_refuses_to_run_without_a_read_api_token_and_publishes_it_on_loopback() {
    let refused = compose_with(&["config"], None);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "docker-compose config resolved without ORDERS_API_TOKEN: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    assert!(stderr.contains("ORDERS_API_TOKEN"), "{stderr}");

    let resolved = compose(&["config"]);
    assert!(
        resolved.contains(&format!("ORDERS_API_TOKEN: {TOKEN}")),
        "the worker gets the token the user set: {resolved}"
    );
    assert!(!resolved.contains("change-me"), "a default token is left");
    let ports = ports_of(&resolved, "worker");
    for port in ["9464", "9465"] {
        assert!(
            ports.iter().any(|published| published.contains(port)),
            "the worker publishes {port}: {ports:?}"
        );
    }
    for published in &ports {
        assert!(
            published.contains("127.0.0.1"),
            "the worker publishes a port beyond loopback: {published}"
        );
    }
}

#[test]
fn docker_compose_runs_temporal_its_ui_four_shards_a_migration_and_the_worker() {
    let services = compose(&["config", "--services"]);
    let services: Vec<&str> = services.lines().collect();
    for expected in [
        "temporal-db",
        "temporal-schema",
        "temporal",
        "temporal-setup",
        "temporal-ui",
        "shard0",
        "shard1",
        "shard2",
        "shard3",
        "migrate",
        "worker",
        "prometheus",
        "grafana",
    ] {
        assert!(
            services.contains(&expected),
            "docker-compose.yml lacks {expected}: {services:?}"
        );
    }

    let resolved = compose(&["config"]);
    assert_eq!(
        resolved.matches("max_prepared_transactions=64").count(),
        4,
        "every shard enables two-phase commit"
    );
    assert!(
        resolved.matches("pg_isready").count() >= 5,
        "Temporal's database and every shard have health checks"
    );
    assert!(
        resolved.contains("service_completed_successfully"),
        "the worker waits for the migration"
    );
    assert!(
        resolved.contains("ORDERS_SHARDS: postgres://orders:orders@shard0:5432/orders,"),
        "the worker is told every shard"
    );
    assert!(
        !resolved.contains("temporalio/auto-setup"),
        "Temporal's deprecated auto-setup image is not used"
    );
    for (name, kind) in REGISTRATION {
        let flag = format!("{name}={}", cli_type_name(kind));
        assert!(
            resolved.contains(&flag),
            "docker-compose registers search attribute {flag}"
        );
    }
    for mounted in [
        "deploy/prometheus",
        "deploy/grafana/provisioning",
        "deploy/grafana/dashboards",
    ] {
        assert!(
            resolved.contains(mounted),
            "docker-compose mounts {mounted} (rules, data source, dashboard)"
        );
    }
    assert!(
        resolved.contains("ORDERS_API_TOKEN:"),
        "the worker's read API, published on a port, requires a token"
    );
    assert!(
        !resolved.contains("|| true"),
        "no setup step hides its errors"
    );
}
