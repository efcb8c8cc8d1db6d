"""The client side of a socket session: resolve, connect, handshake, verify."""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import socket
from typing import Any

from OpenSSL import SSL

from ..policy import TLS_1_3
from ..protocol import (
    Connect,
    Connected,
    ConnectFailed,
)
from ..protocol.states import Request, SocketState
from ..store.pins import chain_pins
from . import fastio
from .auditing import connection_record
from .listener import handshake
from .options import ApiError, Unexpected, apply_tcp_option
from .relay import Relay
from .sessions import ClientSessionWatch, max_early_data, write_early_data
from .tlsctx import (
    ClientConfig,
    ContextCache,
    CredentialError,
    describe_handshake_error,
    ip_literal,
)

log = logging.getLogger("ssa.session")


class ClientSide:
    """Session methods for connecting sockets."""

    # -- connect --------------------------------------------------------------
    def _on_connect(self, m: Connect) -> None:
        if not self.fds:
            raise Unexpected("CONNECT without its data file descriptor")
        data_fd = self.fds.popleft()
        if self.state is None:
            os.close(data_fd)
            raise ApiError(errno.EBADFD, "SOCKET must come first")
        try:
            data = socket.socket(fileno=data_fd)
        except OSError:
            os.close(data_fd)
            raise ApiError(errno.EINVAL, "the passed file descriptor is not a socket") from None
        if data.family != socket.AF_UNIX or data.type != socket.SOCK_STREAM:
            data.close()
            raise ApiError(errno.EINVAL, "the data descriptor must be a Unix stream socket")
        try:
            self._require(Request.CONNECT)
        except ApiError:
            data.close()
            raise
        data.setblocking(False)
        self.state = SocketState.CONNECTING
        self.remote = f"{m.host}:{m.port}"
        self.connect_task = self.loop.create_task(self._connect(m, data))

    async def _connect(self, m: Connect, data: socket.socket) -> None:
        try:
            await self._establish(m)
        except ApiError as exc:
            self._connect_failed(exc.errno, exc.message, data, m.filler)
            return
        except asyncio.CancelledError:
            data.close()
            raise
        except Exception as exc:  # noqa: BLE001 - never let one socket kill the engine
            log.exception("%s: internal error during connect", self._who())
            self._connect_failed(errno.EPROTO, f"internal engine error: {type(exc).__name__}",
                                 data, m.filler)
            return
        assert self.conn is not None and self.tcp is not None
        if self.closed:
            data.close()
            return
        local = self.tcp.getsockname()
        peer = self.tcp.getpeername()
        self.state = SocketState.CONNECTED
        self.engine.connected += 1
        log.info("%s: connected to %s (%s) %s %s", self._who(), self.remote, peer[0],
                 self.conn.get_protocol_version_name(), self.conn.get_cipher_name())
        self.send(Connected(local_host=local[0], local_port=local[1],
                            peer_host=peer[0], peer_port=peer[1]))
        self._audit_connect(local=local, remote=peer)
        # the reply is queued first: once the filler is gone and the application's
        # descriptor turns writable, the result is already there to read.
        _drain_filler(data, m.filler)
        self.relay = Relay(self.loop, self.conn, self.tcp, data, self._on_stream_end,
                           self._on_relay_finished)
        self.relay.start(first=self.first_bytes)
        self.first_bytes = b""

    def _audit_connect(self, *, local: object = None, remote: object = None,
                       verify: str = "ok", error: str | None = None) -> None:
        o = self.options
        if self.engine.audit_log is None or o is None:
            return
        if remote is None and self.tcp is not None:
            try:
                remote = self.tcp.getpeername()
                local = self.tcp.getsockname()
            except OSError:
                pass
        self.engine.audit(o.policy, connection_record(
            "connect", self.peer, o.policy.profile, conn=self.conn, local=local,
            remote=remote if remote is not None else self.remote, sni=self.sent_sni,
            verify=verify, error=error))

    def _connect_failed(self, code: int, message: str, data: socket.socket, filler: int) -> None:
        log.info("%s: connect to %s failed: %s", self._who(), self.remote, message)
        self._audit_connect(verify="failed" if self.conn is not None else "none", error=message)
        self.state = SocketState.BROKEN
        self.last_error = message
        if self.tcp is not None:
            self.tcp.close()
            self.tcp = None
        self.conn = None
        # reply first, then release the data fd: the application learns the
        # result from the reply by the time its fd becomes writable.
        self.send(ConnectFailed(errno=code, message=message))
        _drain_filler(data, filler)
        data.close()

    async def _establish(self, m: Connect) -> None:
        o = self.options
        assert o is not None
        policy = o.policy
        host_is_ip = ip_literal(m.host) is not None
        verify_name = o.remote_hostname
        if verify_name is None and not host_is_ip:
            verify_name = m.host.rstrip(".").lower()
        if verify_name is None and policy.verify.allow_ip_names:
            verify_name = m.host.strip("[]")  # the policy lets IP certificates verify
        if verify_name is None:
            raise ApiError(errno.EPROTO, "connect((ip, port)) needs TLS_REMOTE_HOSTNAME: the "
                           "engine cannot verify a server without its host name")
        verify_ip = ip_literal(verify_name)
        if verify_ip is not None and not policy.verify.allow_ip_names:
            raise ApiError(errno.EPROTO, f"verifying a server by IP address ({verify_name}) is "
                           f"not allowed by the {policy.source}; set TLS_REMOTE_HOSTNAME to "
                           "its host name")
        try:
            settings = o.settings()
            cfg = ClientConfig(settings, policy.verify.trust_store, policy.verify.verify_depth,
                               tuple(o.extra_trust), o.credentials())
            ctx = self.engine.contexts.client(cfg)
        except CredentialError as exc:
            raise ApiError(errno.EPROTO, str(exc)) from None
        except SSL.Error as exc:
            raise ApiError(errno.EPROTO, f"cannot build the TLS context: {exc}") from None
        if self.tcp is None:  # an UPGRADE brings its own connected TCP socket
            self.tcp = await self._tcp_connect(m.host, m.port, policy.handshake_timeout)
        for (level, name), value in o.tcp.items():
            apply_tcp_option(self.tcp, level, name, value)
        conn = SSL.Connection(ctx, self.tcp)
        conn.set_connect_state()
        if verify_ip is None:
            conn.set_tlsext_host_name(verify_name.encode("ascii"))
            self.sent_sni = verify_name
        fastio.set_verify_host(conn, verify_name, verify_ip)
        if o.alpn:
            conn.set_alpn_protos(list(o.alpn))
        revocation = o.revocation()
        if revocation.checks and revocation.ocsp_stapling:
            conn.request_ocsp()  # status_request: the server may staple (RFC 6066 section 8)
        early = getattr(m, "early_data", None) or b""
        watch, sent_early = self._resume(conn, cfg, verify_name, m.port, early)
        self.conn = conn
        try:
            async with asyncio.timeout(policy.handshake_timeout):
                await handshake(self.loop, conn, self.tcp.fileno())
        except TimeoutError:
            raise ApiError(errno.ETIMEDOUT, f"TLS handshake timeout: no answer from {self.remote} "
                           f"within {policy.handshake_timeout:g} s") from None
        except SSL.Error as exc:
            raise ApiError(errno.EPROTO, describe_handshake_error(conn, exc, verify_name)) from None
        code, text = fastio.verify_result(conn)
        if code != 0:  # defence in depth: VERIFY_PEER already enforces this
            raise ApiError(errno.EPROTO, f"certificate verification failed: {text}")
        # revocation, also for a resumed session (which has no chain to check below)
        await self.engine.revocation.check_server(conn, revocation, policy.source, self._who())
        # early data went out only with a session from this program, this server
        # and these settings and pins: it goes to the server that was verified then
        self.early_data = bool(sent_early and watch is not None and watch.early_accepted)
        self.first_bytes = early[sent_early:] if self.early_data else early
        if fastio.session_reused(conn):
            # the chain was checked (key sizes, pins) when this session was made,
            # under the same cache key; a resumed handshake carries no chain
            if watch is not None:
                watch.handshake_done(conn)
            return
        chain = conn.get_verified_chain() or []
        weak = fastio.weak_key(chain, policy.level.min_rsa_bits, policy.level.min_ec_bits)
        if weak is not None:
            raise ApiError(errno.EPROTO, f"server key too small for the policy: {weak}, "
                           f"level {policy.level.name} of the {policy.source}")
        pins = policy.pins_for(verify_name)
        if pins:
            check_pins(chain, verify_name, pins, policy.source)
        if watch is not None:
            watch.handshake_done(conn)  # only a fully checked session is ever cached

    def _resume(self, conn: SSL.Connection, cfg: ClientConfig, host: str, port: int,
                early: bytes) -> tuple[ClientSessionWatch | None, int]:
        """Offer this program's cached session for host:port, with early data if allowed.

        Returns the watch that will cache the new session, and the bytes sent as
        early data (0 when none could be).
        """
        o = self.options
        assert o is not None
        if not o.session_reuse or o.session_ttl == 0:
            return None, 0
        key = (self._program_key(), host, port, ContextCache.key(cfg),
               o.policy.pins_for(host), o.revocation())
        cache = self.engine.client_sessions
        watch = ClientSessionWatch(cache, key, o.session_ttl)
        sent = 0
        cached = cache.get(key)
        if cached is not None:
            conn.set_session(cached)
            limit = max_early_data(cached)
            if early and limit > 0 and cfg.settings.max_version >= TLS_1_3:
                sent = write_early_data(conn, early[:limit])
        if sent:
            watch.attach(conn)  # to see whether the server took the early data
        return watch, sent

    async def _tcp_connect(self, host: str, port: int, timeout: float) -> socket.socket:
        literal = ip_literal(host)
        if literal is not None:  # no resolver round trip for an address
            fam = socket.AF_INET6 if len(literal) == 16 else socket.AF_INET
            addr: tuple[object, ...] = (host.strip("[]"), port) if fam == socket.AF_INET else (
                host.strip("[]"), port, 0, 0)
            infos = [(fam, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", addr)]
        else:
            try:
                infos = await self.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise ApiError(errno.EHOSTUNREACH,
                               f"cannot resolve {host!r}: {exc.strerror}") from None
        # Interleave IPv6 and IPv4 (RFC 8305 section 4) and try them in turn.
        v6 = [i for i in infos if i[0] == socket.AF_INET6]
        v4 = [i for i in infos if i[0] == socket.AF_INET]
        ordered = [x for pair in itertools.zip_longest(v6, v4) for x in pair if x is not None]
        last: OSError | None = None
        if self.bound is not None:  # bind() before connect(): that socket, that address
            ordered = [i for i in ordered if i[0] == self.bound.family][:1]
            if not ordered:
                raise ApiError(errno.EAFNOSUPPORT, f"{host} has no address of the bound "
                               "socket's family")
        for fam, stype, proto, _, addr in ordered:
            if self.bound is not None:
                sock, self.bound = self.bound, None
            else:
                sock = socket.socket(fam, stype, proto)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(timeout):
                    await self.loop.sock_connect(sock, addr)
                return sock
            except TimeoutError:
                sock.close()
                last = OSError(errno.ETIMEDOUT, f"TCP connect to {addr[0]} port {port} timed out")
            except OSError as exc:
                sock.close()
                last = exc
            except BaseException:
                sock.close()
                raise
        assert last is not None
        code = last.errno or errno.ECONNREFUSED
        raise ApiError(code, f"cannot connect to {host} port {port}: "
                       f"{last.strerror or os.strerror(code)}")


def check_pins(chain: list[Any], host: str, pins: frozenset[str], source: str) -> None:
    """The verified chain must contain a pinned key (RFC 7469 section 2.6), or EPROTO."""
    found = chain_pins([c.to_cryptography() for c in chain])
    if pins.isdisjoint(found):
        raise ApiError(errno.EPROTO, f"pin mismatch for {host}: the {source} pins "
                       f"{', '.join(sorted(pins))}; the server's chain has {', '.join(found)}")


def _drain_filler(data: socket.socket, count: int) -> None:
    """Discard the filler bytes the library queued to hold its fd unwritable."""
    while count > 0:
        try:
            chunk = data.recv(min(count, 1 << 20))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        if not chunk:
            return
        count -= len(chunk)
