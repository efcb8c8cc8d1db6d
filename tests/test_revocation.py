"""Revocation (issue 6, item 4): client checks and server OCSP stapling, with real peers.

Real parts: ``openssl ocsp`` answers from an index.txt written at test time,
CRLs signed at test time are served over HTTP by a stdlib server,
``openssl s_server -status_file`` staples, ``openssl s_client -status`` reads
what an SSA listener staples, and every certificate is issued (and revoked)
by a CA made for the test, with AIA and CRL distribution points pointing at
127.0.0.1 ports. Responses that no real responder would produce (a stale
one) are built with ``cryptography`` and served by the stdlib server.

The pure parts (validation of OCSP responses and CRLs, the HTTP response
parser, what an application may switch) are tested in-process at the end.
"""

from __future__ import annotations

import datetime as dt
import errno
import http.server
import subprocess
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

import ssa_engine
from ssa_engine import IPPROTO_TLS, TLS_ERROR
from ssa_engine.config import yamlio
from ssa_engine.daemon import httpfetch, revstatus
from ssa_engine.policy.enforce import (
    AppRequests,
    PolicyViolation,
    check_revocation,
    effective_revocation,
)
from ssa_engine.policy.model import DEFAULT_POLICY, Layer, overlay
from ssa_engine.policy.schema import ConfigErrors, parse_document

from .conftest import EngineProcess, free_port, is_listening, server_context, wait_for
from .pki import CA, NOW, Pair

UTC = dt.UTC
DER = serialization.Encoding.DER


# -- the CA, its responder and its CRL ----------------------------------------------------------
@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CA:
    authority = CA(tmp_path_factory.mktemp("revca"), "Rev")
    key_path = authority.dir / "Rev-ca.key"
    key_path.write_bytes(authority.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    authority.key_path = key_path  # type: ignore[attr-defined]
    return authority


def load(pair: Pair) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pair.cert.read_bytes())


def index_line(cert: x509.Certificate, revoked: str | None = None) -> str:
    """One line of openssl's index.txt; ``revoked`` is a reason name (keyCompromise)."""
    expiry = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
    serial = f"{cert.serial_number:X}"
    serial = "0" * (len(serial) % 2) + serial
    subject = "/" + "/".join(reversed(cert.subject.rfc4514_string().split(",")))
    if revoked is None:
        return f"V\t{expiry}\t\t{serial}\tunknown\t{subject}\n"
    when = (NOW - dt.timedelta(hours=1)).strftime("%y%m%d%H%M%SZ")
    return f"R\t{expiry}\t{when},{revoked}\t{serial}\tunknown\t{subject}\n"


class Responder:
    """``openssl ocsp`` answering from an index written at test time."""

    def __init__(self, directory: Path, ca: CA, lines: list[str], *args: str,
                 signer: tuple[Path, Path] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        index = directory / f"index-{self.port}.txt"
        index.write_text("".join(lines))
        cert, key = signer or (ca.pem, ca.key_path)  # type: ignore[attr-defined]
        self.log = directory / f"ocsp-{self.port}.log"
        self._logf = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["openssl", "ocsp", "-index", str(index), "-port", str(self.port),
             "-rsigner", str(cert), "-rkey", str(key), "-CA", str(ca.pem), "-ndays", "1", *args],
            stdout=self._logf, stderr=subprocess.STDOUT)
        wait_for(self._listening, 10, "openssl ocsp")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError("openssl ocsp exited: " + self.log.read_text(errors="replace"))
        return is_listening(self.port)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._logf.close()


