"""One socket's options as the application set them, checked against policy."""

from __future__ import annotations

import errno
import functools
import itertools
import re
import socket
import struct
from dataclasses import dataclass, field, replace

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..policy import (
    AppRequests,
    InvalidSetting,
    Policy,
    PolicyViolation,
    TLSSettings,
    check_cipher,
    check_version,
    effective,
)
from ..policy.enforce import (
    RevocationSettings,
    check_revocation,
    check_server_stapling,
    effective_revocation,
)
from ..policy.model import CLIENT_AUTH
from ..protocol import FrameError
from ..protocol import options as opt
from ..protocol.options import TLSOption
from .sessions import DEFAULT_SESSION_TTL, MAX_SESSION_TTL
from .tlsctx import (
    CredentialError,
    Credentials,
    ip_literal,
    key_matches,
    make_credentials,
    parse_certificates,
    parse_private_key,
)

_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_ALPN_MAX = 255


#: engine-wide numbers of sockets (TLS_ID)
socket_ids = itertools.count(1)


class ApiError(Exception):
    """A request fails with this errno; the message goes to the application."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code
        self.message = message


def validate_hostname(value: str, what: str) -> str:
    host = value.rstrip(".") if not ip_literal(value) else value
    if not host or len(host) > 253:
        raise ApiError(errno.EINVAL, f"{what}: empty or longer than 253 characters")
    if ip_literal(host):
        return host
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise ApiError(errno.EINVAL, f"{what}: {value!r} is not a valid host name") from None
    if not all(_HOST_LABEL.match(label) for label in ascii_host.split(".")):
        raise ApiError(errno.EINVAL, f"{what}: {value!r} is not a valid host name")
    return ascii_host.lower()


@dataclass(slots=True)
class SocketOptions:
    policy: Policy
    remote_hostname: str | None = None
    extra_trust: list[bytes] = field(default_factory=list)
    #: certificate chains and their keys: each chain is paired with the next key
    chains: list[tuple[x509.Certificate, ...]] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    alpn: tuple[bytes, ...] = ()
    #: TLS_HOSTNAME on a listener: serve only this name
    server_name: str | None = None
    #: TLS_REQUEST_PEER_AUTH: 0 off, 1 require, 2 request
    peer_auth: int = 0
    peer_auth_set: bool = False
    #: TLS_SESSION_REUSE and TLS_SESSION_TTL (client sessions; listeners: tickets)
    session_reuse: bool = True
    session_ttl: int = DEFAULT_SESSION_TTL
    #: TLS_0RTT: on a listener, accept early data (when the policy allows it)
    zero_rtt: bool = False
    #: TLS_SERVER_OCSP_STAPLING; None: the policy's server.ocsp_stapling
    server_stapling: bool | None = None
    app: AppRequests = field(default_factory=AppRequests)
    tcp: dict[tuple[int, int], int | bytes] = field(default_factory=dict)

    # -- setting ----------------------------------------------------------------
    def set_tls(self, name: TLSOption, value: bytes | None, number: int | None) -> None:
        if name is TLSOption.REMOTE_HOSTNAME:
            self.remote_hostname = validate_hostname(_text(value, name), "TLS_REMOTE_HOSTNAME")
        elif name is TLSOption.TRUSTED_PEER_CERTIFICATES:
            if not self.policy.verify.allow_app_trust:
                raise ApiError(
                    errno.EPROTO,
                    f"TLS_TRUSTED_PEER_CERTIFICATES: the {self.policy.source} does not let "
                    "this program add trusted certificates",
                )
            self.extra_trust += _der(_certs(value, "TLS_TRUSTED_PEER_CERTIFICATES"))
        elif name is TLSOption.CERTIFICATE_CHAIN:
            chain = _certs(value, "TLS_CERTIFICATE_CHAIN")
            if len(self.chains) > len(self.keys):
                raise ApiError(errno.EPROTO, "TLS_CERTIFICATE_CHAIN set twice: the previous "
                               "chain has no TLS_PRIVATE_KEY yet")
            self.chains.append(chain)
        elif name is TLSOption.PRIVATE_KEY:
            try:
                key = parse_private_key(_bytes(value, name))
            except CredentialError as exc:
                raise ApiError(errno.EINVAL, str(exc)) from None
            if len(self.chains) <= len(self.keys):
                raise ApiError(errno.EPROTO, "TLS_PRIVATE_KEY set without a "
                               "TLS_CERTIFICATE_CHAIN before it")
            if not key_matches(self.chains[-1], key):
                raise ApiError(errno.EPROTO, "TLS_PRIVATE_KEY: does not match the "
                               "certificate set with TLS_CERTIFICATE_CHAIN")
            self.keys.append(key)
        elif name is TLSOption.HOSTNAME:
            self.server_name = validate_hostname(_text(value, name), "TLS_HOSTNAME")
        elif name is TLSOption.REQUEST_PEER_AUTH:
            mode = _int(number, name)
            if mode not in (0, 1, 2):
                raise ApiError(errno.EINVAL, "TLS_REQUEST_PEER_AUTH: 0 (off), 1 (require) or "
                               "2 (request)")
            least = self.policy.client_auth
            if (_AUTH_STRENGTH[mode] < CLIENT_AUTH.index(least)
                    and "client_auth" not in self.policy.app_overrides):
                raise ApiError(errno.EPROTO, f"TLS_REQUEST_PEER_AUTH {mode}: the {self.policy.source} "
                               f"sets client_auth {least}, and the application may not ask for less")
            self.peer_auth = mode
            self.peer_auth_set = True
        elif name is TLSOption.ALPN:
            self.alpn = parse_alpn(_text(value, name))
        elif name in (TLSOption.VERSION_MIN, TLSOption.VERSION_MAX):
            which = "min" if name is TLSOption.VERSION_MIN else "max"
            v = _int(number, name)
            _policy_call(check_version, self.policy, which, v)
            if which == "min":
                if self.app.max_version is not None and v > self.app.max_version:
                    raise ApiError(errno.EINVAL, "TLS_VERSION_MIN above TLS_VERSION_MAX")
                self.app.min_version = v
            else:
                if self.app.min_version is not None and v < self.app.min_version:
                    raise ApiError(errno.EINVAL, "TLS_VERSION_MAX below TLS_VERSION_MIN")
                self.app.max_version = v
        elif name is TLSOption.SESSION_REUSE:
            self.session_reuse = _flag(number, name)
        elif name is TLSOption.SESSION_TTL:
            ttl = _int(number, name)
            if not 0 <= ttl <= MAX_SESSION_TTL:
                raise ApiError(errno.EINVAL, f"TLS_SESSION_TTL: 0 (no caching) to {MAX_SESSION_TTL} "
                               "seconds (RFC 8446 section 4.6.1)")
            self.session_ttl = ttl
        elif name is TLSOption.ZERO_RTT:
            self.zero_rtt = _flag(number, name)
        elif name in REVOCATION_OPTIONS or name is TLSOption.SERVER_OCSP_STAPLING:
            self._set_revocation(name, _int(number, name))
        elif name in (TLSOption.DISABLE_CIPHER, TLSOption.ENABLE_CIPHER):
            action = "disable" if name is TLSOption.DISABLE_CIPHER else "enable"
            for item in _text(value, name).split(":"):
                cipher = _policy_call(check_cipher, self.policy, action, item)
                if action == "disable":
                    self.app.enabled.discard(cipher)
                    self.app.disabled.add(cipher)
                else:
                    self.app.disabled.discard(cipher)
                    self.app.enabled.add(cipher)
        else:  # pragma: no cover - the caller checks the table first
            raise ApiError(errno.ENOPROTOOPT, f"option {name.name} cannot be set")

    def check_tcp(self, level: int, name: int, value: bytes | None,
                  number: int | None) -> int | bytes:
        """Validate a forwarded SOL_SOCKET/IPPROTO_TCP option; return its value."""
        if (level, name) not in opt.FORWARDED_OPTIONS:
            raise ApiError(errno.ENOPROTOOPT, f"socket option ({level}, {name}) is not "
                           "supported on TLS sockets")
        if name == opt.SO_LINGER and level == opt.SOL_SOCKET:
            if value is None or len(value) != 8:
                raise ApiError(errno.EINVAL, "SO_LINGER takes an 8-byte struct linger")
            return value
        if number is None:
            if value is not None and len(value) == 4:
                return int(struct.unpack("=i", value)[0])
            raise ApiError(errno.EINVAL, "this socket option takes an int")
        if not -(1 << 31) <= number < (1 << 31):
            raise ApiError(errno.EINVAL, f"socket option value {number} does not fit a C int")
        return number

    def snapshot(self) -> SocketOptions:
        """What TLS_CONTEXT shares: every setting except the peer's name."""
        snap = self.copy()
        snap.remote_hostname = None
        return snap

    def copy(self) -> SocketOptions:
        return replace(self, extra_trust=list(self.extra_trust), chains=list(self.chains),
                       keys=list(self.keys), tcp=dict(self.tcp),
                       app=replace(self.app, disabled=set(self.app.disabled),
                                   enabled=set(self.app.enabled),
                                   revocation=dict(self.app.revocation)))

    def _set_revocation(self, name: TLSOption, number: int) -> None:
        if number not in (0, 1):
            raise ApiError(errno.EINVAL, f"TLS_{name.name} takes 0 (off) or 1 (on)")
        if name is TLSOption.SERVER_OCSP_STAPLING:
            _policy_call(check_server_stapling, self.policy, bool(number))
            self.server_stapling = bool(number)
            return
        switch = REVOCATION_OPTIONS[name]
        _policy_call(check_revocation, self.policy, switch, bool(number), f"TLS_{name.name}")
        self.app.revocation[switch] = bool(number)

    # -- reading ------------------------------------------------------------------
    def revocation(self) -> RevocationSettings:
        """The revocation checks of this (client) socket."""
        return effective_revocation(self.policy, self.app)

    def ocsp_stapling(self) -> bool:
        """Does this listener staple OCSP responses?"""
        return self.policy.server_ocsp_stapling and self.server_stapling is not False

    def revocation_value(self, name: TLSOption) -> int | None:
        """getsockopt of a revocation option (0 or 1); None for any other option."""
        if name is TLSOption.SERVER_OCSP_STAPLING:
            return int(self.ocsp_stapling())
        switch = REVOCATION_OPTIONS.get(name)
        return None if switch is None else int(getattr(self.revocation(), switch))

    def effective_peer_auth(self) -> int:
        """What a listener asks of clients: the application's choice, else the policy's."""
        if self.peer_auth_set:
            return self.peer_auth
        return {"none": 0, "request": 2, "require": 1}[self.policy.client_auth]

    def settings(self) -> TLSSettings:
        return effective(self.policy, self.app)

    def credentials(self) -> Credentials | None:
        """The client certificate (the first pair), if any."""
        pairs = self.all_credentials()
        return pairs[0] if pairs else None

    def all_credentials(self) -> tuple[Credentials, ...]:
        if len(self.chains) > len(self.keys):
            raise ApiError(errno.EPROTO, "TLS_CERTIFICATE_CHAIN set without TLS_PRIVATE_KEY")
        return tuple(make_credentials(c, k) for c, k in zip(self.chains, self.keys, strict=True))


