#!/usr/bin/env bash
# The test command README.md gives, and what CI runs: installs what is missing
# (nats-server; PostgreSQL when root; the deployment tests' Python packages), then format
# check, the deployment files' tests, clippy, every test against real nats-server and
# PostgreSQL processes, and the Docker images and compose stacks (scripts/docker-test.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# A CI machine's disk is shared and not large: a run once stopped on "No space left on
# device" in its tests. Every cargo below (the generated crates' builds included, which
# share this target directory) builds once from scratch, so incremental state is dead
# weight, and line tables (for backtraces) are all the debug info a test failure needs.
# Both cut the target directory by more than half; local builds outside this script keep
# their own settings, so the first run here rebuilds once.
export CARGO_INCREMENTAL=0
export CARGO_PROFILE_DEV_DEBUG=line-tables-only
export CARGO_PROFILE_TEST_DEBUG=line-tables-only

disk_report() {
  echo "--- disk: $(df -h --output=avail "$root" | tail -1 | tr -d ' ') free; target $(du -sh "$root/target" 2>/dev/null | cut -f1)"
}

scripts/install-deps.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> generated example workers are up to date (nomnom generate --check)"
for example in tpch github fhir; do
  cargo run --quiet --locked -p nomnom-codegen -- generate --check \
    --entities "examples/$example/entities.yaml" --output "examples/$example/worker" \
    --runtime-path ../../../runtime
done

disk_report
echo "==> deployment files (compose, Dockerfiles, Helm chart) checked statically"
.tools/venv/bin/python -m pytest -q -p no:cacheprovider deploy/tests

disk_report
echo "==> cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

disk_report
echo "==> benchmark harness, quick mode (checks it runs; its figures mean nothing)"
cargo run --quiet --locked -p nomnom-bench -- --quick

disk_report
echo "==> tests"
# Doc tests first: nextest's summary (the real count) must be the last word of the Rust tests.
cargo test --workspace --locked --doc --quiet
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --profile ci
else
  cargo test --workspace --locked
fi

disk_report
echo "==> the images built and the compose stacks run with a Docker engine (scripts/docker-test.sh)"
# Last: it needs root (it installs and starts its own dockerd), and it runs the TPC-H data
# generator and nomnom, built by now.
scripts/docker-test.sh
disk_report
