"""TLSSocket: a ``socket.socket`` whose peer is the engine, speaking plaintext.

Theory of operation: the socket's file descriptor is one end of a Unix stream
socketpair; the other end goes to the engine with CONNECT, and from then on
the engine relays between it and the TLS connection it owns. So ``fileno()``
is a real stream descriptor: select/poll/epoll, asyncio, ``makefile`` and
``sendfile`` work on it unchanged, and data costs the application ordinary
syscalls. A second, private Unix connection (the control channel) carries
options, the connect result and the stream-end event.

Readiness (documented in docs/developer-guide.md): a non-blocking connect
returns EINPROGRESS and the descriptor is *not writable* until the connect
has finished (the library queues filler bytes that the engine discards when
it is done), so the usual "wait for writable, then SO_ERROR" works, as does
asyncio's ``sock_connect``-style code.

End of stream: the engine sends CLOSED(errno) on the control channel before
it closes its end of the data socketpair. When a read returns end of file,
the socket looks at that event: errno 0 (close_notify received) is a clean
EOF; anything else raises, so truncation never looks like a clean end.

STARTTLS: with protocol 0 or IPPROTO_TCP the object is a plain TCP socket of
this class. ``setsockopt(IPPROTO_TCP, TCP_UPGRADE_TLS, name)`` hands its
connection to the engine (UPGRADE, with a new plaintext pair) and ``dup2``s
the plaintext end onto the same descriptor number: the same object, with the
same ``fileno()``, goes on as a TLS socket.
"""

from __future__ import annotations

import _socket as _csocket
import errno
import os
import socket as _socket
import struct
from typing import Any

from ..protocol import (
    Accepted,
    Bind,
    Bound,
    Connect,
    Connected,
    ConnectFailed,
    GetSockOpt,
    Listen,
    Ok,
    SetSockOpt,
    SocketRequest,
    Upgrade,
)
from ..protocol import options as opt
from ..protocol.messages import MAX_EARLY_DATA
from ..protocol.options import TLSOption
from .constants import MSG_FASTOPEN
from .control import ControlChannel, ReplyTimeout

_NONBLOCK_FLAGS = getattr(_socket, "SOCK_NONBLOCK", 0) | getattr(_socket, "SOCK_CLOEXEC", 0)
_TLS_FAMILIES = (_socket.AF_INET, _socket.AF_INET6, opt.AF_HOSTNAME)
_PEM_OPTIONS = {
    TLSOption.TRUSTED_PEER_CERTIFICATES,
    TLSOption.CERTIFICATE_CHAIN,
    TLSOption.PRIVATE_KEY,
}
#: flags that mean the same on the plaintext stream as on TCP
_RECV_FLAGS = _socket.MSG_PEEK | _socket.MSG_DONTWAIT | _socket.MSG_WAITALL
_SEND_FLAGS = _socket.MSG_DONTWAIT | getattr(_socket, "MSG_NOSIGNAL", 0) | getattr(
    _socket, "MSG_MORE", 0
)
#: largest certificate or key file read for an option (fits one control frame)
MAX_PEM_FILE = 4 * 1024 * 1024 - 4096
#: bytes of buffer each direction of the plaintext socketpair gets
PAIR_BUFFER = 1024 * 1024

_CREATED, _CONNECTING, _CONNECTED, _CLOSED, _BROKEN, _LISTENING = range(6)


