"""The certificate store: layout, versions, atomic switches, locks, validation, SNI index."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from ssa_engine import store as st
from ssa_engine.store import (
    AcmeMeta,
    CertificateExpired,
    ChainError,
    CorruptEntry,
    InvalidName,
    KeyMismatch,
    LockTimeout,
    NotFound,
    PEMError,
    Store,
    StoreError,
    UnreadableFile,
    UnsupportedKeyType,
    read_material,
)

from .pki import PKI

REPO = Path(__file__).resolve().parent.parent
NOW = dt.datetime.now(dt.UTC)
pytestmark = pytest.mark.timeout(30)


# -- certificates made for these tests ---------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str | None = None, issuer_key=None, *,  # type: ignore[no-untyped-def]
          ca: bool = False, sans: list[str] | None = None, days: int = 10,
          serial: int | None = None) -> x509.Certificate:
    issuer_key = issuer_key or key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(_name(issuer or subject))
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    )
    if sans is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in sans]), critical=False)
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(issuer_key, algorithm)


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_pem(key, password: bytes | None = None) -> bytes:  # type: ignore[no-untyped-def]
    enc = (serialization.BestAvailableEncryption(password) if password
           else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _write(directory: Path, label: str, data: bytes) -> Path:
    path = directory / label
    path.write_bytes(data)
    return path


class Hierarchy:
    """Root -> intermediate -> leaves, written to files."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert("Store Root", self.root_key, ca=True)
        self.int_key = ec.generate_private_key(ec.SECP256R1())
        self.intermediate = _cert("Store Intermediate", self.int_key, "Store Root",
                                  self.root_key, ca=True)
        self.chain = _write(directory, "chain.pem", _pem(self.intermediate))

    def leaf(self, label: str, sans: list[str] | None, key=None) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
        key = key or ec.generate_private_key(ec.SECP256R1())
        cert = _cert(sans[0] if sans else label, key, "Store Intermediate", self.int_key,
                     sans=sans)
        return (_write(self.dir, f"{label}.pem", _pem(cert)),
                _write(self.dir, f"{label}.key", _key_pem(key)))


@pytest.fixture(scope="module")
def hier(tmp_path_factory: pytest.TempPathFactory) -> Hierarchy:
    return Hierarchy(tmp_path_factory.mktemp("hier"))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state")