class HTTPFiles:
    """A stdlib HTTP server: GET serves ``files[path]``, POST answers ``post``; counts hits."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.post: bytes = b""
        self.hits: Counter[str] = Counter()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.hits[self.path] += 1
                self._send(outer.files.get(self.path))

            def do_POST(self) -> None:  # noqa: N802
                outer.hits["POST " + self.path] += 1
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._send(outer.post or None)

            def _send(self, body: bytes | None) -> None:
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def responders(tmp_path: Path, ca: CA) -> Iterator[Callable[..., Responder]]:
    started: list[Responder] = []

    def start(lines: list[str], *args: str, **kw: object) -> Responder:
        r = Responder(tmp_path, ca, lines, *args, **kw)  # type: ignore[arg-type]
        started.append(r)
        return r

    yield start
    for r in started:
        r.close()


@pytest.fixture
def http_files() -> Iterator[HTTPFiles]:
    srv = HTTPFiles()
    yield srv
    srv.close()


def make_crl(ca: CA, revoked: list[x509.Certificate], *, next_update: dt.timedelta = dt.timedelta(
        days=1), key: ec.EllipticCurvePrivateKey | None = None) -> x509.CertificateRevocationList:
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
               .last_update(min(NOW, NOW + next_update) - dt.timedelta(days=1))
               .next_update(NOW + next_update))
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
            .revocation_date(NOW - dt.timedelta(hours=1))
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build())
    return builder.sign(key or ca.key, hashes.SHA256())


def make_ocsp(ca: CA, cert: x509.Certificate, status: ocsp.OCSPCertStatus, *,
              this_update: dt.datetime | None = None, next_update: dt.datetime | None = None,
              signer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
              serial_of: x509.Certificate | None = None) -> bytes:
    """A DER OCSP response built with cryptography (for answers no responder gives)."""
    now = dt.datetime.now(UTC)
    revoked = status is ocsp.OCSPCertStatus.REVOKED
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=serial_of or cert, issuer=ca.cert, algorithm=hashes.SHA1(), cert_status=status,
        this_update=this_update or now - dt.timedelta(minutes=1),
        next_update=next_update if next_update is not None else now + dt.timedelta(days=1),
        revocation_time=now - dt.timedelta(hours=1) if revoked else None,
        revocation_reason=x509.ReasonFlags.key_compromise if revoked else None)
    cert_, key = signer or (ca.cert, ca.key)
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, cert_)
    if signer is not None:
        builder = builder.certificates([cert_])
    return builder.sign(key, hashes.SHA256()).public_bytes(DER)


def openssl_staple(tmp_path: Path, ca: CA, pair: Pair, lines: list[str]) -> Path:
    """A staple as ``openssl ocsp`` makes it: request, then a response from the index."""
    index = tmp_path / f"staple-index-{pair.cert.stem}.txt"
    index.write_text("".join(lines))
    req, resp = tmp_path / f"{pair.cert.stem}.req", tmp_path / f"{pair.cert.stem}.resp"
    subprocess.run(["openssl", "ocsp", "-issuer", str(ca.pem), "-cert", str(pair.cert),
                    "-reqout", str(req), "-no_nonce"], check=True, capture_output=True)
    subprocess.run(["openssl", "ocsp", "-index", str(index), "-rsigner", str(ca.pem),
                    "-rkey", str(ca.key_path), "-CA", str(ca.pem), "-reqin", str(req),  # type: ignore[attr-defined]
                    "-respout", str(resp), "-ndays", "1"], check=True, capture_output=True)
    return resp


# -- engines and clients ------------------------------------------------------------------------
def start_engine(engine_factory, monkeypatch, tmp_path: Path, revocation: str = "",  # type: ignore[no-untyped-def]
                 extra: str = "") -> EngineProcess:
    config = tmp_path / f"config-{time.monotonic_ns()}"
    (config / "profiles.d").mkdir(parents=True)
    text = (f"revocation:\n{textwrap.indent(textwrap.dedent(revocation), '  ')}"
            if revocation.strip() else "")
    (config / "ssa.yaml").write_text(text + textwrap.dedent(extra))
    eng = engine_factory("--config-dir", str(config), "--handshake-timeout", "10")
    monkeypatch.setenv("SSA_ENGINE_SOCKET", str(eng.socket))
    return eng


def connect(ca: CA, port: int, *, echo: bool = True, **options: int
            ) -> tuple[OSError | None, str]:
    """Connect to localhost:port; (None, "") on success, else the error and TLS_ERROR.

    ``echo``: the server echoes (stdlib servers); ``openssl s_server -quiet`` does not.
    """
    with ssa_engine.socket() as s:
        s.settimeout(30)
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, ca.pem)
        for name, value in options.items():
            s.setsockopt(IPPROTO_TLS, getattr(ssa_engine, name), value)
        try:
            s.connect(("localhost", port))
        except OSError as exc:
            return exc, s.getsockopt(IPPROTO_TLS, TLS_ERROR).decode()
        if echo:
            s.sendall(b"ping")
            assert s.recv(16) == b"ping"
        return None, ""


def refused(ca: CA, port: int, **options: int) -> str:
    exc, text = connect(ca, port, **options)
    assert exc is not None, "the connection was not refused"
    assert exc.errno == errno.EPROTO, exc
    return text


LOCAL = ["localhost", "127.0.0.1"]


# -- client: OCSP responder ---------------------------------------------------------------------
def test_good_certificate_passes_and_revoked_fails_via_the_responder(
        ca, responders, ssl_server, engine_factory, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    good = ca.issue("ocsp-good", LOCAL, ocsp_url=f"http://127.0.0.1:{port}")
    bad = ca.issue("ocsp-bad", LOCAL, ocsp_url=f"http://127.0.0.1:{port}")
    responders([index_line(load(good)), index_line(load(bad), "keyCompromise")], port=port)
    # hard: a connection that passes had an answer
    start_engine(engine_factory, monkeypatch, tmp_path, "checks: true\nmode: hard\n")
    assert connect(ca, ssl_server(server_context(good)).port) == (None, "")
    text = refused(ca, ssl_server(server_context(bad)).port)
    assert text.startswith("certificate revoked: "), text
    assert "reason keyCompromise" in text and f"serial {load(bad).serial_number:X}" in text
    assert f"according to the OCSP responder http://127.0.0.1:{port}" in text


def test_delegated_responder_needs_the_ocsp_signing_purpose(
        ca, responders, ssl_server, engine_factory, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    delegated = _responder_cert(ca, tmp_path, "delegate", ExtendedKeyUsageOID.OCSP_SIGNING)
    impostor = _responder_cert(ca, tmp_path, "impostor", ExtendedKeyUsageOID.SERVER_AUTH)
    ports = free_port(), free_port()
    good = ca.issue("deleg-good", LOCAL, ocsp_url=f"http://127.0.0.1:{ports[0]}")
    other = ca.issue("deleg-other", LOCAL, ocsp_url=f"http://127.0.0.1:{ports[1]}")
    responders([index_line(load(good))], signer=delegated, port=ports[0])
    responders([index_line(load(other))], signer=impostor, port=ports[1])
    start_engine(engine_factory, monkeypatch, tmp_path, "checks: true\nmode: hard\n")
    assert connect(ca, ssl_server(server_context(good)).port) == (None, "")
    text = refused(ca, ssl_server(server_context(other)).port)
    assert "revocation status unknown" in text and "did not authorize" in text, text


def _responder_cert(ca: CA, directory: Path, label: str,
                    purpose: x509.ObjectIdentifier) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, label)]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=5))
            .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
            .sign(ca.key, hashes.SHA256()))
    cert_path, key_path = directory / f"{label}.pem", directory / f"{label}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_responder_down_soft_fail_continues_and_hard_fail_refuses(
        ca, ssl_server, engine_factory, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    dead = free_port()  # nothing listens there
    pair = ca.issue("down", LOCAL, ocsp_url=f"http://127.0.0.1:{dead}/ocsp")
    srv = ssl_server(server_context(pair))
    soft = start_engine(engine_factory, monkeypatch, tmp_path, "checks: true\nmode: soft\n")
    assert connect(ca, srv.port) == (None, "")
    wait_for(lambda: "continuing (revocation.mode soft)" in soft.log.read_text(), 5, "the warning")
    log = soft.log.read_text()
    assert f"certificate revocation status unknown: http://127.0.0.1:{dead}/ocsp: cannot " \
           "connect" in log, log
    start_engine(engine_factory, monkeypatch, tmp_path, "checks: true\nmode: hard\n")
    text = refused(ca, srv.port)
    assert text.startswith("certificate revocation status unknown: "), text
    assert f"http://127.0.0.1:{dead}/ocsp: cannot connect" in text
    assert "requires an answer: revocation.mode hard" in text


def test_the_cache_answers_the_second_connection(
        ca, responders, ssl_server, engine_factory, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    pair = ca.issue("cached", LOCAL, ocsp_url=f"http://127.0.0.1:{port}")
    # the responder answers one request and exits: later answers can only be cached ones
    responder = responders([index_line(load(pair))], "-nrequest", "1", port=port)
    srv = ssl_server(server_context(pair))
    start_engine(engine_factory, monkeypatch, tmp_path, "checks: true\nmode: hard\n")
    assert connect(ca, srv.port) == (None, "")
    responder.proc.wait(10)  # it answered exactly one request
    assert connect(ca, srv.port) == (None, "")
    assert connect(ca, srv.port) == (None, "")
    # without the cache the engine must ask, and nobody answers any more
    text = refused(ca, srv.port, TLS_CACHED_REV_CHECKS=0)
    assert "revocation status unknown" in text and "cannot connect" in text, text


# -- client: CRL --------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["der", "pem"])
def test_revoked_via_the_crl_and_the_crl_is_fetched_once(
        encoding, ca, http_files, ssl_server, engine_factory, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"{http_files.url}/rev-{encoding}.crl"
    good = ca.issue(f"crl-good-{encoding}", LOCAL, crl_url=url)
    bad = ca.issue(f"crl-bad-{encoding}", LOCAL, crl_url=url)
    crl = make_crl(ca, [load(bad)])
    http_files.files[f"/rev-{encoding}.crl"] = crl.public_bytes(
        DER if encoding == "der" else serialization.Encoding.PEM)
    start_engine(engine_factory, monkeypatch, tmp_path, "checks: true\nmode: hard\n")
    good_port, bad_port = ssl_server(server_context(good)).port, ssl_server(server_context(bad)).port
    assert connect(ca, good_port) == (None, "")
    text = refused(ca, bad_port)
    assert text.startswith("certificate revoked: ") and "reason keyCompromise" in text, text
    assert f"according to the CRL {url}" in text
    assert connect(ca, good_port) == (None, "")
    assert http_files.hits[f"/rev-{encoding}.crl"] == 1  # cached until its nextUpdate


def intermediate(root: CA, directory: Path, name: str, crl_url: str) -> CA:
    """A CA under ``root`` whose certificate names ``crl_url`` (the root's CRL)."""
    inter = CA(directory, name)  # its own key and name; the certificate is replaced
    inter.cert = (
        x509.CertificateBuilder()
        .subject_name(inter.subject).issuer_name(root.subject)
        .public_key(inter.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=20))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                     False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(inter.key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root.key.public_key()),
                       critical=False)
        .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier(crl_url)], None, None, None)]), critical=False)
        .sign(root.key, hashes.SHA256()))
    inter.pem.write_bytes(inter.cert.public_bytes(serialization.Encoding.PEM))
    return inter


