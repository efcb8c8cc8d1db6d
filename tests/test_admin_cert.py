"""``ssa-admin cert import | list | show``: exit codes, visible output, the pinned JSON."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from ssa_admin.cli import app
from ssa_engine import store as st

from .pki import PKI, Pair

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def run(state: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["cert", *args], env={"SSA_STATE_DIR": str(state)})
    # an error must be a message, never an exception escaping to a traceback
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exception
    return result.exit_code, result.stdout, result.stderr


def import_(state: Path, name: str, pair: Pair, *extra: str) -> tuple[int, str, str]:
    return run(state, "import", name, "--cert", str(pair.cert), "--key", str(pair.key), *extra)


def _leaf(pair: Pair) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pair.cert.read_bytes())


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _pin(cert: x509.Certificate) -> str:
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def _days_left(cert: x509.Certificate) -> int:
    return (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)) // dt.timedelta(days=1)


# -- import ------------------------------------------------------------------------
def test_import_stores_the_certificate_and_says_where(state: Path, pki: PKI) -> None:
    code, out, err = import_(state, "example.com", pki.server)
    assert (code, err) == (0, "")
    current = state / "certs" / "example.com" / "current"
    assert out.splitlines() == [
        f"Imported example.com as version 1 (ec-p256, localhost, 127.0.0.1, ::1; valid until "
        f"{_iso(_leaf(pki.server).not_valid_after_utc)}, {_days_left(_leaf(pki.server))} days "
        "left).",
        f"Certificate chain: {current / 'fullchain.pem'}",
        f"Private key:       {current / 'privkey.pem'}",
    ]
    assert (current / "fullchain.pem").read_bytes() == pki.server.cert.read_bytes()
    assert stat.S_IMODE(os.stat(current / "privkey.pem").st_mode) == 0o600
    # a second import is the next version
    code, out, _ = import_(state, "example.com", pki.server_rsa)
    assert code == 0 and out.startswith("Imported example.com as version 2 (rsa-2048,")
    assert os.readlink(current) == "versions/0002"


def test_import_json(state: Path, pki: PKI) -> None:
    code, out, err = run(state, "import", "withchain", "--cert", str(pki.server.cert),
                         "--key", str(pki.server.key), "--chain", str(pki.ca.pem), "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    folder = state / "certs" / "withchain"
    assert doc["name"] == "withchain" and doc["version"] == 1
    assert doc["path"] == str(folder)
    assert doc["files"] == {k: str(folder / "current" / f"{k}.pem")
                            for k in ("cert", "chain", "fullchain", "privkey")}
    assert doc["warnings"] == []
    assert Path(doc["files"]["chain"]).read_bytes() == pki.ca.pem.read_bytes()


def test_import_warns_about_a_certificate_not_yet_valid(state: Path, pki: PKI) -> None:
    code, out, err = import_(state, "early", pki.not_yet_valid)
    assert code == 0 and out.startswith("Imported early as version 1")
    assert err.startswith(f"ssa-admin: warning: {pki.not_yet_valid.cert}: the certificate for "
                          "localhost, 127.0.0.1, ::1 is not valid until ")


@pytest.mark.parametrize(("args", "message"), [
    (lambda p: ["ok", "--cert", str(p.expired.cert), "--key", str(p.expired.key)],
     lambda p: f"ssa-admin: {p.expired.cert}: the certificate for localhost, 127.0.0.1, ::1 "
               "expired on "),
    (lambda p: ["ok", "--cert", str(p.server.cert), "--key", str(p.client.key)],
     lambda p: f"ssa-admin: {p.client.key}: this private key does not belong to the "
               f"certificate in {p.server.cert} (CN=localhost, key sha256/"),
    (lambda p: ["ok", "--cert", str(p.server.cert), "--key", str(p.server.key), "--chain",
                str(p.other_ca.pem)],
     lambda p: f"ssa-admin: {p.other_ca.pem}: the chain is out of order or incomplete: "),
    (lambda p: ["ok", "--cert", str(p.dir / "missing.pem"), "--key", str(p.server.key)],
     lambda p: f"ssa-admin: {p.dir / 'missing.pem'}: certificate file not found"),
    (lambda p: ["ok", "--cert", str(p.server.key), "--key", str(p.server.key)],
     lambda p: f"ssa-admin: {p.server.key}: no PEM certificate found (it holds a private key)"),
    (lambda p: ["../../etc", "--cert", str(p.server.cert), "--key", str(p.server.key)],
     lambda p: "ssa-admin: certificate name '../../etc': must not contain a path separator"),
])
def test_import_errors_exit_1_with_one_clear_line(state: Path, pki: PKI, args, message) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run(state, "import", *args(pki))
    assert code == 1
    assert out == ""
    assert err.startswith(message(pki)), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not state.exists() or run(state, "list", "--json")[1] == "[]\n"


def test_import_while_another_writer_holds_the_name(state: Path, pki: PKI,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(st.store, "DEFAULT_LOCK_TIMEOUT", 0.2)
    with st.Store(state).lock("busy"):
        code, out, err = import_(state, "busy", pki.server)
    assert code == 1 and out == ""
    assert err == (f"ssa-admin: {state / 'certs' / '.locks' / 'busy.lock'}: certificate 'busy' "
                   f"is being changed by another process (process {os.getpid()}); gave up after "
                   "0.2 s. Try again when it has finished.\n")
    assert import_(state, "busy", pki.server)[0] == 0


def test_import_does_not_contact_the_engine(state: Path, pki: PKI, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "engine.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(4)
        listener.setblocking(False)
        monkeypatch.setenv("SSA_ENGINE_SOCKET", str(path))
        assert import_(state, "quiet", pki.server)[0] == 0
        assert run(state, "list")[0] == 0
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody knocked


# -- list --------------------------------------------------------------------------
def test_list_json_has_the_pinned_fields(state: Path, pki: PKI) -> None:
    assert import_(state, "b-rsa", pki.server_rsa)[0] == 0
    assert import_(state, "a-ec", pki.server)[0] == 0
    assert import_(state, "c-other", pki.wrong_host)[0] == 0
    code, out, err = run(state, "list", "--json")
    assert (code, err) == (0, "")
    docs = json.loads(out)
    assert [d["name"] for d in docs] == ["a-ec", "b-rsa", "c-other"]
    for doc, pair, kind in ((docs[0], pki.server, "ec-p256"), (docs[1], pki.server_rsa, "rsa-2048"),
                            (docs[2], pki.wrong_host, "ec-p256")):
        leaf = _leaf(pair)
        assert doc["domains"] == (["other.example"] if pair is pki.wrong_host
                                  else ["localhost", "127.0.0.1", "::1"])
        assert doc["not_after"] == _iso(leaf.not_valid_after_utc)
        assert dt.datetime.fromisoformat(doc["not_after"]) == leaf.not_valid_after_utc
        assert doc["not_before"] == _iso(leaf.not_valid_before_utc)
        assert isinstance(doc["days_left"], int) and doc["days_left"] == _days_left(leaf)
        assert doc["issuer"] == leaf.issuer.rfc4514_string() == "CN=Test Root CA,O=Test,C=US"
        assert doc["key_type"] == kind
        assert doc["path"] == str(state / "certs" / doc["name"])
        assert Path(doc["path"], "current", "fullchain.pem").read_bytes() == pair.cert.read_bytes()
        assert doc["spki_pin"] == _pin(leaf)
        assert doc["serial"] == format(leaf.serial_number, "x")
        assert (doc["version"], doc["source"], doc["status"]) == (1, "import", "valid")


def test_list_plain_text_when_not_a_terminal(state: Path, pki: PKI) -> None:
    assert import_(state, "example.com", pki.server)[0] == 0
    code, out, _ = run(state, "list")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].split() == ["name", "domains", "key", "type", "issuer", "not", "after",
                                "days", "left", "next", "renewal", "status"]
    leaf = _leaf(pki.server)
    assert lines[1].split("  ")[0] == "example.com"
    for cell in ("localhost, 127.0.0.1, ::1", "ec-p256", "CN=Test Root CA,O=Test,C=US",
                 _iso(leaf.not_valid_after_utc), "- (imported)", "valid"):
        assert cell in lines[1]
    assert "\x1b[" not in out and "\u2502" not in out and "\u2500" not in out  # no colour, no box


def test_list_empty_store(state: Path) -> None:
    assert run(state, "list", "--json") == (0, "[]\n", "")
    assert run(state, "list") == (0, f"No certificates in {state / 'certs'}.\n", "")


def test_list_reports_a_damaged_entry_and_still_lists_the_rest(state: Path, pki: PKI) -> None:
    assert import_(state, "good", pki.server)[0] == 0
    assert import_(state, "bad", pki.server)[0] == 0
    meta = state / "certs" / "bad" / "versions" / "0001" / "meta.json"
    meta.write_text("{")
    code, out, err = run(state, "list", "--json")
    assert code == 1
    docs = json.loads(out)
    assert docs[0]["name"] == "bad" and docs[0]["error"].startswith(
        f"{meta}: not valid store metadata")
    assert docs[1]["name"] == "good" and docs[1]["key_type"] == "ec-p256"
    assert err.startswith(f"ssa-admin: {meta}: not valid store metadata")


# -- show --------------------------------------------------------------------------
def test_show_json(state: Path, pki: PKI) -> None:
    assert import_(state, "web", pki.server_rsa)[0] == 0
    assert import_(state, "web", pki.server, "--chain", str(pki.ca.pem))[0] == 0
    code, out, err = run(state, "show", "web", "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    folder = state / "certs" / "web"
    leaf = _leaf(pki.server)
    assert doc["name"] == "web" and doc["path"] == str(folder)
    assert doc["version"] == 2 and doc["version_path"] == str(folder / "versions" / "0002")
    assert doc["spki_pin"] == _pin(leaf)
    assert doc["not_before"] == _iso(leaf.not_valid_before_utc)
    assert doc["not_after"] == _iso(leaf.not_valid_after_utc)
    assert doc["subject"] == "CN=localhost,O=Example,C=US"
    assert [c["subject"] for c in doc["chain"]] == ["CN=localhost,O=Example,C=US",
                                                    "CN=Test Root CA,O=Test,C=US"]
    assert doc["files"]["privkey"] == str(folder / "current" / "privkey.pem")
    assert [(v["version"], v["current"]) for v in doc["versions"]] == [(1, False), (2, True)]
    assert doc["versions"][0]["serial"] == format(_leaf(pki.server_rsa).serial_number, "x")
    assert doc["acme"] is None


def test_show_plain_text(state: Path, pki: PKI) -> None:
    assert import_(state, "web", pki.server)[0] == 0
    code, out, _ = run(state, "show", "web")
    fields = dict(line.split(":", 1) for line in out.splitlines())
    fields = {k: v.strip() for k, v in fields.items()}
    assert code == 0
    assert fields["SPKI pin"] == _pin(_leaf(pki.server))
    assert fields["domains"] == "localhost, 127.0.0.1, ::1"
    assert fields["privkey file"] == str(state / "certs" / "web" / "current" / "privkey.pem")
    assert fields["chain[0]"] == "CN=localhost,O=Example,C=US"
    assert fields["not after"] == _iso(_leaf(pki.server).not_valid_after_utc)
    assert fields["version"].startswith("1 of 1 (")


def test_show_unknown_and_invalid_names(state: Path) -> None:
    assert run(state, "show", "nope") == (
        1, "", f"ssa-admin: no certificate named 'nope' in {state / 'certs'}\n")
    code, _, err = run(state, "show", "a/../../b")
    assert code == 1 and err == ("ssa-admin: certificate name 'a/../../b': must not contain a "
                                 "path separator\n")


# -- the installed entry point -----------------------------------------------------
def test_entry_point_in_a_subprocess(state: Path, pki: PKI) -> None:
    cmd = [sys.executable, "-c", "from ssa_admin.cli import main; main()", "cert"]
    env = {**os.environ, "SSA_STATE_DIR": str(state)}
    bad = subprocess.run([*cmd, "import", "x", "--cert", str(pki.expired.cert), "--key",
                          str(pki.expired.key)], env=env, capture_output=True, text=True,
                         timeout=20)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith(f"ssa-admin: {pki.expired.cert}: the certificate for ")
    assert "Traceback" not in bad.stderr
    ok = subprocess.run([*cmd, "import", "x", "--cert", str(pki.server.cert), "--key",
                         str(pki.server.key)], env=env, capture_output=True, text=True,
                        timeout=20)
    assert ok.returncode == 0, ok.stderr
    listed = subprocess.run([*cmd, "list", "--json"], env=env, capture_output=True, text=True,
                            timeout=20)
    assert listed.returncode == 0
    assert [d["name"] for d in json.loads(listed.stdout)] == ["x"]
