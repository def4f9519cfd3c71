//! docker-compose.yml describes the whole system for users with Docker. No engine runs here;
//! `docker-compose config` (Debian's docker-compose) validates and resolves the file.

use std::path::Path;
use std::process::Command;

use orders_workflows::search_attributes::{REGISTRATION, cli_type_name};

fn compose(args: &[&str]) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker-compose.yml");
    let output = Command::new("docker-compose")
        .arg("--file")
        .arg(&file)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("docker-compose is not installed ({e}): apt-get install docker-compose")
        });
    assert!(
        output.status.success(),
        "docker-compose {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
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
