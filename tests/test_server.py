"""Server TLS sockets through the engine, against curl, openssl s_client and ssl."""

from __future__ import annotations

import asyncio
import errno
import select
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

import ssa_engine
from ssa_engine import IPPROTO_TLS

from .pki import PKI

pytestmark = pytest.mark.usefixtures("engine")


class Server:
    """An application-side TLS server on TLSSocket: answers each line with 'NAME:line'."""

    def __init__(self, listener: ssa_engine.TLSSocket, name: str = "srv") -> None:
        self.listener = listener
        self.port = listener.getsockname()[1]
        self.name = name
        self.accepted: list[dict[str, object]] = []
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, addr = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, addr), daemon=True).start()

    def _serve(self, conn: ssa_engine.TLSSocket, addr: object) -> None:
        with conn:
            try:
                info = {
                    "addr": addr,
                    "sni": conn.getsockopt(IPPROTO_TLS, ssa_engine.TLS_HOSTNAME),
                    "identity": conn.getsockopt(IPPROTO_TLS, ssa_engine.TLS_PEER_IDENTITY),
                    "alpn": conn.getsockopt(IPPROTO_TLS, ssa_engine.TLS_ALPN),
                }
                self.accepted.append(info)
                f = conn.makefile("rwb")
                line = f.readline()  # one request line, one answer, then close
                f.write(self.name.encode() + b":" + line)
                f.flush()
                f.close()
                conn.shutdown(socket.SHUT_WR)
            except OSError as exc:
                self.errors.append(exc)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def serve(pki: PKI) -> Iterator:  # type: ignore[type-arg]
    servers: list[Server] = []

    def start(pairs=None, *, hostname=None, peer_auth=None, cafile=None, alpn=None,  # type: ignore[no-untyped-def]
              name="srv", host="127.0.0.1"):
        pairs = pairs or [pki.server]
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        lst = ssa_engine.socket(fam, socket.SOCK_STREAM, IPPROTO_TLS)
        for pair in pairs:
            lst.setsockopt(IPPROTO_TLS, ssa_engine.TLS_CERTIFICATE_CHAIN, pair.chain)
            lst.setsockopt(IPPROTO_TLS, ssa_engine.TLS_PRIVATE_KEY, pair.key)
        if hostname:
            lst.setsockopt(IPPROTO_TLS, ssa_engine.TLS_HOSTNAME, hostname)
        if cafile:
            lst.setsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, cafile)
        if peer_auth is not None:
            lst.setsockopt(IPPROTO_TLS, ssa_engine.TLS_REQUEST_PEER_AUTH, peer_auth)
        if alpn:
            lst.setsockopt(IPPROTO_TLS, ssa_engine.TLS_ALPN, ",".join(alpn))
        lst.bind((host, 0))
        lst.listen(64)
        srv = Server(lst, name)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close()


@pytest.fixture(scope="module")
def sni_pki(pki: PKI) -> dict[str, object]:
    ca = pki.ca
    return {
        "alpha": ca.issue("alpha", ["alpha.test"]),
        "beta": ca.issue("beta", ["beta.test"]),
        "wild": ca.issue("wild", ["*.wild.test"]),
        "alpha_rsa": ca.issue("alpha-rsa", ["alpha.test"], kind="rsa"),
    }


def s_client(port: int, ca, *args: str, data: bytes = b"") -> str:  # type: ignore[no-untyped-def]
    res = subprocess.run(
        ["openssl", "s_client", "-brief", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca),
         "-verify_return_error", *args],
        input=data or b"Q\n", capture_output=True, timeout=30,
    )
    return res.stdout.decode(errors="replace") + res.stderr.decode(errors="replace")


def curl(port: int, name: str, ca) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    # curl verifies the certificate against the name: success means the
    # engine picked the right one
    return subprocess.run(
        ["curl", "-sS", "--http0.9", "--max-time", "20", "--cacert", str(ca), "--resolve",
         f"{name}:{port}:127.0.0.1", "-d", "", f"https://{name}:{port}/"],
        capture_output=True, text=True, timeout=30,
    )


