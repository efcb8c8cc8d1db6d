#!/usr/bin/env bash
# Set up and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONASYNCIODEBUG=1
exec "${PYTHON:-python3}" -m pytest -q -W error::ResourceWarning -p no:cacheprovider tests "$@"
