"""Server-side TLS: contexts for a listener and certificate selection by SNI.

A listener may hold several certificate chains (each TLS_CERTIFICATE_CHAIN is
paired with the next TLS_PRIVATE_KEY). Chains for the same set of names go
into one OpenSSL context, so an RSA and an ECDSA chain for one name are both
served and OpenSSL picks by the client's signature algorithms. The SNI
callback then chooses the context: exact name first, then a wildcard
(``*.example.com`` matches exactly one label), then the first configured
chain (the paper's rule). A listener restricted with TLS_HOSTNAME answers any
other SNI with an ``unrecognized_name`` alert.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi, lib

from ..policy import TLS_1_2, TLSSettings
from . import fastio
from .tlsctx import Credentials

log = logging.getLogger("ssa.server")

_PROTO = {0x0303: SSL.TLS1_2_VERSION, 0x0304: SSL.TLS1_3_VERSION}
_TLSEXT_ERR_OK = 0
_TLSEXT_ERR_ALERT_FATAL = 2  # OpenSSL sends the alert preset for SNI: unrecognized_name
_TLSEXT_ERR_NOACK = 3  # continue without ALPN
#: Security parameter: early data a listener accepts per connection (bytes)
MAX_EARLY_DATA = 16384
#: RFC 8737: the ALPN protocol of ACME tls-alpn-01 validation
ACME_TLS_1 = b"acme-tls/1"


def certificate_names(cert: x509.Certificate) -> list[str]:
    """DNS names a certificate is valid for (SAN, else the CN), lower case."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = san.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [a.value for a in cert.subject.get_attributes_for_oid(
            x509.oid.NameOID.COMMON_NAME) if isinstance(a.value, str)]
    return [n.lower().rstrip(".") for n in names]


def key_kind(cert: x509.Certificate) -> str:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "ec"
    return type(key).__name__


@dataclass(frozen=True, slots=True)
class ServerConfig:
    settings: TLSSettings
    credentials: tuple[Credentials, ...]
    #: 0 no client certificates, 1 require a verified one, 2 request one
    client_auth: int = 0
    client_trust: tuple[bytes, ...] = ()  # DER trust anchors for client certificates
    client_trust_store: str | None = None  # a PEM bundle file from the policy
    alpn: tuple[bytes, ...] = ()
    only_name: str | None = None  # TLS_HOSTNAME
    #: resumption (TLS 1.3 tickets, TLS 1.2 session ids); off: full handshakes only
    session_reuse: bool = True
    #: accept TLS 1.3 early data (policy server.early_data and TLS_0RTT on the listener)
    early_data: bool = False


@dataclass
class _Group:
    names: frozenset[str]
    ctx: SSL.Context
    kinds: list[str] = field(default_factory=list)