def test_sni_selects_among_three(pki, serve, sni_pki) -> None:  # type: ignore[no-untyped-def]
    srv = serve([sni_pki["alpha"], sni_pki["beta"], sni_pki["wild"]])
    for name in ("alpha.test", "beta.test", "x.wild.test"):
        res = curl(srv.port, name, pki.ca.pem)
        assert res.returncode == 0, (name, res.stderr)
    # no SNI, and an unknown name: the first configured certificate
    out = s_client(srv.port, pki.ca.pem, "-noservername")
    assert "CN = alpha.test" in out and "Verification: OK" in out
    out = s_client(srv.port, pki.ca.pem, "-servername", "unknown.test")
    assert "CN = alpha.test" in out
    # a wildcard matches one label only
    out = s_client(srv.port, pki.ca.pem, "-servername", "a.b.wild.test")
    assert "CN = alpha.test" in out
    deadline = time.monotonic() + 5
    while len(srv.accepted) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert {a["sni"] for a in srv.accepted} >= {b"alpha.test", b"beta.test", b"x.wild.test"}


def test_tls_hostname_refuses_other_names(pki, serve, sni_pki) -> None:  # type: ignore[no-untyped-def]
    srv = serve([sni_pki["beta"]], hostname="beta.test")
    ok = s_client(srv.port, pki.ca.pem, "-servername", "beta.test")
    assert "CN = beta.test" in ok and "Verification: OK" in ok
    refused = s_client(srv.port, pki.ca.pem, "-servername", "alpha.test")
    assert "unrecognized name" in refused.lower() or "unrecognized_name" in refused.lower()
    assert srv.listener.getsockopt(IPPROTO_TLS, ssa_engine.TLS_HOSTNAME) == b"beta.test"


def test_rsa_and_ecdsa_for_one_name(pki, serve, sni_pki) -> None:  # type: ignore[no-untyped-def]
    srv = serve([sni_pki["alpha"], sni_pki["alpha_rsa"]])
    ec_out = s_client(srv.port, pki.ca.pem, "-servername", "alpha.test", "-sigalgs",
                      "ecdsa_secp256r1_sha256")
    rsa_out = s_client(srv.port, pki.ca.pem, "-servername", "alpha.test", "-sigalgs",
                       "rsa_pss_rsae_sha256")
    assert "Verification: OK" in ec_out and "Verification: OK" in rsa_out
    assert "Signature type: ECDSA" in ec_out, ec_out
    assert "Signature type: RSA-PSS" in rsa_out, rsa_out


def test_echo_round_trip_with_stdlib_client(pki, serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve()
    ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
    with socket.create_connection(("127.0.0.1", srv.port)) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as c:
        c.sendall(b"hello\n")
        assert c.recv(100) == b"srv:hello\n"
        local = c.getsockname()
    deadline = time.monotonic() + 5
    while not srv.accepted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.accepted[0]["addr"] == local  # getpeername() of the accepted socket
    assert srv.accepted[0]["identity"] == b""


def test_listener_readable_only_when_accept_would_not_block(pki) -> None:  # type: ignore[no-untyped-def]
    lst = ssa_engine.create_server(("127.0.0.1", 0), certfile=pki.server.chain,
                                   keyfile=pki.server.key)
    with lst:
        port = lst.getsockname()[1]
        assert port > 0
        assert select.select([lst], [], [], 0.2)[0] == []
        lst.setblocking(False)
        with pytest.raises(BlockingIOError):
            lst.accept()
        ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost"):
            assert select.select([lst], [], [], 10)[0] == [lst]
            conn, addr = lst.accept()
            with conn:
                assert conn.getsockname()[1] == port
                assert select.select([lst], [], [], 0.1)[0] == []


def test_backlog_bounds_connections_waiting_for_accept(pki) -> None:  # type: ignore[no-untyped-def]
    """An application that does not accept() stops the engine from taking more
    connections than its backlog; once it accepts, the waiting ones go through.

    (As with TCP's backlog, handshakes already running when the backlog fills
    may still finish: the first clients here come one at a time.)
    """
    backlog = 3
    lst = ssa_engine.create_server(("127.0.0.1", 0), certfile=pki.server.chain,
                                   keyfile=pki.server.key, backlog=backlog)
    ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
    clients: list[ssl.SSLSocket] = []

    def handshake(port: int, done: threading.Event) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=30)
        try:
            clients.append(ctx.wrap_socket(raw, server_hostname="localhost"))
            done.set()
        except OSError:
            raw.close()

    with lst:
        port = lst.getsockname()[1]
        for _ in range(backlog):
            done = threading.Event()
            handshake(port, done)
            time.sleep(0.2)  # the engine offers it before the next one comes
        waiting = []
        for _ in range(2):
            done = threading.Event()
            threading.Thread(target=handshake, args=(port, done), daemon=True).start()
            waiting.append(done)
        # the backlog is full: neither is even handshaken
        assert not waiting[0].wait(1.0) and not waiting[1].is_set()
        accepted = [lst.accept()[0]]
        # room again: the engine takes what the kernel queued meanwhile
        deadline = time.monotonic() + 10
        while not any(w.is_set() for w in waiting) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(w.is_set() for w in waiting)
        lst.settimeout(10)
        for _ in range(backlog + 1):
            accepted.append(lst.accept()[0])
        assert all(w.is_set() for w in waiting)
        assert len(accepted) == backlog + 2
        for conn in accepted:
            conn.close()
    for c in clients:
        c.close()


