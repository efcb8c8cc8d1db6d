#!/usr/bin/env bash
# Install Pebble (Let's Encrypt's test ACME server) and pebble-challtestsrv
# into .tools/pebble/ for the ACME tests (tests/acme_server.py).
#
# Debian's stable `pebble` is too old (no ACME profiles, no ARI override), so
# this fetches the `pebble` package of Debian's `sid` suite with
# `apt-get download`, through a temporary sources list that points at the
# machine's own Debian mirror, and unpacks it with `dpkg -x` (the binaries are
# static Go programs). The system's apt state (sources, lists, cache) is left
# untouched and nothing is installed system-wide, so neither root nor sudo is
# required.
#
# Result:
#   .tools/pebble/usr/bin/pebble
#   .tools/pebble/usr/bin/pebble-challtestsrv
#   .tools/pebble/usr/share/doc/pebble/examples/*.json
#   .tools/pebble/VERSION           the Debian package version, e.g. 2.10.0+ds1-2
#
# Safe to run again: when a recent enough Pebble is already there it only
# prints its version. Exits non-zero with a message when it cannot download.
set -euo pipefail
cd "$(dirname "$0")/.."

# 2.8.0 added the management API's /set-renewal-info/ (ARI windows set by the
# tests); profiles came in 2.7.0. Upstream's version is not in the binary
# (`pebble -version` prints "dev" in Debian's build), hence the VERSION file.
MIN_VERSION="2.8.0"
DEST=.tools/pebble
SUITE="${SSA_PEBBLE_SUITE:-sid}"

have_version() {
    [ -x "$DEST/usr/bin/pebble" ] && [ -x "$DEST/usr/bin/pebble-challtestsrv" ] \
        && [ -s "$DEST/VERSION" ] \
        && dpkg --compare-versions "$(cat "$DEST/VERSION")" ge "$MIN_VERSION"
}

if have_version; then
    echo "get-pebble: pebble $(cat "$DEST/VERSION") already in $DEST"
    exit 0
fi

fail() {
    echo "get-pebble: $*" >&2
    echo "get-pebble: the ACME tests need Pebble >= $MIN_VERSION in $DEST" >&2
    exit 1
}

for tool in apt-get apt-cache dpkg dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing (this script needs a Debian system)"
done

# The machine's own Debian mirror: the first non-security "deb" URI of the
# deb822 sources (/etc/apt/sources.list.d/*.sources), else of the one-line
# sources (/etc/apt/sources.list, /etc/apt/sources.list.d/*.list).
mirror=""
keyring=""
shopt -s nullglob
for f in /etc/apt/sources.list.d/*.sources; do
    # one stanza per paragraph; keep Types, URIs, Suites, Signed-By
    read -r mirror keyring < <(awk '
        function flush() {
            if (types ~ /(^| )deb( |$)/ && uris != "" && suites !~ /-security/ && uris !~ /security/) {
                split(uris, u, " "); print u[1], (signed == "" ? "-" : signed); found = 1; exit
            }
            types = uris = suites = signed = ""
        }
        /^[ \t]*#/ { next }
        /^[ \t]*$/ { flush(); next }
        /^Types:/     { sub(/^Types:[ \t]*/, "");     types = $0 }
        /^URIs:/      { sub(/^URIs:[ \t]*/, "");      uris = $0 }
        /^Suites:/    { sub(/^Suites:[ \t]*/, "");    suites = $0 }
        /^Signed-By:/ { sub(/^Signed-By:[ \t]*/, ""); signed = $0 }
        END { if (!found) flush() }
    ' "$f") || true
    [ -n "$mirror" ] && break
done
if [ -z "$mirror" ]; then
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [options] URI suite components...
        mirror=$(awk '$1 == "deb" {
                i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($i !~ /security/ && $(i+1) !~ /-security/) { print $i; exit }
            }' "$f")
        [ -n "$mirror" ] && break
    done
fi
shopt -u nullglob
[ -n "$mirror" ] || fail "found no Debian mirror in /etc/apt/sources.list{,.d/}"
# Signed-By may be a file or an inline key block; only a file is usable here
if [ -z "$keyring" ] || [ "$keyring" = "-" ] || [ ! -f "$keyring" ]; then
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
fi
[ -f "$keyring" ] || fail "no Debian archive keyring at $keyring"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/parts" "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/dl" "$tmp/root"
echo "deb [signed-by=$keyring] $mirror $SUITE main" >"$tmp/sources.list"
arch=$(dpkg --print-architecture)
apt_opts=(
    -o "Dir::Etc::sourcelist=$tmp/sources.list"
    -o "Dir::Etc::sourceparts=$tmp/parts"
    -o "Dir::Etc::preferences=$tmp/preferences"
    -o "Dir::Etc::preferencesparts=$tmp/parts"
    -o "Dir::State::Lists=$tmp/lists"
    -o "Dir::Cache=$tmp/cache"
    -o "APT::Architectures=$arch"
    -o "APT::Default-Release="
    -o "Acquire::Languages=none"
    -o "Acquire::Retries=2"
    -o "Acquire::http::Timeout=30"
    -o "Debug::NoLocking=true"
    # the temporary directory is not readable by apt's unprivileged _apt user
    -o "APT::Sandbox::User=root"
)

echo "get-pebble: fetching the $SUITE package index from $mirror" >&2
if ! apt-get "${apt_opts[@]}" -qq update >"$tmp/update.log" 2>&1; then
    cat "$tmp/update.log" >&2
    fail "apt-get update of $mirror $SUITE failed (no network, or the mirror has no $SUITE?)"
fi
if grep -q '^[WE]: Failed to fetch' "$tmp/update.log"; then
    cat "$tmp/update.log" >&2
    fail "cannot download the $SUITE package index from $mirror (no network?)"
fi
version=$(apt-cache "${apt_opts[@]}" show pebble 2>/dev/null \
    | awk '/^Version:/ { print $2; exit }') || true
if [ -z "$version" ]; then
    cat "$tmp/update.log" >&2
    fail "no pebble package in $mirror $SUITE (index download failed?)"
fi
dpkg --compare-versions "$version" ge "$MIN_VERSION" \
    || fail "$SUITE has pebble $version, older than $MIN_VERSION"

echo "get-pebble: downloading pebble $version" >&2
(cd "$tmp/dl" && apt-get "${apt_opts[@]}" -qq download "pebble=$version") >"$tmp/download.log" 2>&1 || {
    cat "$tmp/download.log" >&2
    fail "apt-get download pebble=$version failed"
}
deb=("$tmp"/dl/pebble_*.deb)
[ -f "${deb[0]}" ] || fail "apt-get download left no .deb"
dpkg -x "${deb[0]}" "$tmp/root"
for bin in pebble pebble-challtestsrv; do
    [ -x "$tmp/root/usr/bin/$bin" ] || fail "the pebble $version package has no usr/bin/$bin"
done
"$tmp/root/usr/bin/pebble" -version >/dev/null || fail "the downloaded pebble does not run here"
echo "$version" >"$tmp/root/VERSION"

mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST.old"
[ -e "$DEST" ] && mv "$DEST" "$DEST.old"
mv "$tmp/root" "$DEST"
rm -rf "$DEST.old"
echo "get-pebble: pebble $version installed in $DEST"