#: the client's revocation options -> the switch each sets (RevocationPolicy fields)
REVOCATION_OPTIONS = {
    TLSOption.REVOCATION_CHECKS: "checks",
    TLSOption.OCSP_STAPLED_CHECKS: "ocsp_stapling",
    TLSOption.OCSP_CHECKS: "ocsp",
    TLSOption.CRL_CHECKS: "crl",
    TLSOption.CACHED_REV_CHECKS: "cache",
}

#: TLS_REQUEST_PEER_AUTH value -> index in CLIENT_AUTH (none, request, require)
_AUTH_STRENGTH = {0: 0, 2: 1, 1: 2}


def parse_alpn(text: str) -> tuple[bytes, ...]:
    items = tuple(p.strip().encode() for p in text.split(",") if p.strip())
    if not items:
        raise ApiError(errno.EINVAL, "TLS_ALPN: empty protocol list")
    for p in items:
        if len(p) > _ALPN_MAX:
            raise ApiError(errno.EINVAL, f"TLS_ALPN: protocol {p[:20]!r}... longer than 255")
    return items


def _bytes(value: bytes | None, name: TLSOption) -> bytes:
    if value is None:
        raise ApiError(errno.EINVAL, f"TLS_{name.name} takes a string value, not an int")
    return value


def _text(value: bytes | None, name: TLSOption) -> str:
    raw = _bytes(value, name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(errno.EINVAL, f"TLS_{name.name}: not valid UTF-8") from None


def _int(number: int | None, name: TLSOption) -> int:
    if number is None:
        raise ApiError(errno.EINVAL, f"TLS_{name.name} takes an int value")
    return number


def _flag(number: int | None, name: TLSOption) -> bool:
    value = _int(number, name)
    if value not in (0, 1):
        raise ApiError(errno.EINVAL, f"TLS_{name.name} takes 0 or 1")
    return bool(value)


def _certs(value: bytes | None, what: str) -> tuple[x509.Certificate, ...]:
    if value is None:
        raise ApiError(errno.EINVAL, f"{what} takes PEM text")
    try:
        return parse_certificates(value, what)
    except CredentialError as exc:
        raise ApiError(errno.EINVAL, str(exc)) from None


def _policy_call(fn, *args):  # type: ignore[no-untyped-def]
    try:
        return fn(*args)
    except PolicyViolation as exc:
        raise ApiError(errno.EPROTO, str(exc)) from None
    except InvalidSetting as exc:
        raise ApiError(errno.EINVAL, str(exc)) from None


@functools.lru_cache(maxsize=64)
def _der(certs: tuple[x509.Certificate, ...]) -> tuple[bytes, ...]:
    return tuple(c.public_bytes(serialization.Encoding.DER) for c in certs)


class Unexpected(FrameError):
    """A frame that breaks the conversation: the control connection is closed."""

    errno_value = errno.EBADMSG


def apply_tcp_option(sock: socket.socket, level: int, name: int, value: int | bytes) -> None:
    try:
        sock.setsockopt(level, name, value)
    except OSError as exc:
        raise ApiError(exc.errno or errno.EINVAL, f"socket option ({level}, {name}): "
                       f"{exc.strerror}") from None
