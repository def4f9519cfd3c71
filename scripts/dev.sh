#!/usr/bin/env bash
# The main job: local Temporal (Web UI on :8233) + 4 PostgreSQL shards + worker + sample orders
# (`--standbys`: each shard a primary and a synchronous standby under pg_auto_failover;
# `--backups`: every shard archived by pgBackRest, for `orders backup` and `orders restore`).
# Runs until Ctrl-C, then stops what it started. State lives in .orders-dev/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
# `--standbys` (or ORDERS_DEV_STANDBYS=1): every shard a primary and a synchronous standby.
if [[ " $* " == *" --standbys "* || -n "${ORDERS_DEV_STANDBYS:-}" ]]; then
  ensure_pg_auto_failover
fi
# `--backups` (or ORDERS_DEV_BACKUPS=1): the shards archive into a pgBackRest repository.
if [[ " $* " == *" --backups "* || -n "${ORDERS_DEV_BACKUPS:-}" ]]; then
  ensure_pgbackrest
fi
cargo build --bin orders
# The demo's worker imports files from the repository (`orders import orders.jsonl` from here);
# a deployment sets its own directory.
export ORDERS_IMPORT_DIR="${ORDERS_IMPORT_DIR:-$PWD}"
exec cargo run --quiet --bin orders -- dev "$@"
