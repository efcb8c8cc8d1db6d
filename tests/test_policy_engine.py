"""The administrator's policy files, enforced by a running engine on real connections."""

from __future__ import annotations

import errno
import json
import os
import signal
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography import x509

import ssa_engine
from ssa_engine import IPPROTO_TLS, TLS_ERROR
from ssa_engine.store.pins import chain_pins

from .conftest import EngineProcess, server_context, wait_for

EXE = os.path.realpath(sys.executable)


def _config(tmp_path: Path, main: str | None = None, **profiles: str) -> Path:
    config = tmp_path / "config"
    (config / "profiles.d").mkdir(parents=True)
    if main is not None:
        (config / "ssa.yaml").write_text(textwrap.dedent(main))
    for name, text in profiles.items():
        (config / "profiles.d" / f"{name}.yaml").write_text(textwrap.dedent(text))
    return config


def _start(engine_factory, monkeypatch, config: Path) -> EngineProcess:  # type: ignore[no-untyped-def]
    eng = engine_factory("--config-dir", str(config), "--handshake-timeout", "5")
    monkeypatch.setenv("SSA_ENGINE_SOCKET", str(eng.socket))
    return eng


def _connect(pki, port: int) -> ssa_engine.TLSSocket:  # type: ignore[no-untyped-def]
    s = ssa_engine.socket()
    s.settimeout(20)
    s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, pki.ca.pem)
    try:
        s.connect(("localhost", port))
    except BaseException:
        s.close()
        raise
    return s


def _refused(pki, port: int) -> tuple[OSError, str]:  # type: ignore[no-untyped-def]
    with ssa_engine.socket() as s:
        s.settimeout(20)
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, pki.ca.pem)
        with pytest.raises(OSError) as info:
            s.connect(("localhost", port))
        return info.value, s.getsockopt(IPPROTO_TLS, TLS_ERROR).decode()


def _echo_once(s: ssa_engine.TLSSocket, data: bytes = b"ping") -> None:
    s.sendall(data)
    assert s.recv(100) == data


def _pin(cert: Path | x509.Certificate) -> str:
    if isinstance(cert, Path):
        cert = x509.load_pem_x509_certificate(cert.read_bytes())
    return chain_pins([cert])[0]


def _client_script(pki, port: int, comm: str | None) -> str:  # type: ignore[no-untyped-def]
    rename = f"open('/proc/self/comm', 'w').write({comm!r})\n" if comm else ""
    return rename + textwrap.dedent(f"""
        import ssa_engine
        s = ssa_engine.socket()
        s.settimeout(20)
        s.setsockopt(ssa_engine.IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES,
                     {str(pki.ca.pem)!r})
        try:
            s.connect(("localhost", {port}))
        except OSError as exc:
            print("refused", exc.errno, s.getsockopt(ssa_engine.IPPROTO_TLS, ssa_engine.TLS_ERROR))
        else:
            print("connected", s.getsockopt(ssa_engine.IPPROTO_TLS, ssa_engine.TLS_VERSION_CONN))
        s.close()
    """)


# -- matching ----------------------------------------------------------------------------
def test_profile_matched_by_interpreter_path(pki, ssl_server, engine_factory, monkeypatch,
                                             tmp_path) -> None:
    config = _config(tmp_path, strict=f"""
        match:
          path: {EXE}
        tls:
          min_version: "1.3"
    """)
    _start(engine_factory, monkeypatch, config)
    srv = ssl_server(server_context(pki.server, version=ssl.TLSVersion.TLSv1_2))
    exc, text = _refused(pki, srv.port)
    assert exc.errno == errno.EPROTO
    assert "protocol version" in text, text
    # a TLS 1.3 server is fine under the same profile
    ok = ssl_server(server_context(pki.server))
    with _connect(pki, ok.port) as s:
        assert s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_VERSION_CONN) == ssa_engine.TLS_1_3


