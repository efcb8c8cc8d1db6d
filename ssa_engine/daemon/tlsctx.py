"""Building OpenSSL contexts from effective settings, and naming failures.

A context is expensive (loading the system trust store reads hundreds of
certificates), so contexts are cached by everything that goes into them; the
per-connection parts (host name, SNI, ALPN) are set on the Connection.
"""

from __future__ import annotations

import functools
import hashlib
import socket
from collections import OrderedDict
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from OpenSSL._util import lib as _lib

from ..policy import TLS_1_2, TLS_1_3, TLSSettings
from . import fastio

_PROTO = {TLS_1_2: SSL.TLS1_2_VERSION, TLS_1_3: SSL.TLS1_3_VERSION}
CACHE_SIZE = 64


class CredentialError(ValueError):
    """An application-supplied certificate or key is unusable (EINVAL)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """A certificate chain and its private key, parsed and checked."""

    chain: tuple[x509.Certificate, ...]
    key_pem: bytes
    digest: str


@functools.lru_cache(maxsize=64)
def parse_certificates(pem: bytes, what: str) -> tuple[x509.Certificate, ...]:
    """Parse PEM certificates (cached: programs send the same CA file every time)."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise CredentialError(f"{what}: not a PEM certificate ({exc})") from None
    if not certs:
        raise CredentialError(f"{what}: no PEM certificate found")
    return tuple(certs)


