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

/// The lines of `service`'s entry in the resolved file (indented below its name).
fn service_block<'a>(resolved: &'a str, service: &str) -> Vec<&'a str> {
    let header = format!("  {service}:");
    resolved
        .lines()
        .skip_while(|line| *line != header)
        .skip(1)
        .take_while(|line| line.starts_with("   "))
        .collect()
}

/// The services of each shard's pg_auto_failover formation: shard i is nodes `shard{i}-a`
/// (which creates the shard's data) and `shard{i}-b`.
fn shard_nodes() -> Vec<[String; 2]> {
    (0..4)
        .map(|shard| [format!("shard{shard}-a"), format!("shard{shard}-b")])
        .collect()
}

/// `ORDERS_SHARDS` as the resolved file gives it to `service`, one URL per shard: a new
/// shard starts only at `postgres://` or `postgresql://`, so a multi-host URL stays whole.
fn shard_urls(resolved: &str, service: &str) -> Vec<String> {
    let list = service_block(resolved, service)
        .into_iter()
        .find_map(|line| line.trim().strip_prefix("ORDERS_SHARDS: "))
        .unwrap_or_else(|| panic!("{service} is not given ORDERS_SHARDS"));
    let mut urls: Vec<String> = Vec::new();
    for part in list.split(',') {
        match urls.last_mut() {
            Some(url) if !part.starts_with("postgres://") && !part.starts_with("postgresql://") => {
                url.push(',');
                url.push_str(part);
            }
            _ => urls.push(part.to_owned()),
        }
    }
    urls
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
        "pg-monitor",
        "pg-formations",
        "migrate",
        "worker",
        "prometheus",
        "grafana",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(shard_nodes().into_iter().flatten())
    {
        assert!(
            services.contains(&expected.as_str()),
            "docker-compose.yml lacks {expected}: {services:?}"
        );
    }

    let resolved = compose(&["config"]);
    assert!(
        resolved.matches("pg_isready").count() >= 10,
        "Temporal's database, the monitor and every shard node have health checks"
    );
    assert!(
        resolved.contains("service_completed_successfully"),
        "the worker waits for the migration"
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

#[test]
fn every_shard_is_a_formation_of_two_nodes_that_each_enable_two_phase_commit() {
    let resolved = compose(&["config"]);
    let formations = service_block(&resolved, "pg-formations").join("\n");
    let mut host_ports: Vec<String> = Vec::new();
    for (shard, nodes) in shard_nodes().iter().enumerate() {
        let formation = format!("shard{shard}");
        assert!(
            formations.contains(&format!("- {formation}")),
            "the one-shot creates formation {formation}: {formations}"
        );
        for node in nodes {
            let block = service_block(&resolved, node).join("\n");
            for expected in [
                "max_prepared_transactions=64".to_owned(),
                format!("PGAF_FORMATION: {formation}"),
                format!("PGAF_NODE: {node}"),
                "PG_AUTOCTL_MONITOR: postgres://autoctl_node@pg-monitor:5432/pg_auto_failover"
                    .to_owned(),
                format!("{node}:/var/lib/postgresql/data"),
                "pg_isready".to_owned(),
            ] {
                assert!(
                    block.contains(&expected),
                    "{node} lacks {expected}: {block}"
                );
            }
            let ports = ports_of(&resolved, node);
            assert_eq!(ports.len(), 1, "{node} publishes one port: {ports:?}");
            assert!(
                ports[0].contains("127.0.0.1"),
                "{node} is published beyond loopback, where its trusted roles would be reachable: {ports:?}"
            );
            host_ports.push(ports[0].clone());
        }
        let first: Vec<&str> = nodes
            .iter()
            .filter(|node| {
                service_block(&resolved, node)
                    .join("\n")
                    .contains("PGAF_FIRST_NODE")
            })
            .map(String::as_str)
            .collect();
        assert_eq!(
            first,
            [nodes[0].as_str()],
            "exactly one node of {formation} creates its data"
        );
    }
    let distinct: std::collections::BTreeSet<&String> = host_ports.iter().collect();
    assert_eq!(
        distinct.len(),
        host_ports.len(),
        "each node has a host port of its own: {host_ports:?}"
    );
    assert!(
        ports_of(&resolved, "pg-monitor").is_empty(),
        "the monitor, which trusts the nodes' connections, is not published"
    );
}

#[test]
fn the_worker_and_the_migration_are_given_both_nodes_of_every_shard_in_shard_order() {
    let resolved = compose(&["config"]);
    for service in ["migrate", "worker"] {
        let urls = shard_urls(&resolved, service);
        assert_eq!(urls.len(), 4, "{service} is told four shards: {urls:?}");
        for (url, [a, b]) in urls.iter().zip(shard_nodes()) {
            let authority = url
                .strip_prefix("postgres://orders:orders@")
                .and_then(|rest| rest.strip_suffix("/orders"))
                .unwrap_or_else(|| panic!("{service}: {url} is not orders' URL of a shard"));
            assert_eq!(
                authority.split(',').collect::<Vec<_>>(),
                [format!("{a}:5432"), format!("{b}:5432")],
                "{service}: each shard's URL names its two nodes, in shard order"
            );
        }
    }
}
