"""dns-01 by RFC 2136 dynamic update: a real Knot DNS server, a real Pebble, the real CLI.

Pebble resolves every name through the Knot server (tests/dns_server.py), so
a certificate is issued only if the TXT records ssa-admin added are really
served by the authoritative server.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import josepy as jose
import pytest
from acme import challenges
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ssa_admin.acme.errors import ChallengeError
from ssa_admin.acme.rfc2136 import (
    Dns01Rfc2136,
    TsigKey,
    load_tsig_key,
    parse_server,
    parse_tsig_key,
)

from .acme_server import PebbleServer, free_port, require_pebble, start_pebble
from .dns_server import KnotServer, start_knot, start_knot_pair

SECRET = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def knot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KnotServer]:
    with start_knot(tmp_path_factory.mktemp("knot")) as server:
        yield server


@pytest.fixture(scope="module")
def knot_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KnotServer, KnotServer]]:
    with start_knot_pair(tmp_path_factory.mktemp("knot-pair")) as pair:
        yield pair


@pytest.fixture(scope="module")
def pebble_knot(knot: KnotServer, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[PebbleServer]:
    """A Pebble whose only resolver is the Knot server."""
    require_pebble()
    with start_pebble(tmp_path_factory.mktemp("pebble-knot"), dns_server=knot.address) as server:
        yield server


def ssa_admin(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ssa_admin", *args], capture_output=True,
                          text=True, timeout=timeout)


def issue(pebble: PebbleServer, knot: KnotServer, state: Path, *names: str,
          key_file: Path | None = None, extra: tuple[str, ...] = (),
          as_json: bool = True) -> subprocess.CompletedProcess[str]:
    return ssa_admin("cert", "issue", *names, "--server", pebble.directory_url, "--ca-bundle",
                     str(pebble.ca_bundle), "--agree-tos", "--profile", "default",
                     "--state-dir", str(state), "--challenge", "dns-01",
                     "--dns-server", knot.address,
                     "--dns-tsig-key", str(key_file or knot.key_file),
                     *(("--json",) if as_json else ()), *extra)


def key_file(tmp_path: Path, text: str, name: str = "tsig.key") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return path


def challenge() -> tuple[SimpleNamespace, jose.JWK]:
    """A dns-01 challenge as the acme library hands it to a responder, and an account key."""
    account_key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    return SimpleNamespace(chall=challenges.DNS01(token=os.urandom(16))), account_key


def responder(knot: KnotServer, *names: str, key: TsigKey | None = None, zone: str | None = None,
              timeout: float = 10, warnings: list[str] | None = None,
              server: str | None = None) -> Dns01Rfc2136:
    return Dns01Rfc2136(server or knot.address, key or load_tsig_key(knot.key_file), zone=zone,
                        propagation_timeout=timeout, names=list(names),
                        warn=(warnings.append if warnings is not None else None))


# -- key files and options ---------------------------------------------------------------------

@pytest.mark.parametrize(("text", "name", "algorithm"), [
    # what tsig-keygen prints
    (f'key "ssa-acme" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n',
     "ssa-acme.", "hmac-sha256"),
    # comments of all three kinds, an unquoted absolute name, upper case, one line
    (f"# a comment\n/* more\n comment */ key acme.example. {{ algorithm HMAC-SHA512; "
     f'secret "{SECRET}"; }}; // trailing\n', "acme.example.", "hmac-sha512"),
    # what keymgr -t prints
    (f"# hmac-sha384:knot-key:{SECRET}\nkey:\n  - id: knot-key\n    algorithm: hmac-sha384\n"
     f"    secret: {SECRET}\n", "knot-key.", "hmac-sha384"),
    (f"ssa-acme:hmac-sha256:{SECRET}\n", "ssa-acme.", "hmac-sha256"),
    # nsupdate -y / knsupdate -y order
    (f"hmac-sha1:legacy.key.:{SECRET}", "legacy.key.", "hmac-sha1"),
    (f'key "old" {{ algorithm hmac-md5.sig-alg.reg.int; secret "{SECRET}"; }};', "old.",
     "hmac-md5"),
])
def test_key_formats(tmp_path: Path, text: str, name: str, algorithm: str) -> None:
    check_key(tmp_path, text, name, algorithm, SECRET)


@pytest.mark.parametrize("text", [
    # a secret with // and + in it is not a comment, in any of the formats
    'key "k" {{ algorithm hmac-sha256; secret "{s}"; }}; // comment',
    "key:\n  - id: k\n    algorithm: hmac-sha256\n    secret: {s}  # comment\n",
    "k:hmac-sha256:{s}",
])
def test_secrets_with_slashes(tmp_path: Path, text: str) -> None:
    secret = base64.b64encode(b"\xff\xff\xff\xfb\xef\xff" * 4).decode()
    assert "//" in secret and "+" in secret
    check_key(tmp_path, text.format(s=secret), "k.", "hmac-sha256", secret)


def check_key(tmp_path: Path, text: str, name: str, algorithm: str, secret: str) -> None:
    path = key_file(tmp_path, text)
    warnings: list[str] = []
    key = load_tsig_key(path, warnings.append)
    assert (key.name, key.algorithm, key.secret, key.path) == (name, algorithm, secret,
                                                               path.resolve())
    assert secret not in repr(key) and warnings == []
    key.dns_key()  # dnspython takes it


@pytest.mark.parametrize(("text", "message"), [
    ("", "not a TSIG key"),
    ("just some words\n", "not a TSIG key"),
    ('key "k" { algorithm hmac-sha256; };', "key k has no secret"),
    ('key "k" { secret "' + SECRET + '"; };', "names no algorithm"),
    ('key "k" { algorithm hmac-sha999; secret "' + SECRET + '"; };',
     "unknown algorithm 'hmac-sha999'"),
    ('key "k" { algorithm hmac-sha256; secret "not base64!"; };', "not valid base64"),
    (f'key "a" {{ algorithm hmac-sha256; secret "{SECRET}"; }};\n'
     f'key "b" {{ algorithm hmac-sha256; secret "{SECRET}"; }};', "holds 2 keys (a, b)"),
    ("k:hmac-sha256:", "has no secret"),
    ('key "k" algorithm hmac-sha256', "not a TSIG key"),
])
def test_bad_key_files(tmp_path: Path, text: str, message: str) -> None:
    path = key_file(tmp_path, text)
    with pytest.raises(ChallengeError) as err:
        load_tsig_key(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert SECRET not in str(err.value)


def test_key_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ChallengeError, match="no such file"):
        load_tsig_key(tmp_path / "missing.key")
    with pytest.raises(ChallengeError, match="is a directory"):
        load_tsig_key(tmp_path)
    # a secret on the command line, where a file belongs
    with pytest.raises(ChallengeError, match="takes a FILE") as err:
        load_tsig_key(Path(f"k:hmac-sha256:{SECRET}"))
    assert SECRET not in str(err.value)
    (tmp_path / "binary.key").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ChallengeError, match="not a text file"):
        load_tsig_key(tmp_path / "binary.key")
    # readable by others: a warning, not an error
    path = key_file(tmp_path, f"k:hmac-sha256:{SECRET}")
    path.chmod(0o644)
    warnings: list[str] = []
    assert load_tsig_key(path, warnings.append).name == "k."
    assert len(warnings) == 1 and "chmod 600" in warnings[0]


def test_parse_tsig_key_direct() -> None:
    key = parse_tsig_key(f"name:hmac-sha256:{SECRET}")
    assert key.path is None and key.source == "the key"


@pytest.mark.parametrize(("text", "expected"), [
    ("ns1.example.com", ("ns1.example.com", 53)),
    ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("[::1]:5353", ("::1", 5353)),
    ("[2001:db8::1]", ("2001:db8::1", 53)),
    ("2001:db8::1", ("2001:db8::1", 53)),
])
def test_parse_server(text: str, expected: tuple[str, int]) -> None:
    assert parse_server(text) == expected


@pytest.mark.parametrize("text", ["host:0", "host:70000", "host:dns", ":53", "[::1]:x"])
def test_parse_server_errors(text: str) -> None:
    with pytest.raises(ChallengeError, match="--dns-server"):
        parse_server(text)


# -- the responder against Knot ----------------------------------------------------------------

def test_add_keeps_other_values_and_stop_removes_only_its_own(knot: KnotServer) -> None:
    name = "_acme-challenge.www.acme.test."
    knot.update("acme.test.", name, add="another client's value")
    r = responder(knot, "www.acme.test")
    try:
        r.start()  # the permission check changes nothing
        assert knot.txt(name) == ["another client's value"]
        (c1, k1), (c2, k2) = challenge(), challenge()
        r.add("www.acme.test", c1, k1)
        r.add("www.acme.test", c2, k2)
        values = {c1.chall.validation(k1), c2.chall.validation(k2)}
        assert set(knot.txt(name)) == values | {"another client's value"}
        r.stop()
        assert knot.txt(name) == ["another client's value"]
        assert r.describe() == {"dns_server": knot.address, "dns_zone": None,
                                "dns_tsig_key": str(knot.key_file.resolve()),
                                "dns_propagation_timeout": 10}
        assert knot.key_secret not in json.dumps(r.describe())
    finally:
        knot.update("acme.test.", name, delete="another client's value")


def test_zone_found_by_soa_walk_or_given(knot: KnotServer) -> None:
    import dns.name

    r = responder(knot, "one.acme.test")
    r.start()
    record = r._record(dns.name.from_text("_acme-challenge.one.acme.test."))
    assert record.zone == dns.name.from_text("acme.test.")
    # --dns-zone that does not hold the name
    with pytest.raises(ChallengeError, match="not in the zone locked.test. given with --dns-zone"):
        responder(knot, "one.acme.test", zone="locked.test").start()
    # a zone the server does not serve
    with pytest.raises(ChallengeError) as err:
        responder(knot, "www.example.org").start()
    assert "is not authoritative for a zone that holds _acme-challenge.www.example.org." in \
        str(err.value) and "--dns-zone" in str(err.value)


def test_cname_is_followed(knot: KnotServer) -> None:
    r = responder(knot, "alias.acme.test")
    r.start()
    c, k = challenge()
    r.add("alias.acme.test", c, k)
    try:
        assert knot.txt("_acme-challenge.delegated.acme.test.") == [c.chall.validation(k)]
    finally:
        r.stop()
    assert knot.txt("_acme-challenge.delegated.acme.test.") == []


def test_update_policy_refusal_is_explained_before_anything_changes(knot: KnotServer) -> None:
    # the key is good, but the server's acl does not list this name
    with pytest.raises(ChallengeError) as err:
        responder(knot, "forbidden.acme.test").start()
    text = str(err.value)
    assert "refused the update although it accepts key ssa-acme-update." in text, text
    assert "update policy of zone acme.test. for _acme-challenge.forbidden.acme.test. TXT" in text
    assert "BADKEY" in text and knot.key_secret not in text


def test_wrong_secret_algorithm_and_no_key(knot: KnotServer, tmp_path: Path) -> None:
    wrong = TsigKey(knot.key_name, "hmac-sha256", base64.b64encode(os.urandom(32)).decode(),
                    tmp_path / "wrong.key")
    with pytest.raises(ChallengeError) as err:
        responder(knot, "www.acme.test", key=wrong).start()
    assert "BADSIG" in str(err.value) and "the secret and algorithm hmac-sha256 in" in \
        str(err.value)
    assert "key ssa-acme-update." in str(err.value)
    algorithm = TsigKey(knot.key_name, "hmac-sha512", knot.key_secret, tmp_path / "alg.key")
    with pytest.raises(ChallengeError) as err:
        responder(knot, "www.acme.test", key=algorithm).start()
    assert "does not accept key ssa-acme-update. with algorithm hmac-sha512 for zone " \
        "acme.test.:" in str(err.value) and "BADKEY" in str(err.value)
    unsigned = Dns01Rfc2136(knot.address, None, names=["www.acme.test"])
    with pytest.raises(ChallengeError, match="(?s)NOTAUTH.*pass the zone's update key with "
                       "--dns-tsig-key"):
        unsigned.start()


def test_unreachable_server(knot: KnotServer) -> None:
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ChallengeError, match=f"cannot reach 127.0.0.1:{port}|no answer from"):
        responder(knot, "www.acme.test", server=f"127.0.0.1:{port}").start()
    assert time.monotonic() - started < 15


def test_add_waits_until_the_secondary_serves_the_value(
        knot_pair: tuple[KnotServer, KnotServer]) -> None:
    primary, secondary = knot_pair
    name = "_acme-challenge.www.sec.test."
    r = responder(primary, "www.sec.test")
    r.ns_port = secondary.port  # ns2.sec.test. is 127.0.0.2, on this port
    r.start()
    c, k = challenge()
    r.add("www.sec.test", c, k)
    try:
        # add() returned only once the secondary had transferred the new value (Knot sends
        # its NOTIFY about a second after the update)
        assert secondary.txt(name) == [c.chall.validation(k)]
    finally:
        r.stop()
    assert primary.txt(name) == []


def test_add_gives_up_on_a_lagging_secondary(knot_pair: tuple[KnotServer, KnotServer]) -> None:
    primary, secondary = knot_pair
    name = "_acme-challenge.www.lag.test."
    r = responder(primary, "www.lag.test", timeout=1.5)
    r.ns_port = secondary.port
    r.start()
    c, k = challenge()
    started = time.monotonic()
    with pytest.raises(ChallengeError) as err:
        r.add("www.lag.test", c, k)
    assert 1.5 <= time.monotonic() - started < 6
    text = str(err.value)
    assert "ns2.lag.test (127.0.0.2): NXDOMAIN, the name is not there yet" in text, text
    assert "--dns-propagation-timeout" in text and primary.address not in text
    assert primary.txt(name) == [c.chall.validation(k)]  # added: stop() takes it away
    r.stop()
    assert primary.txt(name) == []


def test_an_unreachable_name_server_is_not_waited_for(
        knot_pair: tuple[KnotServer, KnotServer]) -> None:
    primary, _ = knot_pair
    warnings: list[str] = []
    r = responder(primary, "one.sec.test", warnings=warnings)
    r.ns_port = free_port()  # nothing answers on 127.0.0.2 there
    r.start()
    c, k = challenge()
    r.add("one.sec.test", c, k)
    r.stop()
    assert len(warnings) == 1 and "not checking ns2.sec.test (127.0.0.2)" in warnings[0], warnings


def test_stop_failures_are_warnings(knot: KnotServer, tmp_path: Path) -> None:
    warnings: list[str] = []
    r = responder(knot, "api.acme.test", warnings=warnings)
    r.start()
    c, k = challenge()
    r.add("api.acme.test", c, k)
    value = c.chall.validation(k)
    r.key = TsigKey(knot.key_name, "hmac-sha256", base64.b64encode(os.urandom(32)).decode(),
                    tmp_path / "rotated.key")  # say, the key was rotated meanwhile
    r.stop()
    try:
        assert len(warnings) == 1 and "BADSIG" in warnings[0] and value in warnings[0]
        assert "remove them by hand" in warnings[0]
    finally:
        knot.update("acme.test.", "_acme-challenge.api.acme.test.", delete=value)


# -- ssa-admin cert issue against Pebble resolving through Knot --------------------------------

def sans(cert: x509.Certificate) -> list[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(ext.get_values_for_type(x509.DNSName))


def test_issue_wildcard_and_base_name(pebble_knot: PebbleServer, knot: KnotServer,
                                      tmp_path: Path) -> None:
    state = tmp_path / "state"
    res = issue(pebble_knot, knot, state, "*.acme.test", "acme.test")
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr, res.stderr
    doc = json.loads(res.stdout)
    assert doc["name"] == "acme.test"
    folder = state / "certs" / "acme.test" / "current"
    leaf = x509.load_pem_x509_certificates((folder / "fullchain.pem").read_bytes())[0]
    assert sans(leaf) == ["*.acme.test", "acme.test"]
    # both values came and went: the record is empty again
    assert knot.txt("_acme-challenge.acme.test.") == []
    log = knot.log_text()
    assert log.count("[acme.test.] DDNS, finished, serial") >= 3  # two adds, one removal
    meta_text = (folder / "meta.json").read_text()
    meta = json.loads(meta_text)
    assert meta["acme"]["challenge"] == "dns-01"
    options = meta["acme"]["options"]
    assert options["dns_server"] == knot.address
    assert options["dns_tsig_key"] == str(knot.key_file.resolve())
    assert knot.key_secret not in meta_text
    # a renewal repeats it from what was recorded: server, key file, no secret
    res = ssa_admin("cert", "renew", "acme.test", "--force", "--state-dir", str(state), "--json")
    assert res.returncode == 0, res.stderr
    renewed = json.loads(res.stdout)["certificates"][0]
    assert renewed["status"] == "renewed" and renewed["version"] == 2, renewed
    assert knot.txt("_acme-challenge.acme.test.") == []
    meta2 = (state / "certs" / "acme.test" / "current" / "meta.json").read_text()
    assert json.loads(meta2)["acme"]["options"]["dns_tsig_key"] == str(knot.key_file.resolve())
    assert knot.key_secret not in meta2


def test_issue_through_a_cname(pebble_knot: PebbleServer, knot: KnotServer,
                               tmp_path: Path) -> None:
    key = key_file(tmp_path, f"{knot.key_name}:{knot.key_algorithm}:{knot.key_secret}\n")
    res = issue(pebble_knot, knot, tmp_path / "state", "alias.acme.test", key_file=key,
                extra=("--dns-zone", "acme.test"))
    assert res.returncode == 0, res.stderr
    assert knot.txt("_acme-challenge.delegated.acme.test.") == []


def test_wrong_secret_fails_before_the_order(pebble_knot: PebbleServer, knot: KnotServer,
                                             tmp_path: Path) -> None:
    bad = key_file(tmp_path, f'key "{knot.key_name}" {{ algorithm hmac-sha256; secret '
                             f'"{base64.b64encode(os.urandom(32)).decode()}"; }};\n')
    state = tmp_path / "state"
    res = issue(pebble_knot, knot, state, "www.acme.test", key_file=bad, as_json=False)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "key ssa-acme-update." in res.stderr and "BADSIG" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    # the permission check failed before any order was placed
    assert "account:" in res.stdout and "order:" not in res.stdout, res.stdout
    assert not (state / "certs" / "www.acme.test").exists()
    assert knot.txt("_acme-challenge.www.acme.test.") == []


def test_zone_the_key_may_not_update(pebble_knot: PebbleServer, knot: KnotServer,
                                     tmp_path: Path) -> None:
    state = tmp_path / "state"
    res = issue(pebble_knot, knot, state, "www.locked.test", as_json=False)
    assert res.returncode == 1, res.stdout + res.stderr
    # Knot answers NOTAUTH/BADKEY (BIND: REFUSED): the key may not touch that zone
    assert "does not accept key ssa-acme-update. with algorithm hmac-sha256 for zone " \
        "locked.test.:" in res.stderr, res.stderr
    assert "update policy" in res.stderr and "BADKEY" in res.stderr
    assert "order:" not in res.stdout
    assert not (state / "certs" / "www.locked.test").exists()


def test_cli_option_errors(pebble_knot: PebbleServer, knot: KnotServer, tmp_path: Path) -> None:
    state = tmp_path / "state"
    bad = key_file(tmp_path, "this is not a key\n")
    res = issue(pebble_knot, knot, state, "www.acme.test", key_file=bad, as_json=False)
    assert res.returncode == 1 and f"--dns-tsig-key {bad}: not a TSIG key" in res.stderr, \
        res.stderr
    assert "account:" not in res.stdout  # found before the CA was contacted
    base = ("cert", "issue", "www.acme.test", "--server", pebble_knot.directory_url,
            "--ca-bundle", str(pebble_knot.ca_bundle), "--agree-tos", "--state-dir", str(state))
    res = ssa_admin(*base, "--challenge", "dns-01")
    assert res.returncode == 2 and "--dns-server" in res.stderr and "--dns-hook" in res.stderr
    res = ssa_admin(*base, "--dns-server", knot.address)
    assert res.returncode == 2 and "dns-01 only" in res.stderr
    res = ssa_admin(*base, "--challenge", "dns-01", "--dns-tsig-key", str(knot.key_file))
    assert res.returncode == 2 and "go with --dns-server" in res.stderr
    res = ssa_admin(*base, "--challenge", "dns-01", "--dns-server", knot.address,
                    "--dns-hook", "true")
    assert res.returncode == 2 and "pick one" in res.stderr
    res = ssa_admin(*base, "--challenge", "dns-01", "--dns-server", "127.0.0.1:domain")
    assert res.returncode == 2 and "the port must be a number" in res.stderr, res.stderr
