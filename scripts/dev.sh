#!/usr/bin/env bash
# The main job: local Temporal (Web UI on :8233) + 4 PostgreSQL shards + worker + sample orders.
# Runs until Ctrl-C, then stops what it started. State lives in .orders-dev/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
cargo build --bin orders
exec cargo run --quiet --bin orders -- dev "$@"
