#!/usr/bin/env bash
# A private PostgreSQL for the team configuration and its tests, from Debian's packages (installed when missing,
# as root). Never assumes a running server.
#   bash scripts/postgres.sh start   # start (creating the cluster and database 'qml' on first use); prints a conninfo
#   bash scripts/postgres.sh stop
# QML_PG_DIR (default /tmp/qml-postgres) holds the cluster; QML_PG_PORT (default 54329) is its port on 127.0.0.1.
set -euo pipefail
cmd=${1:-start}
PGDIR=${QML_PG_DIR:-/tmp/qml-postgres}
PORT=${QML_PG_PORT:-54329}

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
bin=$(find_bin)
if [ -z "$bin" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's postgresql..." >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bin=$(find_bin)
  fi
  [ -n "$bin" ] || { echo "PostgreSQL is not installed: run 'sudo apt-get install -y postgresql'" >&2; exit 1; }
fi
# initdb and the server refuse to run as root: as root they run as Debian's 'postgres' user
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case $cmd in
  start)
    mkdir -p "$PGDIR"
    [ "$(id -u)" = 0 ] && chown postgres: "$PGDIR"
    if [ ! -f "$PGDIR/data/PG_VERSION" ]; then
      as_owner "$bin/initdb" -D "$PGDIR/data" -U qml --auth=trust -E UTF8 >/dev/null
    fi
    if ! as_owner "$bin/pg_ctl" -D "$PGDIR/data" status >/dev/null 2>&1; then
      as_owner "$bin/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 60 \
        -o "-p $PORT -k $PGDIR -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
    fi
    if ! as_owner "$bin/psql" -h 127.0.0.1 -p "$PORT" -U qml -d postgres -tAc \
         "SELECT 1 FROM pg_database WHERE datname = 'qml'" | grep -q 1; then
      as_owner "$bin/createdb" -h 127.0.0.1 -p "$PORT" -U qml qml
    fi
    echo "dbname=qml user=qml host=127.0.0.1 port=$PORT"
    ;;
  stop)
    if [ -f "$PGDIR/data/PG_VERSION" ]; then
      as_owner "$bin/pg_ctl" -D "$PGDIR/data" -m fast stop >/dev/null 2>&1 || true
    fi
    ;;
  *)
    echo "usage: bash scripts/postgres.sh start|stop" >&2; exit 2 ;;
esac
