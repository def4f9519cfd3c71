#!/bin/sh
# One pg_auto_failover process per container, for docker-compose.yml:
#
#   pgaf-entrypoint monitor                  the monitor (one for all shards)
#   pgaf-entrypoint formations shard0 ...    one-shot: creates the formations the monitor lacks
#   pgaf-entrypoint node                     a shard node: PostgreSQL and its keeper
#   pgaf-entrypoint COMMAND ...              anything else, run as is (as postgres)
#
# A node is configured by its environment:
#   PGAF_NODE           its name, also the hostname the others reach it at (shard0-a)
#   PGAF_FORMATION      its shard's formation (shard0)
#   PGAF_FIRST_NODE     "true" on the node that creates the shard's data when the formation has
#                       no node yet; any other node waits for that one and joins as a standby
#                       (pg_basebackup), and so does this one when the formation already has a
#                       primary. A node whose volume was lost joins so once its old record is
#                       gone: `pg_autoctl drop node --force --formation shard0 --name shard0-a`
#                       on the monitor.
#   PG_AUTOCTL_MONITOR  the monitor's URL (postgres://autoctl_node@pg-monitor:5432/pg_auto_failover)
#   POSTGRES_SETTINGS   "name=value ..." written to PGDATA/postgresql-orders.conf at every
#                       start, before PostgreSQL starts: the standby gets them with its copy of
#                       the data, and a change in docker-compose.yml reaches every node at its
#                       next restart (max_prepared_transactions needs the same value on both)
#   ORDERS_DB_PASSWORD  the password of role `orders`, which owns database `orders`
#   PGAF_PORT           PostgreSQL's port (5432)
#   PGAF_HOSTNAME       the hostname others reach it at, when not its name (the monitor's:
#                       pg-monitor)
#
# Authentication (pg_hba.conf, written by this script; pg_autoctl runs with --skip-pg-hba):
# pg_auto_failover's own roles (the standby's replication, the monitor's health checks) are
# trusted from the container's own networks only (`samenet`: the compose network); everyone
# else, the worker and the orders CLI included, gives a password.
set -eu

