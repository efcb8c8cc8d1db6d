"""``ssa-admin account`` through the real CLI against a real Pebble.

What the CA holds is checked with the ``acme`` library, signing requests
with the key files the CLI wrote: POST-as-GET on the account URL (kid) and
newAccount with onlyReturnExisting (jwk).
"""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import josepy as jose
import pytest
from acme import client, messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ssa_admin.acme.accounts import AccountStore, generate_key
from ssa_admin.acme.accounts import rollover as lib_rollover
from ssa_admin.acme.client import Acme, signing_alg
from ssa_admin.acme.errors import AcmeError

from .acme_server import PebbleServer
from .pki import CA

pytestmark = pytest.mark.timeout(120)


# -- helpers -----------------------------------------------------------------------------------

def ssa_admin(*args: str, timeout: float = 90, stdin: str | None = ""
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ssa_admin", *args], capture_output=True,
                          text=True, timeout=timeout, input=stdin)


def account(pebble: PebbleServer, state: Path, command: str, *args: str
            ) -> subprocess.CompletedProcess[str]:
    return ssa_admin("account", command, "--server", pebble.directory_url, "--ca-bundle",
                     str(pebble.ca_bundle), "--state-dir", str(state), *args)


def ok_json(res: subprocess.CompletedProcess[str]) -> Any:
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    return json.loads(res.stdout)


def one_clear_line(res: subprocess.CompletedProcess[str]) -> str:
    """Exit 1, a single ``ssa-admin: ...`` line on stderr, no traceback."""
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssa-admin: "), res.stderr
    return lines[0]


def register(pebble: PebbleServer, state: Path, *args: str) -> dict[str, Any]:
    doc: dict[str, Any] = ok_json(account(pebble, state, "register", "--agree-tos", "--json",
                                          *args))
    return doc


def load_key(path: Path) -> jose.JWK:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return jose.JWKEC(key=key)
    assert isinstance(key, rsa.RSAPrivateKey)
    return jose.JWKRSA(key=key)


def thumbprint(key: jose.JWK) -> str:
    return jose.b64encode(key.thumbprint()).decode()


class AcmeProbe:
    """The acme library signed in with one key: what does the CA say to it?"""

    def __init__(self, pebble: PebbleServer, key: jose.JWK, uri: str | None = None) -> None:
        self.net = client.ClientNetwork(key, alg=signing_alg(key), verify_ssl=str(pebble.ca_bundle),
                                        user_agent="ssa-tests")
        self.acme = client.ClientV2(client.ClientV2.get_directory(pebble.directory_url, self.net),
                                    self.net)
        if uri:
            self.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())

    def close(self) -> None:
        self.net.session.close()

    def __enter__(self) -> AcmeProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, uri: str) -> dict[str, Any]:
        """POST-as-GET on the account URL, signed with kid (RFC 8555 section 7.3)."""
        body: dict[str, Any] = self.net.post(uri, None,
                                             new_nonce_url=self.acme.directory["newNonce"]).json()
        return body

    def existing(self) -> messages.RegistrationResource:
        """newAccount with onlyReturnExisting, signed with jwk (RFC 8555 section 7.3.1)."""
        return self.acme.query_registration(
            messages.RegistrationResource(uri="", body=messages.Registration()))


def problem(fn: Any, *args: Any) -> messages.Error:
    with pytest.raises(messages.Error) as info:
        fn(*args)
    return info.value


def issue_cert(pebble: PebbleServer, state: Path, name: str, tmp: Path
               ) -> subprocess.CompletedProcess[str]:
    return ssa_admin("cert", "issue", name, "--server", pebble.directory_url, "--ca-bundle",
                     str(pebble.ca_bundle), "--http-port", str(pebble.http_port), "--agree-tos",
                     "--profile", "default", "--state-dir", str(state), "--socket",
                     str(tmp / "no-engine.sock"), "--json", timeout=110)


def folder_of(doc: dict[str, Any]) -> Path:
    return Path(doc["folder"])


# -- register ----------------------------------------------------------------------------------

