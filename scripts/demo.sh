#!/usr/bin/env bash
# The main job on embedded defaults: set up, start an engine with no
# configuration, and make a real TLS round trip through it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" scripts/demo.py "$@"