class TLSSocket(_socket.socket):
    """A TLS stream socket whose TLS is done by the ssa engine."""

    __slots__ = (
        "_ssa_ctl", "_ssa_state", "_ssa_family", "_ssa_proto", "_ssa_pair", "_ssa_peer",
        "_ssa_local", "_ssa_so_error", "_ssa_error", "_ssa_eof", "_ssa_shut_rd", "_ssa_id",
        "_ssa_0rtt", "_ssa_lazy",
    )

    def __init__(
        self,
        family: int = _socket.AF_INET,
        type: int = _socket.SOCK_STREAM,  # noqa: A002 - the stdlib's parameter name
        proto: int = opt.IPPROTO_TLS,
        fileno: int | None = None,
        *,
        engine_socket: str | os.PathLike[str] | None = None,
    ) -> None:
        self._ssa_ctl: ControlChannel | None = None
        self._ssa_pair: _socket.socket | None = None
        self._ssa_family = int(family)
        self._ssa_proto = int(proto)
        self._ssa_state = _CREATED
        self._ssa_peer: tuple[Any, ...] | None = None
        self._ssa_local: tuple[Any, ...] | None = None
        self._ssa_so_error = 0
        self._ssa_error = ""
        self._ssa_eof: OSError | None | bool = False  # False: not at EOF yet
        self._ssa_shut_rd = False
        self._ssa_id = 0
        self._ssa_0rtt = False  # TLS_0RTT: connect() waits for the first send
        self._ssa_lazy: Any = None  # the address of that lazy connect
        if proto in (0, _socket.IPPROTO_TCP):
            # A plain TCP socket of the same class (STARTTLS upgrade: issue 6).
            super().__init__(family, type, proto, fileno)
            return
        if proto != opt.IPPROTO_TLS:
            raise OSError(errno.EPROTONOSUPPORT, f"protocol {proto} is not supported")
        if fileno is not None:
            raise OSError(errno.EINVAL, "a TLS socket cannot wrap an existing descriptor")
        if type & ~_NONBLOCK_FLAGS != _socket.SOCK_STREAM:
            raise OSError(errno.EPROTONOSUPPORT, "IPPROTO_TLS supports only SOCK_STREAM")
        if family not in _TLS_FAMILIES:
            raise OSError(errno.EAFNOSUPPORT, f"address family {family} is not supported "
                          "with IPPROTO_TLS")
        ctl = ControlChannel(engine_socket)
        reply = ctl.open(SocketRequest(int(family), _socket.SOCK_STREAM, opt.IPPROTO_TLS))
        try:
            assert isinstance(reply, Ok)
            self._ssa_id = reply.socket_id or 0
            app_end, engine_end = _data_pair()
        except BaseException:
            ctl.close()
            raise
        super().__init__(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, app_end.detach())
        self._ssa_ctl = ctl
        self._ssa_pair = engine_end
        if type & getattr(_socket, "SOCK_NONBLOCK", 0):
            self.setblocking(False)

    # -- identity -------------------------------------------------------------
    @property
    def family(self) -> _socket.AddressFamily | int:  # type: ignore[override]
        try:
            return _socket.AddressFamily(self._ssa_family)
        except ValueError:
            return self._ssa_family

    @property
    def type(self) -> _socket.SocketKind:  # type: ignore[override]
        return _socket.SocketKind.SOCK_STREAM

    @property
    def proto(self) -> int:  # type: ignore[override]
        return self._ssa_proto

    @property
    def _tls(self) -> bool:
        # a plain TCP socket (protocol 0 or IPPROTO_TCP) may already hold a
        # control connection for its TLS options: it is plain until upgraded
        return self._ssa_ctl is not None and self._ssa_proto == opt.IPPROTO_TLS

    def __repr__(self) -> str:
        state = ["created", "connecting", "connected", "closed", "broken",
                 "listening"][self._ssa_state]
        fd = -1 if self._closed else self.fileno()
        return (f"<ssa_engine.TLSSocket fd={fd}, family={self._ssa_family}, "
                f"proto={self._ssa_proto}, state={state}, peer={self._ssa_peer}>")

    def _control(self) -> ControlChannel:
        if self._ssa_ctl is None:
            if self._closed:
                raise OSError(errno.EBADF, "Bad file descriptor")
            raise OSError(errno.EOPNOTSUPP, "not a TLS socket")
        return self._ssa_ctl

    # -- connect --------------------------------------------------------------
    def connect(self, address: Any) -> None:  # type: ignore[override]
        if not self._tls:
            return super().connect(address)
        if self._ssa_state == _CONNECTING:
            self._ssa_collect_connect(blocking=self.gettimeout() != 0.0)
            if self._ssa_state == _CONNECTING:
                raise OSError(errno.EALREADY, "Operation already in progress")
            raise OSError(errno.EISCONN, "Transport endpoint is already connected")
        if self._ssa_state in (_CONNECTED, _CLOSED):
            raise OSError(errno.EISCONN, "Transport endpoint is already connected")
        if self._ssa_state == _BROKEN:
            raise OSError(errno.EBADFD, f"socket unusable after an earlier error: "
                          f"{self._ssa_error}")
        if self._ssa_lazy is not None:
            raise OSError(errno.EISCONN, "Transport endpoint is already connected")
        host, port = _parse_address(address)
        if self._ssa_0rtt:
            # TLS_0RTT: the first send() connects and travels as early data
            self._ssa_lazy = (host, port)
            return
        self._ssa_connect(host, port, None)

    def _ssa_connect(self, host: str, port: int, early: bytes | None) -> None:
        ctl = self._control()
        timeout = self.gettimeout()
        try:
            request = Connect(host=host, port=port, early_data=early)
        except ValueError as exc:
            raise OSError(errno.EINVAL, f"cannot connect to this host: {exc}") from None
        filler = self._ssa_fill() if timeout == 0.0 else 0
        pair = self._ssa_pair
        assert pair is not None
        try:
            ctl.send(Connect(host=request.host, port=port, filler=filler, early_data=early),
                     [pair.fileno()])
        finally:
            pair.close()
            self._ssa_pair = None
        self._ssa_state = _CONNECTING
        if timeout == 0.0:
            raise BlockingIOError(errno.EINPROGRESS, "Operation now in progress")
        try:
            result = ctl.wait_connect(timeout)
        except ReplyTimeout:
            raise TimeoutError("timed out") from None
        self._ssa_result(result)

    def connect_ex(self, address: Any) -> int:  # type: ignore[override]
        try:
            self.connect(address)
        except OSError as exc:
            if exc.errno is None:
                raise
            return exc.errno
        return 0

    def _ssa_fill(self) -> int:
        """Make the descriptor unwritable until the engine finishes the connect."""
        chunk = bytes(65536)
        total = 0
        while True:
            try:
                total += super().send(chunk, _socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return total

    def _ssa_result(self, reply: Connected | ConnectFailed) -> None:
        """Apply the connect result; raise its error if it failed."""
        if isinstance(reply, ConnectFailed):
            exc = OSError(reply.errno, reply.message or os.strerror(reply.errno))
            self._ssa_failed(exc)
            self._ssa_so_error = reply.errno
            raise exc
        self._ssa_state = _CONNECTED
        self._ssa_peer = _addr(reply.peer_host, reply.peer_port)
        self._ssa_local = _addr(reply.local_host, reply.local_port)

    def _ssa_failed(self, exc: OSError) -> None:
        self._ssa_state = _BROKEN
        self._ssa_error = exc.strerror or ""

    def _ssa_collect_connect(self, *, blocking: bool) -> None:
        """Fetch the result of a pending non-blocking connect, if it is there."""
        ctl = self._control()
        try:
            if blocking:
                ctl.wait_connect(None)
            else:
                ctl.poll()
        except OSError as exc:
            self._ssa_failed(exc)
            self._ssa_so_error = exc.errno or errno.EPROTO
            raise
        if ctl.connect_result is not None and self._ssa_state == _CONNECTING:
            self._ssa_result(ctl.connect_result)

    def ssa_finish_connect(self) -> None:
        """After a non-blocking connect became writable: return or raise its result."""
        if self._ssa_state == _CONNECTING:
            self._ssa_collect_connect(blocking=True)
        elif self._ssa_state == _BROKEN:
            code, self._ssa_so_error = self._ssa_so_error, 0
            raise OSError(code or errno.EBADFD, self._ssa_error)

    # -- options --------------------------------------------------------------
    def ssa_setsockopts(self, options: list[tuple[int, int, Any]]) -> None:
        """Set several options with one round trip to the engine.

        The same checks and errors as calling :meth:`setsockopt` for each, in
        order; the first failure is raised (later options are still applied).
        """
        if not self._tls:
            for level, optname, value in options:
                self.setsockopt(level, optname, value)
            return
        messages = [self._ssa_setsockopt_message(lv, name, v) for lv, name, v in options]
        if messages:
            self._control().request_many(messages)
            for level, optname, value in options:
                self._ssa_note_option(level, optname, value)

    def _ssa_note_option(self, level: int, optname: int, value: Any) -> None:
        """Options the library acts on itself, after the engine accepted them."""
        if level == opt.IPPROTO_TLS and optname == TLSOption.ZERO_RTT:
            self._ssa_0rtt = bool(value)

    def setsockopt(self, level: int, optname: int, value: Any,  # type: ignore[override]
                   optlen: int | None = None) -> None:
        if level == _socket.IPPROTO_TCP and optname == opt.TCP_UPGRADE_TLS:
            # Linux's TCP option 33 is TCP_FASTOPEN_KEY: never let it through.
            self._ssa_upgrade(value)
            return
        if not self._tls:
            if level == opt.IPPROTO_TLS and self._ssa_proto != opt.IPPROTO_TLS:
                # a plain socket's TLS options wait in the engine for its upgrade
                self._ssa_plain_control().request(
                    self._ssa_setsockopt_message(level, optname, value))
                return
            if optlen is None:
                return super().setsockopt(level, optname, value)
            return super().setsockopt(level, optname, value, optlen)
        self._control().request(self._ssa_setsockopt_message(level, optname, value))
        self._ssa_note_option(level, optname, value)

    def _ssa_setsockopt_message(self, level: int, optname: int, value: Any) -> SetSockOpt:
        if level == _socket.IPPROTO_TCP and optname == opt.TCP_UPGRADE_TLS:
            raise OSError(errno.EISCONN, "TCP_UPGRADE_TLS: this is a TLS socket already")
        if level == opt.IPPROTO_TLS:
            found = opt.lookup(optname)
            if found is None:
                raise OSError(errno.ENOPROTOOPT, f"unknown IPPROTO_TLS option {optname}")
            name, spec = found
            if not spec.settable:
                raise OSError(errno.ENOPROTOOPT, f"TLS_{name.name} can only be read")
            if spec.is_int:
                return SetSockOpt(level, optname, int_value=_int_value(name, value))
            return SetSockOpt(level, optname, value=_bytes_value(name, value))
        if value is None or isinstance(value, bool | int):
            return SetSockOpt(level, optname, int_value=int(value or 0))
        return SetSockOpt(level, optname, value=bytes(value))

    def getsockopt(self, level: int, optname: int,  # type: ignore[override]
                   buflen: int | None = None) -> Any:
        if level == _socket.IPPROTO_TCP and optname == opt.TCP_UPGRADE_TLS:
            # never the kernel's TCP_FASTOPEN_KEY (the same number)
            raise OSError(errno.ENOPROTOOPT, "TCP_UPGRADE_TLS can only be set")
        if not self._tls:
            if level == opt.IPPROTO_TLS and self._ssa_proto != opt.IPPROTO_TLS:
                self._ssa_plain_control()  # a plain socket's TLS settings are in the engine
            elif buflen is None:
                return super().getsockopt(level, optname)
            else:
                return super().getsockopt(level, optname, buflen)
        if level == _socket.SOL_SOCKET:
            local = self._ssa_local_option(optname)
            if local is not None:
                return _as_buf(local, buflen)
        ctl = self._control()
        if level == opt.IPPROTO_TLS:
            found = opt.lookup(optname)
            if found is None:
                raise OSError(errno.ENOPROTOOPT, f"unknown IPPROTO_TLS option {optname}")
            name, spec = found
            if not spec.gettable:
                raise OSError(errno.ENOPROTOOPT, f"TLS_{name.name} can only be set")
            if name is TLSOption.ERROR and self._ssa_state == _CONNECTING:
                self._ssa_poll_connect()
        if self._ssa_state == _CONNECTING:
            self._ssa_poll_connect()
        reply = ctl.request(GetSockOpt(level, optname, buflen or 0))
        assert isinstance(reply, Ok)
        if reply.int_value is not None:
            return _as_buf(reply.int_value, buflen)
        return reply.value or b""

    def _ssa_poll_connect(self) -> None:
        try:
            self._ssa_collect_connect(blocking=False)
        except OSError:
            pass

    def _ssa_local_option(self, optname: int) -> int | None:
        if optname == _socket.SO_ERROR:
            if self._ssa_state == _CONNECTING:
                self._ssa_poll_connect()
            code, self._ssa_so_error = self._ssa_so_error, 0
            return code
        if optname == _socket.SO_TYPE:
            return _socket.SOCK_STREAM
        if optname == getattr(_socket, "SO_DOMAIN", 39):
            return self._ssa_family
        if optname == getattr(_socket, "SO_PROTOCOL", 38):
            return self._ssa_proto
        if optname == getattr(_socket, "SO_ACCEPTCONN", 30):
            return 0
        return None

    # -- addresses --------------------------------------------------------------
    def getpeername(self) -> Any:
        if not self._tls:
            return super().getpeername()
        if self._ssa_state == _CONNECTING:
            self._ssa_poll_connect()
        if self._ssa_peer is None:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        return self._ssa_peer

    def getsockname(self) -> Any:
        if not self._tls:
            return super().getsockname()
        if self._ssa_local is None:
            return ("::", 0, 0, 0) if self._ssa_family == _socket.AF_INET6 else ("0.0.0.0", 0)
        return self._ssa_local

    # -- data -------------------------------------------------------------------
    def _ssa_check_send(self, flags: int) -> None:
        if flags & ~_SEND_FLAGS:
            raise ValueError(f"flags {flags:#x} are not supported on TLS sockets")
        if self._ssa_state != _CONNECTED and self._ssa_state != _CLOSED:
            if self._ssa_state == _BROKEN:
                raise OSError(errno.EBADFD, f"socket unusable after an earlier error: "
                              f"{self._ssa_error}")
            if self._ssa_state == _CONNECTING:
                self._ssa_poll_connect()
                if self._ssa_state == _CONNECTED:
                    return
                if self.gettimeout() == 0.0:
                    raise BlockingIOError(errno.EAGAIN, "the TLS handshake is not finished")
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    def _ssa_check_recv(self, flags: int) -> None:
        if flags & ~_RECV_FLAGS:
            raise ValueError(f"flags {flags:#x} are not supported on TLS sockets")
        self._ssa_connect_now()
        if self._ssa_state == _BROKEN:
            raise OSError(errno.EBADFD, f"socket unusable after an earlier error: "
                          f"{self._ssa_error}")
        if self._ssa_state == _CREATED:
            raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
        if self._ssa_state == _CONNECTING:
            self._ssa_poll_connect()

    def _ssa_at_eof(self) -> None:
        """The plaintext stream ended: decide between clean EOF and an error."""
        if self._ssa_eof is None or self._ssa_shut_rd:
            return
        if isinstance(self._ssa_eof, OSError):
            raise OSError(errno.EBADFD, f"socket unusable after an earlier error: "
                          f"{self._ssa_error}")
        ctl = self._ssa_ctl
        event = None
        if ctl is not None:
            try:
                event = ctl.wait_closed(timeout=5.0)
            except OSError:
                event = None
        if event is not None and event.errno == 0:
            self._ssa_eof = None
            self._ssa_state = _CLOSED
            return
        if event is not None:
            err = OSError(event.errno, event.message or os.strerror(event.errno))
        else:
            err = OSError(errno.ECONNRESET, "the ssa engine went away during the connection "
                          "(the stream is not known to be complete)")
        self._ssa_eof = err
        self._ssa_error = err.strerror or ""
        self._ssa_state = _BROKEN
        raise err

    def recv(self, bufsize: int, flags: int = 0) -> bytes:  # type: ignore[override]
        if not self._tls:
            return super().recv(bufsize, flags)
        self._ssa_check_recv(flags)
        data = super().recv(bufsize, flags)
        if not data and bufsize:
            self._ssa_at_eof()
        return data

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:  # type: ignore[override]
        if not self._tls:
            return super().recv_into(buffer, nbytes, flags)
        self._ssa_check_recv(flags)
        n = super().recv_into(buffer, nbytes, flags)
        if n == 0 and (nbytes or len(memoryview(buffer))):
            self._ssa_at_eof()
        return n

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, Any]:  # type: ignore[override]
        if not self._tls:
            return super().recvfrom(bufsize, flags)
        return self.recv(bufsize, flags), self._ssa_peer

    def recvfrom_into(self, buffer: Any, nbytes: int = 0,  # type: ignore[override]
                      flags: int = 0) -> tuple[int, Any]:
        if not self._tls:
            return super().recvfrom_into(buffer, nbytes, flags)
        return self.recv_into(buffer, nbytes, flags), self._ssa_peer

    def recvmsg(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if not self._tls:
            return super().recvmsg(*args, **kwargs)
        raise OSError(errno.EOPNOTSUPP, "recvmsg is not supported on TLS sockets; use recv")

    def send(self, data: Any, flags: int = 0) -> int:  # type: ignore[override]
        if self._tls:
            if self._ssa_lazy is not None:
                return self._ssa_send_early(data)
            self._ssa_check_send(flags)
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:  # type: ignore[override]
        if self._tls:
            if self._ssa_lazy is not None:
                view = memoryview(data).cast("B")
                data = view[self._ssa_send_early(view):]
                if not data:
                    return None
            self._ssa_check_send(flags)
        return super().sendall(data, flags)

    def sendto(self, data: Any, *args: Any) -> int:  # type: ignore[override]
        if not self._tls:
            return super().sendto(data, *args)
        if len(args) != 2 or not args[0] & MSG_FASTOPEN or args[0] & ~MSG_FASTOPEN:
            raise OSError(errno.EOPNOTSUPP, "on a TLS socket, sendto takes exactly "
                          "(data, MSG_FASTOPEN, address): connect with TLS 1.3 early data")
        if self._ssa_state != _CREATED or self._ssa_lazy is not None:
            raise OSError(errno.EISCONN, "Transport endpoint is already connected")
        self._ssa_lazy = _parse_address(args[1])
        return self._ssa_send_early(data)

    def _ssa_send_early(self, data: Any) -> int:
        """Connect with ``data`` as the first bytes (0-RTT when a session allows it).

        Like TCP Fast Open: the bytes taken are returned (at most MAX_EARLY_DATA);
        a non-blocking socket returns them at once, the handshake continues.
        """
        host, port = self._ssa_lazy
        self._ssa_lazy = None
        chunk = bytes(memoryview(data).cast("B")[:MAX_EARLY_DATA])
        try:
            self._ssa_connect(host, port, chunk)
        except BlockingIOError:
            pass  # EINPROGRESS: the bytes are with the engine
        return len(chunk)

    def _ssa_connect_now(self) -> None:
        """A lazy (TLS_0RTT) connect that must happen before this call: no early data."""
        if self._ssa_lazy is not None:
            host, port = self._ssa_lazy
            self._ssa_lazy = None
            self._ssa_connect(host, port, None)

    def sendmsg(self, *args: Any, **kwargs: Any) -> int:  # type: ignore[override]
        if not self._tls:
            return super().sendmsg(*args, **kwargs)
        raise OSError(errno.EOPNOTSUPP, "sendmsg is not supported on TLS sockets; use send")

    def shutdown(self, how: int) -> None:
        if self._tls:
            if self._ssa_state in (_CREATED, _CONNECTING):
                raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")
            if how in (_socket.SHUT_RD, _socket.SHUT_RDWR):
                self._ssa_shut_rd = True
        super().shutdown(how)

    # -- server side ----------------------------------------------------------
    def bind(self, address: Any) -> None:
        if not self._tls:
            return super().bind(address)
        if self._ssa_state != _CREATED:
            raise OSError(errno.EINVAL, "bind() after connect() or listen()")
        if not isinstance(address, tuple) or len(address) not in (2, 4):
            raise TypeError("TLS sockets bind to a (host, port) tuple")
        host, port = address[0], address[1]
        if isinstance(host, bytes | bytearray):
            host = bytes(host).decode("ascii")
        if not isinstance(host, str) or not isinstance(port, int) or isinstance(port, bool):
            raise TypeError("bind() takes (str, int)")
        if not 0 <= port < 65536:
            raise OverflowError("bind(): port must be 0-65535.")
        try:
            request = Bind(host=host, port=port)
        except ValueError as exc:
            raise OSError(errno.EINVAL, f"bind: {exc}") from None
        reply = self._control().request(request)
        assert isinstance(reply, Bound)
        self._ssa_local = _addr(reply.local_host, reply.local_port)

    def listen(self, backlog: int = 128) -> None:
        if not self._tls:
            return super().listen(backlog)
        if self._ssa_state == _LISTENING:
            return
        if self._ssa_state != _CREATED:
            raise OSError(errno.EOPNOTSUPP, "listen() is not valid after connect()")
        pair = self._ssa_pair
        assert pair is not None
        ctl = self._control()
        # on failure the socket stays as it was (the engine closes its copy of
        # the descriptor; ours stays for a later listen() or connect())
        reply = ctl.request(Listen(backlog=max(0, min(int(backlog), 65535))), [pair.fileno()])
        pair.close()
        self._ssa_pair = None
        assert isinstance(reply, Bound)
        self._ssa_state = _LISTENING
        self._ssa_local = _addr(reply.local_host, reply.local_port)

    def accept(self) -> tuple[TLSSocket, Any]:
        if not self._tls:
            return self._ssa_accept_plain()
        if self._ssa_state != _LISTENING:
            raise OSError(errno.EINVAL, "accept() on a socket that is not listening")
        ctl = self._control()
        # one byte per offered connection: this honours the socket's timeout
        # and non-blocking mode exactly as accept() on TCP would
        token = super().recv(1)
        if not token:
            raise OSError(errno.ECONNABORTED, "the ssa engine closed the listener "
                          "(it stopped or restarted)")
        info, data_fd, ctl_fd = ctl.wait_accepted(timeout=30.0)
        sock = TLSSocket._ssa_accepted(self._ssa_family, info, data_fd, ctl_fd)
        if _socket.getdefaulttimeout() is None and self.gettimeout():
            sock.setblocking(True)
        return sock, sock._ssa_peer

    @classmethod
    def _ssa_accepted(cls, family: int, info: Accepted, data_fd: int, ctl_fd: int) -> TLSSocket:
        self = cls.__new__(cls)
        self._ssa_pair = None
        self._ssa_family = family
        self._ssa_proto = opt.IPPROTO_TLS
        self._ssa_state = _CONNECTED
        self._ssa_peer = _addr(info.peer_host, info.peer_port)
        self._ssa_local = _addr(info.local_host, info.local_port)
        self._ssa_so_error = 0
        self._ssa_error = ""
        self._ssa_eof = False
        self._ssa_shut_rd = False
        self._ssa_id = info.socket_id
        self._ssa_0rtt = False
        self._ssa_lazy = None
        ctl_sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, ctl_fd)
        self._ssa_ctl = ControlChannel.adopt(ctl_sock)
        _socket.socket.__init__(self, _socket.AF_UNIX, _socket.SOCK_STREAM, 0, data_fd)
        return self

    def dup(self) -> _socket.socket:
        if not self._tls:
            return super().dup()
        raise OSError(errno.EOPNOTSUPP, "dup() of a TLS socket is not supported")

    def detach(self) -> int:
        ctl, self._ssa_ctl = self._ssa_ctl, None
        if ctl is not None:
            ctl.close()
        if self._ssa_pair is not None:
            self._ssa_pair.close()
            self._ssa_pair = None
        return super().detach()

    def _real_close(self, _ss: Any = _csocket.socket) -> None:
        ctl, self._ssa_ctl = self._ssa_ctl, None
        if self._ssa_pair is not None:
            self._ssa_pair.close()
            self._ssa_pair = None
        try:
            _ss.close(self)
        finally:
            if ctl is not None:
                ctl.close()

    # -- STARTTLS: TCP_UPGRADE_TLS on a plain TCP socket ------------------------------
    def _ssa_accept_plain(self) -> tuple[TLSSocket, Any]:
        """accept() on a plain TCP listener: a plain socket of this class, upgradable too."""
        fd, addr = self._accept()
        sock = TLSSocket(self._ssa_family, _socket.SOCK_STREAM, self._ssa_proto, fileno=fd)
        if _socket.getdefaulttimeout() is None and self.gettimeout():
            sock.setblocking(True)  # as the stdlib's accept() does
        return sock, addr

    def _ssa_plain_control(self) -> ControlChannel:
        """A plain socket's control connection, opened at its first TLS request."""
        if self._ssa_ctl is None:
            if self._closed:
                raise OSError(errno.EBADF, "Bad file descriptor")
            ctl = ControlChannel()
            reply = ctl.open(SocketRequest(self._ssa_family, _socket.SOCK_STREAM,
                                           opt.IPPROTO_TLS))
            assert isinstance(reply, Ok)
            self._ssa_id = reply.socket_id or 0
            self._ssa_ctl = ctl
        return self._ssa_ctl

    def _ssa_upgrade(self, value: Any) -> None:
        """STARTTLS in place: the engine takes the TCP connection, this object goes on as TLS.

        A name is the client role (SNI and verification for it), ``b""`` the
        server role. Call it only when the plaintext exchange has been read up
        to the peer's go-ahead: bytes that the kernel holds already are the
        start of the TLS stream (docs/protocol.md section 6.7).
        """
        if self._ssa_proto == opt.IPPROTO_TLS:
            raise OSError(errno.EISCONN, "TCP_UPGRADE_TLS: this is a TLS socket already")
        host = _upgrade_host(value)
        if (self._ssa_family not in (_socket.AF_INET, _socket.AF_INET6)
                or super().getsockopt(_socket.SOL_SOCKET, _socket.SO_TYPE) != _socket.SOCK_STREAM):
            raise OSError(errno.EINVAL, "TCP_UPGRADE_TLS needs a TCP socket")
        try:
            super().getpeername()
        except OSError:
            raise OSError(errno.EINVAL, "TCP_UPGRADE_TLS needs a connected TCP socket") from None
        ctl = self._ssa_plain_control()
        app_end, engine_end = _data_pair()
        try:
            with engine_end:
                ctl.send(Upgrade(host=host), [self.fileno(), engine_end.fileno()])
        except BaseException:
            app_end.close()
            raise
        with app_end:
            self._ssa_upgraded(ctl, app_end)

    def _ssa_upgraded(self, ctl: ControlChannel, app_end: _socket.socket) -> None:
        """Wait for the UPGRADE's result; on success put the plaintext stream on our fd."""
        timeout = self.gettimeout()
        self._ssa_proto = opt.IPPROTO_TLS  # a TLS socket from here on, whatever the result
        self._ssa_state = _CONNECTING
        try:
            result = ctl.wait_connect(None)  # the engine bounds the handshake in time
        except OSError as exc:  # the engine went away: the connection is lost with it
            result = ConnectFailed(errno=exc.errno or errno.ECONNRESET,
                                   message=exc.strerror or str(exc))
        except BaseException:
            try:
                self._ssa_give_up(ConnectFailed(errno=errno.ECONNABORTED,
                                                message="TCP_UPGRADE_TLS was interrupted"))
            except OSError:
                pass
            raise
        if isinstance(result, ConnectFailed):
            self._ssa_give_up(result)
        # the same descriptor number now reads and writes the engine's plaintext
        # stream; dup2 also closes our copy of the TCP socket (the engine has it)
        os.dup2(app_end.fileno(), self.fileno(), inheritable=False)
        self.settimeout(timeout)  # O_NONBLOCK belongs to the new file description
        self._ssa_result(result)

    def _ssa_give_up(self, failed: ConnectFailed) -> None:
        """A failed upgrade: end the TCP connection and raise as a failed connect does."""
        try:
            _socket.socket.shutdown(self, _socket.SHUT_RDWR)
        except OSError:
            pass
        self._ssa_result(failed)

    # -- introspection used by the helpers -------------------------------------------
    def ssa_eof_status(self) -> OSError | None:
        """After end of file on the raw descriptor: None if clean, else the error."""
        try:
            self._ssa_at_eof()
        except OSError as exc:
            return exc
        return None


