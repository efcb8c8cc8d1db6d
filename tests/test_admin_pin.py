"""``ssa-admin pin add | list | remove`` through the real CLI, and ``spki_pin``."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import pty
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ssa_engine.store.pins import chain_pins, spki_pin

from .conftest import SSLServer, free_port, server_context
from .pki import PKI, Pair

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(60)

P1 = "sha256/" + base64.b64encode(b"\x01" * 32).decode()
P2 = "sha256/" + base64.b64encode(b"\x02" * 32).decode()
P3 = "sha256/" + base64.b64encode(b"\x03" * 32).decode()

COMMENTED = f"""\
# Default TLS policy of this machine.
level: default   # follows the system crypto-policies

pins:
  # the payment gateway: its CA's intermediate and our backup key
  pay.example.com:
    - {P1}   # intermediate
  other.example: ["{P2}"]

verify:
  verify_depth: 5   # enough for any public chain
"""


class CLI:
    def __init__(self, tmp: Path) -> None:
        self.config = tmp / "config"
        self.config.mkdir()
        self.env = {**os.environ, "SSA_CONFIG_DIR": str(self.config),
                    "SSA_ENGINE_SOCKET": str(tmp / "no-engine.sock")}

    @property
    def main(self) -> Path:
        return self.config / "ssa.yaml"

    def __call__(self, *args: str, env: dict[str, str] | None = None
                 ) -> tuple[int, str, str]:
        proc = subprocess.run([sys.executable, "-m", "ssa_admin", "pin", *args],
                              capture_output=True, text=True, cwd=REPO, timeout=40,
                              env=env or self.env, stdin=subprocess.DEVNULL)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, proc.stdout, proc.stderr

    def listed(self) -> list[dict[str, object]]:
        code, out, err = self("list", "--json")
        assert code == 0, err
        return list(json.loads(out))


@pytest.fixture
def cli(tmp_path: Path) -> CLI:
    return CLI(tmp_path)


def _pin(cert: x509.Certificate) -> str:
    """Independently of ssa_engine.store.pins: re-encode the parsed key."""
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# -- add / list / remove -----------------------------------------------------------
def test_round_trip_keeps_the_administrators_comments(cli: CLI) -> None:
    cli.main.write_text(COMMENTED)
    code, out, err = cli("add", "Pay.Example.COM.", P2, P1)
    assert code == 0, err
    assert out.splitlines() == [
        f"Pinned pay.example.com in ssa.yaml ({cli.main}): 1 added, 2 in all.",
        f"  + {P2}",
    ]
    assert f"note: {P1} is already pinned for pay.example.com in ssa.yaml" in err
    assert "warning: no engine is running" in err  # a stopped engine is only a warning
    assert cli.main.read_text() == COMMENTED.replace(
        f"    - {P1}   # intermediate\n", f"    - {P1}   # intermediate\n    - {P2}\n")

    code, out, err = cli("add", "new.example", P3)
    assert code == 0, err
    text = cli.main.read_text()
    assert f"  new.example:\n    - {P3}\n" in text
    for line in COMMENTED.splitlines():
        assert line in text

    assert cli.listed() == [
        {"host": "pay.example.com", "pins": [P1, P2], "where": "ssa.yaml", "file": str(cli.main)},
        {"host": "other.example", "pins": [P2], "where": "ssa.yaml", "file": str(cli.main)},
        {"host": "new.example", "pins": [P3], "where": "ssa.yaml", "file": str(cli.main)},
    ]
    code, out, _ = cli("list")
    assert code == 0
    assert out.splitlines()[0].split() == ["host", "where", "pin"]
    assert out.splitlines()[1].split() == ["pay.example.com", "ssa.yaml", P1]
    assert len(out.splitlines()) == 5

    # removing a pin puts back exactly what the administrator wrote
    code, out, err = cli("remove", "pay.example.com", P2)
    assert code == 0, err
    assert out.startswith("Removed 1 pin(s) of pay.example.com from ssa.yaml")
    assert cli.main.read_text() == COMMENTED.replace(
        "\n\nverify:", f"\n  new.example:\n    - {P3}\n\nverify:")
    code, out, err = cli("remove", "new.example")
    assert code == 0, err
    assert out.startswith("Unpinned new.example in ssa.yaml")
    text = cli.main.read_text()
    assert "new.example" not in text
    for line in COMMENTED.splitlines():
        assert line in text


def test_edits_keep_the_administrators_indentation(cli: CLI) -> None:
    """Lists flush with their key and four-space mappings stay that way."""
    original = (
        "# written by hand, in another style\n"
        "level: default\n"
        "tls:\n"
        "    ciphersuites:\n"
        "    - TLS_AES_256_GCM_SHA384   # first\n"
        "    - TLS_AES_128_GCM_SHA256\n"
        "pins:\n"
        "    pay.example.com:\n"
        f"    - {P1}\n"
    )
    cli.main.write_text(original)
    code, _, err = cli("add", "pay.example.com", P2)
    assert code == 0, err
    assert cli.main.read_text() == original + f"    - {P2}\n"
    code, _, err = cli("add", "new.example", P3)
    assert code == 0, err
    assert cli.main.read_text() == original + f"    - {P2}\n    new.example:\n    - {P3}\n"
    code, _, err = cli("remove", "new.example")
    assert code == 0, err
    code, _, err = cli("remove", "pay.example.com", P2)
    assert code == 0, err
    assert cli.main.read_text() == original


def test_adding_only_known_pins_changes_nothing(cli: CLI) -> None:
    cli.main.write_text(COMMENTED)
    before = cli.main.stat().st_mtime_ns
    code, out, err = cli("add", "other.example", P2)
    assert code == 0
    assert out.startswith("Nothing changed")
    assert "already pinned" in err and "engine" not in err
    assert cli.main.stat().st_mtime_ns == before


def test_removing_the_last_pin_removes_the_host(cli: CLI) -> None:
    code, _, err = cli("add", "solo.example", P1)
    assert code == 0, err
    assert cli.listed() == [{"host": "solo.example", "pins": [P1], "where": "ssa.yaml",
                             "file": str(cli.main)}]
    code, out, err = cli("remove", "solo.example", P1, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["removed"], doc["pins"], doc["unpinned"]) == ([P1], [], True)
    assert doc["engine"]["running"] is False
    assert "pins" not in cli.main.read_text()  # no empty list, no empty mapping
    assert cli.listed() == []
    code, out, _ = cli("list")
    assert (code, out) == (0, "No pins in ssa.yaml or any applied profile.\n")
    # and what is not pinned cannot be removed
    code, out, err = cli("remove", "solo.example")
    assert (code, out) == (1, "")
    assert "solo.example has no pins in ssa.yaml" in err


def test_remove_refuses_a_pin_the_host_does_not_have(cli: CLI) -> None:
    cli.main.write_text(COMMENTED)
    code, out, err = cli("remove", "pay.example.com", P3)
    assert (code, out) == (1, "")
    assert f"{P3} is not pinned for pay.example.com in ssa.yaml" in err
    assert "nothing changed" in err
    assert cli.main.read_text() == COMMENTED


def test_pins_in_a_profile(cli: CLI) -> None:
    profile = cli.config / "profiles.d" / "wget.yaml"
    profile.parent.mkdir()
    original = "# wget fetches our updates\nmatch:\n  name: wget\nlevel: modern\n"
    profile.write_text(original)
    cli.main.write_text(COMMENTED)
    code, out, err = cli("add", "updates.example.org", P1, P2, "--profile", "wget")
    assert code == 0, err
    assert out.startswith(f"Pinned updates.example.org in profile wget ({profile}): 2 added")
    assert cli.main.read_text() == COMMENTED
    assert profile.read_text() == original + f"pins:\n  updates.example.org:\n    - {P1}\n    - {P2}\n"
    listed = cli.listed()
    assert listed[-1] == {"host": "updates.example.org", "pins": [P1, P2],
                          "where": "profile wget", "file": str(profile)}
    assert [d["where"] for d in listed] == ["ssa.yaml", "ssa.yaml", "profile wget"]
    code, out, _ = cli("list", "--profile", "wget", "--json")
    assert code == 0 and [d["host"] for d in json.loads(out)] == ["updates.example.org"]

    # the host is in the profile, not in ssa.yaml: the error says where to look
    code, _, err = cli("remove", "updates.example.org")
    assert code == 1 and "it is pinned in profile wget (use --profile)" in err
    assert cli("remove", "updates.example.org", "--profile", "wget")[0] == 0
    assert profile.read_text() == original

    code, _, err = cli("add", "x.example", P1, "--profile", "curl")
    assert code == 1
    assert "no applied profile 'curl'" in err and "applied: wget" in err


@pytest.mark.parametrize("host, message", [
    ("bad_host", "'bad_host' is not a host name, *.domain or IP address"),
    ("*.com", "'*.com': a wildcard needs at least two labels"),
    ("x-.example", "'x-.example' is not a host name"),
    ("", "'' is not a host name"),
])
def test_invalid_host(cli: CLI, host: str, message: str) -> None:
    code, out, err = cli("add", host, P1)
    assert (code, out) == (1, "")
    assert message in err
    assert not cli.main.exists()


def test_invalid_pins_are_all_named_and_nothing_is_written(cli: CLI) -> None:
    cli.main.write_text(COMMENTED)
    short = "sha256/" + base64.b64encode(b"\x01" * 20).decode()
    code, out, err = cli("add", "pay.example.com", P3, "sha1/abc=", short)
    assert (code, out) == (1, "")
    assert "'sha1/abc=' is not a pin: expected sha256/ and the base64 of a SHA-256" in err
    assert f"{short!r} is not a pin" in err
    assert err.rstrip().endswith("nothing changed")
    assert cli.main.read_text() == COMMENTED


def test_wildcards_and_ip_addresses_are_hosts(cli: CLI) -> None:
    assert cli("add", "*.Example.com", P1)[0] == 0
    assert cli("add", "2001:DB8::1", P2)[0] == 0
    assert [d["host"] for d in cli.listed()] == ["*.example.com", "2001:db8::1"]


def test_a_broken_file_is_reported_not_overwritten(cli: CLI) -> None:
    broken = "level: default\npins: [unclosed\n"
    cli.main.write_text(broken)
    code, _, err = cli("add", "a.example", P1)
    assert code == 1
    assert f"{cli.main}:" in err and "invalid YAML" in err
    assert cli.main.read_text() == broken
    code, _, err = cli("list")
    assert code == 1 and "invalid YAML" in err


def test_usage_errors_exit_2(cli: CLI) -> None:
    assert cli("add", "a.example")[0] == 2  # neither pins nor --from
    assert cli("add", "a.example", P1, "--select", "0")[0] == 2
    assert cli("add", "a.example", "--from", "host:notaport")[0] == 2
    assert cli("add", "a.example", "--from", "host", "--json")[0] == 2  # --json asks nothing
    assert cli("add", "*.a.example", "--from", "127.0.0.1", "--yes")[0] == 2
    assert not cli.main.exists()


def test_add_reloads_a_running_engine(tmp_path: Path, engine_factory: Callable[..., object]
                                      ) -> None:
    eng = engine_factory()
    cli = CLI(tmp_path)
    env = {**cli.env, "SSA_CONFIG_DIR": str(eng.config),  # type: ignore[attr-defined]
           "SSA_ENGINE_SOCKET": str(eng.socket)}  # type: ignore[attr-defined]
    code, out, err = cli("add", "a.example", P1, env=env)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1].startswith("reloaded")


# -- add --from: the live chain ----------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@pytest.fixture(scope="module")
def three_level(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """root -> intermediate -> leaf (localhost, 127.0.0.1): a chain like a public CA's."""
    d = tmp_path_factory.mktemp("chain")
    now = dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    inter_key = ec.generate_private_key(ec.SECP384R1())
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def cert(subject: str, issuer: str, key, signer, *, ca: bool, sans=None):  # type: ignore[no-untyped-def]
        b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(days=1))
             .not_valid_after(now + dt.timedelta(days=20 if ca else 10))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                              False, False), critical=True)
        else:
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                critical=False)
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return b.sign(signer, hashes.SHA256())

    import ipaddress

    root = cert("Pin Test Root", "Pin Test Root", root_key, root_key, ca=True)
    inter = cert("Pin Test Intermediate", "Pin Test Root", inter_key, root_key, ca=True)
    leaf = cert("localhost", "Pin Test Intermediate", leaf_key, inter_key, ca=False,
                sans=[x509.DNSName("localhost"),
                      x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    pem = serialization.Encoding.PEM
    (d / "root.pem").write_bytes(root.public_bytes(pem))
    (d / "leaf.pem").write_bytes(leaf.public_bytes(pem))
    (d / "chain.pem").write_bytes(leaf.public_bytes(pem) + inter.public_bytes(pem))
    (d / "leaf.key").write_bytes(leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return {"root": root, "inter": inter, "leaf": leaf, "ca": d / "root.pem",
            "pair": Pair(d / "leaf.pem", d / "leaf.key", d / "chain.pem")}


def _quiet(conn: object) -> None:
    """The client reads the chain and goes: nothing to serve."""


@pytest.fixture
def chain_server(three_level: dict[str, object], ssl_server: Callable[..., SSLServer]
                 ) -> SSLServer:
    return ssl_server(server_context(three_level["pair"]), _quiet)


def test_from_pins_the_leaf_and_its_issuer(cli: CLI, three_level: dict[str, object],
                                           chain_server: SSLServer) -> None:
    cli.main.write_text(COMMENTED)
    leaf, inter, root = three_level["leaf"], three_level["inter"], three_level["root"]
    code, out, err = cli("add", "localhost", "--from", f"127.0.0.1:{chain_server.port}",
                         "--cafile", str(three_level["ca"]), "--yes")
    assert code == 0, err
    expected = [_pin(leaf), _pin(inter)]  # type: ignore[arg-type]
    assert cli.listed()[-1]["pins"] == expected
    assert out.startswith(f"127.0.0.1:{chain_server.port}: TLSv1.3, chain verified for "
                          f"localhost against {three_level['ca']}.")
    # the table: position, role, subject CN, issuer CN, not after, key, pin
    rows = {line.split()[0]: line for line in out.splitlines()
            if line[:1].isdigit() and "sha256/" in line}
    assert rows["0"].split()[1:3] == ["leaf", "localhost"]
    assert "RSA 2048" in rows["0"] and rows["0"].endswith(_pin(leaf))  # type: ignore[arg-type]
    assert "EC P-384" in rows["1"] and rows["1"].endswith(_pin(inter))  # type: ignore[arg-type]
    assert rows["2"].split()[1] == "root" and rows["2"].endswith(_pin(root))  # type: ignore[arg-type]
    assert "RFC 7469 section 4.3" in out and "backup" in out
    assert "To pin: 0 (leaf), 1 (intermediate)." in out
    for line in COMMENTED.splitlines():
        assert line in cli.main.read_text()


def test_from_verifies_with_the_policys_trust_store(cli: CLI, three_level: dict[str, object],
                                                    chain_server: SSLServer) -> None:
    # no --cafile: the trust store the engine would use for this host, not the system's
    cli.main.write_text(f"verify:\n  trust_store: {three_level['ca']}\n")
    code, out, err = cli("add", "localhost", "--from", f"localhost:{chain_server.port}", "--yes")
    assert code == 0, err
    assert f"chain verified for localhost against {three_level['ca']}." in out
    assert len(cli.listed()[0]["pins"]) == 2  # type: ignore[arg-type]


def test_from_with_select_and_json(cli: CLI, three_level: dict[str, object],
                                   chain_server: SSLServer) -> None:
    code, out, err = cli("add", "localhost", P1, "--from", f"localhost:{chain_server.port}",
                         "--cafile", str(three_level["ca"]), "--yes", "--select", "2", "--json")
    assert code == 0, err
    doc = json.loads(out)
    certs = [three_level[k] for k in ("leaf", "inter", "root")]
    assert [r["pin"] for r in doc["chain"]] == [_pin(c) for c in certs]  # type: ignore[arg-type]
    assert [r["role"] for r in doc["chain"]] == ["leaf", "intermediate", "root"]
    assert doc["added"] == doc["pins"] == [P1, _pin(certs[2])]  # type: ignore[arg-type]
    assert cli.listed()[0]["pins"] == [P1, _pin(certs[2])]  # type: ignore[arg-type]


def test_from_needs_a_confirmation_or_yes(cli: CLI, three_level: dict[str, object],
                                          chain_server: SSLServer) -> None:
    code, out, err = cli("add", "localhost", "--from", f"127.0.0.1:{chain_server.port}",
                         "--cafile", str(three_level["ca"]))
    assert code == 1
    assert "Verified chain" in out  # shown, then nothing written without a yes
    assert "needs a confirmation" in err and "--yes" in err
    assert not cli.main.exists()


def _on_terminal(cli: CLI, args: list[str], answer: bytes) -> str:
    """Run ``ssa-admin pin ARGS`` on a pseudo-terminal; type ``answer`` at the prompt."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: become the CLI
        os.chdir(REPO)
        os.execvpe(sys.executable, [sys.executable, "-m", "ssa_admin", "pin", *args],
                   {**cli.env, "COLUMNS": "160"})
    out, answered = b"", False
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], 30)
            assert ready, out.decode(errors="replace")
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if not answered and b"Positions to pin" in out:
                os.write(fd, answer)
                answered = True
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    return text


def test_from_asks_which_positions_to_pin(cli: CLI, three_level: dict[str, object],
                                          chain_server: SSLServer) -> None:
    out = _on_terminal(cli, ["add", "localhost", "--from", f"127.0.0.1:{chain_server.port}",
                             "--cafile", str(three_level["ca"])], b"1,2\r")
    assert "Verified chain (leaf first)" in out and "[0,1]" in out  # the default offered
    inter, root = three_level["inter"], three_level["root"]
    assert cli.listed()[0]["pins"] == [_pin(inter), _pin(root)]  # type: ignore[arg-type]


def test_from_refuses_a_chain_that_does_not_verify(cli: CLI, pki: PKI,
                                                   chain_server: SSLServer) -> None:
    cli.main.write_text(COMMENTED)
    code, out, err = cli("add", "localhost", "--from", f"127.0.0.1:{chain_server.port}",
                         "--cafile", str(pki.ca.pem), "--yes")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert "the certificate chain does not verify for localhost" in err
    assert "unable to get local issuer certificate" in err
    assert "sha256/..." in err  # the way out: explicit pins
    assert cli.main.read_text() == COMMENTED


def test_from_checks_the_host_name(cli: CLI, three_level: dict[str, object],
                                   chain_server: SSLServer) -> None:
    # the certificate is for localhost; pinning another name through it is refused
    code, _, err = cli("add", "www.example.org", "--from", f"127.0.0.1:{chain_server.port}",
                       "--cafile", str(three_level["ca"]), "--yes")
    assert code == 1
    assert "does not verify for www.example.org" in err and "Hostname mismatch" in err
    assert not cli.main.exists()


def test_from_an_unreachable_port(cli: CLI) -> None:
    port = free_port()
    code, out, err = cli("add", "localhost", "--from", f"127.0.0.1:{port}", "--yes")
    assert (code, out) == (1, "")
    assert err == f"ssa-admin: 127.0.0.1:{port}: connection refused\n"
    assert not cli.main.exists()


@pytest.fixture
def plain_http() -> Iterator[int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def answer() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    srv.close()
    t.join(5)


def test_from_a_server_that_is_not_tls(cli: CLI, plain_http: int) -> None:
    code, _, err = cli("add", "localhost", "--from", f"127.0.0.1:{plain_http}", "--yes")
    assert code == 1
    assert err.startswith(f"ssa-admin: 127.0.0.1:{plain_http}: ")
    assert "does not speak TLS" in err or "TLS handshake failed" in err
    assert err.count("\n") == 1


def test_from_a_name_that_does_not_resolve(cli: CLI) -> None:
    code, _, err = cli("add", "nowhere.invalid", "--from", "nowhere.invalid:443", "--yes")
    assert code == 1
    assert err.startswith("ssa-admin: cannot resolve nowhere.invalid")


# -- spki_pin ----------------------------------------------------------------------
def _openssl_pin(pem: Path) -> str:
    """RFC 7469 appendix A, with the openssl command line."""
    out = subprocess.run(
        f"openssl x509 -in '{pem}' -pubkey -noout | openssl pkey -pubin -outform der"
        " | openssl dgst -sha256 -binary | base64",
        shell=True, check=True, capture_output=True, text=True, timeout=20).stdout
    return "sha256/" + out.strip()


def test_spki_pin_matches_openssl(pki: PKI, tmp_path: Path,
                                  three_level: dict[str, object]) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    now = dt.datetime.now(dt.UTC)
    ed = (x509.CertificateBuilder().subject_name(_name("ed")).issuer_name(_name("ed"))
          .public_key(key.public_key()).serial_number(1)
          .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
          .sign(key, None))
    (tmp_path / "ed.pem").write_bytes(ed.public_bytes(serialization.Encoding.PEM))
    for pem in (pki.server.cert, pki.server_rsa.cert, pki.ca.pem, tmp_path / "ed.pem",
                three_level["pair"].cert):  # type: ignore[attr-defined]
        cert = _load(pem)
        assert spki_pin(cert) == _openssl_pin(pem) == _pin(cert), pem


def test_chain_pins_in_chain_order(three_level: dict[str, object]) -> None:
    certs = [three_level[k] for k in ("leaf", "inter", "root")]
    assert chain_pins(certs) == [_pin(c) for c in certs]  # type: ignore[arg-type]
    assert chain_pins([]) == []
