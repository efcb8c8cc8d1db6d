"""The engine process: start-up rules, status, isolation, shutdown."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time

import pytest

import ssa_engine
from ssa_engine.protocol import Decoder, Error, Hello, HelloOk, encode

from .conftest import REPO, EngineProcess, server_context


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ssa_engine", *args], capture_output=True,
                          text=True, timeout=60, cwd=REPO, env=env)


def _read_frames(sock: socket.socket) -> list[object]:
    dec = Decoder()
    out: list[object] = []
    sock.settimeout(5)
    while True:
        data = sock.recv(65536)
        if not data:
            return out
        dec.receive_data(data)
        out.extend(dec.messages())


def test_status_command(engine, pki, ssl_server) -> None:  # type: ignore[no-untyped-def]
    srv = ssl_server(server_context(pki.server))
    with ssa_engine.create_connection(("localhost", srv.port), cafile=pki.ca.pem):
        res = _cli("status", "--json", "--socket", str(engine.socket))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["running"] is True and doc["connected"] >= 1 and doc["level"] == "default"
    human = _cli("status", "--socket", str(engine.socket))
    assert human.returncode == 0 and "connected" in human.stdout


def test_status_without_engine(tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = _cli("status", "--socket", str(tmp_path / "none.sock"))
    assert res.returncode == 1
    assert "not running" in res.stderr and "ssa-engine serve" in res.stderr


def test_malformed_frames_only_close_their_connection(engine, pki, ssl_server) -> None:  # type: ignore[no-untyped-def]
    srv = ssl_server(server_context(pki.server))
    good = ssa_engine.create_connection(("localhost", srv.port), cafile=pki.ca.pem)
    with good:
        cases = [
            b"\xff" * 64,  # garbage: a huge declared length
            encode(HelloOk(version=1)),  # not HELLO first
            encode(Hello(1, 1)) + struct.pack("!IHH", 0, 999, 0),  # unknown type
            encode(Hello(1, 1)) + struct.pack("!IHH", 6, 2, 0) + b"\x00\x63\x00\x00\x00\x00",
        ]
        for raw in cases:
            with socket.socket(socket.AF_UNIX) as bad:
                bad.connect(str(engine.socket))
                bad.sendall(raw)
                frames = _read_frames(bad)  # returns at EOF: the engine closed it
                assert frames and isinstance(frames[-1], Error), frames
                assert "control protocol error" in frames[-1].message
        # a descriptor sent with a frame that takes none
        with socket.socket(socket.AF_UNIX) as bad, open(os.devnull) as f:
            bad.connect(str(engine.socket))
            bad.sendmsg([encode(Hello(1, 1))], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                 struct.pack("i", f.fileno()))])
            frames = _read_frames(bad)
            assert isinstance(frames[-1], Error)
        # the good socket never noticed
        good.sendall(b"still fine")
        assert good.recv(10) == b"still fine"


def test_second_engine_refused_and_stale_socket_removed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stale = tmp_path / "engine.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(stale))  # a socket file nobody listens on
    first = EngineProcess(tmp_path)
    try:
        res = _cli("serve", "--socket", str(first.socket))
        assert res.returncode == 1
        assert "already serving" in res.stderr
        mode = stat.S_IMODE(os.stat(first.socket).st_mode)
        assert mode == (0o666 if os.geteuid() == 0 else 0o600)
        with open(f"/proc/{first.proc.pid}/limits") as f:
            limits = f.read()
        line = next(ln for ln in limits.splitlines() if ln.startswith("Max open files"))
        soft, hard = line.split()[3:5]
        assert soft == hard
    finally:
        assert first.stop() == 0
    assert not first.socket.exists()
    assert "removing stale control socket" in first.log.read_text()


def test_engine_stop_is_a_reset_for_open_streams(tmp_path, pki, ssl_server) -> None:  # type: ignore[no-untyped-def]
    srv = ssl_server(server_context(pki.server))
    eng = EngineProcess(tmp_path)
    s = ssa_engine.TLSSocket(engine_socket=eng.socket)
    with s:
        s.setsockopt(ssa_engine.IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, pki.ca.pem)
        s.connect(("localhost", srv.port))
        assert eng.stop() == 0
        with pytest.raises(ConnectionResetError) as e:
            s.recv(10)
        assert "engine stopped" in str(e.value)


def test_engine_killed_is_a_reset(tmp_path, pki, ssl_server) -> None:  # type: ignore[no-untyped-def]
    srv = ssl_server(server_context(pki.server))
    eng = EngineProcess(tmp_path)
    s = ssa_engine.TLSSocket(engine_socket=eng.socket)
    with s:
        s.setsockopt(ssa_engine.IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, pki.ca.pem)
        s.connect(("localhost", srv.port))
        eng.proc.send_signal(signal.SIGKILL)
        eng.proc.wait()
        with pytest.raises(ConnectionResetError):
            s.recv(10)
    eng.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_status_is_refused_to_other_users() -> None:
    import shutil
    import tempfile
    from pathlib import Path

    run_dir = Path(tempfile.mkdtemp(prefix="ssa-test-"))  # /tmp: searchable by everyone
    run_dir.chmod(0o755)
    eng = EngineProcess(run_dir)
    try:
        code = (
            f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
            "from ssa_engine.api.control import ControlChannel\n"
            "from ssa_engine.protocol import StatusRequest\n"
            f"ctl = ControlChannel({str(eng.socket)!r})\n"
            "try:\n ctl.open(StatusRequest())\nexcept OSError as e: print(e.errno)\n"
        )
        if not os.path.exists("/usr/bin/python3"):
            pytest.skip("no system python to run as another user")
        res = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True,
                             timeout=30, user=65534, group=65534, cwd="/")
        if "ModuleNotFoundError" in res.stderr:
            pytest.skip("the test user cannot import the installed packages")
        assert res.stdout.strip() == str(errno.EACCES), res.stderr
    finally:
        eng.stop()
        shutil.rmtree(run_dir)


def test_sigterm_with_idle_sockets_exits_cleanly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    eng = EngineProcess(tmp_path)
    socks = [ssa_engine.TLSSocket(engine_socket=eng.socket) for _ in range(20)]
    time.sleep(0.1)
    assert eng.stop() == 0
    for s in socks:
        s.close()
    assert "ssa-engine stopped" in eng.log.read_text()


def test_per_user_socket_limit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    eng = EngineProcess(tmp_path, "--max-sockets-per-user", "3")
    try:
        held = [ssa_engine.TLSSocket(engine_socket=eng.socket) for _ in range(3)]
        with pytest.raises(OSError) as e:
            ssa_engine.TLSSocket(engine_socket=eng.socket)
        assert e.value.errno == errno.EMFILE and "per user" in str(e.value)
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the engine notices the close, then there is room again
            try:
                held.append(ssa_engine.TLSSocket(engine_socket=eng.socket))
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        for s in held:
            s.close()
    finally:
        eng.stop()