def _pin(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- import, versions, current -------------------------------------------------------------
def test_import_writes_the_documented_layout(store: Store, pki: PKI) -> None:
    material = read_material(pki.server.cert, pki.server.key)
    v = store.add("example.com", material)
    folder = store.root / "certs" / "example.com"
    assert v.number == 1 and v.current
    assert v.path == folder / "versions" / "0001"
    assert sorted(os.listdir(v.path)) == ["cert.pem", "chain.pem", "fullchain.pem",
                                          "meta.json", "privkey.pem"]
    assert os.readlink(folder / "current") == "versions/0001"
    # other programs can use the stable paths through the symlink
    assert (folder / "current" / "fullchain.pem").read_bytes() == pki.server.cert.read_bytes()
    assert store.names() == ["example.com"]


def test_current_entry_has_pem_and_metadata(store: Store, pki: PKI) -> None:
    store.add("example.com", read_material(pki.server.cert, pki.server.key))
    entry = store.current("example.com")
    leaf = x509.load_pem_x509_certificate(pki.server.cert.read_bytes())
    assert entry.cert_pem == pki.server.cert.read_bytes()
    assert entry.chain_pem == b""
    assert entry.fullchain_pem == entry.cert_pem
    key = serialization.load_pem_private_key(entry.key_pem, None)
    assert entry.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert key.public_key() == leaf.public_key()
    meta = entry.meta
    assert entry.domains == ("localhost", "127.0.0.1", "::1")
    assert meta.key_type == "ec-p256"
    assert meta.not_after == leaf.not_valid_after_utc
    assert meta.not_before == leaf.not_valid_before_utc
    assert meta.issuer == "CN=Test Root CA,O=Test,C=US"
    assert meta.serial == format(leaf.serial_number, "x")
    assert meta.spki_pin == _pin(pki.server.cert)
    assert meta.source == "import" and meta.acme is None
    assert meta.days_left() in (9, 10)
    # meta.json is the documented JSON with ISO 8601 UTC times
    doc = json.loads((entry.version.path / "meta.json").read_bytes())
    assert doc["format"] == 1
    assert doc["not_after"] == leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert doc["domains"] == ["localhost", "127.0.0.1", "::1"]
    assert doc["key_type"] == "ec-p256" and doc["source"] == "import" and doc["acme"] is None


def test_new_version_switches_current_and_keeps_the_old(store: Store, pki: PKI) -> None:
    store.add("web", read_material(pki.server.cert, pki.server.key))
    v2 = store.add("web", read_material(pki.server_rsa.cert, pki.server_rsa.key))
    assert v2.number == 2
    assert [(v.number, v.current) for v in store.versions("web")] == [(1, False), (2, True)]
    cur = store.current("web")
    assert cur.version.number == 2 and cur.meta.key_type == "rsa-2048"
    assert cur.cert_pem == pki.server_rsa.cert.read_bytes()
    old = store.versions("web")[0]
    assert old.cert_path.read_bytes() == pki.server.cert.read_bytes()
    assert old.meta.key_type == "ec-p256"
    # rollback: an existing version becomes current again
    store.activate("web", 1)
    assert store.current("web").cert_pem == pki.server.cert.read_bytes()
    assert os.readlink(store.folder("web") / "current") == "versions/0001"
    with pytest.raises(CorruptEntry, match="version 7 of 'web' is missing"):
        store.activate("web", 7)


def test_chain_is_stored_separately_and_in_fullchain(store: Store, hier: Hierarchy) -> None:
    cert, key = hier.leaf("chained", ["chained.example"])
    v = store.add("chained.example", read_material(cert, key, hier.chain))
    entry = store.current("chained.example")
    assert entry.chain_pem == _pem(hier.intermediate)
    assert entry.fullchain_pem == cert.read_bytes() + _pem(hier.intermediate)
    assert v.fullchain_path.read_bytes() == entry.fullchain_pem


def test_cert_file_holding_the_chain_is_accepted_and_not_doubled(
        store: Store, hier: Hierarchy, tmp_path: Path) -> None:
    cert, key = hier.leaf("full", ["full.example"])
    full = _write(tmp_path, "full.pem", cert.read_bytes() + hier.chain.read_bytes())
    material = read_material(full, key, hier.chain)  # the chain given twice
    assert len(material.chain) == 1
    store.add("full.example", material)
    assert store.current("full.example").chain_pem == _pem(hier.intermediate)


def test_acme_metadata_round_trips_and_can_be_updated(store: Store, pki: PKI) -> None:
    acme = AcmeMeta(server="https://acme.example/dir", account="https://acme.example/acct/1",
                    order="https://acme.example/order/9", ari_cert_id="aki.serial",
                    profile="tlsserver", ca_bundle="/etc/ssa/pebble.pem", challenge="http-01",
                    deploy_hooks=("systemctl reload nginx",), options={"http_port": 8080})
    store.add("acme.example", read_material(pki.server.cert, pki.server.key), source="acme",
              acme=acme)
    assert store.current_version("acme.example").meta.acme == acme
    assert store.current_version("acme.example").meta.source == "acme"
    new = AcmeMeta(server=acme.server, deploy_hooks=("true",))
    store.update_acme("acme.example", new)
    assert store.current_version("acme.example").meta.acme == new
    assert [v.number for v in store.versions("acme.example")] == [1]
    with pytest.raises(ValueError, match="source"):
        store.add("x", read_material(pki.server.cert, pki.server.key), source="bogus")


def test_ari_cert_id_follows_rfc_9773(hier: Hierarchy) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    # a serial whose top bit is set gets a leading zero byte in its DER encoding
    cert = _cert("ari.example", key, "Store Intermediate", hier.int_key, serial=0x87654321)
    aki = hier.int_key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(aki).digest
    expected = (base64.urlsafe_b64encode(ski).rstrip(b"=").decode() + "."
                + base64.urlsafe_b64encode(b"\x00\x87\x65\x43\x21").rstrip(b"=").decode())
    assert st.ari_cert_id(cert) == expected
    no_aki = (x509.CertificateBuilder().subject_name(_name("x")).issuer_name(_name("x"))
              .public_key(key.public_key()).serial_number(1)
              .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1))
              .sign(key, hashes.SHA256()))
    assert st.ari_cert_id(no_aki) is None


