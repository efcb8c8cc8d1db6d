"""Shared fixtures: certificates, a private engine, and real TLS peers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .acme_server import pebble, pebble_eab  # noqa: F401
from .pki import PKI, make_pki

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def free_port(host: str = "127.0.0.1") -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


class EngineProcess:
    def __init__(self, directory: Path, *args: str) -> None:
        self.socket = directory / "engine.sock"
        self.log = directory / "engine.log"
        #: the engine's configuration directory (empty unless a test writes to it)
        self.config = directory / "config"
        if "--config-dir" not in args:
            args = ("--config-dir", str(self.config), *args)
        env = dict(os.environ)
        self._logf = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ssa_engine", "serve", "--socket", str(self.socket),
             "--log-level", "debug", *args],
            stdout=self._logf, stderr=subprocess.STDOUT, env=env, cwd=REPO,
        )
        try:
            wait_for(self._ready, 15, "the engine to listen")
        except TimeoutError:
            self.stop()
            raise RuntimeError("engine did not start:\n" + self.log.read_text()) from None
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError("engine exited:\n" + self.log.read_text())
        if not self.socket.exists():
            return False
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(self.socket))
            except OSError:
                return False
        return True

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        return int(self.proc.returncode)


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """One engine on embedded defaults for the whole session."""
    eng = EngineProcess(tmp_path_factory.mktemp("engine"), "--handshake-timeout", "3")
    old = os.environ.get("SSA_ENGINE_SOCKET")
    os.environ["SSA_ENGINE_SOCKET"] = str(eng.socket)
    yield eng
    if old is None:
        os.environ.pop("SSA_ENGINE_SOCKET", None)
    else:
        os.environ["SSA_ENGINE_SOCKET"] = old
    eng.stop()
    # whatever the tests threw at it, the engine never hit an unexpected error
    log = eng.log.read_text()
    assert "Traceback" not in log, log[log.index("Traceback") - 500:][:3000]


@pytest.fixture
def engine_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., EngineProcess]]:
    started: list[EngineProcess] = []

    def start(*args: str) -> EngineProcess:
        eng = EngineProcess(tmp_path_factory.mktemp("engine"), *args)
        started.append(eng)
        return eng

    yield start
    for eng in started:
        eng.stop()
        log = eng.log.read_text()
        assert "Traceback" not in log, log[log.index("Traceback") - 500:][:3000]


# -- a stdlib ssl server in a thread ------------------------------------------------
class SSLServer:
    """A TLS server on the stdlib ``ssl`` module; ``handler(conn)`` runs per client."""

    def __init__(self, ctx: ssl.SSLContext, handler: Callable[[ssl.SSLSocket], None],
                 host: str = "127.0.0.1") -> None:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.ctx = ctx
        self.handler = handler
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.errors: list[BaseException] = []
        self.peer_certs: list[dict | None] = []
        self._threads: list[threading.Thread] = []
        self._stop = False
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, raw: socket.socket) -> None:
        try:
            raw.settimeout(30)
            conn = self.ctx.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False)
        except (ssl.SSLError, OSError) as exc:
            self.errors.append(exc)
            raw.close()
            return
        try:
            self.peer_certs.append(conn.getpeercert())
            self.handler(conn)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.errors.append(exc)
        finally:
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        for t in self._threads:
            t.join(5)


def server_context(pair, *, version: ssl.TLSVersion | None = None,  # type: ignore[no-untyped-def]
                   alpn: list[str] | None = None, client_ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pair.chain, pair.key)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    return ctx


def echo(conn: ssl.SSLSocket) -> None:
    """Echo until the client's close_notify, then answer with ours."""
    while True:
        data = conn.recv(65536)
        if not data:
            break
        conn.sendall(data)
    conn.unwrap()


@pytest.fixture
def ssl_server() -> Iterator[Callable[..., SSLServer]]:
    servers: list[SSLServer] = []

    def start(ctx: ssl.SSLContext, handler: Callable[[ssl.SSLSocket], None] = echo,
              host: str = "127.0.0.1") -> SSLServer:
        srv = SSLServer(ctx, handler, host)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close()


# -- openssl s_server --------------------------------------------------------------
def is_listening(port: int) -> bool:
    """True once something listens on ``port`` (without connecting to it)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


class OpenSSLServer:
    def __init__(self, directory: Path, pair, *args: str) -> None:  # type: ignore[no-untyped-def]
        self.port = free_port()
        self.out = directory / f"s_server-{self.port}.out"
        self._outf = open(self.out, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["openssl", "s_server", "-accept", f"127.0.0.1:{self.port}", "-cert", str(pair.chain),
             "-key", str(pair.key), "-quiet", *args],
            stdin=subprocess.PIPE, stdout=self._outf, stderr=subprocess.STDOUT,
        )
        wait_for(self._listening, 10, "openssl s_server")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError("s_server exited: " + self.out.read_text(errors="replace"))
        return is_listening(self.port)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdin:
            self.proc.stdin.close()
        self._outf.close()


@pytest.fixture
def openssl_server(tmp_path: Path) -> Iterator[Callable[..., OpenSSLServer]]:
    servers: list[OpenSSLServer] = []

    def start(pair, *args: str) -> OpenSSLServer:  # type: ignore[no-untyped-def]
        srv = OpenSSLServer(tmp_path, pair, *args)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.close()


@contextlib.contextmanager
def raw_listener(host: str = "127.0.0.1") -> Iterator[socket.socket]:
    s = socket.socket()
    s.bind((host, 0))
    s.listen(16)
    try:
        yield s
    finally:
        s.close()
