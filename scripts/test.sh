#!/usr/bin/env bash
# The whole test suite: unit tests, then integration tests that start their own Temporal dev
# server and PostgreSQL clusters on free ports (nothing else running is touched).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
cargo build --workspace --all-targets
cargo test --workspace "$@"