def test_delete_removes_every_version(store: Store, pki: PKI) -> None:
    m = read_material(pki.server.cert, pki.server.key)
    store.add("gone", m)
    store.add("gone", m)
    store.add("kept", m)
    store.delete("gone")
    assert store.names() == ["kept"]
    assert not (store.root / "certs" / "gone").exists()
    assert [e for e in os.listdir(store.root / "certs") if e.startswith(".deleted")] == []
    with pytest.raises(NotFound, match="no certificate named 'gone'"):
        store.current("gone")
    with pytest.raises(NotFound):
        store.delete("gone")


# -- permissions -------------------------------------------------------------------
def test_key_is_0600_and_folders_0700_even_with_umask_0(store: Store, pki: PKI,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError("the store must create files with their mode, not chmod them")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "fchmod", no_chmod)
    old = os.umask(0)
    try:
        v = store.add("perm.example", read_material(pki.server.cert, pki.server.key))
    finally:
        os.umask(old)
    certs = store.root / "certs"
    for d in (store.root, certs, certs / ".locks", certs / "perm.example",
              certs / "perm.example" / "versions", v.path):
        assert _mode(d) == 0o700, d
    assert _mode(v.key_path) == 0o600
    assert _mode(certs / ".locks" / "perm.example.lock") == 0o600
    for f in (v.cert_path, v.chain_path, v.fullchain_path, v.path / "meta.json"):
        assert _mode(f) == 0o644, f


def test_existing_state_dir_mode_is_left_alone(tmp_path: Path, pki: PKI) -> None:
    root = tmp_path / "state"
    root.mkdir(mode=0o750)
    os.chmod(root, 0o750)
    Store(root).add("a", read_material(pki.server.cert, pki.server.key))
    assert _mode(root) == 0o750
    assert _mode(root / "certs") == 0o700


# -- atomicity ---------------------------------------------------------------------
def _assert_intact(store: Store, name: str, pair_cert: Path, number: int = 1) -> None:
    entry = store.current(name)
    assert entry.version.number == number
    assert entry.cert_pem == pair_cert.read_bytes()
    key = serialization.load_pem_private_key(entry.key_pem, None)
    assert key.public_key() == x509.load_pem_x509_certificate(entry.cert_pem).public_key()


def test_failed_rename_leaves_the_previous_version_current(
        store: Store, pki: PKI, monkeypatch: pytest.MonkeyPatch) -> None:
    store.add("web", read_material(pki.server.cert, pki.server.key))

    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", fail)
    with pytest.raises(StoreError, match=r"versions/0002: cannot write the new version: "
                                         "No space left on device"):
        store.add("web", read_material(pki.server_rsa.cert, pki.server_rsa.key))
    monkeypatch.undo()
    _assert_intact(store, "web", pki.server.cert)
    assert sorted(os.listdir(store.folder("web") / "versions")) == ["0001"]