def test_scope_chain_checks_the_intermediate_ca(
        ca, http_files, ssl_server, engine_factory, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root_crl, leaf_crl = f"{http_files.url}/root.crl", f"{http_files.url}/inter.crl"
    inter = intermediate(ca, tmp_path, "Inter", root_crl)
    pair = inter.issue("chain-leaf", LOCAL, crl_url=leaf_crl)
    chain = tmp_path / "chain-leaf-full.pem"
    chain.write_bytes(pair.cert.read_bytes() + inter.pem.read_bytes())
    port = ssl_server(server_context(Pair(pair.cert, pair.key, chain))).port
    http_files.files["/inter.crl"] = make_crl(inter, []).public_bytes(DER)  # the leaf is good
    http_files.files["/root.crl"] = make_crl(ca, [inter.cert]).public_bytes(DER)

    # scope leaf (the default): the server's certificate alone is checked
    start_engine(engine_factory, monkeypatch, tmp_path, "checks: true\nmode: hard\n")
    assert connect(ca, port) == (None, "")
    assert http_files.hits["/inter.crl"] == 1 and http_files.hits["/root.crl"] == 0
    # scope chain: the intermediate is revoked by the root
    start_engine(engine_factory, monkeypatch, tmp_path,
                 "checks: true\nmode: hard\nscope: chain\n")
    text = refused(ca, port)
    assert text.startswith("intermediate CA certificate revoked: ") and "CN=Inter Root CA" in text
    assert f"according to the CRL {root_crl}" in text and "reason keyCompromise" in text
    # not revoked: both are checked, and the connection goes through
    http_files.files["/root.crl"] = make_crl(ca, []).public_bytes(DER)
    start_engine(engine_factory, monkeypatch, tmp_path,
                 "checks: true\nmode: hard\nscope: chain\n")
    assert connect(ca, port) == (None, "")
    assert http_files.hits["/root.crl"] == 2
    # the root's CRL cannot be had: hard mode names the intermediate
    del http_files.files["/root.crl"]
    start_engine(engine_factory, monkeypatch, tmp_path,
                 "checks: true\nmode: hard\nscope: chain\n")
    text = refused(ca, port)
    assert text.startswith("intermediate CA certificate revocation status unknown: "), text
    assert "(CN=Inter Root CA" in text


def test_a_crl_signed_by_another_key_or_stale_is_no_answer(
        ca, http_files, ssl_server, engine_factory, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    forged = f"{http_files.url}/forged.crl"
    stale = f"{http_files.url}/stale.crl"
    a = ca.issue("crl-forged", LOCAL, crl_url=forged)
    b = ca.issue("crl-stale", LOCAL, crl_url=stale)
    http_files.files["/forged.crl"] = make_crl(ca, [], key=ec.generate_private_key(
        ec.SECP256R1())).public_bytes(DER)
    http_files.files["/stale.crl"] = make_crl(ca, [], next_update=-dt.timedelta(hours=1)
                                              ).public_bytes(DER)
    start_engine(engine_factory, monkeypatch, tmp_path, "checks: true\nmode: hard\n")
    assert f"{forged}: bad signature" in refused(ca, ssl_server(server_context(a)).port)
    assert f"{stale}: stale: its nextUpdate" in refused(ca, ssl_server(server_context(b)).port)


# -- client: staples ----------------------------------------------------------------------------
STAPLE_ONLY = "checks: true\nmode: hard\nocsp: false\ncrl: false\n"


def test_staples_good_revoked_and_stale(
        ca, openssl_server, engine_factory, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    dead = f"http://127.0.0.1:{free_port()}"  # the responders are down: only staples answer
    good = ca.issue("staple-good", LOCAL, ocsp_url=dead)
    bad = ca.issue("staple-bad", LOCAL, ocsp_url=dead)
    stale = ca.issue("staple-stale", LOCAL, ocsp_url=dead)
    good_staple = openssl_staple(tmp_path, ca, good, [index_line(load(good))])
    bad_staple = openssl_staple(tmp_path, ca, bad, [index_line(load(bad), "keyCompromise")])
    stale_staple = tmp_path / "stale.der"
    stale_staple.write_bytes(make_ocsp(
        ca, load(stale), ocsp.OCSPCertStatus.GOOD,
        this_update=dt.datetime.now(UTC) - dt.timedelta(days=2),
        next_update=dt.datetime.now(UTC) - dt.timedelta(days=1)))
    start_engine(engine_factory, monkeypatch, tmp_path, STAPLE_ONLY)
    srv = openssl_server(good, "-status_file", str(good_staple))
    assert connect(ca, srv.port, echo=False) == (None, "")
    srv = openssl_server(bad, "-status_file", str(bad_staple))
    text = refused(ca, srv.port)
    assert text.startswith("certificate revoked: ") and "reason keyCompromise" in text, text
    assert text.endswith("according to the stapled OCSP response")
    srv = openssl_server(stale, "-status_file", str(stale_staple))
    text = refused(ca, srv.port)
    assert "stapled OCSP response not trusted: stale: its nextUpdate" in text, text
    assert "OCSP checks are off" in text


def test_a_stale_good_staple_does_not_hide_a_revocation(
        ca, responders, openssl_server, engine_factory, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    pair = ca.issue("stale-hides", LOCAL, ocsp_url=f"http://127.0.0.1:{port}")
    responders([index_line(load(pair), "keyCompromise")], port=port)
    staple = tmp_path / "old-good.der"
    staple.write_bytes(make_ocsp(ca, load(pair), ocsp.OCSPCertStatus.GOOD,
                                 this_update=dt.datetime.now(UTC) - dt.timedelta(days=3),
                                 next_update=dt.datetime.now(UTC) - dt.timedelta(hours=2)))
    start_engine(engine_factory, monkeypatch, tmp_path, "checks: true\n")
    text = refused(ca, openssl_server(pair, "-status_file", str(staple)).port)
    assert text.startswith("certificate revoked: ") and "OCSP responder" in text, text


# -- what the application may switch ------------------------------------------------------------
def test_application_turns_checks_on_but_not_off(
        ca, responders, ssl_server, engine_factory, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    bad = ca.issue("app-bad", LOCAL, ocsp_url=f"http://127.0.0.1:{port}")
    responders([index_line(load(bad), "keyCompromise")], port=port)
    srv = ssl_server(server_context(bad))
    # the built-in policy checks nothing; a program may ask for checks
    start_engine(engine_factory, monkeypatch, tmp_path)
    assert connect(ca, srv.port) == (None, "")
    assert refused(ca, srv.port, TLS_REVOCATION_CHECKS=1).startswith("certificate revoked")
    assert refused(ca, srv.port, TLS_OCSP_CHECKS=1).startswith("certificate revoked")
    with ssa_engine.socket() as s:
        assert s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_REVOCATION_CHECKS) == 0
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_CRL_CHECKS, 1)
        assert s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_REVOCATION_CHECKS) == 1
        with pytest.raises(OSError) as info:
            s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_OCSP_CHECKS, 2)
        assert info.value.errno == errno.EINVAL
    # a policy that checks: turning a check off is refused ...
    start_engine(engine_factory, monkeypatch, tmp_path, "checks: true\n")
    with ssa_engine.socket() as s:
        for option in ("TLS_REVOCATION_CHECKS", "TLS_OCSP_CHECKS"):
            with pytest.raises(OSError) as info:
                s.setsockopt(IPPROTO_TLS, getattr(ssa_engine, option), 0)
            assert info.value.errno == errno.EPROTO
            assert f"{option} 0: the default policy" in s.getsockopt(IPPROTO_TLS, TLS_ERROR).decode()
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_CACHED_REV_CHECKS, 0)  # asking again is stricter
        assert s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_CACHED_REV_CHECKS) == 0
    # ... unless app_overrides hands it to the program
    start_engine(engine_factory, monkeypatch, tmp_path, "checks: true\n",
                 "app_overrides: [revocation]\n")
    assert connect(ca, srv.port, TLS_REVOCATION_CHECKS=0) == (None, "")
    assert refused(ca, srv.port).startswith("certificate revoked")


