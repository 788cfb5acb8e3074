#!/usr/bin/env bash
# The reliability and security suite in its full, slow form: longer outages and more
# crashes than the quick form that scripts/test.sh (and so CI) runs. See
# docs/reliability.md for each scenario. Extra arguments go to cargo nextest, e.g.
#   scripts/reliability.sh -E 'test(cluster)'
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/install-deps.sh
export NOMNOM_RELIABILITY=full
# More random specs compiled by the generator fuzz test.
export NOMNOM_FUZZ_SPECS="${NOMNOM_FUZZ_SPECS:-20}"
exec cargo nextest run --workspace --locked --profile ci --no-fail-fast \
  -E 'binary(crashes) | binary(cluster) | binary(faults) | binary(delivery) | binary(process) | binary(ingest) | binary(endpoints) | binary(fuzz)' \
  "$@"
