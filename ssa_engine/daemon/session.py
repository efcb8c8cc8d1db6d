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
import itertools
import json
import logging
import os
import socket
import time
from collections import deque
from typing import TYPE_CHECKING

from OpenSSL import SSL
from OpenSSL._util import lib

from .. import __version__
from ..policy import Policy
from ..protocol import (
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    Accepted,
    Bind,
    Bound,
    Closed,
    Connect,
    Connected,
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
    SetSockOpt,
    SocketRequest,
    StatusReply,
    StatusRequest,
    encode,
)
from ..protocol import options as opt
from ..protocol.options import IPPROTO_TLS, TLSOption
from ..protocol.states import Request, SocketState, check
from ..store import StoreError
from . import fastio
from .identity import PeerIdentity
from .listener import Listener, handshake
from .options import ApiError, SocketOptions
from .relay import Relay
from .servertls import ServerConfig, ServerContexts
from .tlsctx import (
    ClientConfig,
    CredentialError,
    Credentials,
    describe_handshake_error,
    ip_literal,
    make_credentials,
    parse_certificates,
    parse_private_key,
)

if TYPE_CHECKING:
    from .server import Engine

log = logging.getLogger("ssa.session")

#: Security parameter: most file descriptors accepted in one recvmsg.
MAX_FDS = 4
#: Security parameter: reply bytes queued for a client before its requests
#: are no longer read.
MAX_QUEUED_REPLIES = 256 * 1024
_RECV_SIZE = 256 * 1024
_CB_ACCEPT_LOOP = 0x2001  # SSL_CB_ACCEPT_LOOP (ssl.h)
_CB_ACCEPT_EXIT = 0x2002  # SSL_CB_ACCEPT_EXIT
#: bytes of buffer each direction of an accepted socket's plaintext pair gets
_PAIR_BUFFER = 1024 * 1024


def _unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024
_ids = itertools.count(1)

_CONNECTION_INFO = {
    TLSOption.PEER_IDENTITY,
    TLSOption.PEER_CERTIFICATE_CHAIN,
    TLSOption.CHOSEN_CIPHER,
    TLSOption.VERSION_CONN,
    TLSOption.RESUMED_SESSION,
}