def test_failed_switch_leaves_the_previous_version_current(
        store: Store, pki: PKI, monkeypatch: pytest.MonkeyPatch) -> None:
    store.add("web", read_material(pki.server.cert, pki.server.key))

    def fail(src: object, dst: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(StoreError, match=r"current: cannot switch to version 2"):
        store.add("web", read_material(pki.server_rsa.cert, pki.server_rsa.key))
    monkeypatch.undo()
    _assert_intact(store, "web", pki.server.cert)
    folder = store.folder("web")
    # neither the unused version nor the temporary link is left behind
    assert sorted(os.listdir(folder / "versions")) == ["0001"]
    assert sorted(os.listdir(folder)) == ["current", "versions"]


_KILLER = textwrap.dedent("""
    import os, signal, sys
    from ssa_engine.store import Store, read_material
    cert, key, roots = sys.argv[1], sys.argv[2], sys.argv[3:]
    material = read_material(cert, key)
    # one interpreter start, then a fork per crash point (this process has no threads)
    for kill_at, root in enumerate(roots, 1):
        pid = os.fork()
        if pid == 0:
            real, calls = os.fsync, [0]
            def fsync(fd):
                calls[0] += 1
                if calls[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)  # a crash right before this fsync
                real(fd)
            os.fsync = fsync
            try:
                Store(root).add("web", material)
            finally:
                os._exit(100 + calls[0])
        _, status = os.waitpid(pid, 0)
        print(kill_at, os.waitstatus_to_exitcode(status), flush=True)
""")


def test_killed_writer_never_leaves_a_partial_version(tmp_path: Path, pki: PKI) -> None:
    """SIGKILL the writer at each fsync of a new version: the store stays consistent."""
    fsyncs = 8  # five files, the temp folder, versions/, the name folder after the switch
    roots = [tmp_path / f"s{kill_at}" for kill_at in range(1, fsyncs + 2)]  # the last: no kill
    for root in roots:
        Store(root).add("web", read_material(pki.server.cert, pki.server.key))
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(pki.server_rsa.cert),
                           str(pki.server_rsa.key), *map(str, roots)],
                          cwd=REPO, capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    results = dict(tuple(map(int, line.split())) for line in proc.stdout.splitlines())
    assert results == {**{k: -9 for k in range(1, fsyncs + 1)}, fsyncs + 1: 100 + fsyncs}
    for kill_at, root in enumerate(roots, 1):
        store = Store(root)
        # the switch is the rename before the last fsync: from then on 2 is current
        switched = kill_at >= fsyncs
        _assert_intact(store, "web", pki.server_rsa.cert if switched else pki.server.cert,
                       2 if switched else 1)
        published = [v.number for v in store.versions("web")]
        # a version number appears only once its folder is complete
        assert published == ([1, 2] if kill_at >= 7 else [1]), kill_at
        for v in store.versions("web"):
            assert sorted(os.listdir(v.path)) == ["cert.pem", "chain.pem", "fullchain.pem",
                                                  "meta.json", "privkey.pem"]
        # the next writer cleans up what the killed one left and carries on
        v = store.add("web", read_material(pki.server.cert, pki.server.key))
        assert v.number == published[-1] + 1
        assert [e for e in os.listdir(store.folder("web") / "versions")
                if e.startswith(".")] == []
        assert [e for e in os.listdir(store.folder("web")) if e.startswith(".")] == []


# -- the lock ----------------------------------------------------------------------
def test_second_writer_times_out_with_a_clear_error(store: Store, pki: PKI) -> None:
    m = read_material(pki.server.cert, pki.server.key)
    with store.lock("busy.example"):
        other = Store(store.root)
        t0 = time.monotonic()
        with pytest.raises(LockTimeout) as info:
            with other.lock("busy.example", timeout=0.3):
                pass
        assert time.monotonic() - t0 >= 0.3
        msg = str(info.value)
        assert str(store.root / "certs" / ".locks" / "busy.example.lock") in msg
        assert f"certificate 'busy.example' is being changed by another process " \
               f"(process {os.getpid()}); gave up after 0.3 s" in msg
        # another name is not blocked
        other.add("free.example", m)
    other.add("busy.example", m)  # released
    assert store.names() == ["busy.example", "free.example"]


