"""Socket semantics: state errors, non-blocking connect, timeouts, stream end."""

from __future__ import annotations

import asyncio
import errno
import selectors
import socket
import ssl
import time

import pytest

import ssa_engine
from ssa_engine import IPPROTO_TLS

from .conftest import server_context

pytestmark = pytest.mark.usefixtures("engine")


def test_state_and_direction_errors(pki, ssl_server) -> None:
    srv = ssl_server(server_context(pki.server))
    s = ssa_engine.socket()
    with s:
        # connection information before connect
        with pytest.raises(OSError) as e1:
            s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_PEER_IDENTITY)
        assert e1.value.errno == errno.EOPNOTSUPP
        # wrong directions
        with pytest.raises(OSError) as e2:
            s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_PEER_IDENTITY, b"x")
        assert e2.value.errno == errno.ENOPROTOOPT
        with pytest.raises(OSError) as e3:
            s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_PRIVATE_KEY)
        assert e3.value.errno == errno.ENOPROTOOPT
        with pytest.raises(OSError) as e4:
            s.getsockopt(IPPROTO_TLS, 4242)
        assert e4.value.errno == errno.ENOPROTOOPT
        # bad values
        for opt, value in [(ssa_engine.TLS_ALPN, b""), (ssa_engine.TLS_VERSION_MIN, 0x0301),
                           (ssa_engine.TLS_REMOTE_HOSTNAME, "bad host!"),
                           (ssa_engine.TLS_VERSION_MAX, b"not-an-int"),
                           (ssa_engine.TLS_CERTIFICATE_CHAIN, b"-----BEGIN CERTIFICATE-----\nxx"),
                           (ssa_engine.TLS_PRIVATE_KEY, "/nonexistent/key.pem")]:
            with pytest.raises(OSError) as e5:
                s.setsockopt(IPPROTO_TLS, opt, value)
            assert e5.value.errno == errno.EINVAL, (opt, value)
        # TCP_UPGRADE_TLS never reaches the kernel as TCP_FASTOPEN_KEY; a TLS
        # socket is TLS already (tests/test_starttls.py upgrades plain ones)
        with pytest.raises(OSError) as e6:
            s.setsockopt(socket.IPPROTO_TCP, ssa_engine.TCP_UPGRADE_TLS, b"example.com")
        assert e6.value.errno == errno.EISCONN
        assert s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_ID) > 0
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, pki.ca.pem)
        s.connect(("localhost", srv.port))
        with pytest.raises(OSError) as e7:
            s.connect(("localhost", srv.port))
        assert e7.value.errno == errno.EISCONN
        with pytest.raises(OSError) as e8:
            s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_REMOTE_HOSTNAME, "localhost")
        assert e8.value.errno == errno.EISCONN
        with pytest.raises(OSError) as e9:
            s.listen()
        assert e9.value.errno == errno.EOPNOTSUPP
        # getsockopt with buflen truncates like C getsockopt
        assert s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_PEER_IDENTITY, 5) == b"/C=US"


def test_unsupported_socket_types() -> None:
    with pytest.raises(OSError) as e:
        ssa_engine.socket(socket.AF_INET, socket.SOCK_DGRAM, IPPROTO_TLS)
    assert e.value.errno == errno.EPROTONOSUPPORT
    with pytest.raises(OSError) as e2:
        ssa_engine.socket(socket.AF_UNIX, socket.SOCK_STREAM, IPPROTO_TLS)
    assert e2.value.errno == errno.EAFNOSUPPORT


def test_key_and_chain_checks(pki) -> None:
    with ssa_engine.socket() as s:
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_CERTIFICATE_CHAIN, pki.client.cert)
        with pytest.raises(OSError) as e:
            s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_PRIVATE_KEY, pki.server.key)
        assert e.value.errno == errno.EPROTO and "does not match" in str(e.value)
    with ssa_engine.socket() as s:
        # a key with no chain before it: refused at setsockopt time
        with pytest.raises(OSError) as e2:
            s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_PRIVATE_KEY, pki.client.key.read_text())
        assert e2.value.errno == errno.EPROTO
        assert "without a TLS_CERTIFICATE_CHAIN" in str(e2.value)
    with ssa_engine.socket() as s:
        # a chain whose key never comes: refused at connect
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_CERTIFICATE_CHAIN, pki.client.cert)
        with pytest.raises(OSError) as e3:
            s.connect(("localhost", 9))
        assert e3.value.errno == errno.EPROTO
        assert "without TLS_PRIVATE_KEY" in str(e3.value)


def test_non_blocking_connect_with_selectors(pki, ssl_server) -> None:
    srv = ssl_server(server_context(pki.server))
    s = ssa_engine.socket()
    with s, selectors.DefaultSelector() as sel:
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, pki.ca.pem)
        s.setblocking(False)
        assert s.connect_ex(("localhost", srv.port)) == errno.EINPROGRESS
        # not writable while the handshake runs ...
        sel.register(s, selectors.EVENT_WRITE)
        assert sel.select(timeout=10), "never became writable"
        # ... and writable once it is done
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        assert s.connect_ex(("localhost", srv.port)) == errno.EISCONN
        s.send(b"ping")
        sel.modify(s, selectors.EVENT_READ)
        assert sel.select(timeout=10)
        assert s.recv(4) == b"ping"


def test_non_blocking_connect_failure(pki, ssl_server) -> None:
    srv = ssl_server(server_context(pki.self_signed))
    s = ssa_engine.socket()
    with s, selectors.DefaultSelector() as sel:
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.connect(("localhost", srv.port))
        sel.register(s, selectors.EVENT_WRITE)
        assert sel.select(timeout=10)
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.EPROTO
        assert b"self-signed" in s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_ERROR)


