"""STARTTLS: TLS on a TCP connection that the application opened itself.

Theory of operation (docs/protocol.md section 6.7): after an application and
its peer agreed in plaintext to start TLS (SMTP or IMAP ``STARTTLS``), the
library sends UPGRADE with two descriptors, the connected TCP socket and the
engine's end of a new data pair. The engine runs the handshake on that TCP
socket in the role UPGRADE names and then relays between it and the pair, so
that the socket is from then on like one that connected (client role) or one
that a listener accepted (server role).

The client role *is* a CONNECT whose TCP connection already exists:
``ClientSide._connect`` runs it with ``self.tcp`` set, so that every check
after the handshake (verification, policy, pins) is the same code. The server
role builds the contexts a listener would (``ServerSide._server_contexts``)
and runs one server handshake. Either way the answer is CONNECTED or
CONNECT_FAILED, never ERROR, exactly as for CONNECT.

The engine reads the TCP socket from where the application left it: bytes
that the kernel had received but the application had not read yet are the
start of the TLS stream (the peer's ClientHello, or the server's answer to
it); STARTTLS protocols make the peer wait for the plaintext go-ahead.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket

from OpenSSL import SSL

from ..protocol import Connect, Connected, ConnectFailed, Upgrade
from ..protocol.states import Request, SocketState
from .listener import handshake
from .options import ApiError, Unexpected
from .relay import Relay
from .servertls import ServerContexts
from .tlsctx import _openssl_text

log = logging.getLogger("ssa.session")


class UpgradeSide:
    """Session methods for UPGRADE (``TCP_UPGRADE_TLS``)."""

    #: a server-role upgrade's contexts: they own the SNI and ALPN callbacks
    #: that OpenSSL calls, so they live as long as the connection
    upgrade_contexts: ServerContexts | None = None

    def _on_upgrade(self, m: Upgrade) -> None:
        if len(self.fds) < 2:
            raise Unexpected("UPGRADE without its two file descriptors")
        tcp = _socket_of(self.fds.popleft())
        data = _socket_of(self.fds.popleft())
        try:
            peer = self._check_upgrade(m, tcp, data)
        except BaseException:
            for s in (tcp, data):
                if s is not None:
                    s.close()
            raise
        assert tcp is not None and data is not None
        tcp.setblocking(False)
        data.setblocking(False)
        self.state = SocketState.CONNECTING
        self.tcp = tcp
        if m.host:
            self.remote = f"{m.host}:{peer[1]}"
            work = self._connect(Connect(host=m.host, port=peer[1]), data)
        else:
            self.remote = f"{peer[0]}:{peer[1]}"
            work = self._upgrade_server(data)
        self.connect_task = self.loop.create_task(work)

    def _check_upgrade(self, m: Upgrade, tcp: socket.socket | None,
                       data: socket.socket | None) -> tuple[str, int]:
        """The immediate refusals of docs/protocol.md section 6.7, in order; the TCP peer."""
        if self.state is None:
            raise ApiError(errno.EBADFD, "SOCKET must come first")
        if (tcp is None or tcp.family not in (socket.AF_INET, socket.AF_INET6)
                or tcp.type != socket.SOCK_STREAM or tcp.proto != socket.IPPROTO_TCP):
            raise ApiError(errno.EINVAL, "TCP_UPGRADE_TLS needs a TCP socket")
        try:
            peer: tuple[str, int] = tcp.getpeername()[:2]
        except OSError:
            raise ApiError(errno.EINVAL, "TCP_UPGRADE_TLS needs a connected TCP socket") from None
        if data is None or data.family != socket.AF_UNIX or data.type != socket.SOCK_STREAM:
            raise ApiError(errno.EINVAL, "the data descriptor must be a Unix stream socket")
        self._require(Request.UPGRADE)
        if self.bound is not None:
            raise ApiError(errno.EINVAL, "a socket bound with bind() cannot be upgraded")
        if not m.host.isascii():
            raise ApiError(errno.EINVAL, f"TCP_UPGRADE_TLS: {m.host!r} is not an ASCII host "
                           "name (use its IDNA form)")
        return peer

    # -- the server role ----------------------------------------------------------
    async def _upgrade_server(self, data: socket.socket) -> None:
        try:
            conn = await self._server_handshake()
        except ApiError as exc:
            self._upgrade_server_failed(exc.errno, exc.message, data)
            return
        except asyncio.CancelledError:
            data.close()
            raise
        except Exception as exc:  # noqa: BLE001 - never let one socket kill the engine
            log.exception("%s: internal error during a STARTTLS upgrade", self._who())
            self._upgrade_server_failed(errno.EPROTO, "internal engine error: "
                                        f"{type(exc).__name__}", data)
            return
        tcp = self.tcp
        assert tcp is not None
        if self.closed:
            data.close()
            return
        try:
            local, peer = tcp.getsockname(), tcp.getpeername()
        except OSError:
            self._upgrade_server_failed(errno.ECONNRESET, "the client left right after "
                                        "its handshake", data)
            return
        raw = conn.get_servername()
        self.sni = raw.decode("ascii", "replace") if raw else None
        self.role = "server"  # like an accepted socket (TLS_HOSTNAME reads the SNI)
        self.state = SocketState.CONNECTED
        self.engine.connected += 1
        log.info("%s: STARTTLS upgrade (server) with %s %s %s sni=%s", self._who(), self.remote,
                 conn.get_protocol_version_name(), conn.get_cipher_name(), self.sni)
        self.send(Connected(local_host=local[0], local_port=local[1],
                            peer_host=peer[0], peer_port=peer[1]))
        self.audit_accept(conn, local, peer, self.sni)
        self.relay = Relay(self.loop, conn, tcp, data, self._on_stream_end,
                           self._on_relay_finished)
        self.relay.start()

    async def _server_handshake(self) -> SSL.Connection:
        """One server handshake on ``self.tcp`` with the settings a listener would use."""
        assert self.options is not None and self.tcp is not None
        timeout = self.options.policy.handshake_timeout
        self.upgrade_contexts = self._server_contexts()
        conn = SSL.Connection(self.upgrade_contexts.default, self.tcp)
        conn.set_accept_state()
        self.conn = conn
        try:
            async with asyncio.timeout(timeout):
                await handshake(self.loop, conn, self.tcp.fileno())
        except TimeoutError:
            raise ApiError(errno.ETIMEDOUT, f"TLS handshake timeout: no handshake from "
                           f"{self.remote} within {timeout:g} s") from None
        except SSL.SysCallError:
            raise ApiError(errno.EPROTO, "TLS handshake failed: the client closed or reset "
                           "the connection") from None
        except SSL.Error as exc:
            raise ApiError(errno.EPROTO, "TLS handshake failed: "
                           f"{_openssl_text(exc) or type(exc).__name__}") from None
        except OSError as exc:
            raise ApiError(exc.errno or errno.ECONNRESET,
                           f"TLS handshake failed: {exc.strerror}") from None
        return conn

    def _upgrade_server_failed(self, code: int, message: str, data: socket.socket) -> None:
        log.info("%s: STARTTLS upgrade (server) with %s failed: %s", self._who(), self.remote,
                 message)
        tcp, self.tcp = self.tcp, None
        local = remote = None
        if tcp is not None:
            try:
                local, remote = tcp.getsockname(), tcp.getpeername()
            except OSError:
                pass
            tcp.close()
        self.audit_accept(None, local, remote or self.remote, None, error=message)
        self.state = SocketState.BROKEN
        self.last_error = message
        self.conn = None
        # reply first, then release the data fd (as a failed CONNECT does)
        self.send(ConnectFailed(errno=code, message=message))
        data.close()


def _socket_of(fd: int) -> socket.socket | None:
    """The socket behind a passed descriptor, or None (and the descriptor closed)."""
    try:
        return socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None