def _parse_address(address: Any) -> tuple[str, int]:
    if not isinstance(address, tuple) or len(address) not in (2, 4):
        raise TypeError("TLS sockets connect to a (host, port) tuple")
    host, port = address[0], address[1]
    if isinstance(host, bytes | bytearray):
        host = bytes(host).decode("idna")
    if not isinstance(host, str):
        raise TypeError(f"host must be str, not {type(host).__name__}")
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"port must be int, not {type(port).__name__}")
    if not 0 < port < 65536:
        raise OverflowError("connect(): port must be 1-65535.")
    host = host.rstrip("\x00")
    if not host or "\x00" in host or len(host) > 1024:
        raise OSError(errno.EINVAL, "empty or over-long host name, or a NUL inside it")
    try:
        host.encode("utf-8")
    except UnicodeError:
        raise OSError(errno.EINVAL, "the host name is not valid Unicode") from None
    return host, port


def _upgrade_host(value: Any) -> str:
    """TCP_UPGRADE_TLS's value: the server's name (client role), or empty (server role)."""
    try:
        if isinstance(value, str):
            raw = value.rstrip("\x00").encode("idna") if value.rstrip("\x00") else b""
        elif isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            raw = raw[:-1] if raw.endswith(b"\x00") else raw
        else:
            raise OSError(errno.EINVAL, "TCP_UPGRADE_TLS takes the server's name as str or "
                          f"bytes (empty for the server role), not {type(value).__name__}")
        host = raw.decode("ascii")
    except UnicodeError:
        raise OSError(errno.EINVAL, f"TCP_UPGRADE_TLS: {value!r} is not a valid host "
                      "name") from None
    if "\x00" in host or len(host) > 1024:
        raise OSError(errno.EINVAL, "TCP_UPGRADE_TLS: over-long host name, or a NUL inside it")
    return host


