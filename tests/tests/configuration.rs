//! A deployment configured by hand: what the `orders` binary does when a setting is missing.

use std::process::Command;

use crate::helpers::orders_binary;

#[test]
fn without_orders_shards_every_shard_command_refuses_and_says_how_to_set_it() {
    for args in [
        &["worker"][..],
        &["counts"],
        &["get", "1025"],
        &["migrate", "up"],
    ] {
        let output = Command::new(orders_binary())
            .args(args)
            .env_remove("ORDERS_SHARDS")
            // Nothing listens here: the command must stop before it needs Temporal.
            .env("TEMPORAL_ADDRESS", "127.0.0.1:9")
            .output()
            .expect("orders runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "orders {args:?}: {stderr}");
        assert!(
            stderr.contains("ORDERS_SHARDS is not set")
                && stderr.contains("export ORDERS_SHARDS=postgres://"),
            "orders {args:?} says what to set: {stderr}"
        );
    }
}