def test_profile_by_name_leaves_other_programs_alone(pki, ssl_server, engine_factory,
                                                     monkeypatch, tmp_path) -> None:
    config = _config(tmp_path, strict="""
        match:
          name: ssa-strict
        level: modern
    """)
    eng = _start(engine_factory, monkeypatch, config)
    srv = ssl_server(server_context(pki.server, version=ssl.TLSVersion.TLSv1_2))
    env = dict(os.environ, SSA_ENGINE_SOCKET=str(eng.socket))

    def run(comm: str | None) -> str:
        out = subprocess.run([sys.executable, "-c", _client_script(pki, srv.port, comm)],
                             capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert run("ssa-strict").startswith(f"refused {errno.EPROTO}")
    assert run(None).startswith(f"connected {ssa_engine.TLS_1_2}")


def test_weakening_names_the_profile_unless_overrides_allow_it(
        engine_factory, monkeypatch, tmp_path) -> None:
    config = _config(tmp_path, strict=f"""
        match:
          path: {EXE}
        level: modern
    """)
    eng = _start(engine_factory, monkeypatch, config)
    with ssa_engine.socket() as s, pytest.raises(OSError) as info:
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_VERSION_MIN, ssa_engine.TLS_1_2)
    assert info.value.errno == errno.EPROTO
    assert "profile strict" in str(info.value) and "strict.yaml" in str(info.value)
    # the administrator hands this one setting to the application
    (config / "profiles.d" / "strict.yaml").write_text(textwrap.dedent(f"""
        match:
          path: {EXE}
        level: modern
        tls:
          ciphers: [ECDHE-ECDSA-AES128-GCM-SHA256]
          min_version: "1.3"
        app_overrides: [min_version]
    """))
    os.kill(eng.proc.pid, signal.SIGHUP)
    wait_for(lambda: "configuration reloaded (SIGHUP)" in eng.log.read_text(), 10, "reload")
    with ssa_engine.socket() as s:
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_VERSION_MIN, ssa_engine.TLS_1_2)
        assert s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_VERSION_MIN) == ssa_engine.TLS_1_2


# -- pins ------------------------------------------------------------------------------------
def test_pin_mismatch_fails_even_with_a_valid_chain(pki, ssl_server, engine_factory,
                                                    monkeypatch, tmp_path) -> None:
    wrong = _pin(pki.other_ca.cert)
    config = _config(tmp_path, main=f"""
        pins:
          localhost: ["{wrong}"]
    """)
    _start(engine_factory, monkeypatch, config)
    srv = ssl_server(server_context(pki.server))
    exc, text = _refused(pki, srv.port)
    assert exc.errno == errno.EPROTO
    assert "pin mismatch for localhost" in text and _pin(pki.server.cert) in text, text


def test_pinning_the_ca_key_accepts_the_chain(pki, ssl_server, engine_factory, monkeypatch,
                                              tmp_path) -> None:
    config = _config(tmp_path, main=f"""
        pins:
          "*.example.net": ["{_pin(pki.other_ca.cert)}"]
          localhost: ["{_pin(pki.other_ca.cert)}", "{_pin(pki.ca.cert)}"]
    """)
    _start(engine_factory, monkeypatch, config)
    srv = ssl_server(server_context(pki.server))
    with _connect(pki, srv.port) as s:
        _echo_once(s)


# -- reload ------------------------------------------------------------------------------------
def test_reload_keeps_open_connections_and_the_last_good_policy(
        pki, ssl_server, engine_factory, monkeypatch, tmp_path) -> None:
    config = _config(tmp_path)
    eng = _start(engine_factory, monkeypatch, config)
    srv = ssl_server(server_context(pki.server, version=ssl.TLSVersion.TLSv1_2))
    before = _connect(pki, srv.port)
    with before:
        _echo_once(before)
        # the administrator tightens the policy; the watcher notices the new file
        (config / "ssa.yaml").write_text('tls:\n  min_version: "1.3"\n')
        wait_for(lambda: "configuration reloaded (a configuration file changed)"
                 in eng.log.read_text(), 15, "the file watcher")
        _echo_once(before, b"still here")  # opened before: keeps its settings
        exc, _ = _refused(pki, srv.port)  # opened after: the new policy
        assert exc.errno == errno.EPROTO
        # a broken edit is reported and changes nothing
        (config / "ssa.yaml").write_text('tls:\n  min_version: "1.3"\n  bogus: 1\n')
        reply = subprocess.run([sys.executable, "-m", "ssa_admin", "reload", "--socket",
                                str(eng.socket)], capture_output=True, text=True, timeout=60)
        status = json.loads(subprocess.run(
            [sys.executable, "-m", "ssa_engine", "status", "--json", "--socket", str(eng.socket)],
            capture_output=True, text=True, timeout=60).stdout)
        assert any("ssa.yaml:3:3: tls -> bogus: unknown key" in e
                   for e in status["last_reload_errors"]), status
        assert reply.returncode == 1, reply
        assert "ssa.yaml:3:3" in reply.stdout + reply.stderr
        exc, _ = _refused(pki, srv.port)
        assert exc.errno == errno.EPROTO
        _echo_once(before, b"and still")
    assert "Traceback" not in eng.log.read_text()


def test_engine_refuses_to_start_on_a_broken_configuration(engine_factory, tmp_path) -> None:
    config = _config(tmp_path, main="level: modren\n")
    with pytest.raises(RuntimeError) as info:
        engine_factory("--config-dir", str(config))
    assert "ssa.yaml:1:8: level: must be one of" in str(info.value)


