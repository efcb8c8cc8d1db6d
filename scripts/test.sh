#!/usr/bin/env bash
# Set up and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY="${PYTHON:-python3}"
"$PY" -m ruff check ssa_engine ssa_admin tests bench examples scripts
"$PY" -m mypy            # strict on ssa_engine/protocol and ssa_engine/policy
export PYTHONASYNCIODEBUG=1
export SSA_REQUIRE_PEBBLE=1  # the ACME tests fail, not skip, without .tools/pebble
exec "${PYTHON:-python3}" -m pytest -q -W error::ResourceWarning -p no:cacheprovider tests "$@"