# -- server: stapling ---------------------------------------------------------------------------
def s_client_status(port: int, ca: CA) -> str:
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
         "-status", "-CAfile", str(ca.pem)], input=b"", capture_output=True, timeout=30)
    return result.stdout.decode(errors="replace")


class Listener:
    """An SSA listener that accepts and drops connections in a thread."""

    def __init__(self, chain: Path, key: Path, stapling: int | None = None) -> None:
        self.sock = ssa_engine.socket()
        if stapling is not None:
            self.sock.setsockopt(IPPROTO_TLS, ssa_engine.TLS_SERVER_OCSP_STAPLING, stapling)
        self.sock.setsockopt(IPPROTO_TLS, ssa_engine.TLS_CERTIFICATE_CHAIN, chain)
        self.sock.setsockopt(IPPROTO_TLS, ssa_engine.TLS_PRIVATE_KEY, key)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def listeners() -> Iterator[Callable[..., Listener]]:
    made: list[Listener] = []

    def make(*args: object, **kw: object) -> Listener:
        listener = Listener(*args, **kw)  # type: ignore[arg-type]
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()


def full_chain(ca: CA, pair: Pair, tmp_path: Path) -> Path:
    chain = tmp_path / f"{pair.cert.stem}-chain.pem"
    chain.write_bytes(pair.cert.read_bytes() + ca.pem.read_bytes())
    return chain


