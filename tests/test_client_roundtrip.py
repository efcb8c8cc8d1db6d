"""Client TLS sockets through the engine against real servers."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import threading
import time

import pytest

import ssa_engine
from ssa_engine import IPPROTO_TLS

pytestmark = pytest.mark.usefixtures("engine")


def _connect(pki, port: int, host: str = "localhost", **kw):  # type: ignore[no-untyped-def]
    return ssa_engine.create_connection((host, port), timeout=20, cafile=pki.ca.pem, **kw)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_one_byte_round_trip_stdlib_server(pki, ssl_server, version) -> None:
    srv = ssl_server(pki_server_ctx := _ctx(pki, version))
    assert pki_server_ctx.maximum_version == version
    with _connect(pki, srv.port) as s:
        s.sendall(b"x")
        assert s.recv(1) == b"x"
        want = 0x0303 if version == ssl.TLSVersion.TLSv1_2 else 0x0304
        assert s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_VERSION_CONN) == want
        assert s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_PEER_IDENTITY) == (
            b"/C=US/O=Example/CN=localhost")
        cipher = s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_CHOSEN_CIPHER)
        assert b"GCM" in cipher or b"CHACHA20" in cipher
        s.shutdown(socket.SHUT_WR)
        assert s.recv(10) == b""  # the server's close_notify: a clean EOF
    assert not srv.errors


def _ctx(pki, version=None, **kw):  # type: ignore[no-untyped-def]
    from .conftest import server_context

    return server_context(pki.server, version=version, **kw)


def test_64_mib_echo_checksum(pki, ssl_server) -> None:
    srv = ssl_server(_ctx(pki))
    size = 64 * 1024 * 1024
    payload = os.urandom(1024 * 1024)
    sent = hashlib.sha256()
    got = hashlib.sha256()
    received = 0
    with _connect(pki, srv.port) as s:
        def writer() -> None:
            for _ in range(size // len(payload)):
                s.sendall(payload)
                sent.update(payload)
            s.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=writer)
        t.start()
        buf = bytearray(256 * 1024)
        while True:
            n = s.recv_into(buf)
            if not n:
                break
            got.update(memoryview(buf)[:n])
            received += n
        t.join()
    assert received == size
    assert got.hexdigest() == sent.hexdigest()


def test_64_mib_to_openssl_s_server(pki, openssl_server) -> None:
    srv = openssl_server(pki.server, "-tls1_3")
    size = 64 * 1024 * 1024
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    with _connect(pki, srv.port) as s:
        for _ in range(size // len(block)):
            s.sendall(block)
            digest.update(block)
        s.shutdown(socket.SHUT_WR)
        from .conftest import wait_for

        wait_for(lambda: srv.out.stat().st_size >= size, 30, "s_server to write the stream")
    data = srv.out.read_bytes()
    assert len(data) == size
    assert hashlib.sha256(data).hexdigest() == digest.hexdigest()


def test_openssl_s_server_one_byte_each_way(pki, openssl_server) -> None:
    srv = openssl_server(pki.server, "-tls1_2")
    with _connect(pki, srv.port) as s:
        s.sendall(b"A")
        assert srv.proc.stdin is not None
        srv.proc.stdin.write(b"B")
        srv.proc.stdin.flush()
        assert s.recv(1) == b"B"
        assert s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_VERSION_CONN) == ssa_engine.TLS_1_2
        from .conftest import wait_for

        wait_for(lambda: srv.out.read_bytes().endswith(b"A"), 10, "s_server to get the byte")


def test_many_concurrent_clients(pki, ssl_server) -> None:
    srv = ssl_server(_ctx(pki))
    results: list[bytes] = []
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            with _connect(pki, srv.port) as s:
                msg = f"client {i} ".encode() * 100
                s.sendall(msg)
                s.shutdown(socket.SHUT_WR)
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
                results.append(b"".join(chunks) if b"".join(chunks) == msg else b"MISMATCH")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert len(results) == 64 and b"MISMATCH" not in results


def test_connect_by_name_and_ipv6(pki, ssl_server) -> None:
    srv6 = ssl_server(_ctx(pki), host="::1")
    s = ssa_engine.socket(socket.AF_INET6, socket.SOCK_STREAM, IPPROTO_TLS)
    with s:
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_REMOTE_HOSTNAME, b"localhost\x00")
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, str(pki.ca.pem))
        s.connect(("::1", srv6.port))
        assert s.getpeername()[:2] == ("::1", srv6.port)
        assert s.family == socket.AF_INET6 and s.proto == IPPROTO_TLS
        s.sendall(b"six")
        assert s.recv(3) == b"six"


def test_alpn_negotiated(pki, ssl_server) -> None:
    srv = ssl_server(_ctx(pki, alpn=["h2", "http/1.1"]))
    with _connect(pki, srv.port, alpn=["h2", "http/1.1"]) as s:
        assert s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_ALPN) == b"h2"


def test_client_certificate(pki, ssl_server) -> None:
    srv = ssl_server(_ctx(pki, client_ca=pki.ca.pem))
    with _connect(pki, srv.port, certfile=pki.client.cert, keyfile=pki.client.key) as s:
        s.sendall(b"hi")
        assert s.recv(2) == b"hi"
    deadline = time.monotonic() + 5
    while not srv.peer_certs and time.monotonic() < deadline:
        time.sleep(0.01)
    subject = dict(x[0] for x in srv.peer_certs[0]["subject"])
    assert subject["commonName"] == "app-client"


def test_peer_certificate_chain_is_pem(pki, ssl_server) -> None:
    srv = ssl_server(_ctx(pki))
    with _connect(pki, srv.port) as s:
        chain = s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_PEER_CERTIFICATE_CHAIN)
    assert chain.count(b"-----BEGIN CERTIFICATE-----") == 2  # leaf + the trusted root
    assert chain.startswith(pki.server.cert.read_bytes()[:64])


def test_disable_cipher_changes_choice(pki, ssl_server) -> None:
    srv = ssl_server(_ctx(pki))
    s = ssa_engine.socket()
    with s:
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, pki.ca.pem.read_bytes())
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_DISABLE_CIPHER, "TLS_AES_128_GCM_SHA256")
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_DISABLE_CIPHER, "TLS_CHACHA20_POLY1305_SHA256")
        trusted = s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_CIPHERS)
        assert b"TLS_AES_128_GCM_SHA256" not in trusted and b"TLS_AES_256_GCM_SHA384" in trusted
        s.connect(("localhost", srv.port))
        assert s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_CHOSEN_CIPHER) == b"TLS_AES_256_GCM_SHA384"


def test_tcp_options_reach_the_outside_socket(pki, ssl_server) -> None:
    srv = ssl_server(_ctx(pki))
    s = ssa_engine.socket()
    with s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, pki.ca.pem)
        s.connect(("localhost", srv.port))
        assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
        assert s.getsockname()[0] == "127.0.0.1" and s.getsockname()[1] > 0


def test_install_patches_the_stdlib_socket(pki, ssl_server) -> None:
    srv = ssl_server(_ctx(pki))
    ssa_engine.install()
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TLS)  # type: ignore[attr-defined]
        assert isinstance(s, ssa_engine.TLSSocket) and isinstance(s, socket.socket)
        plain = socket.socket()
        assert type(plain).__name__ == "socket" and isinstance(plain, socket.socket)
        plain.close()
        with s:
            s.setsockopt(socket.IPPROTO_TLS, socket.TLS_TRUSTED_PEER_CERTIFICATES, pki.ca.pem)  # type: ignore[attr-defined]
            s.connect(("localhost", srv.port))
            s.sendall(b"ok")
            assert s.recv(2) == b"ok"
    finally:
        ssa_engine.uninstall()
    with socket.socket() as after:
        assert not isinstance(after, ssa_engine.TLSSocket)
