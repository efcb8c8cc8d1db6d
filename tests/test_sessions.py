"""Session resumption and TLS 1.3 0-RTT through the engine, against real OpenSSL peers."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import ssa_engine
from ssa_engine import IPPROTO_TLS, MSG_FASTOPEN

from .conftest import EngineProcess, wait_for

RESUMED = ssa_engine.TLS_RESUMED_SESSION
ZERO_RTT = ssa_engine.TLS_0RTT


@pytest.fixture
def engine(engine_factory, monkeypatch, tmp_path) -> EngineProcess:  # type: ignore[no-untyped-def]
    """A fresh engine per test: an empty session cache."""
    eng = engine_factory("--config-dir", str(tmp_path / "config"))
    monkeypatch.setenv("SSA_ENGINE_SOCKET", str(eng.socket))
    return eng


def _client(pki, **opts: int) -> ssa_engine.TLSSocket:  # type: ignore[no-untyped-def]
    s = ssa_engine.socket()
    s.settimeout(20)
    s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, pki.ca.pem)
    for name, value in opts.items():
        s.setsockopt(IPPROTO_TLS, getattr(ssa_engine, name), value)
    return s


def _seen(srv, text: bytes) -> int:  # type: ignore[no-untyped-def]
    return srv.out.read_bytes().count(text)


def _round(pki, srv, payload: bytes, **opts: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """Connect, send ``payload``, wait until s_server printed it; (resumed, 0-RTT)."""
    with _client(pki, **opts) as s:
        s.connect(("localhost", srv.port))
        s.sendall(payload)
        wait_for(lambda: _seen(srv, payload) >= 1, 10, "s_server to get the data")
        return s.getsockopt(IPPROTO_TLS, RESUMED), s.getsockopt(IPPROTO_TLS, ZERO_RTT)


def _status(eng: EngineProcess) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "ssa_engine", "status", "--json", "--socket",
                          str(eng.socket)], capture_output=True, text=True, timeout=60)
    return json.loads(out.stdout)


@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
def test_second_connection_resumes(pki, openssl_server, engine, version: str) -> None:
    srv = openssl_server(pki.server, version)
    assert _round(pki, srv, b"first\n") == (0, 0)
    wait_for(lambda: _status(engine)["cached_client_sessions"] == 1, 10, "the session")
    assert _round(pki, srv, b"second\n") == (1, 0)


def test_a_checking_socket_never_resumes_a_session_made_without_checks(
        pki, openssl_server, engine) -> None:  # type: ignore[no-untyped-def]
    """Sessions are cached per revocation settings: a socket that checks
    revocation only resumes sessions whose full handshake was checked (the
    engine notes the chains it needs for resumed checks only then)."""
    srv = openssl_server(pki.server)
    assert _round(pki, srv, b"plain\n") == (0, 0)
    wait_for(lambda: _status(engine)["cached_client_sessions"] == 1, 10, "the session")
    assert _round(pki, srv, b"checked\n", TLS_REVOCATION_CHECKS=1) == (0, 0)
    wait_for(lambda: _status(engine)["cached_client_sessions"] == 2, 10, "the second session")
    assert _round(pki, srv, b"checked again\n", TLS_REVOCATION_CHECKS=1) == (1, 0)
    assert _round(pki, srv, b"plain again\n") == (1, 0)


def test_reuse_off_and_ttl_zero(pki, openssl_server, engine) -> None:
    srv = openssl_server(pki.server)
    assert _round(pki, srv, b"a\n", TLS_SESSION_REUSE=0) == (0, 0)
    assert _round(pki, srv, b"b\n", TLS_SESSION_TTL=0) == (0, 0)
    assert _status(engine)["cached_client_sessions"] == 0
    assert _round(pki, srv, b"c\n") == (0, 0)
    wait_for(lambda: _status(engine)["cached_client_sessions"] == 1, 10, "the session")
    assert _round(pki, srv, b"d\n", TLS_SESSION_REUSE=0) == (0, 0)  # not offered
    assert _round(pki, srv, b"e\n") == (1, 0)
    with _client(pki) as s, pytest.raises(OSError) as info:
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_SESSION_TTL, 8 * 24 * 3600)
    assert info.value.errno == errno.EINVAL


def test_another_program_never_gets_the_session(pki, openssl_server, engine, tmp_path) -> None:
    srv = openssl_server(pki.server)
    assert _round(pki, srv, b"mine\n") == (0, 0)
    wait_for(lambda: _status(engine)["cached_client_sessions"] == 1, 10, "the session")

    def other(name: str | None) -> str:
        rename = f"open('/proc/self/comm', 'w').write({name!r})\n" if name else ""
        script = rename + textwrap.dedent(f"""
            import ssa_engine
            s = ssa_engine.socket()
            s.settimeout(20)
            s.setsockopt(ssa_engine.IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES,
                         {str(pki.ca.pem)!r})
            s.connect(("localhost", {srv.port}))
            s.sendall(b"theirs\\n")
            print(s.getsockopt(ssa_engine.IPPROTO_TLS, ssa_engine.TLS_RESUMED_SESSION))
        """)
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=60, env=dict(os.environ, SSA_ENGINE_SOCKET=str(engine.socket)))
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    # another program run by the same interpreter (its own process name) starts afresh
    assert other("other-program") == "0"


def test_zero_rtt_with_sendto_msg_fastopen(pki, openssl_server, engine) -> None:
    srv = openssl_server(pki.server, "-early_data")
    assert _round(pki, srv, b"ticket please\n") == (0, 0)
    wait_for(lambda: _status(engine)["cached_client_sessions"] == 1, 10, "the ticket")
    with _client(pki) as s:
        assert s.sendto(b"early hello\n", MSG_FASTOPEN, ("localhost", srv.port)) == 12
        assert s.getsockopt(IPPROTO_TLS, RESUMED) == 1
        assert s.getsockopt(IPPROTO_TLS, ZERO_RTT) == 1  # it travelled as early data
        s.sendall(b"after\n")
        wait_for(lambda: _seen(srv, b"after\n") == 1, 10, "the data after the handshake")
    assert _seen(srv, b"early hello\n") == 1  # exactly once


def test_zero_rtt_refused_data_arrives_once_after_the_handshake(pki, openssl_server,
                                                                 engine) -> None:
    srv = openssl_server(pki.server)  # no -early_data: its tickets allow none
    assert _round(pki, srv, b"ticket please\n") == (0, 0)
    wait_for(lambda: _status(engine)["cached_client_sessions"] == 1, 10, "the ticket")
    with _client(pki, TLS_0RTT=1) as s:
        s.connect(("localhost", srv.port))  # lazy: the first send connects
        s.sendall(b"not early\n")
        assert s.getsockopt(IPPROTO_TLS, RESUMED) == 1
        assert s.getsockopt(IPPROTO_TLS, ZERO_RTT) == 0
        wait_for(lambda: _seen(srv, b"not early\n") >= 1, 10, "the data")
    assert _seen(srv, b"not early\n") == 1


def test_zero_rtt_without_a_session_is_an_ordinary_connect(pki, openssl_server, engine) -> None:
    srv = openssl_server(pki.server, "-early_data")
    with _client(pki) as s:
        assert s.sendto(b"no ticket yet\n", MSG_FASTOPEN, ("localhost", srv.port)) == 14
        assert (s.getsockopt(IPPROTO_TLS, RESUMED), s.getsockopt(IPPROTO_TLS, ZERO_RTT)) == (0, 0)
        wait_for(lambda: _seen(srv, b"no ticket yet\n") == 1, 10, "the data")


def test_tls_context_shares_settings_within_a_program(pki, openssl_server, engine) -> None:
    srv = openssl_server(pki.server)
    with _client(pki, TLS_SESSION_TTL=600) as template:
        ident = template.getsockopt(IPPROTO_TLS, ssa_engine.TLS_CONTEXT)
        assert isinstance(ident, bytes) and len(ident) == 8
    with ssa_engine.socket() as s:
        s.settimeout(20)
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_CONTEXT, ident)
        # the template's trust anchor came along: this verifies without setting it again
        assert s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_SESSION_TTL) == 600
        s.connect(("localhost", srv.port))
    with ssa_engine.socket() as s, pytest.raises(OSError) as info:
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_CONTEXT, b"\0" * 8)
    assert info.value.errno == errno.EINVAL


# -- servers ------------------------------------------------------------------------------
def _listener(pki, **opts: int) -> ssa_engine.TLSSocket:  # type: ignore[no-untyped-def]
    lst = ssa_engine.socket()
    try:
        lst.setsockopt(IPPROTO_TLS, ssa_engine.TLS_CERTIFICATE_CHAIN, pki.server.chain)
        lst.setsockopt(IPPROTO_TLS, ssa_engine.TLS_PRIVATE_KEY, pki.server.key)
        for name, value in opts.items():
            lst.setsockopt(IPPROTO_TLS, getattr(ssa_engine, name), value)
        lst.bind(("127.0.0.1", 0))
        lst.listen()
    except BaseException:
        lst.close()
        raise
    return lst


class _Acceptor:
    """Accepts in a thread; records (first bytes, TLS_0RTT, TLS_RESUMED_SESSION)."""

    def __init__(self, lst: ssa_engine.TLSSocket) -> None:
        self.lst = lst
        self.seen: list[tuple[bytes, int, int]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.lst.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    data = conn.recv(1000)
                except OSError:
                    data = b""
                self.seen.append((data, conn.getsockopt(IPPROTO_TLS, ZERO_RTT),
                                  conn.getsockopt(IPPROTO_TLS, RESUMED)))

    def close(self) -> None:
        self.lst.close()
        self.thread.join(10)


def _s_client(port: int, ca: Path, *args: str, data: bytes = b"hello\n") -> str:
    res = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile",
                          str(ca), "-verify_return_error", "-servername", "localhost",
                          "-ign_eof", *args],
                         input=data, capture_output=True, timeout=30)
    return res.stdout.decode(errors="replace") + res.stderr.decode(errors="replace")


def test_server_resumption_and_reuse_off(pki, engine, tmp_path) -> None:
    sess = tmp_path / "sess.pem"
    acc = _Acceptor(_listener(pki))
    try:
        port = acc.lst.getsockname()[1]
        assert "New, TLSv1.3" in _s_client(port, pki.ca.pem, "-sess_out", str(sess))
        assert "Reused, TLSv1.3" in _s_client(port, pki.ca.pem, "-sess_in", str(sess))
        wait_for(lambda: len(acc.seen) == 2, 10, "two accepted connections")
        assert [r for _, _, r in acc.seen] == [0, 1]
    finally:
        acc.close()
    acc = _Acceptor(_listener(pki, TLS_SESSION_REUSE=0))
    try:
        port = acc.lst.getsockname()[1]
        _s_client(port, pki.ca.pem, "-sess_out", str(sess))
        assert "New, TLSv1.3" in _s_client(port, pki.ca.pem, "-sess_in", str(sess))
    finally:
        acc.close()


def test_server_early_data_needs_the_policy(pki, engine_factory, monkeypatch, tmp_path) -> None:
    eng = engine_factory("--config-dir", str(tmp_path / "none"))
    monkeypatch.setenv("SSA_ENGINE_SOCKET", str(eng.socket))
    with pytest.raises(OSError) as info:
        _listener(pki, TLS_0RTT=1)
    assert info.value.errno == errno.EPROTO and "server.early_data" in str(info.value)


def test_server_early_data_and_a_replayed_ticket(pki, engine_factory, monkeypatch,
                                                 tmp_path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "ssa.yaml").write_text("server:\n  early_data: true\n")
    eng = engine_factory("--config-dir", str(config))
    monkeypatch.setenv("SSA_ENGINE_SOCKET", str(eng.socket))
    sess, early = tmp_path / "sess.pem", tmp_path / "early.txt"
    early.write_bytes(b"GET /early\n")
    acc = _Acceptor(_listener(pki, TLS_0RTT=1))
    try:
        port = acc.lst.getsockname()[1]
        _s_client(port, pki.ca.pem, "-sess_out", str(sess))
        out = _s_client(port, pki.ca.pem, "-sess_in", str(sess), "-early_data", str(early))
        assert "Early data was accepted" in out, out
        # the same ticket again: OpenSSL's anti-replay refuses its early data
        out = _s_client(port, pki.ca.pem, "-sess_in", str(sess), "-early_data", str(early))
        assert "Early data was rejected" in out, out
        wait_for(lambda: len(acc.seen) == 3, 10, "three accepted connections")
    finally:
        acc.close()
    first, accepted, replayed = acc.seen
    assert first[1] == 0
    assert accepted[0].startswith(b"GET /early\n") and accepted[1:] == (1, 1)
    assert replayed[1] == 0 and not replayed[0].startswith(b"GET /early")


def test_ticket_keys_rotate_on_the_policy_schedule(pki, engine_factory, monkeypatch,
                                                   tmp_path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "ssa.yaml").write_text("server:\n  ticket_rotation: 1\n")
    eng = engine_factory("--config-dir", str(config))
    monkeypatch.setenv("SSA_ENGINE_SOCKET", str(eng.socket))
    sess = tmp_path / "sess.pem"
    acc = _Acceptor(_listener(pki))
    try:
        port = acc.lst.getsockname()[1]
        wait_for(lambda: "new session-ticket keys" in eng.log.read_text(), 10, "a rotation")
        _s_client(port, pki.ca.pem, "-sess_out", str(sess))
        mark = eng.log.read_text().count("new session-ticket keys")
        wait_for(lambda: eng.log.read_text().count("new session-ticket keys") > mark, 10,
                 "the next rotation")
        # a ticket from before the rotation no longer resumes: a full handshake
        assert "New, TLSv1.3" in _s_client(port, pki.ca.pem, "-sess_in", str(sess))
    finally:
        acc.close()
