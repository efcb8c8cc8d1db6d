"""Socket option numbers of the Secure Socket API and what each one accepts.

The numbers are those of the SSA reference implementation (ARCHITECTURE.md
section 4, pinned). The table says, for every option, whether its value is an
integer or a byte string and in which direction it may be used; the engine and
the client library both consult it, so a wrong direction is refused the same
way on both sides (``ENOPROTOOPT``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

#: ``socket(AF_INET, SOCK_STREAM, IPPROTO_TLS)``
IPPROTO_TLS = 205
#: address family of the paper's ``sockaddr_host`` (connect by host name)
AF_HOSTNAME = 43
#: option level ``IPPROTO_TCP``: upgrade a connected TCP socket to TLS
TCP_UPGRADE_TLS = 33

#: protocol version values used by TLS_VERSION_MIN/MAX/CONN
TLS_1_2 = 0x0303
TLS_1_3 = 0x0304


class TLSOption(enum.IntEnum):
    """Option names at level ``IPPROTO_TLS``."""

    REMOTE_HOSTNAME = 85  #: host name for SNI and verification (client)
    HOSTNAME = 86  #: name served by a listener / SNI received (server)
    TRUSTED_PEER_CERTIFICATES = 87  #: extra trusted certificates (PEM content)
    CERTIFICATE_CHAIN = 88  #: own certificate chain (PEM content)
    PRIVATE_KEY = 89  #: own private key (PEM content)
    ALPN = 90  #: comma-separated protocols; get: the negotiated one
    SESSION_TTL = 91  #: seconds a session may be cached
    DISABLE_CIPHER = 92  #: remove one cipher from the offer
    PEER_IDENTITY = 93  #: peer certificate subject, OpenSSL one-line form
    REQUEST_PEER_AUTH = 94  #: 0 off, 1 require, 2 request client certificates
    PEER_CERTIFICATE_CHAIN = 95  #: verified peer chain as PEM
    ID = 96  #: engine-wide identifier of this socket
    TRUSTED_CIPHERS = 97  #: get: the cipher list in force
    CHOSEN_CIPHER = 98  #: get: the negotiated cipher
    ERROR = 100  #: get: text of the last TLS or policy error
    REVOCATION_CHECKS = 102  #: revocation checking on/off
    OCSP_STAPLED_CHECKS = 103  #: stapled OCSP checks on/off
    OCSP_CHECKS = 104  #: OCSP responder checks on/off
    CRL_CHECKS = 105  #: CRL checks on/off
    CACHED_REV_CHECKS = 106  #: cached revocation results on/off
    CONTEXT = 107  #: share settings and sessions between sockets
    SESSION_REUSE = 108  #: session resumption on/off
    RESUMED_SESSION = 109  #: get: 1 when the handshake resumed a session
    ENABLE_CIPHER = 110  #: re-add one cipher (within policy)
    VERSION_MIN = 111  #: minimum protocol version (TLS_1_2 / TLS_1_3)
    VERSION_MAX = 112  #: maximum protocol version
    VERSION_CONN = 113  #: get: negotiated protocol version
    SERVER_OCSP_STAPLING = 122  #: staple OCSP responses (server)
    ZERO_RTT = 123  #: TLS 1.3 early data


class Kind(enum.Enum):
    INT = "int"
    BYTES = "bytes"


class Access(enum.Flag):
    SET = enum.auto()
    GET = enum.auto()
    BOTH = SET | GET


@dataclass(frozen=True, slots=True)
class OptionSpec:
    kind: Kind
    access: Access
    #: False while the engine does not implement the option yet; it is then
    #: refused with ENOPROTOOPT and a message saying so, never ignored.
    implemented: bool = True
    # plain booleans for the hot path (Flag operations are slow)
    settable: bool = field(init=False)
    gettable: bool = field(init=False)
    is_int: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "settable", Access.SET in self.access)
        object.__setattr__(self, "gettable", Access.GET in self.access)
        object.__setattr__(self, "is_int", self.kind is Kind.INT)


_I, _B = Kind.INT, Kind.BYTES
_S, _G, _SG = Access.SET, Access.GET, Access.BOTH

OPTIONS: dict[TLSOption, OptionSpec] = {
    TLSOption.REMOTE_HOSTNAME: OptionSpec(_B, _SG),
    TLSOption.HOSTNAME: OptionSpec(_B, _SG),
    TLSOption.TRUSTED_PEER_CERTIFICATES: OptionSpec(_B, _S),
    TLSOption.CERTIFICATE_CHAIN: OptionSpec(_B, _S),
    TLSOption.PRIVATE_KEY: OptionSpec(_B, _S),
    TLSOption.ALPN: OptionSpec(_B, _SG),
    TLSOption.SESSION_TTL: OptionSpec(_I, _SG),
    TLSOption.DISABLE_CIPHER: OptionSpec(_B, _S),
    TLSOption.PEER_IDENTITY: OptionSpec(_B, _G),
    TLSOption.REQUEST_PEER_AUTH: OptionSpec(_I, _SG),
    TLSOption.PEER_CERTIFICATE_CHAIN: OptionSpec(_B, _G),
    TLSOption.ID: OptionSpec(_I, _G),
    TLSOption.TRUSTED_CIPHERS: OptionSpec(_B, _G),
    TLSOption.CHOSEN_CIPHER: OptionSpec(_B, _G),
    TLSOption.ERROR: OptionSpec(_B, _G),
    TLSOption.REVOCATION_CHECKS: OptionSpec(_I, _SG),
    TLSOption.OCSP_STAPLED_CHECKS: OptionSpec(_I, _SG),
    TLSOption.OCSP_CHECKS: OptionSpec(_I, _SG),
    TLSOption.CRL_CHECKS: OptionSpec(_I, _SG),
    TLSOption.CACHED_REV_CHECKS: OptionSpec(_I, _SG),
    TLSOption.CONTEXT: OptionSpec(_B, _SG),
    TLSOption.SESSION_REUSE: OptionSpec(_I, _SG),
    TLSOption.RESUMED_SESSION: OptionSpec(_I, _G),
    TLSOption.ENABLE_CIPHER: OptionSpec(_B, _S),
    TLSOption.VERSION_MIN: OptionSpec(_I, _SG),
    TLSOption.VERSION_MAX: OptionSpec(_I, _SG),
    TLSOption.VERSION_CONN: OptionSpec(_I, _G),
    TLSOption.SERVER_OCSP_STAPLING: OptionSpec(_I, _SG),
    TLSOption.ZERO_RTT: OptionSpec(_I, _SG),
}

# Levels other than IPPROTO_TLS whose options the engine applies to the
# outside TCP socket. Only options that cannot borrow the engine's privileges
# are allowed (no SO_MARK, SO_BINDTODEVICE, IP_TRANSPARENT ...). The numbers
# are Linux's; the protocol module may not import ``socket``.
SOL_SOCKET = 1
IPPROTO_TCP = 6

SO_REUSEADDR = 2
SO_KEEPALIVE = 9
SO_SNDBUF = 7
SO_RCVBUF = 8
SO_LINGER = 13
SO_REUSEPORT = 15
TCP_NODELAY = 1
TCP_MAXSEG = 2
TCP_KEEPIDLE = 4
TCP_KEEPINTVL = 5
TCP_KEEPCNT = 6
TCP_QUICKACK = 12
TCP_USER_TIMEOUT = 18

#: (level, option) pairs forwarded to the outside TCP socket, all int-valued
#: except SO_LINGER (an 8-byte ``struct linger``).
FORWARDED_OPTIONS: frozenset[tuple[int, int]] = frozenset(
    {
        (SOL_SOCKET, SO_REUSEADDR),
        (SOL_SOCKET, SO_KEEPALIVE),
        (SOL_SOCKET, SO_SNDBUF),
        (SOL_SOCKET, SO_RCVBUF),
        (SOL_SOCKET, SO_LINGER),
        (SOL_SOCKET, SO_REUSEPORT),
        (IPPROTO_TCP, TCP_NODELAY),
        (IPPROTO_TCP, TCP_MAXSEG),
        (IPPROTO_TCP, TCP_KEEPIDLE),
        (IPPROTO_TCP, TCP_KEEPINTVL),
        (IPPROTO_TCP, TCP_KEEPCNT),
        (IPPROTO_TCP, TCP_QUICKACK),
        (IPPROTO_TCP, TCP_USER_TIMEOUT),
    }
)


_BY_NUMBER: dict[int, tuple[TLSOption, OptionSpec]] = {int(o): (o, s) for o, s in OPTIONS.items()}


def lookup(optname: int) -> tuple[TLSOption, OptionSpec] | None:
    """Return the option and its spec, or None for an unknown number."""
    return _BY_NUMBER.get(optname)
