#!/usr/bin/env bash
# Start (or stop) the scale-out services on loopback, for integration tests and for trying the
# server deployment on one machine: PostgreSQL (Debian's packages), a Prefect server on it, and
# an MLflow tracking server on it with a local artifacts destination.
#
#   infra/local/services.sh start DIR    # writes DIR/services.env (URLs, PIDs) when all are up
#   infra/local/services.sh stop DIR
#
# With TAPEOUT_SERVICES_OWNER=PID at start, the services are stopped when that process ends
# without stopping them (a test run killed by a signal skips its fixtures' teardown).
#
# Needs: postgresql (apt-get install postgresql), and tapeout installed with its `server` extra
# (psycopg for MLflow; Prefect brings asyncpg). Ports are chosen free at start.
set -euo pipefail

action=${1:?usage: services.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: services.sh start|stop DIR}")
bin=${TAPEOUT_BIN:-$(dirname "$(command -v python)")}

free_port() { python - <<'EOF'
import socket
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
EOF
}

pg_bin() {
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -n "$found" ] || { echo "PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 2; }
  echo "$found"
}

# PostgreSQL refuses to run as root: use its own account when we are root.
as_db_user() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

http_ok() {  # http_ok URL: exit 0 when URL answers 2xx (no curl needed on the machine)
  python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$1"
}

wait_for() {  # wait_for NAME SECONDS COMMAND...: until COMMAND succeeds or NAME's process dies
  local name=$1 seconds=$2; shift 2
  for _ in $(seq "$seconds"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null || break
    sleep 1
  done
  echo "$name did not come up; its log:" >&2
  tail -50 "$dir/$name.log" >&2 || true
  exit 1
}

start() {
  mkdir -p "$dir"
  # A start that fails half-way stops what it started: nothing is left running.
  trap 'status=$?; if [ "$status" != 0 ]; then stop; fi; exit "$status"' EXIT
  local pg; pg=$(pg_bin)
  local pg_port prefect_port mlflow_port
  pg_port=$(free_port); prefect_port=$(free_port); mlflow_port=$(free_port)

  # The database account must reach its folder: when DIR's parents are private (pytest's
  # temporary folders are 0700 root), keep the cluster in a folder of its own and record it.
  local cluster; cluster=$(mktemp -d /tmp/tapeout-postgres.XXXXXX)
  echo "$cluster" >"$dir/postgres.path"
  if [ "$(id -u)" = 0 ]; then chown postgres "$cluster"; fi
  as_db_user "$pg/initdb" -D "$cluster/data" -U tapeout --auth=trust >"$dir/initdb.log" 2>&1
  as_db_user "$pg/pg_ctl" -D "$cluster/data" -l "$cluster/postgres.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $cluster" start >/dev/null
  for database in prefect mlflow; do
    as_db_user "$pg/createdb" -h 127.0.0.1 -p "$pg_port" -U tapeout "$database"
  done

  PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://tapeout@127.0.0.1:$pg_port/prefect" \
  PREFECT_HOME="$dir/prefect" PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 \
  PREFECT_UI_ENABLED=false \
    nohup "$bin/prefect" server start --host 127.0.0.1 --port "$prefect_port" \
    >"$dir/prefect.log" 2>&1 &
  echo $! >"$dir/prefect.pid"

  MLFLOW_DISABLE_TELEMETRY=true nohup "$bin/mlflow" server \
    --backend-store-uri "postgresql://tapeout@127.0.0.1:$pg_port/mlflow" \
    --artifacts-destination "$dir/mlflow-artifacts" \
    --host 127.0.0.1 --port "$mlflow_port" --workers 1 \
    >"$dir/mlflow.log" 2>&1 &
  echo $! >"$dir/mlflow.pid"

  wait_for prefect 180 http_ok "http://127.0.0.1:$prefect_port/api/health"
  wait_for mlflow 180 http_ok "http://127.0.0.1:$mlflow_port/health"

  cat >"$dir/services.env" <<EOF
PREFECT_API_URL=http://127.0.0.1:$prefect_port/api
MLFLOW_TRACKING_URI=http://127.0.0.1:$mlflow_port
POSTGRES_PORT=$pg_port
EOF
  echo "services up: $(tr '\n' ' ' <"$dir/services.env")"

  if [ -n "${TAPEOUT_SERVICES_OWNER:-}" ]; then
    # Detached, so that the owner's death does not take it along; it ends with the services.
    setsid nohup bash -c 'while kill -0 "$1" 2>/dev/null && [ -f "$3/services.env" ]; do sleep 2; done
                          [ -f "$3/services.env" ] && exec "$2" stop "$3"' \
      watch "$TAPEOUT_SERVICES_OWNER" "$(realpath "$0")" "$dir" >/dev/null 2>&1 </dev/null &
  fi
  trap - EXIT
}

stop() {
  rm -f "$dir/services.env"  # first: the owner's watch (start) ends on it
  for name in prefect mlflow; do
    if [ -f "$dir/$name.pid" ]; then
      pkill -TERM -P "$(cat "$dir/$name.pid")" 2>/dev/null || true
      kill -TERM "$(cat "$dir/$name.pid")" 2>/dev/null || true
      rm -f "$dir/$name.pid"
    fi
  done
  if [ -f "$dir/postgres.path" ]; then
    local cluster; cluster=$(cat "$dir/postgres.path")
    as_db_user "$(pg_bin)/pg_ctl" -D "$cluster/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$cluster" "$dir/postgres.path"
  fi
}

case "$action" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: services.sh start|stop DIR" >&2; exit 2 ;;
esac