def test_an_application_far_behind_still_accepts_every_connection(pki, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """More connections wait than the listener's notification socket can hold
    (one message per connection; a small socket buffer here, so that a few
    dozen are enough): none is lost, accept() gets them all."""
    from ssa_engine.api import tlssocket

    monkeypatch.setattr(tlssocket, "PAIR_BUFFER", 4608)  # the kernel doubles it: ~12 messages
    n = 60
    lst = ssa_engine.create_server(("127.0.0.1", 0), certfile=pki.server.chain,
                                   keyfile=pki.server.key, backlog=1000)
    port = lst.getsockname()[1]
    ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
    clients: list[ssl.SSLSocket] = []
    lock = threading.Lock()

    def connect_some(count: int) -> None:
        for _ in range(count):
            raw = socket.create_connection(("127.0.0.1", port), timeout=30)
            tls = ctx.wrap_socket(raw, server_hostname="localhost")
            with lock:
                clients.append(tls)

    with lst:
        threads = [threading.Thread(target=connect_some, args=(n // 4,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(clients) == n
        lst.settimeout(10)
        accepted = []
        for _ in range(n):
            conn, _addr = lst.accept()
            accepted.append(conn)
        lst.setblocking(False)
        with pytest.raises(BlockingIOError):
            lst.accept()
        # each accepted socket is a live stream to its client
        clients[-1].sendall(b"last")
        ends = {conn.getpeername()[1]: conn for conn in accepted}
        last = ends[clients[-1].getsockname()[1]]
        last.settimeout(10)
        assert last.recv(4) == b"last"
        for conn in accepted:
            conn.close()
    for c in clients:
        c.close()


def test_certificate_errors_at_setsockopt(pki, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with ssa_engine.socket() as s:
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_CERTIFICATE_CHAIN, pki.server.chain)
        with pytest.raises(OSError) as mismatch:
            s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_PRIVATE_KEY, pki.client.key)
        assert mismatch.value.errno == errno.EPROTO
    with ssa_engine.socket() as s:
        with pytest.raises(OSError) as lone_key:
            s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_PRIVATE_KEY, pki.server.key)
        assert lone_key.value.errno == errno.EPROTO
        unreadable = tmp_path / "secret.pem"
        with pytest.raises(OSError) as missing:
            s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_CERTIFICATE_CHAIN, unreadable)
        assert missing.value.errno == errno.EINVAL and "secret.pem" in str(missing.value)
        bad = tmp_path / "bad.pem"
        bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        with pytest.raises(OSError) as garbage:
            s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_CERTIFICATE_CHAIN, bad)
        assert garbage.value.errno == errno.EINVAL
        s.bind(("127.0.0.1", 0))
        with pytest.raises(OSError) as no_cert:
            s.listen()
        assert no_cert.value.errno == errno.EPROTO and "needs a certificate" in str(no_cert.value)


def test_client_certificates_required(pki, serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve(cafile=pki.ca.pem, peer_auth=1)
    with ssa_engine.create_connection(("localhost", srv.port), cafile=pki.ca.pem,
                                      certfile=pki.client.cert, keyfile=pki.client.key) as c:
        c.sendall(b"me\n")
        assert c.recv(100) == b"srv:me\n"
    assert srv.accepted[0]["identity"] == b"/C=US/O=Example/CN=app-client"
    # without a certificate: refused in the handshake, never accepted
    ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
    with socket.create_connection(("127.0.0.1", srv.port)) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):
            with ctx.wrap_socket(raw, server_hostname="localhost") as c:
                c.sendall(b"anonymous\n")
                c.recv(100)
    time.sleep(0.3)
    assert len(srv.accepted) == 1


