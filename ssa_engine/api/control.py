"""The application's end of one control connection to the engine (blocking)."""

from __future__ import annotations

import array
import errno
import os
import select
import socket
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from .. import paths
from ..protocol import (
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    Accepted,
    Closed,
    Connected,
    ConnectFailed,
    Decoder,
    Error,
    FrameError,
    Hello,
    HelloOk,
    Message,
    encode,
)

#: seconds to wait for the engine to answer a request that does no network I/O
REPLY_TIMEOUT = 30.0


#: the path shown for control connections the engine made (accepted sockets)
_ADOPTED = Path("(accepted)")


class ReplyTimeout(TimeoutError):
    """No reply within the caller's timeout (the engine may still answer later)."""


def engine_unreachable(path: Path, exc: OSError) -> OSError:
    code = exc.errno or errno.ECONNREFUSED
    return OSError(
        code,
        f"the ssa engine is not running: cannot reach its control socket {path} "
        f"({os.strerror(code)}); start it with `ssa-engine serve` "
        f"(or point {paths.ENV_ENGINE_SOCKET} at a running engine)",
    )


class ControlChannel:
    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else paths.client_socket()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            sock.close()
            raise engine_unreachable(self.path, exc) from None
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.decoder = Decoder()
        #: the CLOSED event, once the engine has sent it
        self.closed_event: Closed | None = None
        #: CONNECTED or CONNECT_FAILED, once the engine has sent it
        self.connect_result: Connected | ConnectFailed | None = None
        #: offered connections (listeners): the frame and its two descriptors
        self.accepted: deque[tuple[Accepted, int, int]] = deque()
        self._fds: deque[int] = deque()
        self.engine_gone = False
    @classmethod
    def adopt(cls, sock: socket.socket) -> ControlChannel:
        """A control connection the engine created (an accepted socket's), past HELLO."""
        self = cls.__new__(cls)
        self.path = _ADOPTED
        self.sock = sock
        self.decoder = Decoder()
        self.closed_event = None
        self.connect_result = None
        self.accepted = deque()
        self._fds = deque()
        self.engine_gone = False
        return self

    def open(self, first: Message | None = None) -> Message | None:
        """HELLO, pipelined with ``first`` (one wake-up of the engine for both).

        Returns the reply to ``first``; raises OSError if either fails.
        """
        hello = encode(Hello(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION))
        try:
            self.sock.sendall(hello + (encode(first) if first is not None else b""))
            reply = self.reply()
            if not isinstance(reply, HelloOk) or not (
                MIN_PROTOCOL_VERSION <= reply.version <= PROTOCOL_VERSION
            ):
                raise OSError(errno.EPROTO, f"unexpected answer from the engine: {reply!r}")
            return self.reply() if first is not None else None
        except BaseException:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()
        while self.accepted:
            _, data_fd, ctl_fd = self.accepted.popleft()
            os.close(data_fd)
            os.close(ctl_fd)
        while self._fds:
            os.close(self._fds.popleft())

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- sending ----------------------------------------------------------------
    def send(self, message: Message, fds: Sequence[int] = ()) -> None:
        data = encode(message)
        try:
            if fds:
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                sent = self.sock.sendmsg([data], anc)
                if sent < len(data):
                    self.sock.sendall(data[sent:])
            else:
                self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.engine_gone = True
            raise OSError(errno.ECONNRESET, "the ssa engine closed the control connection "
                          "(it stopped or restarted)") from None

    def request(self, message: Message, fds: Sequence[int] = (),
                timeout: float | None = REPLY_TIMEOUT) -> Message:
        """Send one request and return its reply; an ERROR reply raises OSError."""
        self.send(message, fds)
        return self.reply(timeout)

    def request_many(self, messages: Sequence[Message]) -> None:
        """Send several requests in one write, then read every reply.

        Raises the first failure, after all replies are read so that the
        conversation stays in step.
        """
        try:
            self.sock.sendall(b"".join(encode(m) for m in messages))
        except (BrokenPipeError, ConnectionResetError):
            self.engine_gone = True
            raise OSError(errno.ECONNRESET, "the ssa engine closed the control connection "
                          "(it stopped or restarted)") from None
        first: OSError | None = None
        for _ in messages:
            try:
                self.reply()
            except ReplyTimeout:
                raise
            except OSError as exc:
                if exc.errno in (errno.ECONNRESET,) and self.engine_gone:
                    raise
                first = first or exc
        if first is not None:
            raise first

    # -- receiving --------------------------------------------------------------
    def _absorb(self, message: Message) -> bool:
        """Record an event or a connect result; False for an ordinary reply."""
        if isinstance(message, Closed):
            self.closed_event = message
            return True
        if isinstance(message, Connected | ConnectFailed):
            self.connect_result = message
            return True
        if isinstance(message, Accepted):
            if len(self._fds) < 2:
                self.engine_gone = True
                raise OSError(errno.EPROTO, "ACCEPTED arrived without its descriptors")
            self.accepted.append((message, self._fds.popleft(), self._fds.popleft()))
            return True
        return False

    def wait_accepted(self, timeout: float | None) -> tuple[Accepted, int, int]:
        """The next offered connection (its frame, data fd and control fd).

        The engine sends the frame before the byte that made accept() go on,
        so it is normally here already: read before polling.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.accepted:
            message = self._next(deadline, expected=True)
            if message is None:
                raise ReplyTimeout("timed out")
            if not self._absorb(message):
                raise OSError(errno.EPROTO, f"unexpected frame from the engine: {message!r}")
        return self.accepted.popleft()

    def reply(self, timeout: float | None = REPLY_TIMEOUT) -> Message:
        """Wait for the reply to the last request (events are recorded on the way)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._next(deadline)
            if message is None:
                raise ReplyTimeout("timed out")
            if self._absorb(message):
                continue
            if isinstance(message, Error):
                raise OSError(message.errno, message.message or os.strerror(message.errno))
            return message

    def wait_connect(self, timeout: float | None) -> Connected | ConnectFailed:
        """Wait for the result of the CONNECT that was sent."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.connect_result is None:
            message = self._next(deadline)
            if message is None:
                raise ReplyTimeout("timed out")
            if not self._absorb(message):
                raise OSError(errno.EPROTO, f"unexpected frame from the engine: {message!r}")
        return self.connect_result

    def poll(self) -> None:
        """Take in whatever events and results have arrived, without blocking."""
        while (message := self._next(time.monotonic())) is not None:
            if not self._absorb(message):
                raise OSError(errno.EPROTO, f"unexpected frame from the engine: {message!r}")

    def wait_closed(self, timeout: float) -> Closed | None:
        """The CLOSED event, waiting at most ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        while self.closed_event is None and not self.engine_gone:
            message = self._next(deadline)
            if message is None:
                break
            if not self._absorb(message):
                raise OSError(errno.EPROTO, f"unexpected frame from the engine: {message!r}")
        return self.closed_event

    def _next(self, deadline: float | None, *, expected: bool = False) -> Message | None:
        """The next frame, or None at ``deadline``.

        ``expected``: the frame has probably arrived; try to read it before
        polling (one system call instead of two).
        """
        while True:
            try:
                message = self.decoder.next_message()
            except FrameError as exc:
                self.engine_gone = True
                raise OSError(errno.EPROTO, f"bad frame from the engine: {exc}") from None
            if message is not None:
                return message
            if self.engine_gone:
                raise OSError(errno.ECONNRESET, "the ssa engine closed the control connection "
                              "(it stopped or restarted)")
            if deadline is not None and not expected:
                remaining = deadline - time.monotonic()
                # poll, not select: applications may hold more than 1024 descriptors
                poller = select.poll()
                poller.register(self.sock, select.POLLIN)
                if not poller.poll(max(remaining, 0) * 1000):
                    return None
            flags = socket.MSG_CMSG_CLOEXEC
            if expected:
                flags |= socket.MSG_DONTWAIT
                expected = False
            try:
                data, anc, _flags, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(4 * 8), flags)
            except (BlockingIOError, InterruptedError):
                continue
            except ConnectionResetError:
                data, anc = b"", []
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                    self._fds.extend(fds)
            if not data:
                self.engine_gone = True
                continue
            try:
                self.decoder.receive_data(data)
            except FrameError as exc:
                self.engine_gone = True
                raise OSError(errno.EPROTO, f"bad frame from the engine: {exc}") from None