def test_an_ssa_listener_staples_a_good_response(
        ca, responders, listeners, engine_factory, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    pair = ca.issue("staple-server", LOCAL, ocsp_url=f"http://127.0.0.1:{port}")
    responders([index_line(load(pair))], port=port)
    eng = start_engine(engine_factory, monkeypatch, tmp_path)
    chain = full_chain(ca, pair, tmp_path)
    stapling = listeners(chain, pair.key)
    not_stapling = listeners(chain, pair.key, stapling=0)
    wait_for(lambda: "stapling an OCSP response for" in eng.log.read_text(), 15, "the staple")
    out = s_client_status(stapling.port, ca)
    assert "OCSP Response Status: successful" in out and "Cert Status: good" in out, out
    assert "Verify return code: 0 (ok)" in out
    assert "OCSP response: no response sent" in s_client_status(not_stapling.port, ca)
    # and an SSA client with staple-only hard checks accepts it (the responder URL
    # would answer too, but it is not asked: OCSP checks are off)
    start_engine(engine_factory, monkeypatch, tmp_path, STAPLE_ONLY)
    exc, text = connect(ca, stapling.port, echo=False)
    assert exc is None, text


def test_a_listener_never_staples_a_stale_response(
        ca, http_files, listeners, engine_factory, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # a responder whose answer is current for a few seconds only, and then stale
    short = ca.issue("staple-short", LOCAL, ocsp_url=f"{http_files.url}/short")
    http_files.post = make_ocsp(ca, load(short), ocsp.OCSPCertStatus.GOOD,
                                next_update=dt.datetime.now(UTC) + dt.timedelta(seconds=6))
    eng = start_engine(engine_factory, monkeypatch, tmp_path)
    listener = listeners(full_chain(ca, short, tmp_path), short.key)
    wait_for(lambda: "stapling an OCSP response for" in eng.log.read_text(), 15, "the staple")
    assert "Cert Status: good" in s_client_status(listener.port, ca)
    time.sleep(max(0.0, (load_next_update(http_files.post) - dt.datetime.now(UTC))
                   .total_seconds()) + 0.5)
    assert "OCSP response: no response sent" in s_client_status(listener.port, ca)


def test_a_listener_does_not_staple_an_invalid_or_revoked_response(
        ca, http_files, responders, listeners, engine_factory, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    stale = ca.issue("staple-stale-server", LOCAL, ocsp_url=f"{http_files.url}/stale")
    http_files.post = make_ocsp(ca, load(stale), ocsp.OCSPCertStatus.GOOD,
                                this_update=dt.datetime.now(UTC) - dt.timedelta(days=2),
                                next_update=dt.datetime.now(UTC) - dt.timedelta(days=1))
    port = free_port()
    revoked = ca.issue("staple-revoked-server", LOCAL, ocsp_url=f"http://127.0.0.1:{port}")
    responders([index_line(load(revoked), "keyCompromise")], port=port)
    eng = start_engine(engine_factory, monkeypatch, tmp_path)
    a = listeners(full_chain(ca, stale, tmp_path), stale.key)
    b = listeners(full_chain(ca, revoked, tmp_path), revoked.key)
    wait_for(lambda: "no OCSP response to staple" in eng.log.read_text()
             and "not stapling for" in eng.log.read_text(), 15, "both refusals")
    log = eng.log.read_text()
    assert "stale: its nextUpdate" in log and "certificate revoked: " in log, log
    assert "OCSP response: no response sent" in s_client_status(a.port, ca)
    assert "OCSP response: no response sent" in s_client_status(b.port, ca)


def load_next_update(der: bytes) -> dt.datetime:
    next_update = ocsp.load_der_ocsp_response(der).next_update_utc
    assert next_update is not None
    return next_update


# -- pure parts: validation ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def leaf(ca: CA) -> tuple[x509.Certificate, x509.Certificate]:
    return load(ca.issue("unit-leaf", LOCAL)), load(ca.issue("unit-other", LOCAL))


def test_validate_ocsp_accepts_only_current_answers_for_this_certificate(ca, leaf, tmp_path
                                                                         ) -> None:  # type: ignore[no-untyped-def]
    cert, other = leaf
    now = dt.datetime.now(UTC)
    good = revstatus.validate_ocsp(make_ocsp(ca, cert, ocsp.OCSPCertStatus.GOOD), cert, ca.cert,
                                   now, "x")
    assert good.status is revstatus.Status.GOOD
    revoked = revstatus.validate_ocsp(make_ocsp(ca, cert, ocsp.OCSPCertStatus.REVOKED), cert,
                                      ca.cert, now, "x")
    assert (revoked.status, revoked.reason) == (revstatus.Status.REVOKED, "keyCompromise")

    def why(der: bytes) -> str:
        with pytest.raises(revstatus.InvalidAnswer) as info:
            revstatus.validate_ocsp(der, cert, ca.cert, now, "x")
        return str(info.value)

    assert why(b"garbage") == "not an OCSP response"
    assert why(make_ocsp(ca, cert, ocsp.OCSPCertStatus.GOOD, serial_of=other)) == (
        "it answers for another certificate")
    assert why(make_ocsp(ca, cert, ocsp.OCSPCertStatus.UNKNOWN)).endswith("(status unknown)")
    assert why(make_ocsp(ca, cert, ocsp.OCSPCertStatus.GOOD,
                         this_update=now + dt.timedelta(hours=1))).startswith("issued in the future")
    assert why(make_ocsp(ca, cert, ocsp.OCSPCertStatus.GOOD,
                         this_update=now - dt.timedelta(days=2),
                         next_update=now - dt.timedelta(hours=1))).startswith("stale")
    # within the clock skew it is still current
    revstatus.validate_ocsp(make_ocsp(ca, cert, ocsp.OCSPCertStatus.GOOD,
                                      next_update=now - dt.timedelta(minutes=1)),
                            cert, ca.cert, now, "x")
    tampered = bytearray(make_ocsp(ca, cert, ocsp.OCSPCertStatus.GOOD))
    tampered[-3] ^= 1  # in the signature
    assert why(bytes(tampered)) == "bad signature"
    # a CA of the same name but another key, naming itself as the responder
    rogue = CA(tmp_path, "Rev")
    assert why(make_ocsp(ca, cert, ocsp.OCSPCertStatus.GOOD, signer=(rogue.cert, rogue.key))
               ) == "signed by a responder the issuer did not authorize"
    failed = ocsp.OCSPResponseBuilder.build_unsuccessful(
        ocsp.OCSPResponseStatus.TRY_LATER).public_bytes(DER)
    assert why(failed) == "the responder answered try_later"


def test_check_crl_refuses_crls_that_do_not_cover_the_certificate(ca, leaf, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cert, _ = leaf
    now = dt.datetime.now(UTC)
    url = "http://127.0.0.1/ca.crl"
    crl = make_crl(ca, [cert])
    until = revstatus.check_crl(crl, url, ca.cert, now)
    answer = revstatus.crl_answer(crl, until, cert, "CRL x")
    assert (answer.status, answer.reason) == (revstatus.Status.REVOKED, "keyCompromise")
    # the same through the serial-number index the engine builds once per CRL
    serials = revstatus.crl_serials(crl)
    assert serials == {cert.serial_number}
    answer = revstatus.crl_answer(crl, until, cert, "CRL x", serials)
    assert (answer.status, answer.reason) == (revstatus.Status.REVOKED, "keyCompromise")
    good = revstatus.crl_answer(make_crl(ca, []), until, cert, "CRL x", frozenset())
    assert good.status is revstatus.Status.GOOD
    # an issuing distribution point for another URL
    scoped = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
              .last_update(NOW).next_update(NOW + dt.timedelta(days=1))
              .add_extension(x509.IssuingDistributionPoint(
                  [x509.UniformResourceIdentifier("http://elsewhere/x.crl")], None, False, False,
                  None, False, False), critical=True)
              .sign(ca.key, hashes.SHA256()))
    with pytest.raises(revstatus.InvalidAnswer, match="another distribution point"):
        revstatus.check_crl(scoped, url, ca.cert, now)
    other_ca = CA(tmp_path, "Other")
    with pytest.raises(revstatus.InvalidAnswer, match="issued by another CA"):
        revstatus.check_crl(make_crl(other_ca, []), url, ca.cert, now)
    with pytest.raises(revstatus.InvalidAnswer, match="not a CRL"):
        revstatus.load_crl(b"<html>not found</html>")


# -- pure parts: HTTP ---------------------------------------------------------------------------
def test_http_response_parser() -> None:
    p = httpfetch.ResponseParser(limit=100)
    for piece in (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab", b"cd\r\n",
                  b"3;x=y\r\nefg\r", b"\n0\r\n\r\n"):
        assert not p.done
        p.receive_data(piece)
    assert p.done and p.status == 200 and bytes(p.body) == b"abcdefg"
    p = httpfetch.ResponseParser(limit=100)
    p.receive_data(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabcdef")
    assert p.done and bytes(p.body) == b"abc"
    p = httpfetch.ResponseParser(limit=100)
    p.receive_data(b"HTTP/1.0 200 OK\r\n\r\nuntil the close")
    p.receive_eof()
    assert p.done and bytes(p.body) == b"until the close"
    with pytest.raises(httpfetch.FetchError, match="larger than 10 bytes"):
        httpfetch.ResponseParser(limit=10).receive_data(
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n")
    with pytest.raises(httpfetch.FetchError, match="larger than 10 bytes"):
        httpfetch.ResponseParser(limit=10).receive_data(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 11)
    with pytest.raises(httpfetch.FetchError, match="headers too long"):
        httpfetch.ResponseParser(limit=10).receive_data(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 5000)
    with pytest.raises(httpfetch.FetchError, match="before the whole response"):
        p = httpfetch.ResponseParser(limit=100)
        p.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        p.receive_eof()
    with pytest.raises(httpfetch.FetchError, match="not an HTTP response"):
        httpfetch.ResponseParser(limit=100).receive_data(b"SSH-2.0-OpenSSH\r\n\r\n")


@pytest.mark.parametrize("url", ["https://ocsp.example.com/", "ldap://x/cn=crl", "http://u@h/",
                                 "http://h:99999/", "http://h/\r\nX: y", "ocsp.example.com"])
def test_only_plain_http_urls_are_fetched(url: str) -> None:
    with pytest.raises(httpfetch.FetchError):
        httpfetch.parse_url(url)


def test_parse_url() -> None:
    u = httpfetch.parse_url("http://OCSP.Example.com:8080/a/b?c=d")
    assert (u.host, u.port, u.target, u.authority) == ("ocsp.example.com", 8080, "/a/b?c=d",
                                                       "ocsp.example.com:8080")
    assert httpfetch.parse_url("http://[::1]/").authority == "[::1]"


# -- pure parts: policy -------------------------------------------------------------------------
def test_revocation_policy_merges_key_by_key_and_limits_the_application() -> None:
    base = overlay(DEFAULT_POLICY, Layer(revocation_checks=True, revocation_ocsp=False),
                   source="ssa.yaml")
    policy = overlay(base, Layer(revocation_mode="hard"), source="profile p", profile="p")
    r = policy.revocation
    assert (r.checks, r.mode, r.ocsp, r.crl) == (True, "hard", False, True)
    assert DEFAULT_POLICY.revocation.checks is False and DEFAULT_POLICY.server_ocsp_stapling
    with pytest.raises(PolicyViolation, match="TLS_CRL_CHECKS 0: the profile p"):
        check_revocation(policy, "crl", False, "TLS_CRL_CHECKS")
    check_revocation(policy, "ocsp", False, "TLS_OCSP_CHECKS")  # already off
    check_revocation(policy, "cache", False, "TLS_CACHED_REV_CHECKS")  # always allowed
    no_cache = overlay(policy, Layer(revocation_cache=False), source="q")
    with pytest.raises(PolicyViolation, match="cache off"):
        check_revocation(no_cache, "cache", True, "TLS_CACHED_REV_CHECKS")
    # a method the application turns on also turns checking on
    s = effective_revocation(DEFAULT_POLICY, AppRequests(revocation={"crl": True}))
    assert (s.checks, s.crl, s.hard) == (True, True, False)
    assert not effective_revocation(DEFAULT_POLICY, AppRequests()).checks


def test_revocation_keys_in_a_file_are_checked() -> None:
    text = ("revocation:\n  checks: true\n  mode: hardest\n  ocsp: 1\n  crls: false\n"
            "  scope: all\nserver:\n  ocsp_stapling: false\n")
    tree = yamlio.load_text(text, "ssa.yaml")
    with pytest.raises(ConfigErrors) as info:
        parse_document(tree, "ssa.yaml", yamlio.locator(tree), profile=False)
    assert [str(e) for e in info.value.errors] == [
        "ssa.yaml:5:3: revocation -> crls: unknown key; did you mean crl? "
        "(known: checks, mode, scope, ocsp_stapling, ocsp, crl, cache)",
        "ssa.yaml:3:9: revocation -> mode: must be one of soft, hard (got 'hardest')",
        "ssa.yaml:6:10: revocation -> scope: must be one of leaf, chain (got 'all')",
        "ssa.yaml:4:9: revocation -> ocsp: must be true or false (got integer 1)",
    ]
    tree = yamlio.load_text("revocation:\n  checks: true\n  mode: hard\nserver:\n"
                            "  ocsp_stapling: false\n", "ssa.yaml")
    policy = overlay(DEFAULT_POLICY, parse_document(tree, "ssa.yaml", yamlio.locator(tree),
                                                    profile=False).layer, source="ssa.yaml")
    assert (policy.revocation.checks, policy.revocation.mode, policy.server_ocsp_stapling) == (
        True, "hard", False)
