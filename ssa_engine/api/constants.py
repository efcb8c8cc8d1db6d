"""The SSA constants, numbered as the SSA reference implementation numbers them."""

from __future__ import annotations

import socket as _socket_module
from socket import (  # re-exported so that `from ssa_engine import *` is enough
    AF_INET,
    AF_INET6,
    IPPROTO_TCP,
    SHUT_RD,
    SHUT_RDWR,
    SHUT_WR,
    SO_ERROR,
    SOCK_STREAM,
    SOL_SOCKET,
)

from ..protocol.options import AF_HOSTNAME, IPPROTO_TLS, TCP_UPGRADE_TLS, TLS_1_2, TLS_1_3

TLS_REMOTE_HOSTNAME = 85
TLS_HOSTNAME = 86
TLS_TRUSTED_PEER_CERTIFICATES = 87
TLS_CERTIFICATE_CHAIN = 88
TLS_PRIVATE_KEY = 89
TLS_ALPN = 90
TLS_SESSION_TTL = 91
TLS_DISABLE_CIPHER = 92
TLS_PEER_IDENTITY = 93
TLS_REQUEST_PEER_AUTH = 94
TLS_PEER_CERTIFICATE_CHAIN = 95
TLS_ID = 96
TLS_TRUSTED_CIPHERS = 97
TLS_CHOSEN_CIPHER = 98
TLS_ERROR = 100
TLS_REVOCATION_CHECKS = 102
TLS_OCSP_STAPLED_CHECKS = 103
TLS_OCSP_CHECKS = 104
TLS_CRL_CHECKS = 105
TLS_CACHED_REV_CHECKS = 106
TLS_CONTEXT = 107
TLS_SESSION_REUSE = 108
TLS_RESUMED_SESSION = 109
TLS_ENABLE_CIPHER = 110
TLS_VERSION_MIN = 111
TLS_VERSION_MAX = 112
TLS_VERSION_CONN = 113
TLS_SERVER_OCSP_STAPLING = 122
TLS_0RTT = 123
#: ``sendto(data, MSG_FASTOPEN, address)``: connect with TLS 1.3 early data (Linux's value)
MSG_FASTOPEN = getattr(_socket_module, "MSG_FASTOPEN", 0x20000000)

__all__ = [
    "AF_INET", "AF_INET6", "IPPROTO_TCP", "SHUT_RD", "SHUT_RDWR", "SHUT_WR", "SO_ERROR",
    "SOCK_STREAM", "SOL_SOCKET", "AF_HOSTNAME", "IPPROTO_TLS", "TCP_UPGRADE_TLS", "TLS_1_2",
    "TLS_1_3", "MSG_FASTOPEN",
] + [name for name in list(globals()) if name.startswith("TLS_") and name[4:5].isalpha()
     or name == "TLS_0RTT"]