def test_client_certificates_requested(pki, serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve(cafile=pki.ca.pem, peer_auth=2)
    with ssa_engine.create_connection(("localhost", srv.port), cafile=pki.ca.pem) as c:
        c.sendall(b"anon\n")
        assert c.recv(100) == b"srv:anon\n"
    with ssa_engine.create_connection(("localhost", srv.port), cafile=pki.ca.pem,
                                      certfile=pki.client.cert, keyfile=pki.client.key) as c:
        c.sendall(b"me\n")
        assert c.recv(100) == b"srv:me\n"
    ids = sorted(a["identity"] for a in srv.accepted)  # type: ignore[type-var]
    assert ids == [b"", b"/C=US/O=Example/CN=app-client"]


def test_alpn_on_the_server(pki, serve) -> None:  # type: ignore[no-untyped-def]
    srv = serve(alpn=["h2", "http/1.1"])
    with ssa_engine.create_connection(("localhost", srv.port), cafile=pki.ca.pem,
                                      alpn=["http/1.1"]) as c:
        assert c.getsockopt(IPPROTO_TLS, ssa_engine.TLS_ALPN) == b"http/1.1"
        c.sendall(b"x\n")
        c.recv(10)
    assert srv.accepted[0]["alpn"] == b"http/1.1"
    ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
    ctx.set_alpn_protocols(["spdy/1"])
    with socket.create_connection(("127.0.0.1", srv.port)) as raw:
        with pytest.raises(ssl.SSLError) as e:
            ctx.wrap_socket(raw, server_hostname="localhost")
    assert "NO APPLICATION PROTOCOL" in str(e.value).upper().replace("_", " ")


def test_bad_clients_never_reach_accept(pki, serve, engine) -> None:  # type: ignore[no-untyped-def]
    srv = serve()
    port = srv.port
    bad: list[socket.socket] = []
    garbage = socket.create_connection(("127.0.0.1", port))
    garbage.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)))
    stall = socket.create_connection(("127.0.0.1", port))  # says nothing at all
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc")  # a ClientHello cut short
    bad += [garbage, stall, half]
    reset = socket.create_connection(("127.0.0.1", port))
    import struct

    reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reset.close()
    ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
    errors: list[BaseException] = []

    def good(i: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=60) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost") as c:
                c.sendall(f"{i}\n".encode())
                assert c.recv(100) == f"srv:{i}\n".encode()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=good, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    for s in bad:
        s.close()
    assert not errors, errors[:3]
    assert len(srv.accepted) == 200
    # each refused handshake is logged with its reason
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = engine.log.read_text()
        if log.count(f"listener 127.0.0.1:{port}: refused") >= 3:
            break
        time.sleep(0.1)
    assert f"listener 127.0.0.1:{port}: refused" in log
    assert "handshake failed" in log


def test_asyncio_start_server(pki) -> None:  # type: ignore[no-untyped-def]
    async def main() -> bytes:
        async def handle(reader, writer) -> None:  # type: ignore[no-untyped-def]
            line = await reader.readline()
            writer.write(b"async:" + line)
            await writer.drain()
            writer.close()

        server = await ssa_engine.start_server(handle, "127.0.0.1", 0,
                                               certfile=pki.server.chain, keyfile=pki.server.key)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await ssa_engine.open_connection("localhost", port,
                                                              cafile=pki.ca.pem)
            writer.write(b"ping\n")
            await writer.drain()
            answer = await reader.readline()
            writer.close()
            await writer.wait_closed()
            return answer

    assert asyncio.run(main()) == b"async:ping\n"