class ServerContexts:
    """The contexts of one listener and the SNI choice between them."""

    def __init__(self, cfg: ServerConfig) -> None:
        if not cfg.credentials:
            raise ValueError("no certificate: set TLS_CERTIFICATE_CHAIN and TLS_PRIVATE_KEY")
        self.cfg = cfg
        self.groups: list[_Group] = []
        # ALPN: our own callback, because a listener with no protocol in
        # common must end the handshake with no_application_protocol (RFC 7301
        # section 3.2) instead of continuing without ALPN
        self._alpn_wire = {p: ffi.new("unsigned char[]", p) for p in (*cfg.alpn, ACME_TLS_1)}
        #: identifier -> (challenge context, expiry on the loop clock), shared per port
        self.acme: dict[str, tuple[SSL.Context, float]] = {}
        self.clock: Any = None
        self._alpn_callback = ffi.callback(
            "int (*)(SSL *, const unsigned char **, unsigned char *, "
            "const unsigned char *, unsigned int, void *)", self._on_alpn)
        for cred in cfg.credentials:
            names = frozenset(certificate_names(cred.chain[0]))
            kind = key_kind(cred.chain[0])
            group = next((g for g in self.groups if g.names == names and kind not in g.kinds),
                         None)
            if group is None:
                group = _Group(names, self._new_context())
                self.groups.append(group)
            _add_credentials(group.ctx, cred)
            group.kinds.append(kind)
        self.default = self.groups[0].ctx
        self._callback = ffi.callback("int (*)(SSL *, int *, void *)", self._on_servername)
        if len(self.groups) > 1 or cfg.only_name is not None:
            # with one certificate and no TLS_HOSTNAME there is nothing to choose:
            # no call into Python for every handshake
            for g in self.groups:
                lib.SSL_CTX_set_tlsext_servername_callback(g.ctx._context,  # noqa: SLF001
                                                           self._callback)

    def _new_context(self) -> SSL.Context:
        cfg, s = self.cfg, self.cfg.settings
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(_PROTO[s.min_version])
        ctx.set_max_proto_version(_PROTO[s.max_version])
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
                        | SSL.OP_CIPHER_SERVER_PREFERENCE)
        ctx.clear_mode(lib.SSL_MODE_ENABLE_PARTIAL_WRITE)
        ctx.set_mode(lib.SSL_MODE_RELEASE_BUFFERS)
        if s.min_version <= TLS_1_2 and s.ciphers:
            ctx.set_cipher_list(f"{':'.join(s.ciphers)}:@SECLEVEL={s.seclevel}".encode())
        else:
            ctx.set_cipher_list(f"DEFAULT:@SECLEVEL={s.seclevel}".encode())
        ctx.set_tls13_ciphersuites(":".join(s.ciphersuites).encode())
        fastio.set_groups(ctx, s.groups)
        fastio.set_sigalgs(ctx, s.sigalgs)
        ctx.set_session_id(b"ssa-engine")
        if not cfg.session_reuse:
            ctx.set_options(SSL.OP_NO_TICKET)
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        elif cfg.early_data:
            # OpenSSL's anti-replay (each ticket accepted for early data once) works
            # through the server session cache, which set_session_id turned on
            lib.SSL_CTX_set_max_early_data(ctx._context, MAX_EARLY_DATA)  # noqa: SLF001
        if cfg.client_auth:
            mode = SSL.VERIFY_PEER
            if cfg.client_auth == 1:
                mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            ctx.set_verify(mode)
        # the client CAs are loaded even when the handshake asks for no
        # certificate: post-handshake authentication verifies against them
        if cfg.client_trust_store:
            ctx.load_verify_locations(cfg.client_trust_store)
        store = ctx.get_cert_store()
        assert store is not None
        for der in cfg.client_trust:
            cert = crypto.X509.from_cryptography(x509.load_der_x509_certificate(der))
            store.add_cert(cert)
            ctx.add_client_ca(cert)
        if cfg.alpn:
            lib.SSL_CTX_set_alpn_select_cb(ctx._context, self._alpn_callback, ffi.NULL)  # noqa: SLF001
        return ctx

    def enable_acme(self, table: dict[str, tuple[SSL.Context, float]], clock: Any) -> None:
        """Answer ``acme-tls/1`` handshakes for the identifiers in ``table`` (RFC 8737)."""
        self.acme = table
        self.clock = clock
        if not self.cfg.alpn:  # otherwise the callback is installed already
            for g in self.groups:
                lib.SSL_CTX_set_alpn_select_cb(g.ctx._context, self._alpn_callback,  # noqa: SLF001
                                               ffi.NULL)

    def _acme_context(self, ssl: object) -> SSL.Context | None:
        raw = lib.SSL_get_servername(ssl, lib.TLSEXT_NAMETYPE_host_name)
        if raw == ffi.NULL:
            return None
        name = ffi.string(raw).decode("ascii", "replace").lower().rstrip(".")
        entry = self.acme.get(name)
        if entry is None or entry[1] < self.clock():
            return None
        return entry[0]

    def choose(self, sni: str | None) -> SSL.Context | None:
        """The context for this SNI; None means refuse (unrecognized_name)."""
        only = self.cfg.only_name
        if sni is None:
            return self.default
        name = sni.lower().rstrip(".")
        if only is not None and name != only:
            return None
        for g in self.groups:
            if name in g.names:
                return g.ctx
        if "." in name:
            wild = "*." + name.split(".", 1)[1]
            for g in self.groups:
                if wild in g.names:
                    return g.ctx
        return self.default

    def _on_alpn(self, ssl: object, out: Any, outlen: Any, data: Any, length: int,
                 arg: object) -> int:
        try:
            raw = bytes(ffi.buffer(data, length))
            offered, i = [], 0
            while i < len(raw):
                n = raw[i]
                offered.append(raw[i + 1 : i + 1 + n])
                i += 1 + n
            if self.acme and ACME_TLS_1 in offered:
                challenge = self._acme_context(ssl)
                if challenge is not None:  # a CA validating: serve the challenge certificate
                    lib.SSL_set_SSL_CTX(ssl, challenge._context)  # noqa: SLF001
                    out[0] = self._alpn_wire[ACME_TLS_1]
                    outlen[0] = len(ACME_TLS_1)
                    return _TLSEXT_ERR_OK
            if not self.cfg.alpn:
                return _TLSEXT_ERR_NOACK
            for proto in self.cfg.alpn:  # the server's order of preference
                if proto in offered:
                    out[0] = self._alpn_wire[proto]
                    outlen[0] = len(proto)
                    return _TLSEXT_ERR_OK
            log.info("no ALPN protocol in common: client offered %r", offered)
        except Exception:  # noqa: BLE001
            log.exception("ALPN selection failed")
        return _TLSEXT_ERR_ALERT_FATAL  # OpenSSL sends no_application_protocol

    def _on_servername(self, ssl: object, alert: object, arg: object) -> int:
        try:
            raw = lib.SSL_get_servername(ssl, lib.TLSEXT_NAMETYPE_host_name)
            sni = ffi.string(raw).decode("ascii", "replace") if raw != ffi.NULL else None
            ctx = self.choose(sni)
            if ctx is None:
                log.info("refused SNI %r on a listener for %r", sni, self.cfg.only_name)
                return _TLSEXT_ERR_ALERT_FATAL
            if ctx is not self.default:
                lib.SSL_set_SSL_CTX(ssl, ctx._context)  # noqa: SLF001
            return _TLSEXT_ERR_OK
        except Exception:  # noqa: BLE001 - never let an exception cross into OpenSSL
            log.exception("SNI selection failed")
            return _TLSEXT_ERR_ALERT_FATAL


def _add_credentials(ctx: SSL.Context, cred: Credentials) -> None:
    ctx.use_certificate(crypto.X509.from_cryptography(cred.chain[0]))
    ctx.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, cred.key_pem))
    ctx.check_privatekey()
    # OpenSSL's per-certificate chains are not in the bindings: intermediates
    # are shared by the chains of one context (harmless extra certificates).
    for extra in cred.chain[1:]:
        ctx.add_extra_chain_cert(crypto.X509.from_cryptography(extra))


def pair_credentials(chains: Sequence[tuple[x509.Certificate, ...]],
                     keys: Sequence[bytes]) -> tuple[Credentials, ...]:
    from .tlsctx import make_credentials

    return tuple(make_credentials(c, k) for c, k in zip(chains, keys, strict=True))
