"""The ported server examples work against real peers: curl, openssl s_client and s_server."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO, server_context
from .pki import PKI

pytestmark = pytest.mark.usefixtures("engine")

EXAMPLES = REPO / "examples"
# bytes both ways, every value, larger than one TLS record (and than one read)
CLIENT_DATA = bytes(range(256)) * 96 + b"from the client\n"
SERVER_DATA = bytes(reversed(range(256))) * 80 + b"from the server\n"


def read_exactly(stream, size: int, timeout: float = 10.0) -> bytes:  # type: ignore[no-untyped-def]
    """Read ``size`` bytes from a child's pipe, or what came before EOF or the deadline."""
    fd = stream.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


def read_line(stream, timeout: float = 10.0) -> bytes:  # type: ignore[no-untyped-def]
    fd = stream.fileno()
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            break
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return line


@contextlib.contextmanager
def child(args: list[str], env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A child process with all three pipes; stopped (SIGINT, then kill) and reaped on exit."""
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env or dict(os.environ), cwd=REPO)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def port_from(line: bytes) -> int:
    """The port in 'Serving DIR on HOST port N ...' or 'netcat: listening on HOST port N'."""
    words = line.decode().split()
    assert "port" in words, line
    return int(words[words.index("port") + 1])


# -- the HTTPS file server ---------------------------------------------------------
@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "sub dir").mkdir(parents=True)
    (root / "blob.bin").write_bytes(os.urandom(300_000))  # many TLS records
    (root / "index.txt").write_text("hello over TLS\n")
    (root / "sub dir" / "empty.txt").write_bytes(b"")
    return root


def curl(url: str, ca: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", "--cacert", str(ca), *args, url],
                          capture_output=True, timeout=15)


def https_server(site: Path, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return child([sys.executable, str(EXAMPLES / "https_server.py"), "--bind", "127.0.0.1",
                  "--port", "0", "--directory", str(site), *args], env)


def test_https_server_serves_files_to_curl(pki: PKI, site: Path, tmp_path: Path) -> None:
    with https_server(site, "--cert", str(pki.server.chain), "--key", str(pki.server.key)) as srv:
        line = read_line(srv.stdout)
        port = port_from(line)
        base = f"https://localhost:{port}"
        out = tmp_path / "blob.out"
        res = curl(f"{base}/blob.bin", pki.ca.pem, "-o", str(out))
        assert res.returncode == 0, res.stderr
        assert out.read_bytes() == (site / "blob.bin").read_bytes()  # byte for byte
        assert curl(f"{base}/index.txt", pki.ca.pem).stdout == b"hello over TLS\n"
        empty = curl(f"{base}/sub%20dir/empty.txt", pki.ca.pem, "-w", "%{http_code}")
        assert empty.stdout == b"200"
        missing = curl(f"{base}/no-such-file", pki.ca.pem, "-o", os.devnull,
                       "-w", "%{http_code}")
        assert missing.returncode == 0 and missing.stdout == b"404"
        listing = curl(f"{base}/", pki.ca.pem)
        assert b"blob.bin" in listing.stdout and b"sub%20dir/" in listing.stdout
        # by address too (the certificate names 127.0.0.1), two requests in one run
        twice = curl(f"https://127.0.0.1:{port}/index.txt", pki.ca.pem, "--http1.1",
                     f"https://127.0.0.1:{port}/index.txt")
        assert twice.stdout == b"hello over TLS\n" * 2, twice.stderr
        # a client that does not trust the certificate never gets a page
        untrusting = subprocess.run(["curl", "-sS", "--max-time", "10", f"{base}/index.txt"],
                                    capture_output=True, timeout=15)
        assert untrusting.returncode == 60 and untrusting.stdout == b""
        srv.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        assert srv.wait(10) == 0
        log = srv.stderr.read().decode()
    assert '"GET /blob.bin HTTP/1.1" 200' in log
    assert '"GET /no-such-file HTTP/1.1" 404' in log
    assert log.count('"GET /index.txt HTTP/1.1" 200') == 3


def test_https_server_serves_the_administrators_certificate(
        pki: PKI, site: Path, tmp_path: Path, engine_factory) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    env = dict(os.environ, SSA_STATE_DIR=str(state))
    imported = subprocess.run([sys.executable, "-m", "ssa_admin", "cert", "import", "www",
                               "--cert", str(pki.server.cert), "--key", str(pki.server.key)],
                              capture_output=True, text=True, timeout=30, env=env)
    assert imported.returncode == 0, imported.stderr
    eng = engine_factory("--state-dir", str(state), "--certificate", "www")
    with https_server(site, env=dict(os.environ, SSA_ENGINE_SOCKET=str(eng.socket))) as srv:
        port = port_from(read_line(srv.stdout))
        res = curl(f"https://localhost:{port}/index.txt", pki.ca.pem)
        assert res.returncode == 0, res.stderr
        assert res.stdout == b"hello over TLS\n"


def test_https_server_reports_certificate_problems(pki: PKI, site: Path) -> None:
    with https_server(site, "--cert", str(pki.server.chain), "--key", str(pki.client.key)) as srv:
        assert srv.wait(15) == 1
        err = srv.stderr.read().decode()
    assert "TLS_PRIVATE_KEY" in err and "does not match" in err
    # no --cert, and the session engine has no administrator's certificate to serve
    with https_server(site) as srv:
        assert srv.wait(15) == 1
        err = srv.stderr.read().decode()
    assert "needs a certificate" in err


# -- netcat ------------------------------------------------------------------------------
def netcat(*args: str):  # type: ignore[no-untyped-def]
    return child([sys.executable, str(EXAMPLES / "netcat.py"), *args])


@pytest.mark.parametrize("bind", ["127.0.0.1", "::1"])
def test_netcat_server_with_s_client(pki: PKI, bind: str) -> None:
    with netcat("-l", "0", "--bind", bind, "--cert", str(pki.server.chain),
                "--key", str(pki.server.key)) as nc:
        port = port_from(read_line(nc.stderr))
        # a client that never completes a handshake is not the one netcat accepts
        with socket.create_connection((bind, port)) as garbage:
            garbage.sendall(b"GET / HTTP/1.0\r\n\r\n")
            address = f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"
            with child(["openssl", "s_client", "-quiet", "-connect", address,
                        "-servername", "localhost", "-CAfile", str(pki.ca.pem),
                        "-verify_return_error"]) as sc:
                sc.stdin.write(CLIENT_DATA)
                sc.stdin.flush()
                nc.stdin.write(SERVER_DATA)
                nc.stdin.flush()
                assert read_exactly(nc.stdout, len(CLIENT_DATA)) == CLIENT_DATA
                assert read_exactly(sc.stdout, len(SERVER_DATA)) == SERVER_DATA
                nc.stdin.close()  # netcat's half-close: s_client sees close_notify and quits
                assert sc.wait(10) == 0
                assert b"verify return:1" in sc.stderr.read()
        assert nc.wait(10) == 0  # s_client closed with close_notify: a clean end
        assert nc.stdout.read() == b""
        assert nc.stderr.read() == b""


def test_netcat_client_with_s_server(pki: PKI, openssl_server) -> None:  # type: ignore[no-untyped-def]
    srv = openssl_server(pki.server)
    srv.proc.stdin.write(SERVER_DATA)  # s_server sends its stdin once a client is there
    srv.proc.stdin.flush()
    with netcat("localhost", str(srv.port), "--cafile", str(pki.ca.pem)) as nc:
        nc.stdin.write(CLIENT_DATA)
        nc.stdin.flush()
        assert read_exactly(nc.stdout, len(SERVER_DATA)) == SERVER_DATA
        nc.stdin.close()  # SHUT_WR: close_notify to s_server, which answers with its own
        assert nc.wait(10) == 0, nc.stderr.read()
        assert nc.stdout.read() == b""
        assert nc.stderr.read() == b""
    deadline = time.monotonic() + 5
    while CLIENT_DATA not in srv.out.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert CLIENT_DATA in srv.out.read_bytes()


def test_netcat_client_refuses_an_untrusted_server(pki: PKI, openssl_server) -> None:  # type: ignore[no-untyped-def]
    srv = openssl_server(pki.untrusted)
    with netcat("localhost", str(srv.port), "--cafile", str(pki.ca.pem)) as nc:
        nc.stdin.write(b"secret\n")
        nc.stdin.close()
        assert nc.wait(10) == 1
        assert nc.stdout.read() == b""
        err = nc.stderr.read().decode()
    assert "cannot connect to localhost port" in err and "untrusted root" in err, err
    assert "EPROTO" in err
    assert b"secret" not in srv.out.read_bytes()


def test_netcat_client_reports_truncation(pki: PKI, ssl_server) -> None:  # type: ignore[no-untyped-def]
    def cut(conn) -> None:  # type: ignore[no-untyped-def]
        conn.sendall(b"partial answer")  # then the TCP close, with no close_notify

    srv = ssl_server(server_context(pki.server), cut)
    with netcat("localhost", str(srv.port), "--cafile", str(pki.ca.pem)) as nc:
        assert nc.wait(10) == 1
        assert nc.stdout.read() == b"partial answer"
        err = nc.stderr.read().decode()
    assert "ECONNRESET" in err and "truncated" in err, err


def test_netcat_to_netcat_half_close(pki: PKI) -> None:
    with netcat("-l", "0", "--bind", "127.0.0.1", "--cert", str(pki.server.chain),
                "--key", str(pki.server.key)) as server:
        port = port_from(read_line(server.stderr))
        with netcat("localhost", str(port), "--cafile", str(pki.ca.pem), "-v") as client:
            client.stdin.write(CLIENT_DATA)
            client.stdin.close()  # the client finishes first; the server answers afterwards
            assert read_exactly(server.stdout, len(CLIENT_DATA)) == CLIENT_DATA
            time.sleep(0.3)  # the client's close_notify has arrived: a half-close only
            assert server.poll() is None and client.poll() is None
            server.stdin.write(SERVER_DATA)
            server.stdin.close()
            assert read_exactly(client.stdout, len(SERVER_DATA)) == SERVER_DATA
            assert client.wait(10) == 0
            assert server.wait(10) == 0
            assert "CN=localhost" in client.stderr.read().decode()