@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048"])
def test_register_writes_0600_key_in_0700_folders(pebble: PebbleServer, tmp_path: Path,
                                                  key_type: str) -> None:
    state = tmp_path / "state"
    res = account(pebble, state, "register", "--agree-tos", "--json", "--email",
                  "admin@example.test", "--email", "ops@example.test", "--key-type", key_type)
    doc = ok_json(res)
    assert doc["registered"] is True and doc["retired"] is None
    assert doc["server"] == pebble.directory_url
    assert doc["uri"].startswith(pebble.directory_url.removesuffix("/dir") + "/")
    assert doc["status"] == "valid" and doc["key_type"] == key_type
    assert doc["contact"] == ["mailto:admin@example.test", "mailto:ops@example.test"]
    assert doc["created"].endswith("Z")
    folder = folder_of(doc)
    assert folder.is_relative_to(state / "accounts")
    key_file = folder / "key.pem"
    assert doc["key_file"] == str(key_file)
    for f in (key_file, folder / "account.json"):
        assert f.stat().st_mode & 0o777 == 0o600, f
    d = folder
    while d != state.parent:
        assert d.stat().st_mode & 0o777 == 0o700, d
        d = d.parent
    key = load_key(key_file)
    assert thumbprint(key) == doc["thumbprint"]
    assert "PRIVATE KEY" not in res.stdout + res.stderr
    # the CA knows this key as this account
    with AcmeProbe(pebble, key) as probe:
        assert probe.existing().uri == doc["uri"]


