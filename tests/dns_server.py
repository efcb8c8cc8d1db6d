"""A real authoritative DNS server for the dns-01 (RFC 2136) tests: Knot DNS.

`scripts/setup.sh` installs Debian's ``knot``. `start_knot` runs ``knotd`` on
127.0.0.1, on a free port (UDP and TCP), as the user running the tests, with
everything (configuration, zone files, databases, control socket) in a
folder of the test's. It serves two zones:

``acme.test.``
    SOA, NS ``ns.acme.test.``, A records to 127.0.0.1 for the zone's apex and
    every name in `HOSTS`. The TSIG key `KnotServer.key_name` (hmac-sha256, a
    random secret per server) may update TXT records, and nothing else, at
    ``_acme-challenge.<host>`` for the apex and each of `HOSTS` (Knot 3.2 has
    no wildcard owner match, so the names are listed: Knot's
    ``update-owner: name`` with ``update-owner-match: equal``); any other
    update is refused. ``_acme-challenge.alias.acme.test.`` is a CNAME to
    ``_acme-challenge.delegated.acme.test.`` (dns-01 delegated by CNAME).
``locked.test.``
    The same records, but no key may update it.

`start_knot_pair` runs two: a primary as above that also serves ``sec.test.``
and ``lag.test.`` (NS ``ns1`` 127.0.0.1, the primary, and ``ns2`` 127.0.0.2,
the secondary; the key may update them like acme.test.), and a secondary on
127.0.0.2 that transfers ``sec.test.`` from the primary after each NOTIFY,
and serves a static copy of ``lag.test.`` that never changes. The secondary
listens on its own port, not 53: point `Dns01Rfc2136.ns_port` at it.

Knot answers a refused update with NOTAUTH and the TSIG error BADKEY (BIND
answers REFUSED); an unknown key or algorithm gets BADKEY too, a wrong
secret BADSIG.

Without ``knotd`` the fixture skips, or fails when ``SSA_REQUIRE_PEBBLE`` or
``SSA_REQUIRE_KNOT`` is set (CI sets the first in scripts/test.sh).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .acme_server import free_port

#: names under acme.test. (and locked.test.) with an A record, whose _acme-challenge TXT the
#: key may update in acme.test.
HOSTS = ("www", "api", "one", "two", "delegated")
ZONE = "acme.test."
LOCKED_ZONE = "locked.test."
KEY_NAME = "ssa-acme-update."


def knotd_path() -> str | None:
    found = shutil.which("knotd")
    if found:
        return found
    return "/usr/sbin/knotd" if os.access("/usr/sbin/knotd", os.X_OK) else None


def require_knot() -> str:
    """Skip the calling test (fail it in CI) without Knot DNS."""
    path = knotd_path()
    if path is None:
        why = "Knot DNS (knotd) is not installed (scripts/setup.sh installs Debian's knot)"
        if any(os.environ.get(v, "") not in ("", "0")
               for v in ("SSA_REQUIRE_PEBBLE", "SSA_REQUIRE_KNOT")):
            pytest.fail(f"{why}; SSA_REQUIRE_PEBBLE/SSA_REQUIRE_KNOT is set", pytrace=False)
        pytest.skip(why)
    return path


SECONDARY_ZONE = "sec.test."
LAGGING_ZONE = "lag.test."


def _zone_text(origin: str, *, two_ns: bool = False) -> str:
    ns = ["@ NS ns1", "@ NS ns2", "ns1 A 127.0.0.1", "ns2 A 127.0.0.2"] if two_ns else \
        ["@ NS ns", "ns A 127.0.0.1"]
    lines = [f"$ORIGIN {origin}", "$TTL 60",
             f"@ SOA {ns[0].split()[-1]}.{origin} hostmaster.{origin} 1 3600 600 86400 60",
             *ns, "@ A 127.0.0.1", "alias A 127.0.0.1"]
    lines += [f"{host} A 127.0.0.1" for host in HOSTS]
    lines.append("_acme-challenge.alias CNAME _acme-challenge.delegated")
    return "\n".join(lines) + "\n"


class KnotServer:
    """A running knotd. Build with `start_knot`."""

    #: "127.0.0.1:PORT", for --dns-server and Pebble's -dnsserver
    address: str
    port: int
    #: a BIND-style key file (mode 0600) with the update key
    key_file: Path

    def __init__(self, workdir: Path, knotd: str, *, host: str = "127.0.0.1",
                 port: int | None = None, key_secret: str | None = None,
                 zones: dict[str, str] | None = None, zone_files: dict[str, str] | None = None,
                 remotes: dict[str, str] | None = None, acls: str = "") -> None:
        """zones: zone -> its settings (YAML lines, default: acme.test. and locked.test. as
        in the module's docstring); zone_files: zone -> text (none: a secondary's zone, or
        the default records); remotes: id -> "ADDRESS@PORT"; acls: more acl entries."""
        self.workdir = workdir
        self.knotd = knotd
        self.host = host
        self._fixed_port = port
        self.zones = zones if zones is not None else {
            ZONE: "acl: acme-challenge-txt", LOCKED_ZONE: ""}
        self.remotes = remotes or {}
        self.acls = acls
        self.key_name = KEY_NAME
        self.key_algorithm = "hmac-sha256"
        self.key_secret = key_secret or base64.b64encode(os.urandom(32)).decode()
        self.key_file = workdir / "update.key"
        self.key_file.write_text(f'key "{self.key_name}" {{\n\talgorithm {self.key_algorithm};\n'
                                 f'\tsecret "{self.key_secret}";\n}};\n')
        self.key_file.chmod(0o600)
        self.log = workdir / "knotd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        for d in ("run", "db", "zones"):
            (workdir / d).mkdir(exist_ok=True)
        files = zone_files if zone_files is not None else {z: _zone_text(z) for z in self.zones}
        for zone, text in files.items():
            (workdir / "zones" / f"{zone.rstrip('.')}.zone").write_text(text)
        for attempt in range(3):  # a new port if one was taken meanwhile
            try:
                self._start()
                break
            except _PortClash:
                self.close()
                if attempt == 2 or port is not None:
                    raise
            except BaseException:
                self.close()
                raise

    def _config(self) -> str:
        owners = ", ".join(["_acme-challenge"] + [f"_acme-challenge.{h}" for h in HOSTS])
        w = self.workdir
        remotes = "".join(f"  - id: {rid}\n    address: {address}\n"
                          for rid, address in self.remotes.items())
        zones = "".join(f"  - domain: {zone}\n" + "".join(f"    {line}\n" for line in
                                                      settings.splitlines() if line.strip())
                        for zone, settings in self.zones.items())
        return f"""\
