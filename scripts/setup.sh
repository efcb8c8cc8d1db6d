#!/usr/bin/env bash
# Install everything ssa needs on a fresh Debian machine: the system tools the
# tests and the demo use as TLS peers, then ssa itself with its test extras.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in openssl curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
command -v knotd >/dev/null 2>&1 || [ -x /usr/sbin/knotd ] || missing+=(knot)  # the RFC 2136 tests' DNS server
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]} with apt-get" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: ssa needs Python 3.11 or newer ($PYTHON is $("$PYTHON" -V 2>&1))" >&2
    exit 1
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    -e '.[test]'

# sslyze grades the engine's servers in the tests. It pins an older
# cryptography than ssa needs, so it lives in its own virtual environment.
if [ ! -x .tools/sslyze/bin/sslyze ]; then
    echo "setup: installing sslyze into .tools/sslyze" >&2
    "$PYTHON" -m venv .tools/sslyze
    .tools/sslyze/bin/pip install --quiet --disable-pip-version-check sslyze
fi
bash scripts/get-pebble.sh  # Pebble and pebble-challtestsrv, a real ACME server for the tests
