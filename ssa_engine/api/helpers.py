"""Convenience constructors, shaped like the stdlib's ``socket`` helpers."""

from __future__ import annotations

import errno
import os
import socket as _socket
from collections.abc import Sequence
from typing import Any

from ..protocol import options as opt
from .constants import (
    IPPROTO_TCP,
    TCP_UPGRADE_TLS,
    TLS_ALPN,
    TLS_CERTIFICATE_CHAIN,
    TLS_PRIVATE_KEY,
    TLS_REMOTE_HOSTNAME,
    TLS_REQUEST_PEER_AUTH,
    TLS_TRUSTED_PEER_CERTIFICATES,
)
from .tlssocket import TLSSocket

_GLOBAL_DEFAULT = _socket._GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]
PathOrPem = str | bytes | os.PathLike[str]


def socket(
    family: int = _socket.AF_INET,
    type: int = _socket.SOCK_STREAM,  # noqa: A002
    proto: int = opt.IPPROTO_TLS,
    fileno: int | None = None,
) -> TLSSocket:
    """Create a socket; ``IPPROTO_TLS`` gives a TLS socket served by the engine."""
    return TLSSocket(family, type, proto, fileno)


def family_for(host: str) -> int:
    return _socket.AF_INET6 if ":" in host else _socket.AF_INET


def configure(
    sock: TLSSocket,
    *,
    hostname: str | None = None,
    cafile: PathOrPem | None = None,
    certfile: PathOrPem | None = None,
    keyfile: PathOrPem | None = None,
    alpn: Sequence[str] | None = None,
    peer_auth: int | None = None,
) -> None:
    """Apply the helper keyword arguments as the matching TLS options (one round trip)."""
    options: list[tuple[int, int, Any]] = []
    if hostname is not None:
        options.append((opt.IPPROTO_TLS, TLS_REMOTE_HOSTNAME, hostname))
    if cafile is not None:
        options.append((opt.IPPROTO_TLS, TLS_TRUSTED_PEER_CERTIFICATES, cafile))
    if certfile is not None:
        options.append((opt.IPPROTO_TLS, TLS_CERTIFICATE_CHAIN, certfile))
    if keyfile is not None:
        options.append((opt.IPPROTO_TLS, TLS_PRIVATE_KEY, keyfile))
    if alpn:
        options.append((opt.IPPROTO_TLS, TLS_ALPN, ",".join(alpn)))
    if peer_auth is not None:
        options.append((opt.IPPROTO_TLS, TLS_REQUEST_PEER_AUTH, peer_auth))
    sock.ssa_setsockopts(options)


def create_connection(
    address: tuple[str, int],
    timeout: Any = _GLOBAL_DEFAULT,
    *,
    hostname: str | None = None,
    cafile: PathOrPem | None = None,
    certfile: PathOrPem | None = None,
    keyfile: PathOrPem | None = None,
    alpn: Sequence[str] | None = None,
) -> TLSSocket:
    """Connect a TLS socket to ``address`` (host name or address, port).

    A host name is resolved by the engine and used for SNI and verification;
    an IP address needs ``hostname``.
    """
    host, port = address
    sock = TLSSocket(family_for(host), _socket.SOCK_STREAM, opt.IPPROTO_TLS)
    try:
        if timeout is not _GLOBAL_DEFAULT:
            sock.settimeout(timeout)
        configure(sock, hostname=hostname, cafile=cafile, certfile=certfile,
                  keyfile=keyfile, alpn=alpn)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def create_server(
    address: tuple[str, int],
    *,
    certfile: PathOrPem | None = None,
    keyfile: PathOrPem | None = None,
    cafile: PathOrPem | None = None,
    alpn: Sequence[str] | None = None,
    backlog: int | None = None,
) -> TLSSocket:
    """A listening TLS socket on ``address`` (host "" = every address).

    ``certfile``/``keyfile`` give the certificate to serve (several chains:
    use setsockopt before listen); ``cafile`` makes the server require client
    certificates issued by that CA.
    """
    host, port = address
    sock = TLSSocket(family_for(host), _socket.SOCK_STREAM, opt.IPPROTO_TLS)
    try:
        # a CA file on a server means: require client certificates from that CA
        configure(sock, cafile=cafile, certfile=certfile, keyfile=keyfile, alpn=alpn,
                  peer_auth=1 if cafile is not None else None)
        sock.bind((host, port))
        sock.listen(128 if backlog is None else backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def upgrade(
    sock: _socket.socket,
    *,
    hostname: str | None = None,
    server_side: bool = False,
    cafile: PathOrPem | None = None,
    certfile: PathOrPem | None = None,
    keyfile: PathOrPem | None = None,
    alpn: Sequence[str] | None = None,
) -> TLSSocket:
    """STARTTLS: go on as TLS on a connected TCP socket; the engine does the handshake.

    ``hostname`` is the client role: the server's certificate is verified for
    that name under the administrator's policy. ``server_side=True`` is the
    server role, serving ``certfile``/``keyfile`` or the policy's certificates
    (``cafile`` then requires client certificates from that CA; in the client
    role it adds trust anchors, as in ``create_connection``).
    ``sock`` may be any connected stdlib TCP socket: its descriptor is taken
    over (``sock`` is detached; use the returned socket, which has the same
    ``fileno()``, and which is closed if the upgrade fails). A plain socket
    from ``ssa_engine.socket(AF_INET, SOCK_STREAM)`` is upgraded in place and
    returned. Call it once the plaintext exchange has been read exactly up to
    the peer's go-ahead (SMTP's ``220 Ready to start TLS``): bytes the kernel
    has received already are part of the TLS stream, and bytes a buffered
    reader (``makefile``) read ahead are lost to it.

    Raises:
        ValueError: neither or both of ``hostname`` and ``server_side``.
        OSError: ``EINVAL`` for a socket that is not connected TCP, ``EISCONN``
            for a TLS socket, ``EPROTO`` (reason in the message) when the
            handshake, the verification or the policy refuses.
    """
    if server_side == bool(hostname):
        raise ValueError("upgrade() takes hostname= (client role) or server_side=True")
    if isinstance(sock, TLSSocket):
        tls = sock
    else:
        if sock.family not in (_socket.AF_INET, _socket.AF_INET6) or sock.type != _socket.SOCK_STREAM:
            raise OSError(errno.EINVAL, "upgrade() needs a TCP socket")
        timeout = sock.gettimeout()
        tls = TLSSocket(sock.family, _socket.SOCK_STREAM, _socket.IPPROTO_TCP, sock.detach())
        tls.settimeout(timeout)
    try:
        # as with create_server(): a CA file on a server requires client certificates
        configure(tls, cafile=cafile, certfile=certfile, keyfile=keyfile, alpn=alpn,
                  peer_auth=1 if server_side and cafile is not None else None)
        tls.setsockopt(IPPROTO_TCP, TCP_UPGRADE_TLS, hostname or b"")
    except BaseException:
        if tls is not sock:
            tls.close()
        raise
    return tls