def test_register_twice_keeps_the_one_account(pebble: PebbleServer, tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = register(pebble, state)
    key_bytes = (folder_of(first) / "key.pem").read_bytes()
    again = account(pebble, state, "register", "--agree-tos")
    assert again.returncode == 0, again.stderr
    assert first["uri"] in again.stdout and "already registered" in again.stdout
    assert "deactivate" in again.stdout
    doc = ok_json(account(pebble, state, "register", "--agree-tos", "--json"))
    assert doc["registered"] is False and doc["uri"] == first["uri"]
    assert (folder_of(first) / "key.pem").read_bytes() == key_bytes
    assert len(list((state / "accounts").rglob("account.json"))) == 1


def test_terms_of_service_must_be_agreed(pebble: PebbleServer, tmp_path: Path) -> None:
    line = one_clear_line(account(pebble, tmp_path / "s", "register"))
    assert "terms of service" in line and "--agree-tos" in line
    assert not list((tmp_path / "s").rglob("account.json"))


def test_bad_options_are_usage_errors(pebble: PebbleServer, tmp_path: Path) -> None:
    res = account(pebble, tmp_path / "s", "register", "--agree-tos", "--email", "not-an-address")
    assert res.returncode == 2 and "--email" in res.stderr, res.stderr
    res = account(pebble, tmp_path / "s", "register", "--agree-tos", "--key-type", "dsa-1024")
    assert res.returncode == 2 and "--key-type" in res.stderr, res.stderr
    res = ssa_admin("account", "register", "--server", "nowhere", "--state-dir", str(tmp_path))
    assert res.returncode == 2 and "--server" in res.stderr, res.stderr
    assert not list(tmp_path.rglob("account.json"))


# -- show --------------------------------------------------------------------------------------

def test_show_local_and_live(pebble: PebbleServer, tmp_path: Path) -> None:
    state = tmp_path / "state"
    empty = ssa_admin("account", "show", "--state-dir", str(state), "--json")
    assert ok_json(empty) == []
    doc = register(pebble, state, "--email", "show@example.test")

    listed = ok_json(ssa_admin("account", "show", "--state-dir", str(state), "--json"))
    assert [a["uri"] for a in listed] == [doc["uri"]]
    assert listed[0]["contact"] == ["mailto:show@example.test"]
    text = ssa_admin("account", "show", "--state-dir", str(state))
    assert text.returncode == 0 and doc["uri"] in text.stdout and "valid" in text.stdout

    live = ok_json(account(pebble, state, "show", "--json"))
    assert live["uri"] == doc["uri"] and live["key_matches"] is True
    assert live["live"]["status"] == "valid"
    assert live["live"]["contact"] == ["mailto:show@example.test"]
    assert live["live"]["key_thumbprint"] == doc["thumbprint"]
    text = account(pebble, state, "show")
    assert text.returncode == 0, text.stderr
    assert "CA: status" in text.stdout and "matches key file" in text.stdout
    assert "PRIVATE KEY" not in text.stdout

    # a server without a stored account
    other = ssa_admin("account", "show", "--server", pebble.directory_url, "--ca-bundle",
                      str(pebble.ca_bundle), "--state-dir", str(tmp_path / "other"))
    assert "account register" in one_clear_line(other)


# -- update ------------------------------------------------------------------------------------

def test_update_email_reaches_the_ca(pebble: PebbleServer, tmp_path: Path) -> None:
    state = tmp_path / "state"
    doc = register(pebble, state, "--email", "old@example.test")
    key = load_key(folder_of(doc) / "key.pem")

    new = ok_json(account(pebble, state, "update", "--email", "new@example.test", "--email",
                          "second@example.test", "--json"))
    assert new["contact"] == ["mailto:new@example.test", "mailto:second@example.test"]
    with AcmeProbe(pebble, key, doc["uri"]) as probe:
        assert probe.get(doc["uri"])["contact"] == new["contact"]
    stored = json.loads((folder_of(doc) / "account.json").read_text())
    assert stored["contact"] == new["contact"]

    res = account(pebble, state, "update", "--no-email")
    assert res.returncode == 0 and "(none)" in res.stdout, res.stderr
    with AcmeProbe(pebble, key, doc["uri"]) as probe:
        assert not probe.get(doc["uri"]).get("contact")
    assert ok_json(account(pebble, state, "show", "--json"))["live"]["contact"] == []

    for bad in ((), ("--email", "a@example.test", "--no-email")):
        res = account(pebble, state, "update", *bad)
        assert res.returncode == 2 and "--email" in res.stderr, res.stderr


# -- rollover ----------------------------------------------------------------------------------

def test_rollover_new_key_old_key_refused_issuing_works(pebble: PebbleServer,
                                                        tmp_path: Path) -> None:
    state = tmp_path / "state"
    doc = register(pebble, state)
    folder = folder_of(doc)
    old_pem = (folder / "key.pem").read_bytes()
    old_key = load_key(folder / "key.pem")

    res = account(pebble, state, "rollover", "--json")  # default: the same key type
    rolled = ok_json(res)
    assert "PRIVATE KEY" not in res.stdout
    assert rolled["uri"] == doc["uri"]  # the same account
    assert rolled["key_type"] == "ec-p256" and rolled["thumbprint"] != doc["thumbprint"]
    assert rolled["previous_thumbprint"] == doc["thumbprint"]
    new_key = load_key(folder / "key.pem")
    assert thumbprint(new_key) == rolled["thumbprint"]
    previous = folder / "key.pem.previous"
    assert rolled["previous_key_file"] == str(previous)
    assert previous.read_bytes() == old_pem and previous.stat().st_mode & 0o777 == 0o600
    assert (folder / "key.pem").stat().st_mode & 0o777 == 0o600
    assert not (folder / "key.pem.next").exists()

    # the CA: the new key is the account's, the old one is refused both ways
    with AcmeProbe(pebble, new_key, doc["uri"]) as probe:
        body = probe.get(doc["uri"])
        assert body["status"] == "valid"
        assert thumbprint(jose.JWK.from_json(body["key"])) == rolled["thumbprint"]
        assert probe.existing().uri == doc["uri"]
    with AcmeProbe(pebble, old_key, doc["uri"]) as probe:
        # kid + the old key: Pebble says the signature does not verify (malformed)
        refused = problem(probe.get, doc["uri"])
        assert refused.code in ("unauthorized", "malformed", "accountDoesNotExist"), refused
    with AcmeProbe(pebble, old_key) as probe:
        assert problem(probe.existing).code == "accountDoesNotExist"

    # issuing uses the new key
    res = issue_cert(pebble, state, "acct.example.test", tmp_path)
    assert ok_json(res)["account"] == doc["uri"]

    # another rollover, to another key type
    again = ok_json(account(pebble, state, "rollover", "--key-type", "ec-p384", "--json"))
    assert again["key_type"] == "ec-p384" and again["uri"] == doc["uri"]
    assert again["previous_thumbprint"] == rolled["thumbprint"]
    assert load_key(previous).thumbprint() == new_key.thumbprint()
    with AcmeProbe(pebble, new_key) as probe:
        assert problem(probe.existing).code == "accountDoesNotExist"
    with AcmeProbe(pebble, load_key(folder / "key.pem"), doc["uri"]) as probe:
        assert probe.get(doc["uri"])["status"] == "valid"


def test_interrupted_rollover_is_settled(pebble: PebbleServer, tmp_path: Path) -> None:
    """A process killed after the CA switched keys, before the files were: not a lost account."""
    state = tmp_path / "state"
    doc = register(pebble, state)
    folder = folder_of(doc)
    store = AccountStore(state)
    stored = store.load(pebble.directory_url)
    assert stored is not None
    old_pem = (folder / "key.pem").read_bytes()

    # 1. the CA switched, the files did not: key.pem is the old key, key.pem.next the new one
    with Acme(pebble.directory_url, stored.key, ca_bundle=str(pebble.ca_bundle),
              account=stored.regr) as acme:
        lib_rollover(acme, store, stored, generate_key("ec-p256"))
    new_pem = (folder / "key.pem").read_bytes()
    (folder / "key.pem.next").write_bytes(new_pem)
    (folder / "key.pem").write_bytes(old_pem)
    (folder / "key.pem.previous").unlink()
    live = ok_json(account(pebble, state, "show", "--json"))
    assert live["key_matches"] is True and live["live"]["status"] == "valid"
    assert (folder / "key.pem").read_bytes() == new_pem
    assert (folder / "key.pem.previous").read_bytes() == old_pem
    assert not (folder / "key.pem.next").exists()

    # 2. a new key the CA never heard of: dropped, the account keeps its key
    (folder / "key.pem.next").write_bytes(old_pem)  # any key but the account's
    res = issue_cert(pebble, state, "settled.example.test", tmp_path)
    assert ok_json(res)["account"] == doc["uri"]
    assert (folder / "key.pem").read_bytes() == new_pem
    assert not (folder / "key.pem.next").exists()


def test_rollover_to_another_accounts_key_changes_nothing(pebble: PebbleServer,
                                                         tmp_path: Path) -> None:
    """RFC 8555 section 7.3.5 wants 409 here; Pebble answers 200 and keeps the old key.

    Either way the account must keep the key the CA holds: rollover checks
    that the account answers to the new key before it replaces key.pem.
    """
    a = register(pebble, tmp_path / "a")
    b = register(pebble, tmp_path / "b")
    folder = folder_of(a)
    a_pem = (folder / "key.pem").read_bytes()
    store = AccountStore(tmp_path / "a")
    stored = store.load(pebble.directory_url)
    assert stored is not None
    with Acme(pebble.directory_url, stored.key, ca_bundle=str(pebble.ca_bundle),
              account=stored.regr) as acme:
        with pytest.raises(AcmeError, match="still holds the old key"):
            lib_rollover(acme, store, stored, load_key(folder_of(b) / "key.pem"))
    assert (folder / "key.pem").read_bytes() == a_pem
    assert not (folder / "key.pem.next").exists() and not (folder / "key.pem.previous").exists()
    live = ok_json(account(pebble, tmp_path / "a", "show", "--json"))
    assert live["key_matches"] is True and live["uri"] == a["uri"]


# -- deactivate --------------------------------------------------------------------------------

def test_deactivate(pebble: PebbleServer, tmp_path: Path) -> None:
    state = tmp_path / "state"
    doc = register(pebble, state, "--email", "gone@example.test")
    folder = folder_of(doc)
    key_pem = (folder / "key.pem").read_bytes()
    key = load_key(folder / "key.pem")

    # not without confirmation; stdin is no terminal here, so --yes is required
    res = account(pebble, state, "deactivate")
    assert res.returncode == 2 and "--yes" in res.stderr, res.stderr
    with AcmeProbe(pebble, key, doc["uri"]) as probe:
        assert probe.get(doc["uri"])["status"] == "valid"

    gone = ok_json(account(pebble, state, "deactivate", "--yes", "--json"))
    assert gone["status"] == "deactivated" and gone["deactivated"] is True
    assert gone["uri"] == doc["uri"]
    # the CA: deactivated, and it says so to that key
    with AcmeProbe(pebble, key) as probe:
        refused = problem(probe.existing)
        assert refused.code == "unauthorized" and "deactivated" in str(refused.detail)
    with AcmeProbe(pebble, key, doc["uri"]) as probe:
        assert problem(probe.get, doc["uri"]).code == "unauthorized"
    # the files stay, marked
    assert (folder / "key.pem").exists()
    assert json.loads((folder / "account.json").read_text())["status"] == "deactivated"

    # issuing with it: one clear message, nothing issued
    line = one_clear_line(issue_cert(pebble, state, "after.example.test", tmp_path))
    assert "deactivated" in line and "account register" in line
    assert not (state / "certs" / "after.example.test" / "current").exists()

    shown = ok_json(account(pebble, state, "show", "--json"))
    assert shown["status"] == "deactivated" and shown["live"] is None
    res = account(pebble, state, "deactivate", "--yes")
    assert res.returncode == 0 and "already deactivated" in res.stdout
    for command, args in (("update", ("--email", "x@example.test")), ("rollover", ())):
        assert "deactivated" in one_clear_line(account(pebble, state, command, *args))

    # a new registration: a new account, the old files moved aside, not deleted
    assert "--agree-tos" in one_clear_line(account(pebble, state, "register"))
    assert json.loads((folder / "account.json").read_text())["status"] == "deactivated"
    assert sorted(p.name for p in folder.parent.iterdir() if p.is_dir()) == [folder.name]
    fresh = register(pebble, state)
    assert fresh["registered"] is True and fresh["uri"] != doc["uri"]
    retired = Path(fresh["retired"])
    assert retired.parent == folder.parent and retired.name.startswith(folder.name + ".")
    assert (retired / "key.pem").read_bytes() == key_pem
    assert json.loads((retired / "account.json").read_text())["status"] == "deactivated"
    assert (folder / "key.pem").read_bytes() != key_pem
    listed = ok_json(ssa_admin("account", "show", "--state-dir", str(state), "--json"))
    assert [a["uri"] for a in listed] == [fresh["uri"]]
    assert ok_json(issue_cert(pebble, state, "after.example.test", tmp_path))["account"] == (
        fresh["uri"])


def on_terminal(args: list[str], answer: bytes, prompt: bytes = b"[y/N]") -> tuple[int, str]:
    """Run ssa-admin on a pseudo-terminal; type ``answer`` at the prompt."""
    main, sub = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ssa_admin", *args], stdin=sub, stdout=sub,
                            stderr=sub, env={**os.environ, "COLUMNS": "200"})
    os.close(sub)
    out, answered = b"", False
    try:
        while True:
            ready, _, _ = select.select([main], [], [], 60)
            assert ready, out.decode(errors="replace")
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if not answered and prompt in out:
                os.write(main, answer)
                answered = True
    finally:
        os.close(main)
        code = proc.wait(60)
    return code, out.decode(errors="replace")