class Session:
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
        self.sni: str | None = None
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
            raise _Unexpected(f"{type(message).__name__} is not a request")
        if not self.hello_done:
            if not isinstance(message, Hello):
                raise _Unexpected("the first frame must be HELLO")
            if not message.version_min <= PROTOCOL_VERSION <= message.version_max:
                self.send(Error(errno=errno.EPROTONOSUPPORT,
                                message=f"engine speaks control protocol {PROTOCOL_VERSION}"))
                self.close()
                return
            self.hello_done = True
            self.send(HelloOk(version=PROTOCOL_VERSION, software=f"ssa-engine {__version__}"))
            return
        if isinstance(message, Hello):
            raise _Unexpected("HELLO sent twice")
        if isinstance(message, Connect):
            # the connect result always comes as CONNECTED or CONNECT_FAILED, so
            # that it cannot be mistaken for the reply to a later request
            try:
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
        self.socket_id = next(_ids)
        self.options = SocketOptions(policy=self.engine.policy_for(self.peer))
        self.state = SocketState.CREATED
        self.engine.sockets += 1
        self.send(Ok(socket_id=self.socket_id))

    def _on_status(self) -> None:
        if self.peer.uid not in (0, os.geteuid()):
            raise ApiError(errno.EACCES, "status is only for root and the engine's user")
        self.send(StatusReply(document=json.dumps(self.engine.status())))

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
                _apply_tcp_option(target, m.level, m.optname, value)
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
        self.options.set_tls(name, m.value, m.int_value)
        self.send(Ok())

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
        if name is TLSOption.ERROR:
            return self.last_error.encode()
        if name is TLSOption.ID:
            return self.socket_id
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

    # -- server side ----------------------------------------------------------
    def _on_bind(self, m: Bind) -> None:
        self._require(Request.BIND)
        if self.bound is not None:
            raise ApiError(errno.EINVAL, "the socket is already bound")
        self.bound = self._bind(m.host, m.port)
        host, port = self.bound.getsockname()[:2]
        self.send(Bound(local_host=host, local_port=port))

    def _bind(self, host: str, port: int) -> socket.socket:
        fam = socket.AF_INET6 if self.family == socket.AF_INET6 else socket.AF_INET
        if host in ("", "0.0.0.0", "::"):
            host = "::" if fam == socket.AF_INET6 else "0.0.0.0"
        elif host == "localhost":
            host = "::1" if fam == socket.AF_INET6 else "127.0.0.1"
        literal = ip_literal(host)
        if literal is None or (len(literal) == 16) != (fam == socket.AF_INET6):
            raise ApiError(errno.EINVAL, f"bind: {host!r} is not an address of the socket's family")
        if 0 < port < _unprivileged_port_start() and self.peer.uid != 0 and os.geteuid() == 0:
            # the engine has the privilege, the program does not: no confused deputy
            raise ApiError(errno.EACCES, f"bind: port {port} is privileged and the program "
                           "runs as an unprivileged user")
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            assert self.options is not None
            for (level, name), value in self.options.tcp.items():
                _apply_tcp_option(sock, level, name, value)
            sock.bind((host.strip("[]"), port))
        except ApiError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            raise ApiError(exc.errno or errno.EINVAL, f"bind {host} port {port}: "
                           f"{exc.strerror}") from None
        sock.setblocking(False)
        return sock

    def _on_listen(self, m: Listen) -> None:
        if not self.fds:
            raise _Unexpected("LISTEN without its notification descriptor")
        notify_fd = self.fds.popleft()
        try:
            notify = socket.socket(fileno=notify_fd)
        except OSError:
            os.close(notify_fd)
            raise ApiError(errno.EINVAL, "the passed descriptor is not a socket") from None
        try:
            if notify.family != socket.AF_UNIX or notify.type != socket.SOCK_STREAM:
                raise ApiError(errno.EINVAL, "the notification descriptor must be a Unix stream "
                               "socket")
            self._require(Request.LISTEN)
            if self.listener is None:
                self._start_listening(m.backlog, notify)
            else:
                notify.close()  # listening already: the same answer again
        except BaseException:
            notify.close()
            raise
        assert self.listener is not None
        host, port = self.listener.tcp.getsockname()[:2]
        self.send(Bound(local_host=host, local_port=port))

    def _start_listening(self, backlog: int, notify: socket.socket) -> None:
        o = self.options
        assert o is not None
        try:
            cfg = ServerConfig(
                settings=o.settings(),
                credentials=o.all_credentials() or self._store_credentials(o.policy),
                client_auth=o.peer_auth,
                client_trust=tuple(o.extra_trust),
                alpn=o.alpn,
                only_name=o.server_name,
            )
            if not cfg.credentials:
                raise ApiError(errno.EPROTO, "a TLS listener needs a certificate: set "
                               "TLS_CERTIFICATE_CHAIN and TLS_PRIVATE_KEY before listen(), or "
                               f"list certificates for this program in the {o.policy.source}")
            if cfg.client_auth and not cfg.client_trust:
                raise ApiError(errno.EPROTO, "TLS_REQUEST_PEER_AUTH needs the client CA: set "
                               "TLS_TRUSTED_PEER_CERTIFICATES")
            contexts = ServerContexts(cfg)
        except (SSL.Error, ValueError) as exc:
            raise ApiError(errno.EPROTO, f"cannot build the server TLS context: {exc}") from None
        if self.bound is None:
            self.bound = self._bind("", 0)
        try:
            self.bound.listen(max(1, min(backlog or 128, 4096)))
        except OSError as exc:
            raise ApiError(exc.errno or errno.EINVAL, f"listen: {exc.strerror}") from None
        notify.setblocking(False)
        self.listener = Listener(self, self.bound, notify, contexts, backlog or 128,
                                 o.policy.handshake_timeout, self._offer)
        self.bound = None  # the listener owns it now
        self.role = "listener"
        self.state = SocketState.LISTENING
        self.listener.start()
        log.info("%s: listening on %s", self._who(), self.listener.address())

    def _store_credentials(self, policy: Policy) -> tuple[Credentials, ...]:
        """The administrator's certificates for this program, from the store."""
        found = []
        for name in policy.server_certificates:
            try:
                entry = self.engine.store.current(name)
                chain = parse_certificates(entry.fullchain_pem, f"store certificate {name}")
                found.append(make_credentials(chain, parse_private_key(entry.key_pem)))
            except (StoreError, CredentialError) as exc:
                raise ApiError(errno.EPROTO, f"certificate {name!r} from the store, named in "
                               f"the {policy.source}: {exc}") from None
        return tuple(found)

    def _offer(self, conn: SSL.Connection, tcp: socket.socket, sni: str | None) -> None:
        """A verified connection: hand it to the application's accept()."""
        assert self.listener is not None and self.options is not None
        try:
            local = tcp.getsockname()
            peer = tcp.getpeername()
        except OSError:
            log.info("%s: a client left right after its handshake", self._who())
            tcp.close()
            return
        data_engine, data_app = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            ctl_engine, ctl_app = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:  # out of descriptors: the listener pauses (caller)
            data_engine.close()
            data_app.close()
            raise
        for s in (data_engine, data_app):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _PAIR_BUFFER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _PAIR_BUFFER)
        data_engine.setblocking(False)
        ctl_engine.setblocking(False)
        child = Session(self.engine, ctl_engine, self.peer.dup())
        self.engine.sessions.add(child)
        child.adopt_accepted(self, conn, tcp, data_engine, sni, peer)
        self.send(Accepted(socket_id=child.socket_id, local_host=local[0], local_port=local[1],
                           peer_host=peer[0], peer_port=peer[1]),
                  fds=[data_app.detach(), ctl_app.detach()])
        try:
            self.listener.notify.send(b"\x01")
        except OSError:
            log.warning("%s: the application stopped accepting", self._who())

    def _post_handshake_auth(self, mode: int | None) -> None:
        """TLS 1.3 post-handshake authentication (RFC 8446 section 4.6.2)."""
        conn = self.conn
        assert conn is not None and self.relay is not None and self.options is not None
        if mode not in (1, 2):
            raise ApiError(errno.EINVAL, "TLS_REQUEST_PEER_AUTH on an accepted socket: 1 "
                           "(require) or 2 (request)")
        if conn.get_protocol_version_name() != "TLSv1.3":
            raise ApiError(errno.EOPNOTSUPP, "post-handshake authentication needs TLS 1.3 "
                           "(TLS 1.2 renegotiation is disabled)")
        if not self.options.extra_trust:
            raise ApiError(errno.EPROTO, "post-handshake authentication needs the client CA: "
                           "set TLS_TRUSTED_PEER_CERTIFICATES on the listener")
        if self.pha_timer is not None:
            raise ApiError(errno.EALREADY, "a client certificate request is already running")
        flags = SSL.VERIFY_PEER | lib.SSL_VERIFY_POST_HANDSHAKE
        if mode == 1:
            flags |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        conn.set_verify(flags)
        if lib.SSL_verify_client_post_handshake(conn._ssl) != 1:  # noqa: SLF001
            lib.ERR_clear_error()
            raise ApiError(errno.EPROTO, "the client does not offer post-handshake "
                           "authentication")
        conn.set_info_callback(self._on_info)
        self.pha_timer = self.loop.call_later(self.options.policy.handshake_timeout,
                                              self._pha_finished, errno.ETIMEDOUT,
                                              "the client did not answer the certificate "
                                              "request in time")
        self.relay.send_handshake()

    def _on_info(self, conn: SSL.Connection, where: int, ret: int) -> None:
        # Called from inside SSL_read: only note progress and schedule the reply.
        # OpenSSL reports no HANDSHAKE_DONE after post-handshake authentication;
        # it is complete when the accept loop exits after reading the client's
        # Finished (which follows its Certificate, empty or not).
        if self.pha_timer is None:
            return
        if where & _CB_ACCEPT_LOOP == _CB_ACCEPT_LOOP and conn.get_state_string() == (
                b"SSLv3/TLS read finished"):
            self.pha_read_finished = True
        elif where & _CB_ACCEPT_EXIT == _CB_ACCEPT_EXIT and self.pha_read_finished:
            self.pha_read_finished = False
            self.loop.call_soon(self._pha_finished, 0, "")

    def _pha_finished(self, code: int, message: str) -> None:
        if self.pha_timer is None:
            return
        self.pha_timer.cancel()
        self.pha_timer = None
        if code:
            self.last_error = message
            self.send(Error(errno=code, message=message))
        else:
            self.send(Ok())

    def adopt_accepted(self, listener: Session, conn: SSL.Connection, tcp: socket.socket,
                       data: socket.socket, sni: str | None, peer: tuple[str, int]) -> None:
        """Become the engine side of an accepted socket."""
        assert listener.options is not None
        self.hello_done = True
        self.role = "server"
        # the listener checked the per-user limit before accepting
        self.engine.per_user[self.peer.uid] = self.engine.per_user.get(self.peer.uid, 0) + 1
        self.family = listener.family
        self.socket_id = next(_ids)
        self.options = SocketOptions(policy=listener.options.policy)
        self.options.alpn = listener.options.alpn
        self.options.server_name = listener.options.server_name
        self.options.extra_trust = list(listener.options.extra_trust)
        self.state = SocketState.CONNECTED
        self.conn = conn
        self.tcp = tcp
        self.sni = sni
        self.remote = f"{peer[0]}:{peer[1]}"
        self.engine.sockets += 1
        self.engine.connected += 1
        log.info("%s: accepted %s %s %s sni=%s", self._who(), self.remote,
                 conn.get_protocol_version_name(), conn.get_cipher_name(), sni)
        self.relay = Relay(self.loop, conn, tcp, data, self._on_stream_end,
                           self._on_relay_finished)
        self.relay.start()

    # -- connect --------------------------------------------------------------
    def _on_connect(self, m: Connect) -> None:
        if not self.fds:
            raise _Unexpected("CONNECT without its data file descriptor")
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
        # the reply is queued first: once the filler is gone and the application's
        # descriptor turns writable, the result is already there to read.
        _drain_filler(data, m.filler)
        self.relay = Relay(self.loop, self.conn, self.tcp, data, self._on_stream_end,
                           self._on_relay_finished)
        self.relay.start()

    def _connect_failed(self, code: int, message: str, data: socket.socket, filler: int) -> None:
        log.info("%s: connect to %s failed: %s", self._who(), self.remote, message)
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
        self.tcp = await self._tcp_connect(m.host, m.port, policy.handshake_timeout)
        for (level, name), value in o.tcp.items():
            _apply_tcp_option(self.tcp, level, name, value)
        conn = SSL.Connection(ctx, self.tcp)
        conn.set_connect_state()
        if verify_ip is None:
            conn.set_tlsext_host_name(verify_name.encode("ascii"))
        fastio.set_verify_host(conn, verify_name, verify_ip)
        if o.alpn:
            conn.set_alpn_protos(list(o.alpn))
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


class _Unexpected(FrameError):
    errno_value = errno.EBADMSG


def _tls_option(optname: int) -> tuple[TLSOption, opt.OptionSpec]:
    found = opt.lookup(optname)
    if found is None:
        raise ApiError(errno.ENOPROTOOPT, f"unknown IPPROTO_TLS option {optname}")
    return found


def _apply_tcp_option(sock: socket.socket, level: int, name: int, value: int | bytes) -> None:
    try:
        sock.setsockopt(level, name, value)
    except OSError as exc:
        raise ApiError(exc.errno or errno.EINVAL, f"socket option ({level}, {name}): "
                       f"{exc.strerror}") from None


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