def test_add_uses_the_default_lock_timeout(store: Store, pki: PKI,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(st.store, "DEFAULT_LOCK_TIMEOUT", 0.1)
    with store.lock("busy"), pytest.raises(LockTimeout, match="gave up after 0.1 s"):
        store.add("busy", read_material(pki.server.cert, pki.server.key))
    assert store.names() == []


def test_a_held_lock_is_passed_to_several_steps(store: Store, pki: PKI) -> None:
    m = read_material(pki.server.cert, pki.server.key)
    with store.lock("multi", timeout=1) as lock:
        store.add("multi", m, lock=lock)
        store.add("multi", m, lock=lock)
        store.activate("multi", 1, lock=lock)
        with pytest.raises(ValueError, match="not a held lock of 'other'"):
            store.add("other", m, lock=lock)
    with pytest.raises(ValueError, match="not a held lock"):
        store.add("multi", m, lock=lock)  # released
    assert store.current("multi").version.number == 1


_HOLDER = textwrap.dedent("""
    import sys
    from ssa_engine.store import Store
    with Store(sys.argv[1]).lock("web"):
        print("locked", flush=True)
        sys.stdin.read()
""")


def test_lock_excludes_other_processes_and_dies_with_them(store: Store, pki: PKI) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(store.root)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
        with pytest.raises(LockTimeout, match=rf"\(process {proc.pid}\)"):
            store.lock("web", timeout=0.2).acquire()
        proc.kill()  # a crashed holder leaves no stale lock
        proc.wait(10)
        with store.lock("web", timeout=2):
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f:
                f.close()


# -- validation --------------------------------------------------------------------
def test_key_that_does_not_match_the_certificate(pki: PKI) -> None:
    with pytest.raises(KeyMismatch) as info:
        read_material(pki.server.cert, pki.server_rsa.key)
    msg = str(info.value)
    assert msg.startswith(f"{pki.server_rsa.key}: this private key does not belong to the "
                          f"certificate in {pki.server.cert} (CN=localhost")
    assert _pin(pki.server.cert) in msg


def test_expired_certificate_is_refused(pki: PKI) -> None:
    leaf = x509.load_pem_x509_certificate(pki.expired.cert.read_bytes())
    with pytest.raises(CertificateExpired) as info:
        read_material(pki.expired.cert, pki.expired.key)
    assert str(info.value) == (
        f"{pki.expired.cert}: the certificate for localhost, 127.0.0.1, ::1 expired on "
        f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC; an expired certificate is never "
        "stored")


def test_not_yet_valid_certificate_is_stored_with_a_warning(store: Store, pki: PKI) -> None:
    material = read_material(pki.not_yet_valid.cert, pki.not_yet_valid.key)
    assert len(material.warnings) == 1
    assert material.warnings[0].startswith(f"{pki.not_yet_valid.cert}: the certificate for "
                                           "localhost, 127.0.0.1, ::1 is not valid until ")
    store.add("future", material)
    assert store.current("future").meta.not_before > NOW


def test_chain_that_does_not_parse(pki: PKI, tmp_path: Path) -> None:
    bad = _write(tmp_path, "bad-chain.pem",
                 b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    with pytest.raises(PEMError, match=rf"^{bad}: not a valid PEM certificate"):
        read_material(pki.server.cert, pki.server.key, bad)
    empty = _write(tmp_path, "empty.pem", b"hello\n")
    with pytest.raises(PEMError, match=rf"^{empty}: no PEM certificate found$"):
        read_material(pki.server.cert, pki.server.key, empty)


def test_chain_from_another_issuer(pki: PKI) -> None:
    with pytest.raises(ChainError) as info:
        read_material(pki.server.cert, pki.server.key, pki.other_ca.pem)
    assert str(info.value).startswith(
        f"{pki.other_ca.pem}: the chain is out of order or incomplete: certificate 2 "
        "(CN=Rogue Root CA) does not issue certificate 1 (CN=localhost): its subject is not "
        "the issuer named by certificate 1")


def test_chain_with_the_right_name_but_the_wrong_key(hier: Hierarchy, tmp_path: Path) -> None:
    cert, key = hier.leaf("impostor", ["impostor.example"])
    fake_key = ec.generate_private_key(ec.SECP256R1())
    fake = _cert("Store Intermediate", fake_key, "Store Root", hier.root_key, ca=True)
    chain = _write(tmp_path, "fake-chain.pem", _pem(fake))
    with pytest.raises(ChainError, match=r"its key did not sign certificate 1"):
        read_material(cert, key, chain)


def test_chain_in_the_wrong_order(hier: Hierarchy, tmp_path: Path) -> None:
    cert, key = hier.leaf("order", ["order.example"])
    chain = _write(tmp_path, "reversed.pem", _pem(hier.root, hier.intermediate))
    with pytest.raises(ChainError, match=r"certificate 2 \(CN=Store Root\) does not issue "
                                         r"certificate 1 \(CN=order.example\)"):
        read_material(cert, key, chain)
    ok = _write(tmp_path, "ordered.pem", _pem(hier.intermediate, hier.root))
    assert [c.subject for c in read_material(cert, key, ok).chain] == [
        hier.intermediate.subject, hier.root.subject]


@pytest.mark.parametrize(("key", "what"), [
    (lambda: rsa.generate_private_key(65537, 1024), "RSA key of 1024 bits"),
    (lambda: ec.generate_private_key(ec.SECP521R1()), "EC key on curve secp521r1"),
    (lambda: ed25519.Ed25519PrivateKey.generate(), "Ed25519 key"),
])
def test_unsupported_key_types(key, what: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    k = key()
    cert = _write(tmp_path, "c.pem", _pem(_cert("odd.example", k, sans=["odd.example"])))
    key_path = _write(tmp_path, "k.pem", _key_pem(k))
    with pytest.raises(UnsupportedKeyType) as info:
        read_material(cert, key_path)
    assert str(info.value) == (f"{key_path}: {what} is not supported; use one of ec-p256, "
                               "ec-p384, rsa-2048, rsa-3072, rsa-4096")


@pytest.mark.parametrize(("key", "kind"), [
    (lambda: ec.generate_private_key(ec.SECP384R1()), "ec-p384"),
    (lambda: rsa.generate_private_key(65537, 3072), "rsa-3072"),
])
def test_supported_key_types(key, kind: str, tmp_path: Path, store: Store) -> None:  # type: ignore[no-untyped-def]
    k = key()
    cert = _write(tmp_path, "c.pem", _pem(_cert("ok.example", k, sans=["ok.example"])))
    store.add("ok", read_material(cert, _write(tmp_path, "k.pem", _key_pem(k))))
    assert store.current("ok").meta.key_type == kind


def test_encrypted_key_is_refused(pki: PKI, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pki.server.key.read_bytes(), None)
    enc = _write(tmp_path, "enc.key", _key_pem(key, b"secret"))
    with pytest.raises(PEMError, match=rf"^{enc}: the private key is encrypted; give it "
                                       "unencrypted"):
        read_material(pki.server.cert, enc)


def test_files_swapped_missing_unreadable_or_huge(pki: PKI, tmp_path: Path) -> None:
    with pytest.raises(PEMError, match=rf"^{pki.server.key}: no PEM certificate found "
                                       r"\(it holds a private key\)$"):
        read_material(pki.server.key, pki.server.cert)
    with pytest.raises(PEMError, match=rf"^{pki.server.cert}: no PEM private key found "
                                       r"\(it holds a certificate\)$"):
        read_material(pki.server.cert, pki.server.cert)
    missing = tmp_path / "nope.pem"
    with pytest.raises(UnreadableFile, match=rf"^{missing}: certificate file not found$"):
        read_material(missing, pki.server.key)
    with pytest.raises(UnreadableFile, match=rf"^{tmp_path}: is a directory, not a private key"):
        read_material(pki.server.cert, tmp_path)
    huge = _write(tmp_path, "huge.pem", b"A" * (1024 * 1024 + 1))
    with pytest.raises(PEMError, match=rf"^{huge}: larger than 1024 KiB; not a chain file$"):
        read_material(pki.server.cert, pki.server.key, huge)
    if os.geteuid() != 0:  # root reads anything
        locked = _write(tmp_path, "locked.key", pki.server.key.read_bytes())
        locked.chmod(0)
        with pytest.raises(UnreadableFile, match=rf"^{locked}: cannot read the private key "
                                                 "file: Permission denied$"):
            read_material(pki.server.cert, locked)


def test_certificate_without_names(tmp_path: Path, store: Store) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _write(tmp_path, "cn.pem", _pem(_cert("cn-only.example", key)))
    m = read_material(cert, _write(tmp_path, "k.pem", _key_pem(key)))
    assert m.domains == ("cn-only.example",)  # no SAN: the common name
    nameless = x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(_name("i")) \
        .public_key(key.public_key()).serial_number(2).not_valid_before(NOW) \
        .not_valid_after(NOW + dt.timedelta(days=2)).sign(key, hashes.SHA256())
    m2 = read_material(_write(tmp_path, "none.pem", _pem(nameless)), tmp_path / "k.pem")
    assert m2.domains == ()
    assert any("names no host" in w for w in m2.warnings)


def test_key_type_of_every_rsa_size() -> None:
    # built from numbers: generating a 4096-bit key would take a second
    for bits in (1024, 2048, 3072, 4096, 8192):
        public = rsa.RSAPublicNumbers(65537, (1 << (bits - 1)) | 1).public_key()
        if bits in (2048, 3072, 4096):
            assert st.key_type(public) == f"rsa-{bits}"
        else:
            with pytest.raises(UnsupportedKeyType, match=f"RSA key of {bits} bits"):
                st.key_type(public)


# -- names -------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "why"), [
    ("", "empty"),
    ("../etc", "path separator"),
    ("a/b", "path separator"),
    ("a\\b", "path separator"),
    ("a\0b", "path separator"),
    ("..", "'..'"),
    ("a..b", "'..'"),
    (".hidden", "labels of letters"),
    ("-a", "labels of letters"),
    ("a-", "labels of letters"),
    ("a b", "labels of letters"),
    ("*.example.com", "labels of letters"),
    ("caf\u00e9.example", "labels of letters"),
    ("x" * 64, "labels of letters"),
    ("a." * 127, "longer than 253"),
])
def test_bad_names_are_refused(name: str, why: str, store: Store, pki: PKI) -> None:
    with pytest.raises(InvalidName, match=why):
        st.validate_name(name)
    with pytest.raises(InvalidName):
        store.add(name, read_material(pki.server.cert, pki.server.key))
    with pytest.raises(InvalidName):
        store.current(name)
    assert not store.root.exists()  # nothing written anywhere


def test_path_traversal_writes_nothing_outside(tmp_path: Path, pki: PKI) -> None:
    store = Store(tmp_path / "state")
    with pytest.raises(InvalidName, match=r"certificate name '../../escape'"):
        store.add("../../escape", read_material(pki.server.cert, pki.server.key))
    assert sorted(os.listdir(tmp_path)) == []


def test_good_names_and_defaults() -> None:
    assert st.validate_name("Example.COM") == "example.com"
    assert st.validate_name("mail_rsa") == "mail_rsa"
    assert st.validate_name("a-b.c-d.e") == "a-b.c-d.e"
    assert st.name_for("*.Example.com.") == "example.com"
    assert st.name_for("192.0.2.1") == "192.0.2.1"
    assert st.name_for("::1") == "0000-0000-0000-0000-0000-0000-0000-0001"


def test_names_are_case_insensitive(store: Store, pki: PKI) -> None:
    store.add("Example.COM", read_material(pki.server.cert, pki.server.key))
    assert store.names() == ["example.com"]
    assert store.current("EXAMPLE.com").name == "example.com"


def test_names_ignore_what_is_not_a_certificate(store: Store, pki: PKI) -> None:
    store.add("real", read_material(pki.server.cert, pki.server.key))
    certs = store.root / "certs"
    (certs / "Bad Name").mkdir()
    (certs / "no-current").mkdir()
    (certs / ".new-junk").mkdir()
    (certs / "file").write_text("x")
    assert store.names() == ["real"]
    with pytest.raises(NotFound, match=r"no-current: certificate 'no-current' has no current"):
        store.current("no-current")
    with pytest.raises(NotFound, match=r"no certificate named 'absent' in .*certs"):
        store.current("absent")
    with pytest.raises(NotFound, match="no certificate named 'absent'"):
        store.versions("absent")
    assert Store(store.root / "nowhere").names() == []


# -- damaged entries ---------------------------------------------------------------
def test_damaged_entries_name_the_file(store: Store, pki: PKI) -> None:
    m = read_material(pki.server.cert, pki.server.key)
    v = store.add("dmg", m)
    current = store.folder("dmg") / "current"
    (v.path / "meta.json").write_text("{not json")
    with pytest.raises(CorruptEntry, match=rf"^{v.path / 'meta.json'}: not valid store metadata"):
        store.current("dmg")
    (v.path / "meta.json").write_text(json.dumps({"format": 1}))
    with pytest.raises(CorruptEntry, match=rf"^{v.path / 'meta.json'}: missing key 'domains'"):
        store.current_version("dmg")
    v2 = store.add("dmg", m)
    (v2.key_path).unlink()
    with pytest.raises(CorruptEntry, match=rf"^{v2.key_path}: missing$"):
        store.current("dmg")
    os.unlink(current)
    os.symlink("/etc", current)
    with pytest.raises(CorruptEntry, match=r"current: points at '/etc', not at versions/NNNN"):
        store.current("dmg")


# -- the SNI index -----------------------------------------------------------------
def test_sni_index_exact_then_wildcard(store: Store, hier: Hierarchy) -> None:
    for name, sans in (("site", ["example.com", "www.example.com"]),
                       ("wild", ["*.example.com"]),
                       ("other", ["other.org"])):
        store.add(name, read_material(*hier.leaf(name, sans), hier.chain))
    index = store.index()
    assert dict(index) == {"example.com": ("site",), "www.example.com": ("site",),
                           "*.example.com": ("wild",), "other.org": ("other",)}
    assert index.errors == ()
    assert index.match("www.example.com") == ("site", "wild")
    assert index.match("WWW.Example.COM.") == ("site", "wild")
    assert index.match("mail.example.com") == ("wild",)
    assert index.match("example.com") == ("site",)  # a wildcard does not cover its base
    assert index.match("a.b.example.com") == ()  # nor more than one label
    assert index.match("other.org") == ("other",)
    assert index.match("unknown.net") == ()


def test_sni_index_lists_several_names_and_skips_damaged(store: Store, hier: Hierarchy) -> None:
    store.add("ecdsa", read_material(*hier.leaf("e", ["dual.example"]), hier.chain))
    rsa_key = rsa.generate_private_key(65537, 2048)
    store.add("rsa", read_material(*hier.leaf("r", ["dual.example"], rsa_key), hier.chain))
    store.add("broken", read_material(*hier.leaf("b", ["broken.example"]), hier.chain))
    meta = store.current_version("broken").path / "meta.json"
    meta.write_text("[]")
    index = store.index()
    assert index.match("dual.example") == ("ecdsa", "rsa")
    assert "broken.example" not in index
    assert len(index.errors) == 1 and str(meta) in str(index.errors[0])


def test_store_loads_no_yaml_cli_or_engine_code() -> None:
    # the engine reads the store as a pure library: no YAML, no admin tool, no daemon
    out = subprocess.run(
        [sys.executable, "-c", "import sys, ssa_engine.store; print(sorted(m for m in sys.modules "
         "if m.startswith(('ssa_admin', 'ssa_engine.daemon', 'ruamel', 'yaml', 'typer', "
         "'rich'))))"],
        cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
