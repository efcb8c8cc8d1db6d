"""Answering ACME challenges on this machine.

A responder is started once per issuance (so a busy port or a missing
permission is reported before any order is placed), told about each
challenge with :meth:`Responder.add`, and stopped at the end, which removes
everything it put in place (files, DNS records, listeners) even when the
issuance failed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import http.server
import ipaddress
import os
import shlex
import socket
import struct
import subprocess
import threading
from pathlib import Path
from typing import Any

import josepy as jose
from acme import challenges
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .errors import ChallengeError

#: RFC 8737 section 6.1: id-pe-acmeIdentifier
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
ACME_TLS_ALPN = b"acme-tls/1"
#: how long one validation handshake may take before its connection is dropped
_HANDSHAKE_SECONDS = 10


def _bind_error(port: int, exc: OSError, what: str) -> ChallengeError:
    if exc.errno == errno.EADDRINUSE:
        return ChallengeError(
            f"port {port} is in use by another program; stop it, answer {what} through it "
            "(--webroot DIR for a web server, or tls-alpn-01 through a running ssa engine), "
            "or pick another challenge")
    if exc.errno == errno.EACCES:
        return ChallengeError(f"binding port {port} needs root or CAP_NET_BIND_SERVICE "
                              "(run ssa-admin as root, or use --webroot / dns-01)")
    return ChallengeError(f"cannot listen on port {port}: {exc.strerror}")


def _dual_stack(port: int) -> socket.socket:
    """A listening socket for IPv6 and IPv4 on ``port`` (IPv4 only without IPv6)."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        addr: tuple[Any, ...] = ("::", port)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        addr = ("0.0.0.0", port)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock


class Responder:
    challenge_type = ""

    def start(self) -> None:
        """Take the port, folder or credentials now, so problems show before the order."""

    def add(self, identifier: str, challb: Any, account_key: jose.JWK) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Undo everything :meth:`add` did."""

    def describe(self) -> dict[str, object]:
        """What renewal must repeat (stored in the certificate's metadata)."""
        return {}


# -- http-01 -----------------------------------------------------------------------------
class Http01Standalone(Responder):
    """Answers ``/.well-known/acme-challenge/TOKEN`` on a port of its own (RFC 8555 8.3)."""

    challenge_type = "http-01"

    def __init__(self, port: int = 80) -> None:
        self.port = port
        self.answers: dict[str, bytes] = {}
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        answers = self.answers

        class Handler(http.server.BaseHTTPRequestHandler):
            server_version = "ssa-admin"

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                prefix = "/.well-known/acme-challenge/"
                body = answers.get(self.path[len(prefix):]) if self.path.startswith(prefix) else None
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args: object) -> None:
                pass

        try:
            sock = _dual_stack(self.port)
        except OSError as exc:
            raise _bind_error(self.port, exc, "http-01") from None
        server = http.server.ThreadingHTTPServer(("", self.port), Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = sock
        server.daemon_threads = True
        self._server = server
        # a short poll interval: shutdown() waits for serve_forever's next poll
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,),
                                        name="http-01", daemon=True)
        self._thread.start()

    def add(self, identifier: str, challb: Any, account_key: jose.JWK) -> None:
        chall: challenges.HTTP01 = challb.chall
        self.answers[chall.encode("token")] = chall.validation(account_key).encode()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
        self.answers.clear()

    def describe(self) -> dict[str, object]:
        return {"http_port": self.port}


class Webroot(Responder):
    """Writes the answers into a running web server's document root."""

    challenge_type = "http-01"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.directory = root / ".well-known" / "acme-challenge"
        self.written: list[Path] = []
        self.created: list[Path] = []

    def start(self) -> None:
        if not self.root.is_dir():
            raise ChallengeError(f"--webroot {self.root}: no such directory")
        for d in (self.root / ".well-known", self.directory):
            if not d.exists():
                try:
                    d.mkdir(mode=0o755)
                except OSError as exc:
                    raise ChallengeError(f"cannot create {d}: {exc.strerror}") from None
                self.created.append(d)

    def add(self, identifier: str, challb: Any, account_key: jose.JWK) -> None:
        chall: challenges.HTTP01 = challb.chall
        path = self.directory / chall.encode("token")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(chall.validation(account_key).encode())
            os.chmod(path, 0o644)  # the web server must read it whatever our umask
        except OSError as exc:
            raise ChallengeError(f"cannot write {path}: {exc.strerror}") from None
        self.written.append(path)

    def stop(self) -> None:
        for path in self.written:
            with contextlib.suppress(OSError):
                path.unlink()
        for d in reversed(self.created):
            with contextlib.suppress(OSError):
                d.rmdir()
        self.written.clear()

    def describe(self) -> dict[str, object]:
        return {"webroot": str(self.root)}