def _data_pair() -> tuple[_socket.socket, _socket.socket]:
    """The plaintext socketpair: (the application's end, the engine's end)."""
    app_end, engine_end = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    # on a Unix stream socket only the sender's buffer limits what is in flight
    # (SO_RCVBUF changes nothing), so each end gets SO_SNDBUF alone
    for s in (app_end, engine_end):
        s.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, PAIR_BUFFER)
    return app_end, engine_end


def _addr(host: str, port: int) -> tuple[Any, ...]:
    return (host, port, 0, 0) if ":" in host else (host, port)


def _as_buf(value: int, buflen: int | None) -> Any:
    if buflen is None:
        return value
    return struct.pack("i", value)[:buflen]


def _int_value(name: TLSOption, value: Any) -> int:
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, bytes | bytearray) and len(value) == 4:
        return int(struct.unpack("i", value)[0])
    raise OSError(errno.EINVAL, f"TLS_{_public_name(name)} takes an int")


def _public_name(name: TLSOption) -> str:
    return "0RTT" if name is TLSOption.ZERO_RTT else name.name


def _bytes_value(name: TLSOption, value: Any) -> bytes:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
    else:
        raise OSError(errno.EINVAL, f"TLS_{_public_name(name)} takes str or bytes, "
                      f"not {type(value).__name__}")
    if raw.endswith(b"\x00"):
        raw = raw[:-1]
    if name in _PEM_OPTIONS and not raw.lstrip().startswith(b"-----BEGIN"):
        # a path: read it here, with the application's own permissions, so the
        # engine never opens a file on the application's behalf.
        path = os.fsdecode(raw)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_PEM_FILE + 1)
        except OSError as exc:
            raise OSError(errno.EINVAL, f"TLS_{_public_name(name)}: cannot read {path!r}: "
                          f"{exc.strerror}") from None
        if len(raw) > MAX_PEM_FILE:
            raise OSError(errno.EINVAL, f"TLS_{_public_name(name)}: {path!r} is too large")
        if b"-----BEGIN" not in raw:
            raise OSError(errno.EINVAL, f"TLS_{_public_name(name)}: {path!r} is not PEM")
    return raw