def test_administrator_certificates_from_the_store(pki, sni_pki, engine_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import sys

    state = tmp_path / "state"
    env = dict(os.environ, SSA_STATE_DIR=str(state))
    for name, pair in (("alpha", sni_pki["alpha"]), ("beta", sni_pki["beta"])):
        res = subprocess.run([sys.executable, "-m", "ssa_admin", "cert", "import", name,
                              "--cert", str(pair.cert), "--key", str(pair.key)],
                             capture_output=True, text=True, timeout=60, env=env)
        assert res.returncode == 0, res.stderr
    eng = engine_factory("--state-dir", str(state), "--certificate", "alpha",
                         "--certificate", "beta")
    lst = ssa_engine.TLSSocket(engine_socket=eng.socket)
    lst.bind(("127.0.0.1", 0))
    lst.listen()  # the program brings no certificate: the administrator's are served
    srv = Server(lst)
    try:
        assert curl(srv.port, "beta.test", pki.ca.pem).returncode == 0
        assert "CN = alpha.test" in s_client(srv.port, pki.ca.pem, "-noservername")
    finally:
        srv.close()
    # a name the store does not have is a clear refusal at listen()
    eng2 = engine_factory("--state-dir", str(state), "--certificate", "gamma")
    with ssa_engine.TLSSocket(engine_socket=eng2.socket) as lst2:
        with pytest.raises(OSError) as e:
            lst2.listen()
        assert e.value.errno == errno.EPROTO and "'gamma'" in str(e.value)


def _pha_listener(pki):  # type: ignore[no-untyped-def]
    lst = ssa_engine.socket()
    lst.setsockopt(IPPROTO_TLS, ssa_engine.TLS_CERTIFICATE_CHAIN, pki.server.chain)
    lst.setsockopt(IPPROTO_TLS, ssa_engine.TLS_PRIVATE_KEY, pki.server.key)
    # the listener trusts the client CA but asks for no certificate in the handshake
    lst.setsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, pki.ca.pem)
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    return lst


def _s_client(port: int, pki, *extra: str) -> subprocess.Popen[bytes]:  # type: ignore[no-untyped-def]
    return subprocess.Popen(
        ["openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{port}", "-CAfile",
         str(pki.ca.pem), "-verify_return_error", *extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _stop(client: subprocess.Popen[bytes]) -> None:
    client.kill()
    client.wait()
    for f in (client.stdin, client.stdout, client.stderr):
        if f:
            f.close()


@pytest.mark.parametrize("with_cert", [True, False])
def test_post_handshake_authentication(pki, with_cert: bool) -> None:  # type: ignore[no-untyped-def]
    lst = _pha_listener(pki)
    cert = ["-cert", str(pki.client.cert), "-key", str(pki.client.key)] if with_cert else []
    client = _s_client(lst.getsockname()[1], pki, "-enable_pha", *cert)
    try:
        with lst:
            conn, _ = lst.accept()
            with conn:
                assert conn.getsockopt(IPPROTO_TLS, ssa_engine.TLS_PEER_IDENTITY) == b""
                if with_cert:
                    conn.setsockopt(IPPROTO_TLS, ssa_engine.TLS_REQUEST_PEER_AUTH, 1)
                    assert conn.getsockopt(IPPROTO_TLS, ssa_engine.TLS_PEER_IDENTITY) == (
                        b"/C=US/O=Example/CN=app-client")
                else:  # requested, not required: the connection goes on anonymously
                    conn.setsockopt(IPPROTO_TLS, ssa_engine.TLS_REQUEST_PEER_AUTH, 2)
                    assert conn.getsockopt(IPPROTO_TLS, ssa_engine.TLS_PEER_IDENTITY) == b""
                conn.sendall(b"still here\n")
                assert client.stdout is not None
                assert client.stdout.readline() == b"still here\n"
    finally:
        _stop(client)


def test_post_handshake_authentication_needs_tls13(pki) -> None:  # type: ignore[no-untyped-def]
    lst = _pha_listener(pki)
    client = _s_client(lst.getsockname()[1], pki, "-tls1_2")
    try:
        with lst:
            conn, _ = lst.accept()
            with conn, pytest.raises(OSError) as e:
                conn.setsockopt(IPPROTO_TLS, ssa_engine.TLS_REQUEST_PEER_AUTH, 1)
            assert e.value.errno == errno.EOPNOTSUPP
    finally:
        _stop(client)


def test_silent_client_is_dropped_at_the_handshake_timeout(pki, serve, engine) -> None:  # type: ignore[no-untyped-def]
    srv = serve()
    with socket.create_connection(("127.0.0.1", srv.port)) as silent:
        silent.settimeout(20)
        t0 = time.monotonic()
        assert silent.recv(10) == b""  # the engine gave up on it (3 s in the tests)
        assert 2.0 < time.monotonic() - t0 < 15
    assert srv.accepted == []
    assert "handshake timeout after 3 s" in engine.log.read_text()
