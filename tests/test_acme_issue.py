"""``ssa-admin cert issue`` against a real Pebble, every challenge answered for real."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import PolicyBuilder, Store

import ssa_engine

from .acme_server import PebbleServer
from .conftest import wait_for


def ssa_admin(*args: str, timeout: float = 120, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ssa_admin", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def issue(pebble: PebbleServer, state: Path, *names: str, extra: tuple[str, ...] = (),
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return ssa_admin("cert", "issue", *names, "--server", pebble.directory_url, "--ca-bundle",
                     str(pebble.ca_bundle), "--agree-tos", "--profile", "default",
                     "--state-dir", str(state), "--http-port", str(pebble.http_port),
                     "--tls-port", str(pebble.tls_port), "--json", *extra, env=env)


def current(state: Path, name: str) -> tuple[x509.Certificate, list[x509.Certificate], Path]:
    folder = state / "certs" / name / "current"
    certs = x509.load_pem_x509_certificates((folder / "fullchain.pem").read_bytes())
    return certs[0], certs[1:], folder


def verify(pebble: PebbleServer, leaf: x509.Certificate, chain: list[x509.Certificate],
           name: str) -> None:
    roots = Store(x509.load_pem_x509_certificates(pebble.roots_pem().encode()))
    if name.replace(".", "").isdigit():
        import ipaddress

        subject: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
    else:
        subject = x509.DNSName(name)
    PolicyBuilder().store(roots).build_server_verifier(subject).verify(leaf, chain)


def sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted([*ext.get_values_for_type(x509.DNSName),
                   *(str(i) for i in ext.get_values_for_type(x509.IPAddress))])


def test_http01_standalone_three_names_and_an_ip(pebble, tmp_path) -> None:
    state = tmp_path / "state"
    res = issue(pebble, state, "www.one.test", "one.test", "api.one.test", "127.0.0.1")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["name"] == "www.one.test" and doc["version"] == 1
    assert [s["step"] for s in doc["steps"]][:2] == ["account", "order"]
    assert "validated" in [s["step"] for s in doc["steps"]]
    leaf, chain, folder = current(state, "www.one.test")
    assert sans(leaf) == ["127.0.0.1", "api.one.test", "one.test", "www.one.test"]
    verify(pebble, leaf, chain, "api.one.test")
    verify(pebble, leaf, chain, "127.0.0.1")
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert (folder / "privkey.pem").stat().st_mode & 0o777 == 0o600
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["source"] == "acme" and meta["acme"]["challenge"] == "http-01"
    assert meta["acme"]["server"] == pebble.directory_url and meta["acme"]["ari_cert_id"]
    # the account is stored once, key 0600
    keys = list((state / "accounts").rglob("key.pem"))
    assert len(keys) == 1 and keys[0].stat().st_mode & 0o777 == 0o600
    listed = ssa_admin("cert", "list", "--json", "--state-dir", str(state))
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)
    assert entry["next_renewal"] and entry["next_renewal"] < entry["not_after"]
    shown = ssa_admin("cert", "show", "www.one.test", "--json", "--state-dir", str(state))
    assert shown.returncode == 0, shown.stderr
    renewal = json.loads(shown.stdout)["renewal"]
    assert renewal["source"] == "ari" and len(renewal["window"]) == 2  # the CA's window
    assert renewal["window"][0] <= renewal["due"] <= renewal["window"][1]


@pytest.mark.parametrize("key_type", ["ec-p384", "rsa-2048", "rsa-3072"])
def test_key_types(pebble, tmp_path, key_type: str) -> None:
    state = tmp_path / "state"
    res = issue(pebble, state, f"{key_type}.keys.test", extra=("--key-type", key_type))
    assert res.returncode == 0, res.stderr
    leaf, chain, _ = current(state, f"{key_type}.keys.test")
    key = leaf.public_key()
    if key_type.startswith("rsa"):
        assert isinstance(key, rsa.RSAPublicKey) and key.key_size == int(key_type[4:])
    else:
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size == 384
    verify(pebble, leaf, chain, f"{key_type}.keys.test")


def test_webroot(pebble, tmp_path) -> None:
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", pebble.http_port), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        state = tmp_path / "state"
        res = issue(pebble, state, "web.test", extra=("--webroot", str(root)))
        assert res.returncode == 0, res.stderr
    finally:
        server.shutdown()
        server.server_close()
    verify(pebble, *current(state, "web.test")[:2], "web.test")
    # the answers are gone, and so are the folders ssa-admin created
    assert not (root / ".well-known").exists()


def test_tls_alpn01_standalone(pebble, tmp_path) -> None:
    state = tmp_path / "state"
    res = issue(pebble, state, "alpn.test", extra=("--challenge", "tls-alpn-01"))
    assert res.returncode == 0, res.stderr
    verify(pebble, *current(state, "alpn.test")[:2], "alpn.test")


def test_tls_alpn01_standalone_waits_for_a_late_client_hello(tmp_path) -> None:
    """A validation client that connects, then sends its ClientHello later, still gets
    the challenge certificate (seen in CI: the responder dropped such connections)."""
    import hashlib
    import types

    import josepy as jose

    from ssa_admin.acme.responders import ACME_IDENTIFIER_OID, TLSALPN01, TlsAlpn01Standalone

    from .acme_server import free_port

    account_key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    chall = TLSALPN01(token=os.urandom(32))
    responder = TlsAlpn01Standalone(free_port())
    responder.start()
    try:
        responder.add("late.test", types.SimpleNamespace(chall=chall), account_key)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # RFC 8737: the validator checks the extension instead
        ctx.set_alpn_protocols(["acme-tls/1"])
        for delay in (0.0, 0.5):
            raw = socket.create_connection(("127.0.0.1", responder.port), timeout=10)
            time.sleep(delay)
            with ctx.wrap_socket(raw, server_hostname="late.test") as tls:
                assert tls.selected_alpn_protocol() == "acme-tls/1"
                der = tls.getpeercert(binary_form=True)
            ext = x509.load_der_x509_certificate(der).extensions.get_extension_for_oid(
                ACME_IDENTIFIER_OID)
            digest = hashlib.sha256(chall.key_authorization(account_key).encode()).digest()
            assert ext.critical and ext.value.value == b"\x04\x20" + digest
    finally:
        responder.stop()


def test_dns01_hook_with_a_wildcard(pebble, tmp_path) -> None:
    hook = tmp_path / "dns-hook.py"
    hook.write_text(textwrap.dedent(f"""
        import json, os, sys, urllib.request
        action, name = os.environ["SSA_DNS_ACTION"], os.environ["SSA_DNS_NAME"]
        assert sys.argv[1:] == [action, name, os.environ["SSA_DNS_VALUE"]]
        body = {{"host": name + "."}}
        if action == "add":
            body["value"] = os.environ["SSA_DNS_VALUE"]
        path = "/set-txt" if action == "add" else "/clear-txt"
        req = urllib.request.Request("{pebble.challtestsrv_api}" + path,
                                     data=json.dumps(body).encode(), method="POST")
        urllib.request.urlopen(req, timeout=10).read()
        with open({str(tmp_path / "hook.log")!r}, "a") as f:
            f.write(action + " " + name + "\\n")
    """))
    state = tmp_path / "state"
    res = issue(pebble, state, "*.wild.test", "wild.test",
                extra=("--challenge", "dns-01", "--dns-hook", f"{sys.executable} {hook}"))
    assert res.returncode == 0, res.stderr
    leaf, chain, _ = current(state, "wild.test")
    assert sans(leaf) == ["*.wild.test", "wild.test"]
    verify(pebble, leaf, chain, "anything.wild.test")
    log = (tmp_path / "hook.log").read_text().splitlines()
    assert log.count("add _acme-challenge.wild.test") == 2  # one TXT value per authorization
    assert log.count("remove _acme-challenge.wild.test") == 2


def test_wildcard_needs_dns01(pebble, tmp_path) -> None:
    res = issue(pebble, tmp_path / "state", "*.wild.test")
    assert res.returncode == 2 and "dns-01" in res.stderr


def test_eab(pebble_eab, tmp_path) -> None:
    state = tmp_path / "state"
    res = issue(pebble_eab, state, "eab.test")
    assert res.returncode == 1 and "External Account Binding" in res.stderr, res.stderr
    assert not (state / "certs" / "eab.test").exists()
    res = issue(pebble_eab, state, "eab.test", extra=(
        "--eab-kid", pebble_eab.eab_kid, "--eab-hmac-key", pebble_eab.eab_hmac_key))
    assert res.returncode == 0, res.stderr
    verify(pebble_eab, *current(state, "eab.test")[:2], "eab.test")


def test_failed_validation_explains_and_stores_nothing(pebble, tmp_path) -> None:
    # --webroot names a folder that the web server on the port does not serve
    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", pebble.http_port), NotFound)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    root = tmp_path / "not-served"
    root.mkdir()
    try:
        state = tmp_path / "state"
        res = issue(pebble, state, "elsewhere.test", extra=("--webroot", str(root)))
    finally:
        server.shutdown()
        server.server_close()
    assert res.returncode == 1
    assert "elsewhere.test: http-01 failed" in res.stderr, res.stderr
    assert "unauthorized" in res.stderr and "404" in res.stderr
    assert "what to do:" in res.stderr and "challenge: https://" in res.stderr
    # what the CA saw: the URL it fetched and the address it used
    assert "/.well-known/acme-challenge/" in res.stderr and "127.0.0.1" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (state / "certs" / "elsewhere.test" / "current").exists()
    assert not (root / ".well-known").exists()


def test_unreachable_ca_and_untrusted_ca(pebble, tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = ssa_admin("cert", "issue", "x.test", "--server", f"https://127.0.0.1:{port}/dir",
                    "--agree-tos", "--state-dir", str(tmp_path / "s"), timeout=120)
    assert res.returncode == 1 and "cannot reach the CA" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    res = ssa_admin("cert", "issue", "x.test", "--server", pebble.directory_url, "--agree-tos",
                    "--state-dir", str(tmp_path / "s"))
    assert res.returncode == 1 and "--ca-bundle" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "s" / "accounts").exists() or not list(
        (tmp_path / "s" / "accounts").rglob("account.json"))


def test_busy_port_is_a_clear_message(pebble, tmp_path) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", pebble.http_port))
        s.listen()
        res = issue(pebble, tmp_path / "state", "busy.test")
    assert res.returncode == 1
    assert f"port {pebble.http_port} is in use" in res.stderr and "--webroot" in res.stderr


def test_killed_issuance_leaves_the_store_consistent(pebble, tmp_path) -> None:
    state = tmp_path / "state"
    assert issue(pebble, state, "kill.test").returncode == 0
    before = (state / "certs" / "kill.test" / "current").resolve()
    hook = tmp_path / "slow-hook.sh"
    hook.write_text(f"#!/bin/sh\ntouch {tmp_path}/hook-started\nsleep 60\n")
    hook.chmod(0o755)
    errors = (tmp_path / "err").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssa_admin", "cert", "issue", "kill.test", "--server",
         pebble.directory_url, "--ca-bundle", str(pebble.ca_bundle), "--agree-tos",
         "--profile", "default", "--state-dir", str(state), "--challenge", "dns-01",
         "--dns-hook", str(hook)], stdout=subprocess.DEVNULL, stderr=errors,
        start_new_session=True)

    def started() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"ssa-admin ended early: {(tmp_path / 'err').read_text()}")
        return (tmp_path / "hook-started").exists()

    try:
        wait_for(started, 60, "the hook to start")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        errors.close()
    assert (state / "certs" / "kill.test" / "current").resolve() == before
    leaf, chain, _ = current(state, "kill.test")
    verify(pebble, leaf, chain, "kill.test")
    # the lock died with the process: the next run works
    res = issue(pebble, state, "kill.test")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["version"] == 2


def test_tls_alpn01_through_a_live_engine_listener(pebble, engine_factory, monkeypatch,
                                                   pki, tmp_path) -> None:
    state = tmp_path / "state"
    config = tmp_path / "config"
    (config / "profiles.d").mkdir(parents=True)
    exe = os.path.realpath(sys.executable)
    (config / "profiles.d" / "shop.yaml").write_text(
        f"match:\n  path: {exe}\nserver:\n  certificates: [boot, live.test]\n")
    boot = pki.ca.issue("boot", ["boot.test"])
    res = ssa_admin("cert", "import", "boot", "--cert", str(boot.cert), "--key", str(boot.key),
                    "--state-dir", str(state))
    assert res.returncode == 0, res.stderr
    eng = engine_factory("--config-dir", str(config), "--state-dir", str(state))
    monkeypatch.setenv("SSA_ENGINE_SOCKET", str(eng.socket))
    lst = ssa_engine.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lst.bind(("0.0.0.0", pebble.tls_port))
    lst.listen()  # the program's live TLS server, on the validation port
    accepted: list[ssa_engine.TLSSocket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = lst.accept()
            except OSError:
                return
            conn.sendall(b"hello from the app\n")
            accepted.append(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        res = issue(pebble, state, "live.test", extra=("--challenge", "tls-alpn-01", "--socket",
                                                        str(eng.socket)))
        assert res.returncode == 0, res.stderr
        assert "answered an ACME tls-alpn-01 validation" in eng.log.read_text()
        assert not accepted  # the CA's validation never reached accept()
        # the new certificate is served by SNI from now on (the store watcher)
        leaf = current(state, "live.test")[0]
        wanted = leaf.public_bytes(serialization.Encoding.DER)

        def fetch(ctx: ssl.SSLContext) -> bytes | None:
            with socket.create_connection(("127.0.0.1", pebble.tls_port), timeout=10) as raw, \
                    ctx.wrap_socket(raw, server_hostname="live.test") as tls:
                der = tls.getpeercert(binary_form=True)
                assert tls.recv(100) == b"hello from the app\n"
                return der

        look = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        look.check_hostname = False
        look.verify_mode = ssl.CERT_NONE  # only to see which certificate is served

        def served() -> bool:
            return fetch(look) == wanted

        wait_for(served, 15, "the listener to serve the issued certificate")
        strict = ssl.create_default_context(cadata=pebble.roots_pem())
        strict.load_verify_locations(cadata=pebble.intermediates_pem())
        assert fetch(strict) == wanted  # and it verifies up to Pebble's root
        # a renewal (tls-alpn-01 through the engine again) reaches the live listener:
        # openssl s_client sees the new certificate by SNI
        res = ssa_admin("cert", "renew", "live.test", "--force", "--state-dir", str(state),
                        "--socket", str(eng.socket), "--json")
        assert res.returncode == 0, res.stderr
        renewed = current(state, "live.test")[0]
        assert renewed.serial_number != leaf.serial_number

        def s_client_serial() -> int:
            out = subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{pebble.tls_port}",
                 "-servername", "live.test"],
                input=b"", capture_output=True, timeout=30).stdout
            pem = out[out.index(b"-----BEGIN CERTIFICATE-----"):]
            return x509.load_pem_x509_certificate(pem).serial_number

        wait_for(lambda: s_client_serial() == renewed.serial_number, 15,
                 "the listener to serve the renewed certificate")
    finally:
        lst.close()
        t.join(10)
        for c in accepted:
            c.close()
        time.sleep(0)


def test_bad_nonces_and_a_preferred_chain(tmp_path) -> None:
    """Pebble rejecting half the nonces (certbot gives up after one retry), and
    alternate roots: --preferred-chain picks the chain by its top issuer's CN."""
    from .acme_server import require_pebble, start_pebble

    require_pebble()
    (tmp_path / "pebble").mkdir()
    with start_pebble(tmp_path / "pebble", nonce_reject=50, alternate_roots=1) as server:
        roots = [x509.load_pem_x509_certificate(server.roots_pem(n).encode()) for n in (0, 1)]
        cn = roots[1].subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        state = tmp_path / "state"
        res = issue(server, state, "nonce.test", extra=("--preferred-chain", str(cn)))
        assert res.returncode == 0, res.stderr
        leaf, chain, _ = current(state, "nonce.test")
        assert chain[-1].issuer == roots[1].subject  # the alternate chain was chosen
        PolicyBuilder().store(Store([roots[1]])).build_server_verifier(
            x509.DNSName("nonce.test")).verify(leaf, chain)