if [ "$(id -u)" = 0 ]; then
  # The volume holds PGDATA and pg_autoctl's files: postgres must own it.
  base=${PGDATA%/*}
  mkdir -p "$base"
  chown postgres:postgres "$base"
  chmod 0700 "$base"
  exec gosu postgres "$0" "$@"
fi

port=${PGAF_PORT:-5432}

# psql against the monitor, SQL on standard input; $1 is passed as :'formation'.
monitor_sql() {
  psql "$PG_AUTOCTL_MONITOR" --no-psqlrc --quiet --tuples-only --no-align \
    -v ON_ERROR_STOP=1 -v formation="$1"
}

# How many nodes of formation $1 the monitor knows; with $2 (an SQL list of states), how many
# of them last reported one of those states.
nodes_in() {
  echo "select count(*) from pgautofailover.node where formationid = :'formation'
        ${2:+and reportedstate in ($2)}" | monitor_sql "$1"
}

# The settings every node needs before it serves, and who may connect.
write_settings_and_hba() {
  {
    echo "# Written by pgaf-entrypoint from POSTGRES_SETTINGS at every start:"
    echo "# change docker-compose.yml, not this file."
    for setting in ${POSTGRES_SETTINGS:-}; do
      echo "${setting%%=*} = '${setting#*=}'"
    done
  } >"$PGDATA/postgresql-orders.conf"
  grep -q "^include_if_exists 'postgresql-orders.conf'" "$PGDATA/postgresql.conf" ||
    echo "include_if_exists 'postgresql-orders.conf'" >>"$PGDATA/postgresql.conf"

  cat >"$PGDATA/pg_hba.conf" <<'HBA'
# Written by pgaf-entrypoint at every start (pg_autoctl runs with --skip-pg-hba).
# TYPE  DATABASE          USER                       ADDRESS  METHOD
# pg_autoctl itself on the node's own socket, then anyone there with a password.
local   all               postgres                            peer
local   all               all                                 scram-sha-256
# pg_auto_failover's roles, from the compose network only: a standby streaming and
# rewinding (pg_rewind connects to database postgres), the monitor's health checks.
host    replication       pgautofailover_replicator  samenet  trust
host    postgres,orders   pgautofailover_replicator  samenet  trust
host    postgres          pgautofailover_monitor     samenet  trust
# Everyone else, the worker and the orders CLI included: a password.
host    all               all                        all      scram-sha-256
HBA
}

# A new cluster for the shard's first node: the settings, role `orders` and database `orders`
# exist before pg_autoctl registers it, so it never serves without them.
create_first_pgdata() {
  echo "pgaf-entrypoint: formation $PGAF_FORMATION has no node yet: creating its data in $PGDATA"
  initdb --pgdata "$PGDATA" --username postgres --encoding UTF8 \
    --auth-local peer --auth-host scram-sha-256 >/dev/null
  write_settings_and_hba
  pg_ctl --pgdata "$PGDATA" --wait --silent --options "-c listen_addresses='' -p $port" start
  psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 --port "$port" --username postgres --dbname postgres \
    -v password="${ORDERS_DB_PASSWORD:?set ORDERS_DB_PASSWORD for role orders}" <<'SQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE orders LOGIN PASSWORD :'password';
-- pg_stat_activity and pg_stat_replication in full: the worker's visibility horizon,
-- and which standbys are synchronous and how far behind they are.
GRANT pg_monitor TO orders;
CREATE DATABASE orders OWNER orders;
SQL
  pg_ctl --pgdata "$PGDATA" --wait --silent --mode fast stop
}

case "${1:-}" in
  monitor)
    exec pg_autoctl create monitor --pgdata "$PGDATA" --pgport "$port" \
      --hostname "${PGAF_HOSTNAME:-pg-monitor}" --auth trust --ssl-self-signed --run
    ;;

  formations)
    shift
    for formation in "$@"; do
      # The monitor accepts connections a moment before its extension is ready.
      tries=0
      until exists=$(echo "select count(*) from pgautofailover.formation
                           where formationid = :'formation'" | monitor_sql "$formation"); do
        tries=$((tries + 1))
        if [ "$tries" -ge 60 ]; then
          echo "pgaf-entrypoint: the monitor did not answer in 2 minutes" >&2
          exit 1
        fi
        sleep 2
      done
      if [ "$exists" = 1 ]; then
        echo "pgaf-entrypoint: formation $formation exists"
      else
        pg_autoctl create formation --monitor "$PG_AUTOCTL_MONITOR" --formation "$formation" \
          --kind pgsql --dbname orders
      fi
    done
    ;;

  node)
    : "${PGAF_NODE:?set PGAF_NODE}" "${PGAF_FORMATION:?set PGAF_FORMATION}" \
      "${PG_AUTOCTL_MONITOR:?set PG_AUTOCTL_MONITOR}"
    state="$XDG_DATA_HOME/pg_autoctl$PGDATA/pg_autoctl.state"
    if [ ! -e "$state" ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
      # Never registered: create the data, or wait for the node that does.
      until registered=$(nodes_in "$PGAF_FORMATION" 2>/dev/null); do
        echo "pgaf-entrypoint: waiting for the monitor"
        sleep 2
      done
      if [ "$registered" = 0 ] && [ "${PGAF_FIRST_NODE:-}" = true ]; then
        create_first_pgdata
      else
        until [ "$(nodes_in "$PGAF_FORMATION" "'single', 'wait_primary', 'primary'" 2>/dev/null)" = 1 ]; do
          echo "pgaf-entrypoint: waiting for a primary in formation $PGAF_FORMATION"
          sleep 2
        done
      fi
    fi
    # A standby's first start has no PGDATA yet: pg_basebackup brings the primary's files.
    if [ -s "$PGDATA/PG_VERSION" ]; then
      write_settings_and_hba
    fi
    exec pg_autoctl create postgres --pgdata "$PGDATA" --pgport "$port" \
      --hostname "${PGAF_HOSTNAME:-$PGAF_NODE}" --name "$PGAF_NODE" \
      --formation "$PGAF_FORMATION" --dbname orders --monitor "$PG_AUTOCTL_MONITOR" \
      --skip-pg-hba --ssl-self-signed --run
    ;;

  *)
    exec "$@"
    ;;
esac
