"""One control connection: one application socket inside the engine.

The application's library connects to the engine's Unix socket once per TLS
socket. Frames arrive on that connection (see docs/protocol.md); this class
decodes them, checks each against the state machine (protocol/states.py) and
answers. A malformed frame closes this connection only.
"""

from __future__ import annotations

import array
import asyncio
import errno
import json
import logging
import os
import socket
import time
from collections import deque
from typing import TYPE_CHECKING

from OpenSSL import SSL

from .. import __version__
from ..protocol import (
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    AcmeChallenge,
    Bind,
    Closed,
    Connect,
    ConnectFailed,
    Decoder,
    Error,
    FrameError,
    GetSockOpt,
    Hello,
    HelloOk,
    Listen,
    Message,
    Ok,
    ReloadRequest,
    SetSockOpt,
    SocketRequest,
    StatusReply,
    StatusRequest,
    Upgrade,
    encode,
)
from ..protocol import options as opt
from ..protocol.options import IPPROTO_TLS, TLSOption
from ..protocol.states import Request, SocketState, check
from . import fastio
from .accepting import ServerSide
from .connecting import ClientSide
from .identity import PeerIdentity
from .listener import Listener
from .options import ApiError, SocketOptions, Unexpected, apply_tcp_option, socket_ids
from .relay import Relay
from .servertls import ServerConfig
from .upgrading import UpgradeSide

if TYPE_CHECKING:
    from .server import Engine

log = logging.getLogger("ssa.session")

#: Security parameter: most file descriptors accepted in one recvmsg.
MAX_FDS = 4
#: Security parameter: reply bytes queued for a client before its requests
#: are no longer read.
MAX_QUEUED_REPLIES = 256 * 1024
_RECV_SIZE = 256 * 1024

_CONNECTION_INFO = {
    TLSOption.PEER_IDENTITY,
    TLSOption.PEER_CERTIFICATE_CHAIN,
    TLSOption.CHOSEN_CIPHER,
    TLSOption.VERSION_CONN,
    TLSOption.RESUMED_SESSION,
}



