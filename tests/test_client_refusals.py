"""Every refusal is EPROTO (or the documented errno) with a TLS_ERROR that says why."""

from __future__ import annotations

import errno
import socket
import threading

import pytest

import ssa_engine
from ssa_engine import IPPROTO_TLS, TLS_ERROR

from .conftest import raw_listener, server_context

pytestmark = pytest.mark.usefixtures("engine")


def _refused(pki, port: int, host: str = "localhost") -> tuple[OSError, bytes]:  # type: ignore[no-untyped-def]
    s = ssa_engine.socket()
    with s:
        s.settimeout(20)
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, pki.ca.pem)
        with pytest.raises(OSError) as info:
            s.connect((host, port))
        text = s.getsockopt(IPPROTO_TLS, TLS_ERROR)
        # a failed socket is unusable afterwards
        with pytest.raises(OSError) as again:
            s.connect((host, port))
        assert again.value.errno == errno.EBADFD
        with pytest.raises(OSError) as opt:
            s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_REMOTE_HOSTNAME, "x")
        assert opt.value.errno == errno.EBADFD
    return info.value, text


@pytest.mark.parametrize(
    ("which", "reason"),
    [
        ("expired", b"certificate has expired"),
        ("not_yet_valid", b"certificate is not yet valid"),
        ("wrong_host", b"does not match the host name 'localhost'"),
        ("self_signed", b"self-signed certificate"),
        ("untrusted", b"untrusted root"),
    ],
)
def test_certificate_refusals(pki, ssl_server, which: str, reason: bytes) -> None:
    srv = ssl_server(server_context(getattr(pki, which)))
    exc, text = _refused(pki, srv.port)
    assert exc.errno == errno.EPROTO
    assert reason in text, text
    assert reason.decode() in str(exc)


def test_tls11_only_server_refused(pki, openssl_server) -> None:
    srv = openssl_server(pki.server_rsa, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    exc, text = _refused(pki, srv.port)
    assert exc.errno == errno.EPROTO
    assert b"protocol version" in text, text


def test_tls10_only_server_refused(pki, openssl_server) -> None:
    srv = openssl_server(pki.server_rsa, "-tls1", "-cipher", "DEFAULT:@SECLEVEL=0")
    exc, text = _refused(pki, srv.port)
    assert exc.errno == errno.EPROTO and b"protocol version" in text, text


@pytest.mark.parametrize(
    ("pair", "cipher"),
    [("server", "ECDHE-ECDSA-AES128-SHA"), ("server_rsa", "AES128-GCM-SHA256"),
     ("server_rsa", "AES256-SHA256")],
    ids=["cbc-only", "no-forward-secrecy", "rsa-kex-cbc"],
)
def test_weak_cipher_only_server_refused(pki, openssl_server, pair: str, cipher: str) -> None:
    srv = openssl_server(getattr(pki, pair), "-tls1_2", "-cipher", cipher)
    exc, text = _refused(pki, srv.port)
    assert exc.errno == errno.EPROTO
    assert b"cipher" in text, text


def test_ip_connect_needs_remote_hostname(pki, ssl_server) -> None:
    srv = ssl_server(server_context(pki.server))
    exc, text = _refused(pki, srv.port, host="127.0.0.1")
    assert exc.errno == errno.EPROTO
    assert b"TLS_REMOTE_HOSTNAME" in text


def test_handshake_timeout(pki) -> None:
    with raw_listener() as lst:  # accepts TCP, never speaks TLS
        exc, text = _refused(pki, lst.getsockname()[1])
    assert exc.errno == errno.ETIMEDOUT
    assert b"handshake timeout" in text


def test_not_tls_at_all(pki) -> None:
    with raw_listener() as lst:
        def answer() -> None:
            conn, _ = lst.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

        t = threading.Thread(target=answer)
        t.start()
        exc, text = _refused(pki, lst.getsockname()[1])
        t.join(5)
    assert exc.errno == errno.EPROTO
    assert b"handshake failed" in text


def test_connection_refused_and_unresolvable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with ssa_engine.socket() as s, pytest.raises(ConnectionRefusedError) as info:
        s.connect(("localhost", port))
    assert "cannot connect to localhost" in str(info.value)
    with ssa_engine.socket() as s, pytest.raises(OSError) as info2:
        s.connect(("name.does-not-exist.invalid", 443))
    assert info2.value.errno == errno.EHOSTUNREACH
    assert "cannot resolve" in str(info2.value)


def test_lowering_min_version_below_policy(engine_factory, pki, ssl_server) -> None:
    eng = engine_factory("--level", "modern")
    s = ssa_engine.TLSSocket(engine_socket=eng.socket)
    with s:
        with pytest.raises(OSError) as info:
            s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_VERSION_MIN, ssa_engine.TLS_1_2)
        assert info.value.errno == errno.EPROTO
        text = s.getsockopt(IPPROTO_TLS, TLS_ERROR)
        assert b"below the minimum TLS 1.3" in text and b"policy" in text
        # raising it is fine, and reading it back gives the effective value
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_VERSION_MIN, ssa_engine.TLS_1_3)
        assert s.getsockopt(IPPROTO_TLS, ssa_engine.TLS_VERSION_MIN) == ssa_engine.TLS_1_3
    # the modern engine refuses a TLS 1.2-only server
    import ssl

    srv = ssl_server(server_context(pki.server, version=ssl.TLSVersion.TLSv1_2))
    s = ssa_engine.TLSSocket(engine_socket=eng.socket)
    with s:
        s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, pki.ca.pem)
        with pytest.raises(OSError) as info:
            s.connect(("localhost", srv.port))
        assert info.value.errno == errno.EPROTO
        assert b"protocol version" in s.getsockopt(IPPROTO_TLS, TLS_ERROR)


def test_enable_cipher_outside_policy_is_refused() -> None:
    with ssa_engine.socket() as s:
        with pytest.raises(OSError) as info:
            s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_ENABLE_CIPHER, "ECDHE-RSA-AES128-SHA")
        assert info.value.errno == errno.EPROTO
        assert b"not allowed" in s.getsockopt(IPPROTO_TLS, TLS_ERROR)
        with pytest.raises(OSError) as bad:
            s.setsockopt(IPPROTO_TLS, ssa_engine.TLS_DISABLE_CIPHER, "NO-SUCH-CIPHER")
        assert bad.value.errno == errno.EINVAL