def test_deactivate_asks_on_a_terminal(pebble: PebbleServer, tmp_path: Path) -> None:
    state = tmp_path / "state"
    doc = register(pebble, state)
    args = ["account", "deactivate", "--server", pebble.directory_url, "--ca-bundle",
            str(pebble.ca_bundle), "--state-dir", str(state)]
    code, out = on_terminal(args, b"n\r")
    assert code == 1 and doc["uri"] in out and "nothing was changed" in out, out
    key = load_key(folder_of(doc) / "key.pem")
    with AcmeProbe(pebble, key, doc["uri"]) as probe:
        assert probe.get(doc["uri"])["status"] == "valid"
    code, out = on_terminal(args, b"y\r")
    assert code == 0 and "Deactivated" in out, out
    with AcmeProbe(pebble, key, doc["uri"]) as probe:
        assert problem(probe.get, doc["uri"]).code == "unauthorized"


def test_deactivated_elsewhere_is_noticed_by_show(pebble: PebbleServer, tmp_path: Path) -> None:
    """Deactivated at the CA by another client: ``show --server`` records it."""
    state = tmp_path / "state"
    doc = register(pebble, state)
    key = load_key(folder_of(doc) / "key.pem")
    with AcmeProbe(pebble, key, doc["uri"]) as probe:
        probe.net.post(doc["uri"], messages.Registration.from_json({"status": "deactivated"}),
                       new_nonce_url=probe.acme.directory["newNonce"])
    shown = ok_json(account(pebble, state, "show", "--json"))
    assert shown["live"]["status"] == "deactivated" and shown["status"] == "deactivated"
    assert shown["note"]
    line = one_clear_line(issue_cert(pebble, state, "elsewhere.example.test", tmp_path))
    assert "deactivated" in line


