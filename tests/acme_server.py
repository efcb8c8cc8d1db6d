"""A real ACME server for the tests: Pebble and pebble-challtestsrv.

`scripts/get-pebble.sh` (run by `scripts/setup.sh`) unpacks Debian sid's
`pebble` package into `.tools/pebble/`. The fixtures here start, per pytest
session:

``pebble``
    Pebble with ACME profiles (``default``: 90 days, ``shortlived``: 6 days;
    an order that names no profile gets one of them at random, Pebble's choice),
    ARI (the directory's ``renewalInfo``; windows can be forced with
    `PebbleServer.set_renewal_info`), no EAB, no badNonce rejections, no
    authorization reuse, no Retry-After, and its own pebble-challtestsrv as
    DNS server: every name resolves to 127.0.0.1 (A) and has no AAAA, unless a
    test says otherwise with `PebbleServer.set_dns_a`. Pebble's validation
    authority connects to ``http_port`` for http-01 and ``tls_port`` for
    tls-alpn-01 (free unprivileged ports: pass them as ``--http-port`` and
    ``--tls-port``); challtestsrv's own http-01/tls-alpn-01/DoH responders are
    off, the client under test answers the challenges itself.
``pebble_eab``
    A second, independent Pebble (own ports, own challtestsrv) that requires
    External Account Binding: ``eab_kid``/``eab_hmac_key`` (and ``eab_keys``,
    every pair it accepts).

Tests that need another configuration (badNonce rejections, Retry-After,
authorization reuse, alternate roots, a longer chain) start their own with
`start_pebble` (a context manager).

Without `.tools/pebble` the fixtures skip, or fail when ``SSA_REQUIRE_PEBBLE``
is set (CI sets it in scripts/test.sh).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import random
import socket
import ssl
import struct
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from .pki import CA

REPO = Path(__file__).resolve().parent.parent
PEBBLE_DIR = REPO / ".tools" / "pebble"
PEBBLE_BIN = PEBBLE_DIR / "usr" / "bin" / "pebble"
CHALLTESTSRV_BIN = PEBBLE_DIR / "usr" / "bin" / "pebble-challtestsrv"

#: the account binding the ``pebble_eab`` server accepts (HMAC key base64url, no padding)
EAB_KID = "ssa-test-kid-1"
EAB_HMAC_KEY = base64.urlsafe_b64encode(b"ssa test EAB HMAC key, 32 bytes!").rstrip(b"=").decode()
EAB_KEYS = {
    EAB_KID: EAB_HMAC_KEY,
    "ssa-test-kid-2":
        base64.urlsafe_b64encode(b"another EAB HMAC key for ssa-tst").rstrip(b"=").decode(),
}

DEFAULT_PROFILES: dict[str, dict[str, Any]] = {
    "default": {"description": "90-day certificates", "validityPeriod": 90 * 86400},
    "shortlived": {"description": "6-day certificates", "validityPeriod": 6 * 86400},
}

_USER_AGENT = "ssa-tests/acme_server"
_handed_out: set[int] = set()


# -- availability --------------------------------------------------------------------------------

def pebble_version() -> str | None:
    """The Debian version of the Pebble in .tools/pebble, or None when there is none."""
    version = PEBBLE_DIR / "VERSION"
    if PEBBLE_BIN.is_file() and CHALLTESTSRV_BIN.is_file() and version.is_file():
        return version.read_text().strip()
    return None


def require_pebble() -> str:
    """Skip the calling test (fail it when SSA_REQUIRE_PEBBLE is set) without Pebble."""
    version = pebble_version()
    if version is None:
        why = f"Pebble is not installed in {PEBBLE_DIR} (run scripts/get-pebble.sh)"
        if os.environ.get("SSA_REQUIRE_PEBBLE", "") not in ("", "0"):
            pytest.fail(f"{why}; SSA_REQUIRE_PEBBLE is set", pytrace=False)
        pytest.skip(why)
    return version


# -- ports ---------------------------------------------------------------------------------------

def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(*, udp: bool = False) -> int:
    """A free port on 127.0.0.1 (TCP, and UDP too if asked), below the ephemeral range.

    Ports outside the ephemeral range cannot be taken meanwhile by the local end
    of some outgoing connection, which matters for ports (like ``http_port``)
    that stay unbound until a test's challenge responder binds them.
    """
    low = max(_ephemeral_low(), 12000)
    for _ in range(500):
        port = random.randrange(10000, low)
        if port in _handed_out:
            continue
        kinds = [socket.SOCK_STREAM] + ([socket.SOCK_DGRAM] if udp else [])
        try:
            for kind in kinds:
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("found no free port")


# -- a little DNS client, to check challtestsrv answers (no dnspython needed) ---------------------

def _dns_query(server: tuple[str, int], name: str, qtype: int, timeout: float = 2.0) -> list[bytes]:
    """Rdata of the answers to one UDP query (1 = A, 16 = TXT)."""
    qid = random.randrange(1 << 16)
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query, server)
        resp, _ = s.recvfrom(4096)
    rid, flags, qd, an = struct.unpack("!HHHH", resp[:8])
    if rid != qid or flags & 0x8000 == 0:
        raise OSError("not a DNS answer to our query")
    if flags & 0xF:
        raise OSError(f"DNS rcode {flags & 0xF} for {name}")

    def skip_name(i: int) -> int:
        while resp[i]:
            if resp[i] & 0xC0 == 0xC0:
                return i + 2
            i += resp[i] + 1
        return i + 1

    i = 12
    for _ in range(qd):
        i = skip_name(i) + 4
    out = []
    for _ in range(an):
        i = skip_name(i)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", resp[i:i + 10])
        i += 10
        if rtype == qtype:
            out.append(resp[i:i + rdlen])
        i += rdlen
    return out


# -- the server ----------------------------------------------------------------------------------

def _serial_hex(serial_or_pem: int | str | bytes | x509.Certificate) -> str:
    if isinstance(serial_or_pem, x509.Certificate):
        return f"{serial_or_pem.serial_number:x}"
    if isinstance(serial_or_pem, int):
        return f"{serial_or_pem:x}"
    text = serial_or_pem.decode() if isinstance(serial_or_pem, bytes) else serial_or_pem
    if "-----BEGIN CERTIFICATE-----" in text:
        return f"{x509.load_pem_x509_certificate(text.encode()).serial_number:x}"
    return f"{int(text.replace(':', ''), 16):x}"


def _dns01_name(host: str) -> str:
    host = host.rstrip(".")
    host = host.removeprefix("*.")
    if not host.startswith("_acme-challenge."):
        host = "_acme-challenge." + host
    return host + "."


class PebbleServer:
    """A running Pebble and its pebble-challtestsrv. Build with `start_pebble`."""

    #: ``https://127.0.0.1:<port>/dir``
    directory_url: str
    #: PEM of the CA that signed Pebble's HTTPS certificate (for ``--ca-bundle``)
    ca_bundle: Path
    #: the port Pebble's VA connects to for http-01 (on 127.0.0.1: what the names resolve to)
    http_port: int
    #: the port Pebble's VA connects to for tls-alpn-01
    tls_port: int
    #: challtestsrv's DNS port on 127.0.0.1 (UDP and TCP), Pebble's only resolver
    dns_port: int
    #: ``http://127.0.0.1:<port>``, challtestsrv's management API
    challtestsrv_api: str
    #: ``https://127.0.0.1:<port>``, Pebble's management API (same certificate as the ACME API)
    management_url: str

    def __init__(self, workdir: Path, *, eab_keys: dict[str, str] | None, nonce_reject: int,
                 authz_reuse: int, retry_after: tuple[int, int],
                 profiles: dict[str, dict[str, Any]], chain_length: int, alternate_roots: int,
                 key_algorithm: str, extra_env: dict[str, str] | None,
                 dns_server: str | None = None) -> None:
        self.version = require_pebble()
        #: Pebble's resolver when not challtestsrv ("HOST:PORT", e.g. a test's authoritative
        #: server); the set_dns_*/add_dns01/resolve_* helpers still talk to challtestsrv
        self.dns_server = dns_server
        self.workdir = workdir
        self.profiles = profiles
        self.eab_keys = dict(eab_keys or {})
        self.eab_kid: str | None = next(iter(self.eab_keys), None)
        self.eab_hmac_key: str | None = self.eab_keys.get(self.eab_kid or "")
        self.pebble_log = workdir / "pebble.log"
        self.challtestsrv_log = workdir / "challtestsrv.log"
        self.config_path = workdir / "pebble-config.json"
        self._procs: list[subprocess.Popen[bytes]] = []
        self._log_offset: dict[Path, int] = {}
        self._settings: dict[str, Any] = dict(
            eab_keys=self.eab_keys, retry_after=retry_after, profiles=profiles,
            key_algorithm=key_algorithm)
        # no proxy: Pebble's validation requests go to 127.0.0.1 whatever the name
        self._env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        self._env.update(
            PEBBLE_VA_NOSLEEP="1",
            PEBBLE_WFE_NONCEREJECT=str(nonce_reject),
            PEBBLE_AUTHZREUSE=str(authz_reuse),
            PEBBLE_CHAIN_LENGTH=str(chain_length),
            PEBBLE_ALTERNATE_ROOTS=str(alternate_roots),
        )
        self._env.update(extra_env or {})
        https_ca = CA(workdir, "pebble-https")
        self._https_pair = https_ca.issue("pebble-https", ["localhost", "127.0.0.1", "::1"],
                                          days_to=30)
        self.ca_bundle = https_ca.pem
        self._ssl = ssl.create_default_context(cafile=str(self.ca_bundle))
        started = time.monotonic()
        for attempt in range(3):  # new ports if one was taken meanwhile
            try:
                self._start()
                break
            except _PortClash:
                self.close()
                if attempt == 2:
                    raise
            except BaseException:
                self.close()
                raise
        #: seconds from the first process start to a directory that answers
        self.startup_seconds = time.monotonic() - started

    # process handling

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        # appended to, so that a failed attempt stays readable; _wait reads from here
        self._log_offset[log] = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self._env, cwd=self.workdir, start_new_session=True)
        self._procs.append(proc)
        return proc

    def _start(self) -> None:
        self.dns_port = free_port(udp=True)
        api_port = free_port()
        self.challtestsrv_api = f"http://127.0.0.1:{api_port}"
        challtestsrv = self._spawn([
            str(CHALLTESTSRV_BIN),
            "-dnsserver", f"127.0.0.1:{self.dns_port}",
            "-management", f"127.0.0.1:{api_port}",
            "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
            "-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", "",
        ], self.challtestsrv_log)
        self._wait(challtestsrv, self.challtestsrv_log, self._challtestsrv_ready)

        listen, management = free_port(), free_port()
        self.http_port, self.tls_port = free_port(), free_port()
        self.directory_url = f"https://127.0.0.1:{listen}/dir"
        self.management_url = f"https://127.0.0.1:{management}"
        s = self._settings
        config: dict[str, Any] = {
            "listenAddress": f"127.0.0.1:{listen}",
            "managementListenAddress": f"127.0.0.1:{management}",
            "certificate": str(self._https_pair.cert),
            "privateKey": str(self._https_pair.key),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": bool(s["eab_keys"]),
            "externalAccountMACKeys": s["eab_keys"],
            "domainBlocklist": ["blocked-domain.example"],
            "retryAfter": {"authz": s["retry_after"][0], "order": s["retry_after"][1]},
            "keyAlgorithm": s["key_algorithm"],
            "profiles": s["profiles"],
        }
        self.config_path.write_text(json.dumps({"pebble": config}, indent=2))
        pebble = self._spawn([str(PEBBLE_BIN), "-config", str(self.config_path),
                              "-dnsserver", self.dns_server or f"127.0.0.1:{self.dns_port}"],
                             self.pebble_log)
        self._wait(pebble, self.pebble_log, self._pebble_ready)

    def _wait(self, proc: subprocess.Popen[bytes], log: Path, ready: Callable[[], bool],
              timeout: float = 20.0) -> None:
        what = log.stem
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = proc.poll() is not None
            tail = self._log_since_start(log)
            # challtestsrv only logs a failed bind, Pebble exits
            if "address already in use" in tail:
                raise _PortClash(tail)
            if exited:
                raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail}")
            if ready():
                return
            time.sleep(0.02)
        tail = self._log_since_start(log)
        raise TimeoutError(f"{what} did not come up in {timeout}s:\n{tail}")

    def _log_since_start(self, log: Path) -> str:
        with open(log, "rb") as f:
            f.seek(self._log_offset.get(log, 0))
            return f.read().decode(errors="replace")[-3000:]

    def _challtestsrv_ready(self) -> bool:
        try:
            # the DNS server answers with the default address, the API takes a request
            if _dns_query(("127.0.0.1", self.dns_port), "ready.example.test", 1, 0.2) != [
                    bytes([127, 0, 0, 1])]:
                return False
            self._challtestsrv("/set-default-ipv4", {"ip": "127.0.0.1"})
            return True
        except (OSError, RuntimeError):
            return False

    def _pebble_ready(self) -> bool:
        try:
            # a short timeout: a port taken by someone else may accept and never answer
            status, body = self._request(self.directory_url, timeout=1.0)
            return status == 200 and "newAccount" in json.loads(body)
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()

    def __enter__(self) -> PebbleServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # HTTP helpers

    def _request(self, url: str, body: Any = None, *, timeout: float = 10.0) -> tuple[int, bytes]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(url, data=data, headers={"User-Agent": _USER_AGENT})
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if url.startswith("https:"):
            handlers.append(urllib.request.HTTPSHandler(context=self._ssl))
        try:
            with urllib.request.build_opener(*handlers).open(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read()

    def _get(self, url: str) -> str:
        status, body = self._request(url)
        if status != 200:
            raise OSError(f"GET {url}: HTTP {status}: {body[:300]!r}")
        return body.decode()

    def _challtestsrv(self, path: str, body: dict[str, Any]) -> None:
        status, text = self._request(self.challtestsrv_api + path, body)
        if status != 200:
            raise RuntimeError(f"challtestsrv {path} {body}: HTTP {status}: {text[:300]!r}")

    # Pebble's management API

    def roots_pem(self, n: int = 0) -> str:
        """The issuing root (n > 0: an alternate root, with alternate_roots=)."""
        return self._get(f"{self.management_url}/roots/{n}")

    def intermediates_pem(self, n: int = 0) -> str:
        """The intermediate under root n (with chain_length > 1, only the one next to the root)."""
        return self._get(f"{self.management_url}/intermediates/{n}")

    def cert_status(self, serial_or_pem: int | str | bytes | x509.Certificate) -> dict[str, Any] | None:
        """Pebble's record of a certificate it issued: ``{"Status": "Valid"|"Revoked",
        "Serial", "Certificate", "Reason" (revoked, if given), "RevokedAt"}``; None if unknown.

        Takes the serial (int, or hex with or without colons), a PEM or a certificate.
        """
        status, body = self._request(
            f"{self.management_url}/cert-status-by-serial/{_serial_hex(serial_or_pem)}")
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError(f"cert-status-by-serial: HTTP {status}: {body[:300]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def set_renewal_info(self, cert_pem: str | bytes, start: dt.datetime | None = None,
                         end: dt.datetime | None = None, *, explanation_url: str | None = None,
                         raw: str | None = None) -> None:
        """Make ARI (renewalInfo) answer this window for the certificate from now on.

        ``raw`` sends that body verbatim instead (even malformed JSON, to test a client's
        handling of it).
        """
        if raw is None:
            if start is None or end is None:
                raise ValueError("start and end, or raw, are required")
            info: dict[str, Any] = {"suggestedWindow": {
                "start": start.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "end": end.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}}
            if explanation_url:
                info["explanationURL"] = explanation_url
            raw = json.dumps(info)
        pem = cert_pem.decode() if isinstance(cert_pem, bytes) else cert_pem
        status, body = self._request(f"{self.management_url}/set-renewal-info/",
                                     {"Certificate": pem, "ARIResponse": raw})
        if status != 200:
            raise RuntimeError(f"set-renewal-info: HTTP {status}: {body[:300]!r}")

    # challtestsrv: DNS data Pebble sees

    def set_dns_a(self, host: str, ip: str) -> None:
        """Answer A queries for host with ip (instead of the default 127.0.0.1)."""
        self._challtestsrv("/clear-a", {"host": host})
        self._challtestsrv("/add-a", {"host": host, "addresses": [ip]})

    def clear_dns_a(self, host: str) -> None:
        """Back to the default answer, 127.0.0.1."""
        self._challtestsrv("/clear-a", {"host": host})

    def add_dns01(self, host: str, value: str) -> None:
        """Add a TXT record at ``_acme-challenge.<host>`` (host: the identifier, ``*.`` allowed,
        or the full ``_acme-challenge.`` name). Values accumulate until `clear_dns01`."""
        self._challtestsrv("/set-txt", {"host": _dns01_name(host), "value": value})

    def clear_dns01(self, host: str) -> None:
        self._challtestsrv("/clear-txt", {"host": _dns01_name(host)})

    def resolve_a(self, host: str) -> list[str]:
        """What challtestsrv answers Pebble for ``host A``."""
        return [".".join(map(str, r)) for r in _dns_query(("127.0.0.1", self.dns_port), host, 1)]

    def resolve_txt(self, name: str) -> list[str]:
        """What challtestsrv answers for ``name TXT`` (character-strings joined)."""
        out = []
        for rdata in _dns_query(("127.0.0.1", self.dns_port), name, 16):
            parts, i = [], 0
            while i < len(rdata):
                parts.append(rdata[i + 1:i + 1 + rdata[i]].decode())
                i += 1 + rdata[i]
            out.append("".join(parts))
        return out


class _PortClash(RuntimeError):
    pass


@contextlib.contextmanager
def start_pebble(workdir: Path, *, eab_keys: dict[str, str] | None = None, nonce_reject: int = 0,
                 authz_reuse: int = 0, retry_after: tuple[int, int] = (0, 0),
                 profiles: dict[str, dict[str, Any]] | None = None, chain_length: int = 1,
                 alternate_roots: int = 0, key_algorithm: str = "ecdsa",
                 extra_env: dict[str, str] | None = None,
                 dns_server: str | None = None) -> Iterator[PebbleServer]:
    """Run a Pebble (and its challtestsrv) in workdir for the duration of the block.

    nonce_reject: percentage of good nonces Pebble rejects as badNonce
    (PEBBLE_WFE_NONCEREJECT; Pebble's own default is 5). authz_reuse: percentage
    of orders that reuse a valid authorization (PEBBLE_AUTHZREUSE; Pebble's
    default 50 would make challenge counts random). retry_after: the Retry-After
    seconds Pebble sends on (authz, order) polls, 0 = none. key_algorithm: of
    Pebble's root and intermediates, "ecdsa" or "rsa". dns_server: "HOST:PORT" of
    the DNS server Pebble resolves every name with, instead of its challtestsrv.
    """
    server = PebbleServer(
        workdir, eab_keys=eab_keys, nonce_reject=nonce_reject, authz_reuse=authz_reuse,
        retry_after=retry_after, profiles=profiles or DEFAULT_PROFILES, chain_length=chain_length,
        alternate_roots=alternate_roots, key_algorithm=key_algorithm, extra_env=extra_env,
        dns_server=dns_server)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleServer]:
    """A Pebble for the whole session (see the module's docstring)."""
    require_pebble()
    with start_pebble(tmp_path_factory.mktemp("pebble")) as server:
        yield server


@pytest.fixture(scope="session")
def pebble_eab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleServer]:
    """A Pebble that requires External Account Binding (``eab_kid``, ``eab_hmac_key``)."""
    require_pebble()
    with start_pebble(tmp_path_factory.mktemp("pebble-eab"), eab_keys=EAB_KEYS) as server:
        yield server