def test_not_writable_before_handshake_finishes(pki) -> None:
    from .conftest import raw_listener

    with raw_listener() as lst:  # a server that never answers the ClientHello
        s = ssa_engine.socket()
        with s:
            s.setblocking(False)
            assert s.connect_ex(("localhost", lst.getsockname()[1])) == errno.EINPROGRESS
            with selectors.DefaultSelector() as sel:
                sel.register(s, selectors.EVENT_WRITE)
                assert sel.select(timeout=0.5) == []
            assert s.connect_ex(("localhost", lst.getsockname()[1])) == errno.EALREADY
            with pytest.raises(BlockingIOError):
                s.send(b"too early")


def test_timeouts(pki, ssl_server) -> None:
    def silent(conn: ssl.SSLSocket) -> None:
        time.sleep(1.5)

    srv = ssl_server(server_context(pki.server), silent)
    s = ssa_engine.create_connection(("localhost", srv.port), cafile=pki.ca.pem)
    with s:
        s.settimeout(0.2)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            s.recv(10)
        assert time.monotonic() - t0 >= 0.15


def _server_then(pki, ssl_server, ending):  # type: ignore[no-untyped-def]
    def handler(conn: ssl.SSLSocket) -> None:
        conn.sendall(b"partial data")
        time.sleep(0.1)
        ending(conn)

    return ssl_server(server_context(pki.server), handler)


def test_truncation_is_a_reset_not_eof(pki, ssl_server) -> None:
    # the server closes TCP without close_notify
    srv = _server_then(pki, ssl_server, lambda c: socket.socket.close(c))
    with ssa_engine.create_connection(("localhost", srv.port), cafile=pki.ca.pem) as s:
        assert s.recv(100) == b"partial data"
        with pytest.raises(ConnectionResetError) as e:
            while s.recv(100):
                pass
        assert "without TLS close_notify" in str(e.value)
        with pytest.raises(OSError) as again:
            s.recv(100)
        assert again.value.errno == errno.EBADFD


def test_tcp_reset_is_a_reset(pki, ssl_server) -> None:
    import struct

    def reset(conn: ssl.SSLSocket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        socket.socket.close(conn)

    srv = _server_then(pki, ssl_server, reset)
    with ssa_engine.create_connection(("localhost", srv.port), cafile=pki.ca.pem) as s:
        f = s.makefile("rb")
        assert f.read(12) == b"partial data"
        with pytest.raises(ConnectionResetError):
            f.read()
        f.close()


def test_clean_close_notify_is_eof(pki, ssl_server) -> None:
    srv = _server_then(pki, ssl_server, lambda c: c.unwrap())
    with ssa_engine.create_connection(("localhost", srv.port), cafile=pki.ca.pem) as s:
        f = s.makefile("rb")
        assert f.read() == b"partial data"
        f.close()
        # after close_notify we may still send (TLS 1.3 half-close)
        assert s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_ERROR) == b""


def test_engine_not_running(tmp_path) -> None:
    missing = tmp_path / "nowhere.sock"
    with pytest.raises(OSError) as e:
        ssa_engine.TLSSocket(engine_socket=missing)
    assert e.value.errno in (errno.ENOENT, errno.ECONNREFUSED)
    assert str(missing) in str(e.value) and "ssa-engine serve" in str(e.value)
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(stale))
    with pytest.raises(ConnectionRefusedError) as e2:
        ssa_engine.TLSSocket(engine_socket=stale)
    assert "not running" in str(e2.value)


def test_asyncio_open_connection(pki, ssl_server) -> None:
    srv = ssl_server(server_context(pki.server))

    async def main() -> bytes:
        reader, writer = await ssa_engine.open_connection("localhost", srv.port, cafile=pki.ca.pem)
        assert writer.get_extra_info("peername")[1] == srv.port
        writer.write(b"hello asyncio")
        await writer.drain()
        writer.write_eof()
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        return data

    assert asyncio.run(main()) == b"hello asyncio"


def test_asyncio_truncation_raises(pki, ssl_server) -> None:
    srv = _server_then(pki, ssl_server, lambda c: socket.socket.close(c))

    async def main() -> None:
        reader, writer = await ssa_engine.open_connection("localhost", srv.port, cafile=pki.ca.pem)
        try:
            assert await reader.readexactly(12) == b"partial data"
            with pytest.raises(ConnectionResetError):
                await reader.read()
        finally:
            writer.close()

    asyncio.run(main())


def test_asyncio_refusal(pki, ssl_server) -> None:
    srv = ssl_server(server_context(pki.expired))

    async def main() -> None:
        with pytest.raises(OSError) as e:
            await ssa_engine.open_connection("localhost", srv.port, cafile=pki.ca.pem)
        assert e.value.errno == errno.EPROTO and "expired" in str(e.value)

    asyncio.run(main())


def test_batched_options_raise_the_first_error_in_order(pki) -> None:
    with ssa_engine.socket() as s:
        with pytest.raises(OSError) as e:
            s.ssa_setsockopts([
                (IPPROTO_TLS, ssa_engine.TLS_REMOTE_HOSTNAME, "example.com"),
                (IPPROTO_TLS, ssa_engine.TLS_VERSION_MIN, 0x0301),  # EINVAL
                (IPPROTO_TLS, ssa_engine.TLS_ALPN, "h2"),
            ])
        assert e.value.errno == errno.EINVAL
        # the options around the failing one were applied, as with separate calls
        assert s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_REMOTE_HOSTNAME) == b"example.com"
        assert s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_ALPN) == b"h2"