# -- External Account Binding --------------------------------------------------------------------

def test_eab_required(pebble_eab: PebbleServer, tmp_path: Path) -> None:
    state = tmp_path / "state"
    line = one_clear_line(account(pebble_eab, state, "register", "--agree-tos"))
    assert "External Account Binding" in line and "--eab-kid" in line
    line = one_clear_line(account(pebble_eab, state, "register", "--agree-tos", "--eab-kid",
                                  "only-the-kid"))
    assert "--eab-hmac-key" in line
    assert not list(state.rglob("account.json"))

    # a binding the CA does not know: its problem document, in words
    wrong = account(pebble_eab, state, "register", "--agree-tos", "--eab-kid", "no-such-kid",
                    "--eab-hmac-key", pebble_eab.eab_hmac_key or "")
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr, wrong.stderr
    assert wrong.stderr.startswith("ssa-admin: registering the account: ")
    assert not list(state.rglob("account.json"))

    assert pebble_eab.eab_kid and pebble_eab.eab_hmac_key
    doc = register(pebble_eab, state, "--eab-kid", pebble_eab.eab_kid, "--eab-hmac-key",
                   pebble_eab.eab_hmac_key, "--email", "eab@example.test")
    assert doc["status"] == "valid" and doc["server"] == pebble_eab.directory_url
    assert pebble_eab.eab_hmac_key not in json.dumps(doc)
    assert not any(pebble_eab.eab_hmac_key in f.read_text()
                   for f in state.rglob("account.json"))
    live = ok_json(account(pebble_eab, state, "show", "--json"))
    assert live["live"]["status"] == "valid" and live["key_matches"] is True


