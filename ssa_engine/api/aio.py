"""asyncio helpers: ``open_connection`` for TLS sockets served by the engine."""

from __future__ import annotations

import asyncio
import errno
import os
import socket as _socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..protocol import options as opt
from .helpers import PathOrPem, configure, create_server, family_for
from .tlssocket import TLSSocket

_LIMIT = 2**16


class _TLSStreamProtocol(asyncio.StreamReaderProtocol):
    """StreamReaderProtocol that tells truncation from a clean end of stream."""

    def __init__(self, reader: asyncio.StreamReader, tls: TLSSocket) -> None:
        super().__init__(reader)
        self._tls = tls

    def eof_received(self) -> bool:
        err = self._tls.ssa_eof_status()
        if err is not None:
            reader = self._stream_reader
            if reader is not None:
                reader.set_exception(err)
            return False
        return bool(super().eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._tls.close()


class TLSStreamWriter(asyncio.StreamWriter):
    """StreamWriter whose extra info describes the TLS connection."""

    def __init__(self, *args: Any, tls: TLSSocket, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._tls = tls

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        tls = self._tls
        if name == "ssa_socket":
            return tls
        if name == "peername":
            return tls.getpeername()
        if name == "sockname":
            return tls.getsockname()
        return super().get_extra_info(name, default)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await fut
    finally:
        loop.remove_writer(fd)


async def open_connection(
    host: str,
    port: int,
    *,
    hostname: str | None = None,
    cafile: PathOrPem | None = None,
    certfile: PathOrPem | None = None,
    keyfile: PathOrPem | None = None,
    alpn: Sequence[str] | None = None,
    limit: int = _LIMIT,
) -> tuple[asyncio.StreamReader, TLSStreamWriter]:
    """Connect through the engine and return an asyncio (reader, writer) pair."""
    loop = asyncio.get_running_loop()
    sock = TLSSocket(family_for(host), _socket.SOCK_STREAM, opt.IPPROTO_TLS)
    try:
        configure(sock, hostname=hostname, cafile=cafile, certfile=certfile,
                  keyfile=keyfile, alpn=alpn)
        sock.setblocking(False)
        try:
            sock.connect((host, port))
        except BlockingIOError as exc:
            if exc.errno != errno.EINPROGRESS:
                raise
        # the descriptor turns writable when the engine has the result
        await _writable(loop, sock.fileno())
        sock.ssa_finish_connect()
        stream = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, os.dup(sock.fileno()))
    except BaseException:
        sock.close()
        raise
    return await _streams(loop, sock, stream, limit)


async def _streams(loop: asyncio.AbstractEventLoop, sock: TLSSocket, stream: _socket.socket,
                   limit: int) -> tuple[asyncio.StreamReader, TLSStreamWriter]:
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = _TLSStreamProtocol(reader, sock)
    try:
        transport, _ = await loop.create_connection(lambda: protocol, sock=stream)
    except BaseException:
        stream.close()
        sock.close()
        raise
    writer = TLSStreamWriter(transport, protocol, reader, loop, tls=sock)
    return reader, writer


ClientConnected = Callable[[asyncio.StreamReader, TLSStreamWriter], Awaitable[None] | None]


class TLSServer:
    """What :func:`start_server` returns: like ``asyncio.Server``, for TLS sockets."""

    def __init__(self, loop: asyncio.AbstractEventLoop, listener: TLSSocket,
                 callback: ClientConnected, limit: int) -> None:
        self._loop = loop
        self._listener = listener
        self._callback = callback
        self._limit = limit
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        listener.setblocking(False)
        loop.add_reader(listener.fileno(), self._on_acceptable)

    @property
    def sockets(self) -> tuple[TLSSocket, ...]:
        return () if self._closed.is_set() else (self._listener,)

    def _on_acceptable(self) -> None:
        for _ in range(64):
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            task = self._loop.create_task(self._serve(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, sock: TLSSocket) -> None:
        try:
            stream = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0,
                                    os.dup(sock.fileno()))
        except OSError:
            sock.close()
            return
        reader, writer = await _streams(self._loop, sock, stream, self._limit)
        result = self._callback(reader, writer)
        if asyncio.iscoroutine(result):
            await result

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._loop.remove_reader(self._listener.fileno())
        self._listener.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def serve_forever(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> TLSServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


async def start_server(
    client_connected_cb: ClientConnected,
    host: str,
    port: int,
    *,
    certfile: PathOrPem | None = None,
    keyfile: PathOrPem | None = None,
    cafile: PathOrPem | None = None,
    alpn: Sequence[str] | None = None,
    limit: int = _LIMIT,
) -> TLSServer:
    """Serve TLS through the engine; ``client_connected_cb(reader, writer)`` per client."""
    loop = asyncio.get_running_loop()
    listener = create_server((host, port), certfile=certfile, keyfile=keyfile, cafile=cafile,
                             alpn=alpn)
    return TLSServer(loop, listener, client_connected_cb, limit)