def parse_private_key(pem: bytes) -> bytes:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise CredentialError("TLS_PRIVATE_KEY: the key is encrypted; give it unencrypted") from None
    except (ValueError, Exception) as exc:  # noqa: BLE001 - cryptography raises several types
        raise CredentialError(f"TLS_PRIVATE_KEY: not a PEM private key ({exc})") from None
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_matches(chain: tuple[x509.Certificate, ...], key_pem: bytes) -> bool:
    key = serialization.load_pem_private_key(key_pem, password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return bool(
        key.public_key().public_bytes(der, spki) == chain[0].public_key().public_bytes(der, spki)
    )


def make_credentials(chain: tuple[x509.Certificate, ...], key_pem: bytes) -> Credentials:
    h = hashlib.sha256(key_pem)
    for c in chain:
        h.update(c.public_bytes(serialization.Encoding.DER))
    return Credentials(chain, key_pem, h.hexdigest())


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything that shapes a client context (the cache key)."""

    settings: TLSSettings
    trust_store: str | None
    verify_depth: int
    extra_trust: tuple[bytes, ...]  # DER of app-added trust anchors
    credentials: Credentials | None


class ContextCache:
    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._items: OrderedDict[object, SSL.Context] = OrderedDict()
        self._size = size

    @staticmethod
    def key(cfg: ClientConfig) -> tuple[object, ...]:
        return (
            cfg.settings,
            cfg.trust_store,
            cfg.verify_depth,
            cfg.extra_trust,
            cfg.credentials.digest if cfg.credentials else None,
        )

    def client(self, cfg: ClientConfig) -> SSL.Context:
        key = self.key(cfg)
        ctx = self._items.get(key)
        if ctx is None:
            ctx = build_client_context(cfg)
            self._items[key] = ctx
            if len(self._items) > self._size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return ctx

    def __len__(self) -> int:
        return len(self._items)


def build_client_context(cfg: ClientConfig) -> SSL.Context:
    s = cfg.settings
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(_PROTO[s.min_version])
    ctx.set_max_proto_version(_PROTO[s.max_version])
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    # SSL_write returns only when the whole buffer is written (or would block):
    # one Python call per relay buffer instead of one per record.
    ctx.clear_mode(_lib.SSL_MODE_ENABLE_PARTIAL_WRITE)
    ctx.set_mode(_lib.SSL_MODE_RELEASE_BUFFERS)
    if s.min_version <= TLS_1_2:
        if not s.ciphers:
            raise CredentialError("no TLS 1.2 cipher left after TLS_DISABLE_CIPHER")
        ctx.set_cipher_list(f"{':'.join(s.ciphers)}:@SECLEVEL={s.seclevel}".encode())
    else:
        ctx.set_cipher_list(f"DEFAULT:@SECLEVEL={s.seclevel}".encode())
    if not s.ciphersuites and s.max_version >= TLS_1_3:
        raise CredentialError("no TLS 1.3 cipher suite left after TLS_DISABLE_CIPHER")
    ctx.set_tls13_ciphersuites(":".join(s.ciphersuites).encode())
    fastio.set_groups(ctx, s.groups)
    fastio.set_sigalgs(ctx, s.sigalgs)
    ctx.set_verify(SSL.VERIFY_PEER)
    ctx.set_verify_depth(cfg.verify_depth)
    if cfg.trust_store:
        ctx.load_verify_locations(cfg.trust_store)
    else:
        ctx.set_default_verify_paths()
    store = ctx.get_cert_store()
    assert store is not None
    for der in cfg.extra_trust:
        store.add_cert(crypto.X509.from_cryptography(x509.load_der_x509_certificate(der)))
    if cfg.credentials is not None:
        chain = cfg.credentials.chain
        ctx.use_certificate(crypto.X509.from_cryptography(chain[0]))
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
        ctx.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, cfg.credentials.key_pem))
        ctx.check_privatekey()
    return ctx


def ip_literal(host: str) -> bytes | None:
    """Packed address if ``host`` is an IP literal, else None."""
    bare = host.strip("[]")
    try:
        return socket.inet_pton(socket.AF_INET6 if ":" in bare else socket.AF_INET, bare)
    except (OSError, ValueError):
        return None


# X.509 verification results, in words an application developer can act on.
_VERIFY_REASONS = {
    10: "certificate has expired",
    9: "certificate is not yet valid",
    62: "certificate does not match the host name",
    64: "certificate does not match the IP address",
    18: "self-signed certificate (not trusted)",
    19: "self-signed certificate in the chain (untrusted root)",
    20: "unknown issuer: unable to get local issuer certificate (untrusted root)",
    2: "unknown issuer: unable to get issuer certificate (untrusted root)",
    21: "unknown issuer: unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
    68: "CA certificate key too weak for the policy",
    66: "end-entity key too weak for the policy",
    67: "certificate signature algorithm too weak for the policy",
}

# Substrings of OpenSSL's handshake errors, and what to tell the application.
_HANDSHAKE_REASONS = (
    ("unsupported protocol", "protocol version refused by policy (the server offers only "
     "versions outside the allowed range)"),
    ("protocol version", "protocol version refused by policy (no version allowed by both sides)"),
    ("no protocols available", "no protocol version left in the allowed range"),
    ("no shared cipher", "no shared cipher (the server offers only ciphers the policy refuses)"),
    ("handshake failure", "no shared cipher or parameters: handshake failure alert from the "
     "server (it offers only ciphers or groups the policy refuses)"),
    ("wrong version number", "the peer does not speak TLS (wrong version number)"),
    ("packet length too long", "the peer does not speak TLS"),
    ("no application protocol", "no shared ALPN protocol"),
    ("unexpected eof", "the server closed the connection during the handshake"),
    ("wrong curve", "the server chose a group the policy refuses"),
    ("bad ecpoint", "invalid key share from the server"),
    ("ca md too weak", "certificate signature algorithm too weak for the policy"),
    ("ee key too small", "server key too small for the policy"),
    ("dh key too small", "server DH key too small for the policy"),
    ("legacy sigalg disallowed", "signature algorithm refused by the policy"),
    ("wrong signature type", "signature algorithm refused by the policy"),
    ("insufficient security", "the server requires stronger settings (insufficient_security)"),
    ("certificate required", "the server requires a client certificate"),
    ("tlsv13 alert certificate required", "the server requires a client certificate"),
    ("sslv3 alert bad certificate", "the server refused our client certificate"),
    ("unknown ca", "the server does not trust our client certificate"),
)


def describe_handshake_error(conn: SSL.Connection, exc: Exception, host: str) -> str:
    """A one-line reason for a failed client handshake (the TLS_ERROR text)."""
    code, text = fastio.verify_result(conn)
    if code != 0:
        reason = _VERIFY_REASONS.get(code, text)
        if code in (62, 64):
            reason = f"{reason} {host!r}"
        return f"certificate verification failed: {reason}"
    detail = _openssl_text(exc)
    low = detail.lower()
    for needle, reason in _HANDSHAKE_REASONS:
        if needle in low:
            return f"TLS handshake failed: {reason} [{detail}]"
    if isinstance(exc, SSL.SysCallError):
        return f"TLS handshake failed: connection lost ({detail or 'reset by peer'})"
    return f"TLS handshake failed: {detail or type(exc).__name__}"


def _openssl_text(exc: Exception) -> str:
    args = exc.args
    if args and isinstance(args[0], list):
        parts = [str(item[-1]) for item in args[0] if isinstance(item, tuple)]
        return "; ".join(parts)
    return " ".join(str(a) for a in args)
