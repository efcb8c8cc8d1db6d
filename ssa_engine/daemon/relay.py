"""The data path: plaintext from the application <-> TLS on the TCP socket.

Theory of operation: pyOpenSSL's Connection sits directly on the non-blocking
TCP socket (socket BIO), so ciphertext never enters Python. Plaintext moves
through two engine-wide preallocated buffers, ``up`` (application -> peer) and
``down`` (peer -> application): the event loop runs one callback at a time, so
a connection only borrows a shared buffer for the length of one callback.
When data cannot be passed on at once (the peer or the application is slow),
the rest is copied into a private buffer that the connection keeps until it
is flushed, and the side that produced it is not read meanwhile (flow control
both ways). An idle connection therefore holds no buffer memory at all.

Stream end: the application's EOF (``shutdown(SHUT_WR)`` or close) sends
close_notify; the peer's close_notify becomes a clean EOF for the application
after a CLOSED(0) event on the control channel; anything else that ends the
stream (reset, TCP FIN without close_notify, an alert) becomes CLOSED(errno)
and the application's read raises instead of seeing a clean EOF.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

from OpenSSL import SSL

from . import fastio

log = logging.getLogger("ssa.relay")

#: bytes read from the application per SSL_write call (many TLS records)
UP_BUFFER = 256 * 1024
#: bytes of plaintext collected from TLS before one send to the application
DOWN_BUFFER = 256 * 1024
#: seconds a closed application's connection may take to flush to the peer
LINGER = 30.0

_WANT_READ = -fastio.WANT_READ
_WANT_WRITE = -fastio.WANT_WRITE

# on_closed(errno, message): errno 0 = clean end of the TLS stream
ClosedCallback = Callable[[int, str], None]

_shared: dict[str, fastio.Buffer] = {}


def _shared_buffer(name: str, size: int) -> fastio.Buffer:
    buf = _shared.get(name)
    if buf is None:
        buf = _shared[name] = fastio.Buffer(size)
    return buf


def _private_copy(buf: fastio.Buffer, start: int, end: int) -> fastio.Buffer:
    copy = fastio.Buffer(end - start)
    copy.view[:] = buf.view[start:end]
    return copy


class Relay:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: SSL.Connection,
        tcp: socket.socket,
        app: socket.socket,
        on_peer_end: ClosedCallback,
        on_finished: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._conn = conn
        self._tcp = tcp
        self._app = app
        self._tcp_fd = tcp.fileno()
        self._app_fd = app.fileno()
        self._on_peer_end = on_peer_end
        self._on_finished = on_finished
        # data waiting to go up (to TLS) or down (to the application)
        self._up: fastio.Buffer | None = None
        self._up_start = self._up_end = 0
        self._down: fastio.Buffer | None = None
        self._down_start = self._down_end = 0
        self._down_more = False  # TLS may hold more plaintext than we took
        self._write_wants_read = False
        self._read_wants_write = False
        self._shutdown_pending = False
        self._handshake_pending = False
        self.app_eof = False  # application will send nothing more
        self.peer_eof = False  # close_notify received
        self.sent_close_notify = False
        self.app_closed = False  # control connection gone
        self.finished = False
        self._tcp_r = self._tcp_w = self._app_r = self._app_w = False
        self._linger: asyncio.TimerHandle | None = None
        self.bytes_up = 0
        self.bytes_down = 0

    # -- registration helpers -------------------------------------------------
    def _tcp_reading(self, on: bool) -> None:
        if on != self._tcp_r:
            self._tcp_r = on
            if on:
                self._loop.add_reader(self._tcp_fd, self._on_tcp_readable)
            else:
                self._loop.remove_reader(self._tcp_fd)

    def _tcp_writing(self, on: bool) -> None:
        if on != self._tcp_w:
            self._tcp_w = on
            if on:
                self._loop.add_writer(self._tcp_fd, self._on_tcp_writable)
            else:
                self._loop.remove_writer(self._tcp_fd)

    def _app_reading(self, on: bool) -> None:
        if on != self._app_r:
            self._app_r = on
            if on:
                self._loop.add_reader(self._app_fd, self._on_app_readable)
            else:
                self._loop.remove_reader(self._app_fd)

    def _app_writing(self, on: bool) -> None:
        if on != self._app_w:
            self._app_w = on
            if on:
                self._loop.add_writer(self._app_fd, self._on_app_writable)
            else:
                self._loop.remove_writer(self._app_fd)

    # -- start and stop -------------------------------------------------------
    def start(self, first: bytes = b"", *, reader_registered: bool = False) -> None:
        """Start relaying; ``first`` goes to the peer before anything the app writes.

        (``first``: the 0-RTT bytes the server refused or that did not fit.)
        ``reader_registered``: the TCP descriptor is still registered for
        reading (by the handshake); its callback is replaced, not re-added.
        """
        if reader_registered:
            self._tcp_r = True
            self._loop.add_reader(self._tcp_fd, self._on_tcp_readable)
        self._tcp_reading(True)
        if first:
            buf = fastio.Buffer(len(first))
            buf.view[:] = first
            self.bytes_up += len(first)
            self._write_up(buf, 0, len(first))  # enables app reading once written
        else:
            self._app_reading(True)
        # The handshake may have left application data decrypted in OpenSSL.
        self._read_tls()

    def application_closed(self) -> None:
        """The application closed its socket: flush what it sent, then end."""
        self.app_closed = True
        if self.finished:
            return
        if self._app_r:
            # it closed its plaintext end with the control connection, most likely:
            # take the end of file now rather than in another wake-up
            self._on_app_readable()
        self._maybe_finish()
        if not self.finished:
            self._linger = self._loop.call_later(LINGER, self._abort, "linger timeout")

    def abort(self, reason: str) -> None:
        self._abort(reason)

    def _abort(self, reason: str) -> None:
        if not self.finished:
            log.debug("relay aborted: %s", reason)
            self._finish()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._tcp_reading(False)
        self._tcp_writing(False)
        self._app_reading(False)
        self._app_writing(False)
        if self._linger is not None:
            self._linger.cancel()
        for s in (self._tcp, self._app):
            try:
                s.close()
            except OSError:
                pass
        self._on_finished()

    def _fatal(self, code: int, message: str) -> None:
        if self.finished:
            return
        log.info("connection ended: %s", message)
        self._on_peer_end(code, message)
        try:
            self._app.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._finish()

    # -- application -> peer --------------------------------------------------
    def _up_pending(self) -> bool:
        return self._up is not None

    def _on_app_readable(self) -> None:
        buf = _shared_buffer("up", UP_BUFFER)
        try:
            n = self._app.recv_into(buf.view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if n == 0:
            self._app_reading(False)
            self.app_eof = True
            self._send_close_notify()
            return
        self.bytes_up += n
        self._write_up(buf, 0, n)

    def _write_up(self, buf: fastio.Buffer, start: int, end: int) -> None:
        """SSL_write buf[start:end]; keep a private copy of what must wait."""
        try:
            while start < end:
                r = fastio.ssl_write(self._conn, buf, start, end)
                if r > 0:
                    start += r
                    continue
                # OpenSSL wants the same bytes again later (the buffer may move:
                # SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER)
                if buf is not self._up:
                    buf, start, end = _private_copy(buf, start, end), 0, end - start
                self._up, self._up_start, self._up_end = buf, start, end
                self._app_reading(False)
                if r == _WANT_WRITE:
                    self._tcp_writing(True)
                else:  # WANT_READ: a TLS 1.3 key update or similar is in the way
                    self._write_wants_read = True
                    self._tcp_reading(True)
                return
        except SSL.Error as exc:
            self._fatal(errno.ECONNRESET, f"TLS write failed: {_text(exc)}")
            return
        self._up = None
        if not self.app_eof:
            self._app_reading(True)

    def _flush_up(self) -> None:
        if self._up is not None:
            self._write_up(self._up, self._up_start, self._up_end)

    def _send_close_notify(self) -> None:
        if self.sent_close_notify or self.finished:
            return
        try:
            self._conn.shutdown()
        except SSL.WantWriteError:
            self._shutdown_pending = True
            self._tcp_writing(True)
            return
        except SSL.WantReadError:
            pass  # the alert is written; OpenSSL only wants the peer's reply
        except SSL.Error:
            pass  # the peer is gone already; the read side reports it
        self._shutdown_pending = False
        self.sent_close_notify = True
        self._maybe_finish()

    def send_handshake(self) -> None:
        """Write pending handshake messages now (a post-handshake certificate request)."""
        try:
            self._conn.do_handshake()
            self._handshake_pending = False
        except SSL.WantWriteError:
            self._handshake_pending = True
            self._tcp_writing(True)
        except SSL.WantReadError:
            self._handshake_pending = False  # sent; the answer comes through SSL_read
        except SSL.Error as exc:
            self._fatal(errno.EPROTO, f"TLS error: {_text(exc)}")

    def _on_tcp_writable(self) -> None:
        self._tcp_writing(False)
        if self._handshake_pending:
            self.send_handshake()
        if self._up_pending():
            self._flush_up()
        if self._read_wants_write:
            self._read_wants_write = False
            self._read_tls()
        if self._shutdown_pending:
            self._send_close_notify()

    # -- peer -> application --------------------------------------------------
    def _on_tcp_readable(self) -> None:
        if self._write_wants_read:
            self._write_wants_read = False
            self._flush_up()
        self._read_tls()

    def _read_tls(self) -> None:
        buf = _shared_buffer("down", DOWN_BUFFER)
        while not self.finished and not self.peer_eof and self._down is None:
            off = 0
            try:
                while off < buf.size:
                    r = fastio.ssl_read(self._conn, buf, off)
                    if r > 0:
                        off += r
                    elif r == _WANT_READ:
                        break
                    else:
                        self._read_wants_write = True
                        self._tcp_writing(True)
                        break
            except SSL.ZeroReturnError:
                self.peer_eof = True
            except SSL.SysCallError as exc:
                self._deliver_then_fatal(buf, off, errno.ECONNRESET, _reset_text(exc))
                return
            except SSL.Error as exc:
                self._deliver_then_fatal(buf, off, *_classify_read_error(exc))
                return
            self._down_more = off == buf.size
            if off:
                self.bytes_down += off
                if not self._send_down(buf, 0, off):
                    return
            if self.peer_eof:
                self._peer_finished()
                return
            if not self._down_more:
                return

    def _send_down(self, buf: fastio.Buffer, start: int, end: int) -> bool:
        """Send buf[start:end] to the application; False if the rest must wait."""
        try:
            while start < end:
                start += self._app.send(buf.view[start:end])
        except (BlockingIOError, InterruptedError):
            if buf is not self._down:
                buf, start, end = _private_copy(buf, start, end), 0, end - start
            self._down, self._down_start, self._down_end = buf, start, end
            self._tcp_reading(False)
            self._app_writing(True)
            return False
        except OSError:
            # the application closed its end: nothing more can be delivered
            self._abort("application stopped reading")
            return False
        self._down = None
        self._app_writing(False)
        if not self.peer_eof:
            self._tcp_reading(True)
        return True

    def _deliver_then_fatal(self, buf: fastio.Buffer, off: int, code: int, message: str) -> None:
        # bytes decrypted before the failure were authentic: hand them over
        start = 0
        try:
            while start < off:
                start += self._app.send(buf.view[start:off])
        except OSError:
            pass
        self._fatal(code, message)

    def _on_app_writable(self) -> None:
        pending = self._down
        if pending is None:
            self._app_writing(False)
            return
        if self._send_down(pending, self._down_start, self._down_end):
            if self.peer_eof:
                self._peer_finished()
            else:
                self._read_tls()

    def _peer_finished(self) -> None:
        """close_notify received and all plaintext delivered."""
        self._tcp_reading(False)
        self._on_peer_end(0, "")
        try:
            self._app.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        # Both directions are done once our close_notify is out and either the
        # peer's arrived or nobody is left to read it.
        if self.sent_close_notify and (self.peer_eof or self.app_closed):
            self._finish()


def _text(exc: Exception) -> str:
    args = exc.args
    if args and isinstance(args[0], list):
        return "; ".join(str(item[-1]) for item in args[0] if isinstance(item, tuple))
    return " ".join(str(a) for a in args) or type(exc).__name__


def _reset_text(exc: SSL.SysCallError) -> str:
    if exc.args and exc.args[0] == -1:
        return "the peer closed the TCP connection without TLS close_notify (truncation)"
    return f"connection reset by peer ({_text(exc)})"


def _classify_read_error(exc: SSL.Error) -> tuple[int, str]:
    text = _text(exc)
    if "unexpected eof" in text.lower():
        return errno.ECONNRESET, (
            "the peer closed the TCP connection without TLS close_notify (truncation)"
        )
    if "alert" in text.lower():
        return errno.ECONNRESET, f"the peer sent a fatal TLS alert: {text}"
    return errno.EPROTO, f"TLS error: {text}"
