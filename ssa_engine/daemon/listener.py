"""A listening TLS socket inside the engine.

Theory of operation: the engine owns the outside TCP listener. Each accepted
TCP connection gets a server handshake (under the handshake timeout, with at
most MAX_HANDSHAKES of them in flight per listener); only a connection whose
handshake succeeded is offered to the application. The offer is an ACCEPTED
frame on the listener's control connection carrying two descriptors (the
plaintext stream and the new socket's own control connection), followed by
one byte on the listener's notification stream, which is the listening
TLSSocket's descriptor in the application: it is readable exactly when
accept() would not block. Garbage, stalls, resets and refused handshakes are
logged and closed here; they never reach accept() and never disturb other
connections.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import socket
import struct
import termios
from collections.abc import Callable
from typing import TYPE_CHECKING

from OpenSSL import SSL

from .servertls import MAX_EARLY_DATA, ServerContexts
from .sessions import read_early_data
from .tlsctx import _openssl_text

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("ssa.listener")

#: Security parameter: TLS handshakes in flight per listener; beyond it the
#: engine stops accepting TCP connections (the kernel backlog holds them).
MAX_HANDSHAKES = 256
#: Security parameter: bytes of ACCEPTED frames queued for an application that
#: does not read its listener's control connection before accepting pauses.
MAX_QUEUED_OFFERS = 64 * 1024
#: seconds between checks whether the application has caught up with accept()
_RESUME_POLL = 0.05


class Listener:
    def __init__(
        self,
        session: Session,
        tcp: socket.socket,
        notify: socket.socket,
        contexts: ServerContexts,
        backlog: int,
        timeout: float,
        on_ready: Callable[[SSL.Connection, socket.socket, str | None, bytes, bool], None],
    ) -> None:
        self.session = session
        self.loop = session.loop
        self.tcp = tcp
        local = tcp.getsockname()
        self.port: int = local[1]
        #: the local address of every accepted connection, unless bound to a wildcard
        self.local: tuple[str, int] | None = (
            None if local[0] in ("0.0.0.0", "::") else (local[0], local[1]))
        #: the timer of the next session-ticket key rotation (accepting.py)
        self.rotation: asyncio.TimerHandle | None = None
        self.notify = notify
        self.contexts = contexts
        self.backlog = max(1, min(backlog, 65535))
        self.timeout = timeout
        self._on_ready = on_ready
        self._handshakes: dict[int, _Handshake] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._accepting = False
        self._resume: asyncio.TimerHandle | None = None
        self.closed = False
        self.refused = 0
        self.accepted = 0
        #: an upper bound of the offers not accept()ed yet (see _backlog_full)
        self._waiting_bound = 0
        #: offers whose notification byte is not sent yet (the socket was full)
        self._unsent = 0
        #: ALPN can be negotiated here: the listener lists protocols, or it has
        #: answered ACME tls-alpn-01 challenges (never reset: a handshake may
        #: have started before a challenge was removed)
        self.alpn_possible = bool(contexts.cfg.alpn)

    def start(self) -> None:
        self._set_accepting(True)

    def _set_accepting(self, on: bool) -> None:
        if on == self._accepting or self.closed:
            return
        self._accepting = on
        if on:
            self.loop.add_reader(self.tcp.fileno(), self._on_acceptable)
        else:
            self.loop.remove_reader(self.tcp.fileno())

    def waiting_for_app(self) -> int:
        """Connections offered to the application but not yet accept()ed.

        Each offer is one byte the application has not read yet. On a Unix
        socket TIOCOUTQ counts the memory of the queued buffers, not bytes,
        so it is divided by what one queued byte costs on this kernel.
        """
        return -(-_outq(self.notify) // _notify_unit()) + self._unsent

    def offered(self) -> None:
        """One more connection waits for the application's accept(): tell it.

        One byte per connection, each sent alone (waiting_for_app counts them).
        When the notification socket is full (the application is far behind),
        the bytes wait here and go out as it drains: losing one would leave a
        connection that accept() never returns.
        """
        self._waiting_bound += 1
        self._unsent += 1
        if self._unsent == 1:
            self._send_notifications()

    def _send_notifications(self) -> None:
        while self._unsent and not self.closed:
            try:
                self.notify.send(b"\x01")
            except (BlockingIOError, InterruptedError):
                self.loop.add_writer(self.notify.fileno(), self._on_notify_writable)
                return
            except OSError:
                log.warning("listener %s: the application stopped accepting", self.address())
                self._unsent = 0
                return
            self._unsent -= 1

    def _on_notify_writable(self) -> None:
        if self.closed:  # queued before close() removed the writer
            return
        self.loop.remove_writer(self.notify.fileno())
        self._send_notifications()

    def _backlog_full(self) -> bool:
        # The offers still waiting are at most those counted at the last look
        # plus those made since: the kernel is asked only when that bound
        # reaches the backlog (not once per accepted connection).
        if self._waiting_bound < self.backlog:
            return False
        self._waiting_bound = self.waiting_for_app()
        return self._waiting_bound >= self.backlog

    def _full(self) -> bool:
        engine = self.session.engine
        uid = self.session.peer.uid
        return (len(self._handshakes) >= MAX_HANDSHAKES or self._backlog_full()
                or engine.per_user.get(uid, 0) >= engine.max_per_user
                # an application that does not read its control connection
                # must not make the engine queue offers (and descriptors) forever
                or self.session.out_bytes > MAX_QUEUED_OFFERS)

    def _on_acceptable(self) -> None:
        for _ in range(64):
            # closed meanwhile: by an offer that failed, or after the event loop had
            # already queued this callback (the reader's removal does not unqueue it)
            if self.closed:
                return
            if self._full():
                self._pause()
                return
            try:
                tcp, addr = self.tcp.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.out_of_resources(exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            tcp.setblocking(False)
            _Handshake(self, tcp, addr).step()

    def out_of_resources(self, exc: OSError) -> None:
        """No descriptors or memory left: stop accepting for a moment."""
        log.error("listener %s: %s; pausing accept", self.address(), exc.strerror)
        self._pause()

    def _pause(self) -> None:
        self._set_accepting(False)
        if self._resume is None and not self.closed:
            self._resume = self.loop.call_later(_RESUME_POLL, self._try_resume)

    def _try_resume(self) -> None:
        self._resume = None
        if self.closed:
            return
        if self._full():
            self._resume = self.loop.call_later(_RESUME_POLL, self._try_resume)
        else:
            self._set_accepting(True)

    def _handshake_ended(self, hs: _Handshake) -> None:
        self._handshakes.pop(hs.fd, None)
        if not self._accepting and not self.closed and not self._full():
            self._set_accepting(True)

    def _sweep(self) -> None:
        """Refuse the handshakes that ran out of time (one timer per listener)."""
        self._sweeper = None
        now = self.loop.time()
        for hs in [h for h in self._handshakes.values() if h.deadline <= now]:
            hs.refuse(f"handshake timeout after {self.timeout:g} s")
        self._arm_sweep()

    def _arm_sweep(self) -> None:
        if self._sweeper is None and self._handshakes and not self.closed:
            soonest = min(h.deadline for h in self._handshakes.values())
            self._sweeper = self.loop.call_at(soonest + 0.05, self._sweep)

    def address(self) -> str:
        try:
            host, port = self.tcp.getsockname()[:2]
            return f"{host}:{port}"
        except OSError:
            return "?"

    def close(self) -> None:
        if self.closed:
            return
        self._set_accepting(False)
        self.closed = True
        if self._resume is not None:
            self._resume.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.rotation is not None:
            self.rotation.cancel()
        for hs in list(self._handshakes.values()):
            hs.abandon()
        self.tcp.close()
        if self._unsent:
            self.loop.remove_writer(self.notify.fileno())
        self.notify.close()


async def handshake(loop: asyncio.AbstractEventLoop, conn: SSL.Connection, fd: int) -> None:
    """Drive a non-blocking handshake on ``fd`` to its end (or its exception)."""
    while True:
        try:
            conn.do_handshake()
            return
        except SSL.WantReadError:
            await wait_fd(loop, fd, write=False)
        except SSL.WantWriteError:
            await wait_fd(loop, fd, write=True)


async def wait_fd(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    """Wait until ``fd`` is readable (or writable)."""
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    if write:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


class _Handshake:
    """One server handshake, driven by plain event-loop callbacks.

    No task, future or timeout object per connection: the listener's single
    sweep timer enforces the deadline.
    """

    __slots__ = ("listener", "tcp", "addr", "fd", "conn", "deadline", "_r", "_w", "early",
                 "reading_early")

    def __init__(self, listener: Listener, tcp: socket.socket, addr: tuple[str, int]) -> None:
        self.listener = listener
        self.tcp = tcp
        self.addr = addr
        self.fd = tcp.fileno()
        self.conn = SSL.Connection(listener.contexts.default, tcp)
        self.conn.set_accept_state()
        #: early data read so far; None when the listener takes none
        self.early: list[bytes] | None = [] if listener.contexts.cfg.early_data else None
        self.reading_early = self.early is not None
        self.deadline = listener.loop.time() + listener.timeout
        self._r = self._w = False
        listener._handshakes[self.fd] = self
        listener._arm_sweep()

    def _watch(self, read: bool, write: bool) -> None:
        loop = self.listener.loop
        if read != self._r:
            self._r = read
            if read:
                loop.add_reader(self.fd, self.step)
            else:
                loop.remove_reader(self.fd)
        if write != self._w:
            self._w = write
            if write:
                loop.add_writer(self.fd, self.step)
            else:
                loop.remove_writer(self.fd)

    def step(self) -> None:
        try:
            if self.reading_early:
                # TLS 1.3 early data is read before the handshake ends (RFC 8446
                # section 4.2.10); without this call OpenSSL would refuse it
                assert self.early is not None
                state = read_early_data(self.conn, self.early, MAX_EARLY_DATA)
                if state != "done":
                    self._watch(state == "read", state == "write")
                    return
                self.reading_early = False
            self.conn.do_handshake()
        except SSL.WantReadError:
            self._watch(True, False)
            return
        except SSL.WantWriteError:
            self._watch(False, True)
            return
        except SSL.SysCallError as exc:
            self.refuse("handshake failed: the client closed the connection"
                        if exc.args and exc.args[0] == -1
                        else "handshake failed: the client reset the connection")
            return
        except SSL.Error as exc:
            self.refuse(f"handshake failed: {_openssl_text(exc) or type(exc).__name__}")
            return
        except OSError as exc:
            self.refuse(f"connection error: {exc.strerror}")
            return
        # The reader stays registered: the relay takes it over (replacing the
        # callback costs less than unregistering the descriptor and adding it again).
        reading = self._r
        self._watch(reading, False)
        self._r = False
        listener = self.listener
        listener._handshake_ended(self)
        raw = self.conn.get_servername()
        listener.accepted += 1
        early = b"".join(self.early) if self.early else b""
        try:
            listener._on_ready(self.conn, self.tcp, raw.decode("ascii", "replace") if raw else None,
                               early, reading)
        except OSError as exc:
            listener.loop.remove_reader(self.fd)
            self.tcp.close()
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                listener.out_of_resources(exc)
            else:
                log.warning("listener %s: could not offer a connection: %s",
                            listener.address(), exc.strerror)
        except Exception:  # noqa: BLE001 - one connection must not break the listener
            log.exception("listener %s: could not offer a connection", listener.address())
            listener.loop.remove_reader(self.fd)
            self.tcp.close()

    def refuse(self, reason: str) -> None:
        listener = self.listener
        listener.refused += 1
        log.info("listener %s: refused %s port %s: %s", listener.address(), self.addr[0],
                 self.addr[1], reason)
        if listener.session.engine.audit_log is not None:
            try:
                local = self.tcp.getsockname()
            except OSError:
                local = None
            listener.session.audit_accept(None, local, self.addr, None, error=reason)
        self.abandon()

    def abandon(self) -> None:
        self._watch(False, False)
        self.listener._handshake_ended(self)
        self.tcp.close()


def _outq(sock: socket.socket) -> int:
    buf = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    return int(struct.unpack("i", buf)[0])


_unit: list[int] = []


def _notify_unit() -> int:
    """What one unread byte on a Unix stream socket counts for in TIOCOUTQ."""
    if not _unit:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with a, b:
            a.send(b"\x01")
            _unit.append(max(1, _outq(a)))
    return _unit[0]