# -- audit -----------------------------------------------------------------------------------
def test_audit_log_records_successes_and_failures(pki, ssl_server, engine_factory, monkeypatch,
                                                  tmp_path) -> None:
    log_path = tmp_path / "audit" / "audit.log"
    config = _config(tmp_path, main=f"""
        audit:
          path: {log_path}
    """, quiet="""
        match:
          name: ssa-quiet
        audit: false
    """)
    eng = _start(engine_factory, monkeypatch, config)
    good = ssl_server(server_context(pki.server))
    with _connect(pki, good.port) as s:
        _echo_once(s)
    bad = ssl_server(server_context(pki.wrong_host))
    _refused(pki, bad.port)
    env = dict(os.environ, SSA_ENGINE_SOCKET=str(eng.socket))
    subprocess.run([sys.executable, "-c", _client_script(pki, good.port, "ssa-quiet")],
                   check=True, timeout=60, env=env, capture_output=True)
    wait_for(lambda: log_path.exists() and len(log_path.read_text().splitlines()) >= 2, 10, "audit")
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(records) == 2, records  # the ssa-quiet program is not audited
    ok, failed = records
    assert ok["event"] == "connect" and ok["error"] is None and ok["verify"] == "ok"
    assert ok["version"] == "TLSv1.3" and ok["cipher"] and ok["sni"] == "localhost"
    assert ok["pid"] == os.getpid() and ok["exe"] == EXE and ok["profile"] == "default"
    assert ok["remote"] == f"127.0.0.1:{good.port}"
    assert failed["verify"] == "failed" and "does not match the host name" in failed["error"]
    assert oct(log_path.stat().st_mode & 0o777) == oct(0o640)


# -- server certificates from the profile, renewed under a live listener ----------------------
def _import(state: Path, name: str, pair) -> None:  # type: ignore[no-untyped-def]
    res = subprocess.run([sys.executable, "-m", "ssa_admin", "cert", "import", name, "--cert",
                          str(pair.cert), "--key", str(pair.key)], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, SSA_STATE_DIR=str(state)))
    assert res.returncode == 0, res.stderr


def _served_serial(pki, port: int, sni: str) -> int:  # type: ignore[no-untyped-def]
    ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
    import socket as stdlib_socket

    with stdlib_socket.create_connection(("127.0.0.1", port), timeout=20) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_profile_certificates_and_renewal_under_a_live_listener(
        pki, engine_factory, monkeypatch, tmp_path) -> None:
    import threading

    first = pki.ca.issue("shop-1", ["shop.example"])
    second = pki.ca.issue("shop-2", ["shop.example"])
    other = pki.ca.issue("blog", ["blog.example"])
    state = tmp_path / "state"
    _import(state, "shop", first)
    _import(state, "blog", other)
    config = _config(tmp_path, shop=f"""
        match:
          path: {EXE}
        server:
          certificates: [blog, shop]
    """)
    eng = engine_factory("--config-dir", str(config), "--state-dir", str(state))
    monkeypatch.setenv("SSA_ENGINE_SOCKET", str(eng.socket))
    lst = ssa_engine.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()  # no certificate of its own: the profile's are served
    port = lst.getsockname()[1]
    accepted: list[ssa_engine.TLSSocket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = lst.accept()
            except OSError:
                return
            accepted.append(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        first_serial = x509.load_pem_x509_certificate(first.cert.read_bytes()).serial_number
        blog_serial = x509.load_pem_x509_certificate(other.cert.read_bytes()).serial_number
        assert _served_serial(pki, port, "shop.example") == first_serial
        assert _served_serial(pki, port, "blog.example") == blog_serial
        _import(state, "shop", second)  # a renewal lands in the store
        wait_for(lambda: "serving the store's current certificates" in eng.log.read_text(),
                 15, "the store watcher")
        second_serial = x509.load_pem_x509_certificate(second.cert.read_bytes()).serial_number
        assert _served_serial(pki, port, "shop.example") == second_serial
    finally:
        lst.close()
        t.join(10)
        for conn in accepted:
            conn.close()


def test_level_minimum_key_size_is_enforced(pki, ssl_server, engine_factory, monkeypatch,
                                            tmp_path) -> None:
    # OpenSSL's security level 1 (legacy) still allows RSA-1024; the level says 2048
    config = _config(tmp_path, legacy=f"""
        match:
          path: {EXE}
        level: legacy
    """)
    _start(engine_factory, monkeypatch, config)
    weak = pki.ca.issue("weak-rsa", ["localhost"], kind="rsa-1024")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # before loading: level 1+ refuses the key
    ctx.load_cert_chain(weak.chain, weak.key)
    srv = ssl_server(ctx)
    exc, text = _refused(pki, srv.port)
    assert exc.errno == errno.EPROTO
    assert "RSA-1024 key" in text and "needs 2048 bits" in text and "profile legacy" in text, text
    ok = ssl_server(server_context(pki.server_rsa))
    with _connect(pki, ok.port) as s:
        _echo_once(s)