server:
    rundir: "{w / 'run'}"
    listen: {self.host}@{self.port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: info
database:
    storage: "{w / 'db'}"
key:
  - id: {self.key_name}
    algorithm: {self.key_algorithm}
    secret: {self.key_secret}
acl:
  - id: acme-challenge-txt
    key: {self.key_name}
    action: update
    update-type: TXT
    update-owner: name
    update-owner-match: equal
    update-owner-name: [{owners}]
{self.acls}{"remote:" + chr(10) + remotes if remotes else ""}template:
  - id: default
    storage: "{w / 'zones'}"
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
{zones}"""

    def _start(self) -> None:
        self.port = self._fixed_port or free_port(udp=True)
        self.address = f"{self.host}:{self.port}"
        config = self.workdir / "knot.conf"
        config.write_text(self._config())
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self._proc = subprocess.Popen([self.knotd, "-c", str(config)], stdout=out,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with open(self.log, "rb") as f:
                f.seek(offset)
                tail = f.read().decode(errors="replace")
            if "Address already in use" in tail or "address already in use" in tail:
                raise _PortClash(tail)
            if self._proc.poll() is not None:
                raise RuntimeError(f"knotd exited with {self._proc.returncode}:\n{tail[-3000:]}")
            if self._ready():
                return
            time.sleep(0.02)
        raise TimeoutError(f"knotd did not come up in 20 s:\n{tail[-3000:]}")

    def _ready(self) -> bool:
        import dns.exception
        import dns.message
        import dns.query

        try:
            for zone in self.zones:
                r = dns.query.udp(dns.message.make_query(zone, "SOA"), self.host,
                                  port=self.port, timeout=0.2)
                if not r.answer:
                    return False
            return True
        except (OSError, dns.exception.DNSException):
            return False

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> KnotServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # what the server answers (unsigned queries, as a CA would ask)

    def txt(self, name: str) -> list[str]:
        """The TXT values at ``name`` (character-strings joined), sorted."""
        import dns.message
        import dns.query
        import dns.rdatatype

        qname = name if name.endswith(".") else name + "."
        r = dns.query.tcp(dns.message.make_query(qname, "TXT"), self.host, port=self.port,
                          timeout=5)
        return sorted(b"".join(rd.strings).decode() for rrset in r.answer
                      if rrset.rdtype == dns.rdatatype.TXT and rrset.name.to_text() == qname
                      for rd in rrset)

    def update(self, zone: str, name: str, *, add: str | None = None,
               delete: str | None = None) -> None:
        """Add or delete one TXT value with the update key (test set-up)."""
        import dns.query
        import dns.rcode
        import dns.tsig
        import dns.update

        u = dns.update.UpdateMessage(zone)
        u.use_tsig(dns.tsig.Key(self.key_name, self.key_secret, self.key_algorithm))
        if add is not None:
            u.add(name, 60, "TXT", f'"{add}"')
        if delete is not None:
            u.delete(name, "TXT", f'"{delete}"')
        r = dns.query.tcp(u, self.host, port=self.port, timeout=5)
        if r.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(f"update {name}: {dns.rcode.to_text(r.rcode())}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class _PortClash(RuntimeError):
    pass


@contextlib.contextmanager
def start_knot(workdir: Path) -> Iterator[KnotServer]:
    """Run a knotd in workdir for the duration of the block (see the module's docstring)."""
    server = KnotServer(workdir, require_knot())
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def start_knot_pair(workdir: Path) -> Iterator[tuple[KnotServer, KnotServer]]:
    """A primary and a secondary (see the module's docstring): (primary, secondary)."""
    knotd = require_knot()
    secondary_port = free_port(udp=True)
    two_ns = {z: _zone_text(z, two_ns=True) for z in (SECONDARY_ZONE, LAGGING_ZONE)}
    (workdir / "primary").mkdir()
    (workdir / "secondary").mkdir()
    primary = KnotServer(
        workdir / "primary", knotd,
        zones={ZONE: "acl: acme-challenge-txt", LOCKED_ZONE: "",
               SECONDARY_ZONE: "acl: [acme-challenge-txt, transfer-out]\nnotify: secondary",
               LAGGING_ZONE: "acl: acme-challenge-txt"},
        zone_files={ZONE: _zone_text(ZONE), LOCKED_ZONE: _zone_text(LOCKED_ZONE), **two_ns},
        remotes={"secondary": f"127.0.0.2@{secondary_port}"},
        acls="  - id: transfer-out\n    address: 127.0.0.0/8\n    action: transfer\n")
    try:
        secondary = KnotServer(
            workdir / "secondary", knotd, host="127.0.0.2", port=secondary_port,
            key_secret=primary.key_secret,
            zones={SECONDARY_ZONE: "master: primary\nacl: notify-in", LAGGING_ZONE: ""},
            zone_files={LAGGING_ZONE: two_ns[LAGGING_ZONE]},
            remotes={"primary": f"127.0.0.1@{primary.port}"},
            acls="  - id: notify-in\n    address: 127.0.0.1\n    action: notify\n")
    except BaseException:
        primary.close()
        raise
    try:
        yield primary, secondary
    finally:
        secondary.close()
        primary.close()


@pytest.fixture(scope="session")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    """A Knot DNS server for the whole session, serving acme.test. and locked.test."""
    require_knot()
    with start_knot(tmp_path_factory.mktemp("knot")) as server:
        yield server