class Session(ClientSide, ServerSide, UpgradeSide):
    def __init__(self, engine: Engine, sock: socket.socket, peer: PeerIdentity) -> None:
        self.engine = engine
        self.loop = engine.loop
        self.sock = sock
        self.peer = peer
        self.decoder = Decoder()
        self.fds: deque[int] = deque()
        self.out: deque[tuple[bytes | memoryview, list[int]]] = deque()
        self.out_bytes = 0
        self.reading_paused = False
        self.role = "client"  # "client", "listener" or "server" (an accepted socket)
        self.listener: Listener | None = None
        self.bound: socket.socket | None = None  # the outside listening socket
        self.sni: str | None = None  # accepted sockets: the SNI the client sent
        self.sent_sni: str | None = None  # client sockets: the SNI we sent
        self.early_data = False  # the first bytes travelled as TLS 1.3 early data
        self.first_bytes = b""  # client: what must be sent right after the handshake
        self.server_cfg: ServerConfig | None = None  # listeners: what their contexts use
        self.certs_from_store = False  # listeners serving the administrator's certificates
        self.pha_timer: asyncio.TimerHandle | None = None
        self.pha_read_finished = False
        self.hello_done = False
        self.state: SocketState | None = None
        self.socket_id = 0
        self.options: SocketOptions | None = None
        self.family = socket.AF_INET
        self.last_error = ""
        self.conn: SSL.Connection | None = None
        self.tcp: socket.socket | None = None
        self.relay: Relay | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.closed = False
        self.created = time.monotonic()
        self.remote = ""
        self.loop.add_reader(sock.fileno(), self._on_readable)

    # -- I/O on the control connection ---------------------------------------
    def _on_readable(self) -> None:
        try:
            data, anc, flags, _ = self.sock.recvmsg(
                _RECV_SIZE, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
            )
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self.fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            self._protocol_error(errno.EMSGSIZE, f"more than {MAX_FDS} file descriptors")
            return
        if not data:
            self.close()
            return
        try:
            self.decoder.receive_data(data)
            for message in self.decoder.messages():
                self._dispatch(message)
                if self.closed:
                    return
        except FrameError as exc:
            self._protocol_error(exc.errno_value, str(exc))
            return
        if self.fds and not self.decoder.buffered:
            self._protocol_error(errno.EBADMSG, "file descriptor without a frame that takes it")

    def send(self, message: Message, fds: list[int] | None = None) -> None:
        """Queue a frame; ``fds`` travel with its first byte and are closed once sent."""
        if self.closed:
            for fd in fds or ():
                os.close(fd)
            return
        data = encode(message)
        self.out.append((data, fds or []))
        self.out_bytes += len(data)
        self._flush()

    def _flush(self) -> None:
        try:
            while self.out:
                data, fds = self.out[0]
                if fds:
                    n = self.sock.sendmsg(
                        [data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                    for fd in fds:
                        os.close(fd)
                    fds = []
                else:
                    n = self.sock.send(data)
                self.out_bytes -= n
                if n < len(data):
                    self.out[0] = (memoryview(data)[n:], fds)
                else:
                    self.out.popleft()
        except (BlockingIOError, InterruptedError):
            self.loop.add_writer(self.sock.fileno(), self._on_writable)
            if self.out_bytes > MAX_QUEUED_REPLIES and not self.reading_paused:
                # a client that sends requests but reads no replies: stop
                # reading its requests until it catches up (bounded memory)
                self.reading_paused = True
                self.loop.remove_reader(self.sock.fileno())
            return
        except OSError:
            self.close()

    def _on_writable(self) -> None:
        self.loop.remove_writer(self.sock.fileno())
        self._flush()
        if not self.out and self.reading_paused and not self.closed:
            self.reading_paused = False
            self.loop.add_reader(self.sock.fileno(), self._on_readable)

    def _protocol_error(self, code: int, message: str) -> None:
        log.warning("%s: control protocol error, closing: %s", self._who(), message)
        self.send(Error(errno=code, message=f"control protocol error: {message}"))
        self.close()

    def _who(self) -> str:
        return f"{self.peer.program}[{self.peer.pid}] uid={self.peer.uid}"

    # -- requests -------------------------------------------------------------
    def _dispatch(self, message: Message) -> None:
        if message.TYPE not in REQUEST_TYPES:
            raise Unexpected(f"{type(message).__name__} is not a request")
        if not self.hello_done:
            if not isinstance(message, Hello):
                raise Unexpected("the first frame must be HELLO")
            if not message.version_min <= PROTOCOL_VERSION <= message.version_max:
                self.send(Error(errno=errno.EPROTONOSUPPORT,
                                message=f"engine speaks control protocol {PROTOCOL_VERSION}"))
                self.close()
                return
            self.hello_done = True
            self.send(HelloOk(version=PROTOCOL_VERSION, software=f"ssa-engine {__version__}"))
            return
        if isinstance(message, Hello):
            raise Unexpected("HELLO sent twice")
        if isinstance(message, Connect | Upgrade):
            # the connect result always comes as CONNECTED or CONNECT_FAILED, so
            # that it cannot be mistaken for the reply to a later request
            try:
                if isinstance(message, Upgrade):
                    self._on_upgrade(message)  # TCP_UPGRADE_TLS: answered as a CONNECT is
                else:
                    self._on_connect(message)
            except ApiError as exc:
                if exc.errno == errno.EPROTO:
                    self.last_error = exc.message
                self.send(ConnectFailed(errno=exc.errno, message=exc.message))
            return
        try:
            if isinstance(message, SocketRequest):
                self._on_socket(message)
            elif isinstance(message, StatusRequest):
                self._on_status()
            elif isinstance(message, ReloadRequest):
                self._on_reload()
            elif isinstance(message, AcmeChallenge):
                self._on_acme_challenge(message)
            elif self.state is None:
                if isinstance(message, Listen) and self.fds:
                    os.close(self.fds.popleft())  # its descriptor is not taken
                raise ApiError(errno.EBADFD, "SOCKET must come first")
            elif isinstance(message, SetSockOpt):
                self._on_setsockopt(message)
            elif isinstance(message, GetSockOpt):
                self._on_getsockopt(message)
            elif isinstance(message, Bind):
                self._on_bind(message)
            elif isinstance(message, Listen):
                self._on_listen(message)
        except ApiError as exc:
            if exc.errno == errno.EPROTO:
                self.last_error = exc.message
            self.send(Error(errno=exc.errno, message=exc.message))
        except FrameError:
            raise
        except Exception:  # noqa: BLE001 - one bad request must not leave the app waiting
            log.exception("%s: internal error handling %s", self._who(), type(message).__name__)
            self.send(Error(errno=errno.EPROTO, message="internal engine error"))

    def _on_socket(self, m: SocketRequest) -> None:
        if self.state is not None:
            raise ApiError(errno.EISCONN, "SOCKET already done on this connection")
        if m.socktype != socket.SOCK_STREAM:
            raise ApiError(errno.EPROTONOSUPPORT, "IPPROTO_TLS needs SOCK_STREAM")
        if m.proto != IPPROTO_TLS:
            raise ApiError(errno.EPROTONOSUPPORT, f"protocol {m.proto} is not IPPROTO_TLS")
        if m.family not in (socket.AF_INET, socket.AF_INET6, opt.AF_HOSTNAME):
            raise ApiError(errno.EAFNOSUPPORT, f"address family {m.family} is not supported")
        try:
            self.engine.claim_socket(self.peer.uid)
        except OverflowError:
            raise ApiError(errno.EMFILE, f"too many TLS sockets for uid {self.peer.uid} "
                           f"(the engine allows {self.engine.max_per_user} per user)") from None
        self.family = m.family
        self.socket_id = next(socket_ids)
        self.options = SocketOptions(policy=self.engine.policy_for(self.peer).policy)
        self.state = SocketState.CREATED
        self.engine.sockets += 1
        self.send(Ok(socket_id=self.socket_id))

    def _on_status(self) -> None:
        if self.peer.uid not in (0, os.geteuid()):
            raise ApiError(errno.EACCES, "status is only for root and the engine's user")
        self.send(StatusReply(document=json.dumps(self.engine.status())))

    def _on_reload(self) -> None:
        if self.peer.uid not in (0, os.geteuid()):
            raise ApiError(errno.EACCES, "reload is only for root and the engine's user")
        result = self.engine.config.reload(f"requested by {self.peer.program} (pid {self.peer.pid})")
        self.send(StatusReply(document=json.dumps(result)))

    def _require(self, request: Request) -> None:
        assert self.state is not None
        code = check(self.state, request)
        if code is not None:
            state = self.state.value
            if code == errno.EBADFD:
                raise ApiError(code, f"socket unusable after an earlier error: {self.last_error}")
            raise ApiError(code, f"not valid on a {state} socket")

    def _on_setsockopt(self, m: SetSockOpt) -> None:
        assert self.options is not None
        if m.level != IPPROTO_TLS:
            self._require(Request.SET_TCP_OPTION)
            value = self.options.check_tcp(m.level, m.optname, m.value, m.int_value)
            target = self.tcp or self.bound or (self.listener.tcp if self.listener else None)
            if target is not None:
                apply_tcp_option(target, m.level, m.optname, value)
            self.options.tcp[(m.level, m.optname)] = value
            self.send(Ok())
            return
        name, spec = _tls_option(m.optname)
        if not spec.settable:
            raise ApiError(errno.ENOPROTOOPT, f"TLS_{name.name} can only be read")
        if not spec.implemented:
            raise ApiError(errno.ENOPROTOOPT, f"TLS_{name.name} is not supported by this engine yet")
        if (name is TLSOption.REQUEST_PEER_AUTH and self.role == "server"
                and self.state is SocketState.CONNECTED):
            self._post_handshake_auth(m.int_value)  # answered when the client has replied
            return
        self._require(Request.SET_TLS_OPTION)
        if spec.is_int and m.int_value is None:
            raise ApiError(errno.EINVAL, f"TLS_{name.name} takes an int value")
        if name is TLSOption.CONTEXT:
            self._adopt_context(m.value or b"")
        else:
            self.options.set_tls(name, m.value, m.int_value)
        self.send(Ok())

    def _program_key(self) -> tuple[int, str | None, str | None]:
        """Whose sessions and TLS_CONTEXT ids these are: never shared across programs.

        A program is its user, its executable and its process name (one
        interpreter runs many programs; their names tell them apart).
        """
        peer = self.peer
        if peer.exe is None and peer.comm is None:
            return (peer.uid, f"pid {peer.pid}", None)  # unknown: this process only
        return (peer.uid, peer.exe, peer.comm)

    def _adopt_context(self, ident: bytes) -> None:
        if self.state is not SocketState.CREATED:
            raise ApiError(errno.EISCONN, "TLS_CONTEXT can only be set before connect or listen")
        snapshot = self.engine.tls_contexts.lookup(self._program_key(), ident)
        if snapshot is None:
            raise ApiError(errno.EINVAL, "TLS_CONTEXT: unknown context id (ids come from "
                           "getsockopt(TLS_CONTEXT) in the same program)")
        assert self.options is not None
        self.options = snapshot.copy()

    def _on_getsockopt(self, m: GetSockOpt) -> None:
        assert self.options is not None
        if m.level != IPPROTO_TLS:
            self._require(Request.GET_CONFIG_OPTION)
            self.send(Ok(int_value=self._get_tcp_option(m.level, m.optname)))
            return
        name, spec = _tls_option(m.optname)
        if not spec.gettable:
            raise ApiError(errno.ENOPROTOOPT, f"TLS_{name.name} can only be set")
        if not spec.implemented:
            raise ApiError(errno.ENOPROTOOPT, f"TLS_{name.name} is not supported by this engine yet")
        if name is TLSOption.ERROR:
            self._require(Request.GET_ERROR)
        elif name in _CONNECTION_INFO or (name is TLSOption.ALPN and self.conn is not None):
            self._require(Request.GET_CONNECTION_OPTION)
        else:
            self._require(Request.GET_CONFIG_OPTION)
        value = self._option_value(name)
        if isinstance(value, int):
            self.send(Ok(int_value=value))
        else:
            if m.buflen:
                value = value[: m.buflen]
            self.send(Ok(value=value))

    def _option_value(self, name: TLSOption) -> int | bytes:
        o = self.options
        assert o is not None
        conn = self.conn
        if name is TLSOption.REMOTE_HOSTNAME:
            return (o.remote_hostname or "").encode()
        if name is TLSOption.HOSTNAME:
            if self.role == "server":
                return (self.sni or "").encode()  # what the client asked for
            return (o.server_name or "").encode()
        if name is TLSOption.REQUEST_PEER_AUTH:
            return o.peer_auth
        if name is TLSOption.ALPN:
            if conn is not None:
                return conn.get_alpn_proto_negotiated() or b""
            return b",".join(o.alpn)
        if name is TLSOption.VERSION_MIN:
            return o.settings().min_version
        if name is TLSOption.VERSION_MAX:
            return o.settings().max_version
        if name is TLSOption.TRUSTED_CIPHERS:
            s = o.settings()
            return ":".join(s.ciphersuites + s.ciphers).encode()
        if (switch := o.revocation_value(name)) is not None:
            return switch
        if name is TLSOption.ERROR:
            return self.last_error.encode()
        if name is TLSOption.ID:
            return self.socket_id
        if name is TLSOption.SESSION_REUSE:
            return int(o.session_reuse)
        if name is TLSOption.SESSION_TTL:
            return o.session_ttl
        if name is TLSOption.ZERO_RTT:
            # connected: did the first bytes travel as early data; else the setting
            return int(self.early_data) if self.conn is not None else int(o.zero_rtt)
        if name is TLSOption.CONTEXT:
            return self.engine.tls_contexts.register(self._program_key(), o.snapshot())
        assert conn is not None
        if name is TLSOption.PEER_IDENTITY:
            return fastio.peer_subject_oneline(conn).encode()
        if name is TLSOption.PEER_CERTIFICATE_CHAIN:
            from cryptography.hazmat.primitives.serialization import Encoding

            chain = conn.get_verified_chain(as_cryptography=True) or []
            return b"".join(c.public_bytes(Encoding.PEM) for c in chain)
        if name is TLSOption.CHOSEN_CIPHER:
            return (conn.get_cipher_name() or "").encode()
        if name is TLSOption.VERSION_CONN:
            return {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}.get(conn.get_protocol_version_name(), 0)
        if name is TLSOption.RESUMED_SESSION:
            from OpenSSL._util import lib

            return int(lib.SSL_session_reused(conn._ssl))  # noqa: SLF001
        raise ApiError(errno.ENOPROTOOPT, f"TLS_{name.name} cannot be read")

    def _get_tcp_option(self, level: int, name: int) -> int:
        assert self.options is not None
        if (level, name) not in opt.FORWARDED_OPTIONS or name == opt.SO_LINGER:
            raise ApiError(errno.ENOPROTOOPT, f"socket option ({level}, {name}) is not "
                           "supported on TLS sockets")
        target = self.tcp or self.bound or (self.listener.tcp if self.listener else None)
        if target is not None:
            return target.getsockopt(level, name)
        value = self.options.tcp.get((level, name), 0)
        return value if isinstance(value, int) else 0

    # -- stream end -----------------------------------------------------------
    def _on_stream_end(self, code: int, message: str) -> None:
        if self.pha_timer is not None:
            self._pha_finished(errno.EPROTO, f"client certificate refused: {message}"
                               if code else "the client closed the connection")
        if code:
            self.state = SocketState.BROKEN
            self.last_error = message
        else:
            self.state = SocketState.CLOSED
        self.send(Closed(errno=code, message=message))

    def _on_relay_finished(self) -> None:
        if self.state is SocketState.CONNECTED:
            self.state = SocketState.CLOSED
        if self.relay is not None:
            self.engine.bytes_relayed += self.relay.bytes_up + self.relay.bytes_down
        # self.conn stays: connection information remains readable after the end
        self.tcp = None
        if self.closed:
            self.relay = None

    def close(self) -> None:
        """The control connection ended (the application closed its socket)."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        self.loop.remove_writer(self.sock.fileno())
        self.sock.close()
        for _, fds in self.out:
            for fd in fds:
                os.close(fd)
        self.out.clear()
        if self.listener is not None:
            self.listener.close()
        if self.bound is not None:
            self.bound.close()
        while self.fds:
            try:
                os.close(self.fds.popleft())
            except OSError:
                pass
        if self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()
            if self.tcp is not None:
                self.tcp.close()
        if self.relay is not None and not self.relay.finished:
            self.relay.application_closed()
        self.peer.close()
        self.engine.session_closed(self)

    def shutdown_engine(self) -> None:
        """The engine is stopping: end the stream as a reset, never a clean EOF."""
        if self.relay is not None and not self.relay.finished:
            self.send(Closed(errno=errno.ECONNRESET, message="the ssa engine stopped"))
            self.relay.abort("engine stopping")
        self.close()


def _tls_option(optname: int) -> tuple[TLSOption, opt.OptionSpec]:
    found = opt.lookup(optname)
    if found is None:
        raise ApiError(errno.ENOPROTOOPT, f"unknown IPPROTO_TLS option {optname}")
    return found
