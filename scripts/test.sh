#!/usr/bin/env bash
# The whole test suite: unit tests, then integration tests that start their own Temporal dev
# server and PostgreSQL clusters on free ports (nothing else running is touched).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
# The suite also validates docker-compose.yml and drives the Web UI in a headless browser.
missing=()
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)   # the TLS proxy in front of Temporal
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)   # promtool checks the alert rules
if [ ${#missing[@]} -gt 0 ]; then
  echo "▶ installing ${missing[*]} (apt-get)" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# pg_auto_failover runs the shard the failover tests give a synchronous standby.
ensure_pg_auto_failover
# pgBackRest backs up and restores shards in the backup tests.
ensure_pgbackrest
cargo build --workspace --all-targets
if [ $# -gt 0 ]; then
  cargo test --workspace "$@"
  exit
fi
# Tests that measure rates run alone at the end, with nothing else on the machine's cores.
alone=outage_rates::
cargo test --workspace -- --skip "$alone"
echo "▶ rate-measuring tests, alone" >&2
cargo test -p orders-tests --test integration -- "$alone" --test-threads=1
# A passing run's shared clusters and logs are not needed: free the disk (a failing run's stay
# for reading, until the next run starts).
for run in "${TMPDIR:-/tmp}"/orders-tests-*; do
  if [ -d "$run" ] && [ ! -e "/proc/${run##*-}" ]; then
    rm -rf "$run" || echo "could not remove $run" >&2
  fi
done