# -- a CA that cannot be reached or trusted ---------------------------------------------------------

def test_unreachable_ca(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = ssa_admin("account", "register", "--agree-tos", "--server",
                    f"https://127.0.0.1:{port}/dir", "--state-dir", str(tmp_path / "s"))
    line = one_clear_line(res)
    assert "cannot reach the CA" in line and "Connection refused" in line
    assert not list(tmp_path.rglob("account.json"))


def test_wrong_ca_bundle(pebble: PebbleServer, tmp_path: Path) -> None:
    state = tmp_path / "state"
    base = ("account", "register", "--agree-tos", "--server", pebble.directory_url,
            "--state-dir", str(state))
    other = CA(tmp_path, "not-pebble")
    line = one_clear_line(ssa_admin(*base, "--ca-bundle", str(other.pem)))
    assert "not trusted" in line and "--ca-bundle" in line
    line = one_clear_line(ssa_admin(*base))  # the system's CAs do not know Pebble's
    assert "not trusted" in line
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    assert "holds no PEM certificate" in one_clear_line(ssa_admin(*base, "--ca-bundle",
                                                                  str(garbage)))
    missing = tmp_path / "missing.pem"
    assert "no such file" in one_clear_line(ssa_admin(*base, "--ca-bundle", str(missing)))
    assert not list(state.rglob("account.json"))
    # the stored account's commands say the same
    register(pebble, state)
    for command in ("show", "update", "rollover", "deactivate"):
        extra = {"update": ("--email", "a@example.test"), "deactivate": ("--yes",)}.get(
            command, ())
        line = one_clear_line(ssa_admin("account", command, "--server", pebble.directory_url,
                                        "--ca-bundle", str(other.pem), "--state-dir",
                                        str(state), *extra))
        assert "not trusted" in line, command


def test_help_lists_the_commands() -> None:
    res = ssa_admin("account", "--help", stdin=None)
    assert res.returncode == 0
    for command in ("register", "show", "update", "rollover", "deactivate"):
        assert command in res.stdout
    env = dict(os.environ, COLUMNS="200")
    res = subprocess.run([sys.executable, "-m", "ssa_admin", "account", "rollover", "--help"],
                         capture_output=True, text=True, timeout=30, env=env)
    assert "--key-type" in res.stdout and "--ca-bundle" in res.stdout
