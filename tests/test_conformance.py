"""One suite, two clients: a stdlib socket+ssl client and a TLSSocket.

"Behaves like a socket" is tested, not assumed: every check here runs against
both, talking to the same echo server, and must give the same results.
"""

from __future__ import annotations

import errno
import select
import socket
import ssl
from collections.abc import Callable, Iterator

import pytest

import ssa_engine

from .conftest import SSLServer, server_context

pytestmark = pytest.mark.usefixtures("engine")

Client = Callable[[], socket.socket]


@pytest.fixture
def echo_server(pki, ssl_server) -> SSLServer:  # type: ignore[no-untyped-def]
    return ssl_server(server_context(pki.server))


@pytest.fixture(params=["stdlib-ssl", "ssa"])
def connect(request, pki, echo_server) -> Iterator[Client]:  # type: ignore[no-untyped-def]
    opened: list[socket.socket] = []

    def make() -> socket.socket:
        if request.param == "ssa":
            s: socket.socket = ssa_engine.create_connection(
                ("localhost", echo_server.port), cafile=pki.ca.pem)
        else:
            ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
            raw = socket.create_connection(("localhost", echo_server.port))
            s = ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


def _read_exactly(s: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = s.recv(n - len(out))
        assert chunk, "unexpected EOF"
        out += chunk
    return bytes(out)


def test_send_recv(connect: Client) -> None:
    s = connect()
    assert s.send(b"abc") == 3
    assert _read_exactly(s, 3) == b"abc"


def test_sendall_large_and_recv_into(connect: Client) -> None:
    s = connect()
    payload = bytes(range(256)) * 4096  # 1 MiB
    import threading

    t = threading.Thread(target=s.sendall, args=(payload,))
    t.start()
    buf = bytearray(len(payload))
    view = memoryview(buf)
    got = 0
    while got < len(payload):
        n = s.recv_into(view[got:], min(65536, len(payload) - got))
        assert n > 0
        got += n
    t.join()
    assert buf == payload


def test_makefile_lines(connect: Client) -> None:
    s = connect()
    w = s.makefile("wb")
    r = s.makefile("rb")
    w.write(b"line one\nline two\n")
    w.flush()
    assert r.readline() == b"line one\n"
    assert r.readline() == b"line two\n"
    w.close()
    r.close()


def test_timeout_on_idle_read(connect: Client) -> None:
    s = connect()
    s.settimeout(0.1)
    assert s.gettimeout() == 0.1
    with pytest.raises(TimeoutError):
        s.recv(1)
    s.settimeout(None)
    s.sendall(b"z")
    assert s.recv(1) == b"z"


def test_non_blocking_read_and_select(connect: Client) -> None:
    s = connect()
    s.setblocking(False)
    with pytest.raises((BlockingIOError, ssl.SSLWantReadError)):
        s.recv(1)
    s.setblocking(True)
    s.sendall(b"ready")
    r, _, _ = select.select([s], [], [], 5)
    assert r == [s]
    assert _read_exactly(s, 5) == b"ready"


def test_half_close_then_clean_eof(connect: Client) -> None:
    s = connect()
    s.sendall(b"last words")
    if isinstance(s, ssl.SSLSocket):
        pytest.skip("the stdlib ssl module cannot half-close: unwrap() fails when the "
                    "peer's data follows our close_notify")
    s.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := s.recv(100):
        data += chunk
    assert data == b"last words"
    assert s.recv(100) == b""  # EOF stays EOF


def test_fileno_and_family(connect: Client) -> None:
    s = connect()
    assert s.fileno() >= 0
    assert s.family == socket.AF_INET
    assert s.type == socket.SOCK_STREAM
    assert s.getpeername()[0] == "127.0.0.1"


def test_send_after_close_fails(connect: Client) -> None:
    s = connect()
    s.close()
    with pytest.raises(OSError) as e:
        s.send(b"x")
    assert e.value.errno == errno.EBADF