# -- tls-alpn-01 -----------------------------------------------------------------------------
def tls_alpn_certificate(identifier: str, key_authorization: str
                         ) -> tuple[bytes, bytes]:
    """The self-signed challenge certificate of RFC 8737 section 3: (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode()).digest()
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(identifier))
    except ValueError:
        san = x509.DNSName(identifier)
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ACME challenge")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        # the extension value is the DER OCTET STRING of the digest; it MUST be critical
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, b"\x04\x20" + digest),
                       critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    """RFC 8737 response (the acme library dropped tls-alpn-01 support)."""

    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: jose.JWK, **unused_kwargs: Any) -> str:
        return self.key_authorization(account_key)


def key_authorization(challb: Any, account_key: jose.JWK) -> str:
    return str(challb.chall.key_authorization(account_key))


class TlsAlpn01Standalone(Responder):
    """A TLS server that answers only ``acme-tls/1`` handshakes (RFC 8737)."""

    challenge_type = "tls-alpn-01"

    def __init__(self, port: int = 443) -> None:
        self.port = port
        self.certs: dict[str, Any] = {}  # identifier -> SSL.Context
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        try:
            self._sock = _dual_stack(self.port)
        except OSError as exc:
            raise _bind_error(self.port, exc, "tls-alpn-01") from None
        self._sock.settimeout(0.05)  # how soon stop() is noticed
        self._thread = threading.Thread(target=self._serve, name="tls-alpn-01", daemon=True)
        self._thread.start()

    def add(self, identifier: str, challb: Any, account_key: jose.JWK) -> None:
        from OpenSSL import SSL

        cert_pem, key_pem = tls_alpn_certificate(identifier, key_authorization(challb, account_key))
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_certificate(x509.load_pem_x509_certificate(cert_pem))
        key = serialization.load_pem_private_key(key_pem, None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        ctx.use_privatekey(key)
        ctx.set_alpn_select_callback(_select_acme_tls)
        self.certs[identifier.lower()] = ctx

    def _serve(self) -> None:
        from OpenSSL import SSL

        base = SSL.Context(SSL.TLS_METHOD)
        base.set_alpn_select_callback(_select_acme_tls)

        def on_sni(conn: SSL.Connection) -> None:
            name = (conn.get_servername() or b"").decode("ascii", "replace").lower()
            ctx = self.certs.get(name)
            if ctx is not None:
                conn.set_context(ctx)

        base.set_tlsext_servername_callback(on_sni)
        assert self._sock is not None
        while not self._stopping:
            try:
                raw, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handshake, args=(base, raw), daemon=True).start()

    @staticmethod
    def _handshake(base: Any, raw: socket.socket) -> None:
        from OpenSSL import SSL

        # pyOpenSSL drives the fd itself: it must be a blocking fd (a Python
        # timeout would make it non-blocking, and a ClientHello that has not
        # arrived yet would end the handshake), bounded by kernel timeouts.
        raw.setblocking(True)
        bound = struct.pack("ll", _HANDSHAKE_SECONDS, 0)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bound)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, bound)
        conn = SSL.Connection(base, raw)
        conn.set_accept_state()
        try:
            conn.do_handshake()
            conn.shutdown()
        except (SSL.Error, OSError):
            pass
        finally:
            raw.close()

    def stop(self) -> None:
        self._stopping = True
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.certs.clear()

    def describe(self) -> dict[str, object]:
        return {"tls_port": self.port}


def _select_acme_tls(conn: Any, offered: list[bytes]) -> bytes:
    from OpenSSL import SSL

    if ACME_TLS_ALPN in offered:
        return ACME_TLS_ALPN
    return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]


# -- dns-01 ------------------------------------------------------------------------------------
def dns01_record(identifier: str) -> str:
    """``*.example.com`` and ``example.com`` both validate at ``_acme-challenge.example.com``."""
    return "_acme-challenge." + identifier.removeprefix("*.").rstrip(".")


class Dns01Hook(Responder):
    """Runs an administrator's command to add and remove the TXT records.

    The command gets the details in its environment (and as arguments, for
    scripts that prefer them): ``SSA_DNS_ACTION`` (``add`` or ``remove``),
    ``SSA_DNS_NAME`` (``_acme-challenge.example.com``), ``SSA_DNS_VALUE`` (the
    TXT value) and ``SSA_DOMAIN`` (``example.com``, or ``*.example.com``). A
    non-zero exit is an error with the command's stderr; ``remove`` failures
    are warnings.
    """

    challenge_type = "dns-01"

    def __init__(self, command: str, warn: Any = None) -> None:
        self.command = command
        self.warn = warn or (lambda message: None)
        self.added: list[tuple[str, str, str]] = []

    def _run(self, action: str, domain: str, name: str, value: str) -> None:
        env = dict(os.environ, SSA_DNS_ACTION=action, SSA_DNS_NAME=name, SSA_DNS_VALUE=value,
                   SSA_DOMAIN=domain)
        argv = [*shlex.split(self.command), action, name, value]
        try:
            res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ChallengeError(f"--dns-hook {self.command!r}: {exc}") from None
        if res.returncode != 0:
            raise ChallengeError(f"--dns-hook {action} {name} failed (exit {res.returncode}): "
                                 f"{res.stderr.strip()[:500]}")

    def add(self, identifier: str, challb: Any, account_key: jose.JWK) -> None:
        chall: challenges.DNS01 = challb.chall
        name, value = dns01_record(identifier), chall.validation(account_key)
        self._run("add", identifier, name, value)
        self.added.append((identifier, name, value))

    def stop(self) -> None:
        for identifier, name, value in self.added:
            try:
                self._run("remove", identifier, name, value)
            except ChallengeError as exc:
                self.warn(str(exc))
        self.added.clear()

    def describe(self) -> dict[str, object]:
        return {"dns_hook": self.command}
