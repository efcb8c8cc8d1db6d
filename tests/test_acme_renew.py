"""``ssa-admin cert renew / revoke / delete`` against a real Pebble, through the real CLI.

Each test issues its own certificates (http-01 standalone on the port Pebble's
validation authority uses) into a temporary state directory; no engine runs
(the socket named in SSA_ENGINE_SOCKET does not exist), so every reload is the
"no engine is running" warning.
"""

from __future__ import annotations

import base64
import configparser
import dataclasses
import datetime as dt
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ssa_admin.acme.renew import lifetime_due, parse_renewal_info, point_in_window
from ssa_engine.store import AcmeMeta, Material, Store, load_material

from .acme_server import PebbleServer

REPO = Path(__file__).resolve().parent.parent
UTC = dt.UTC


@pytest.fixture(autouse=True)
def _no_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSA_ENGINE_SOCKET", str(tmp_path / "no-engine.sock"))
    monkeypatch.setenv("SSA_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("SSA_STATE_DIR", raising=False)


def ssa_admin(*args: str, timeout: float = 120, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ssa_admin", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def issue(pebble: PebbleServer, state: Path, name: str, *extra: str) -> None:
    res = ssa_admin("cert", "issue", name, "--server", pebble.directory_url, "--ca-bundle",
                    str(pebble.ca_bundle), "--agree-tos", "--profile", "default",
                    "--http-port", str(pebble.http_port), "--state-dir", str(state), *extra)
    assert res.returncode == 0, res.stderr


def renew(state: Path, *args: str, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    return ssa_admin("cert", "renew", "--state-dir", str(state), *args, env=env)


def renew_json(state: Path, *args: str) -> tuple[int, dict, str]:
    res = renew(state, "--json", *args)
    return res.returncode, json.loads(res.stdout), res.stderr


def pebble_log(pebble: PebbleServer) -> str:
    return pebble.pebble_log.read_text(errors="replace")


def order_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def hook_script(tmp_path: Path) -> tuple[str, Path]:
    """A deploy hook that appends its SSA_* environment as one JSON line."""
    out = tmp_path / "hook.jsonl"
    script = tmp_path / "hook.py"
    script.write_text(textwrap.dedent(f"""\
        import json, os
        with open({str(out)!r}, "a") as f:
            f.write(json.dumps({{k: v for k, v in os.environ.items()
                                if k.startswith("SSA_")}}) + "\\n")
        """))
    return f"{sys.executable} {script}", out


# -- due time without a CA -------------------------------------------------------------------
def test_due_time_rules() -> None:
    start = dt.datetime(2025, 1, 1, tzinfo=UTC)
    end = start + dt.timedelta(days=2)
    points = {point_in_window(start, end, f"id-{i}") for i in range(50)}
    assert all(start <= p <= end for p in points) and len(points) == 50
    assert point_in_window(start, end, "id-1") == point_in_window(start, end, "id-1")
    assert lifetime_due(start, start + dt.timedelta(days=90)) == start + dt.timedelta(days=60)
    got = parse_renewal_info({"suggestedWindow": {"start": "2025-01-01T00:00:00Z",
                                                   "end": "2025-01-03T00:00:00Z"},
                              "explanationURL": "https://ca.example/why"})
    assert got == (start, end, "https://ca.example/why")
    for bad in ({}, {"suggestedWindow": {"start": "2025-01-02T00:00:00Z",
                                         "end": "2025-01-01T00:00:00Z"}},
                {"suggestedWindow": {"start": "tomorrow", "end": "2025-01-01T00:00:00Z"}}):
        with pytest.raises(ValueError):
            parse_renewal_info(bad)


def test_scheduled_jitter_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from ssa_admin.cli import cert_renew

    monkeypatch.setenv(cert_renew.ENV_JITTER, "3600")
    assert all(0 <= cert_renew._jitter() <= 60 for _ in range(200))
    monkeypatch.setenv(cert_renew.ENV_JITTER, "0")
    assert cert_renew._jitter() == 0


# -- renewal -----------------------------------------------------------------------------------
def test_not_due_then_due_by_ari_with_replaces_and_saved_hook(pebble, tmp_path) -> None:
    state = tmp_path / "state"
    name = "ari.renew.test"
    issue(pebble, state, name)
    store = Store(state)
    v1 = store.current_version(name)

    # fresh: Pebble's ARI window lies ahead
    code, doc, err = renew_json(state)
    assert code == 0, err
    (one,) = doc["certificates"]
    assert one["status"] == "not due" and one["source"] == "ari" and one["version"] == 1
    start, end = (dt.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in one["window"])
    due = dt.datetime.fromisoformat(one["due"].replace("Z", "+00:00"))
    assert dt.datetime.now(UTC) < start <= due <= end
    res = renew(state, name)
    assert res.returncode == 0
    assert f"{name}: not due: renewal due {due:%Y-%m-%d %H:%M} UTC (ARI window" in res.stdout

    # the CA moves the window into the past: due now
    now = dt.datetime.now(UTC)
    pebble.set_renewal_info(v1.cert_path.read_bytes(), now - dt.timedelta(days=2),
                            now - dt.timedelta(days=1), explanation_url="https://ca.test/why")
    hook, hook_out = hook_script(tmp_path)
    res = renew(state, "--deploy-hook", hook)
    assert res.returncode == 0, res.stderr
    assert re.search(rf"^{re.escape(name)}: renewed: version 2 \(was 1\), valid until .*"
                     r"ARI replaces sent \(ARI window .* see https://ca.test/why\)$",
                     res.stdout, re.M), res.stdout
    assert "no engine is running" in res.stderr
    v2 = store.current_version(name)
    assert v2.number == 2 and v2.meta.serial != v1.meta.serial
    assert v2.meta.acme is not None and v1.meta.acme is not None
    assert v2.meta.acme.profile == "default" and v2.meta.acme.challenge == "http-01"
    assert v2.meta.acme.options["http_port"] == pebble.http_port
    assert v2.meta.acme.account == v1.meta.acme.account
    assert v2.meta.acme.deploy_hooks == (hook,)  # saved for the next renewals
    # Pebble logs this line only for an order that carried `replaces`
    assert f"Order {order_id(v2.meta.acme.order)} has been marked as replaced" in \
        pebble_log(pebble)
    (env,) = [json.loads(line) for line in hook_out.read_text().splitlines()]
    assert env["SSA_CERT_NAME"] == name and env["SSA_DOMAINS"] == name
    assert env["SSA_FULLCHAIN_PATH"] == str(v2.fullchain_path)
    assert env["SSA_KEY_PATH"] == str(v2.key_path)

    # the new certificate has its own (future) ARI window: not due any more
    code, doc, _ = renew_json(state)
    assert code == 0 and doc["certificates"][0]["status"] == "not due"

    # the saved hook runs on the next renewal, given or not
    code, doc, err = renew_json(state, "--force", name)
    assert code == 0, err
    (one,) = doc["certificates"]
    assert one["status"] == "renewed" and one["forced"] is True and one["version"] == 3
    assert one["replaces"] == v2.meta.acme.ari_cert_id
    assert [json.loads(line)["SSA_CERT_DIR"] for line in hook_out.read_text().splitlines()] \
        == [str(v2.path), str(store.current_version(name).path)]

    # Make version 1 current again and renew it once more: Pebble refuses a second
    # replacement of the same certificate (alreadyReplaced, HTTP 409), which proves
    # that `replaces` named it; renewal then goes on without it.
    store.activate(name, 1)
    code, doc, err = renew_json(state, "--force", name)
    assert code == 0, err
    (one,) = doc["certificates"]
    assert one["status"] == "renewed" and one["version"] == 4 and one["renewed_from"] == 1
    assert one["replaces"] is None
    assert any("already replaced" in n for n in one["notes"]), one["notes"]
    assert store.current_version(name).number == 4


def with_hooks(store: Store, name: str, hooks: tuple[str, ...]) -> AcmeMeta:
    acme = store.current_version(name).meta.acme
    assert acme is not None
    return dataclasses.replace(acme, deploy_hooks=hooks)


def test_force_and_dry_run(pebble, tmp_path) -> None:
    state = tmp_path / "state"
    name = "force.renew.test"
    issue(pebble, state, name)
    store = Store(state)
    before = sorted(os.listdir(state / "certs" / name / "versions"))
    hook, hook_out = hook_script(tmp_path)
    store.update_acme(name, with_hooks(store, name, (hook,)))

    res = renew(state, "--dry-run", name)
    assert res.returncode == 0, res.stderr
    assert f"{name}: dry run: {pebble.directory_url} issued a test certificate" in res.stdout
    assert "nothing was stored, no hook ran" in res.stdout
    assert "no staging server is known" in res.stdout
    assert "discarded: the test certificate (nothing was stored)" in res.stdout
    assert sorted(os.listdir(state / "certs" / name / "versions")) == before
    assert store.current_version(name).number == 1
    assert not hook_out.exists()
    assert not any(p.name.startswith(".new-") for p in (state / "certs" / name /
                                                         "versions").iterdir())

    code, doc, err = renew_json(state, "--dry-run")
    assert code == 0, err
    assert doc["dry_run"] is True and doc["engine_reloaded"] is None
    (one,) = doc["certificates"]
    assert one["status"] == "dry run" and one["test_not_after"] and one["version"] == 1

    res = renew(state, "--dry-run", "--deploy-hook", "true")
    assert res.returncode == 2 and "a dry run runs and saves no hooks" in res.stderr

    res = renew(state, "--force", name)
    assert res.returncode == 0, res.stderr
    assert re.search(rf"^{re.escape(name)}: renewed: version 2 \(was 1\).*\(forced\)$",
                     res.stdout, re.M), res.stdout
    assert store.current_version(name).number == 2
    assert len(hook_out.read_text().splitlines()) == 1


def test_a_replacement_the_ca_cannot_place_renews_without_replaces(pebble, tmp_path) -> None:
    """Pebble answers serverInternal when `replaces` names a certificate whose order it
    cannot find (for an unknown serial here; also, briefly, for one it has just
    issued): the renewal goes on as an ordinary order and says so."""
    state = tmp_path / "state"
    name = "unplaced.renew.test"
    issue(pebble, state, name)
    store = Store(state)
    acme = store.current_version(name).meta.acme
    assert acme is not None and acme.ari_cert_id
    key_id, _serial = acme.ari_cert_id.split(".")
    unknown = base64.urlsafe_b64encode(b"\x01" + os.urandom(15)).rstrip(b"=").decode()
    store.update_acme(name, dataclasses.replace(acme, ari_cert_id=f"{key_id}.{unknown}"))
    code, doc, err = renew_json(state, "--force", name)
    assert code == 0, err
    (one,) = doc["certificates"]
    assert one["status"] == "renewed" and one["version"] == 2 and one["replaces"] is None
    assert any("could not place an order replacing version 1" in n for n in one["notes"]), \
        one["notes"]
    assert store.current_version(name).number == 2


def test_failed_renewal_keeps_the_old_version(pebble, tmp_path) -> None:
    state = tmp_path / "state"
    name = "fail.renew.test"
    issue(pebble, state, name)
    store = Store(state)
    # another program now owns the recorded http-01 port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", pebble.http_port))
        squatter.listen()
        res = renew(state, "--force", name)
        code, doc, _ = renew_json(state, "--force", name)
    assert res.returncode == 1
    assert f"{name}: failed: port {pebble.http_port} is in use by another program" in res.stderr
    assert "version 1 is still current" in res.stderr
    assert "Traceback" not in res.stderr
    assert code == 1 and doc["certificates"][0]["status"] == "failed"
    assert "is in use" in doc["certificates"][0]["reason"]
    assert store.current_version(name).number == 1
    assert [v.number for v in store.versions(name)] == [1]


def test_a_busy_certificate_does_not_stop_the_others(pebble, tmp_path) -> None:
    state = tmp_path / "state"
    busy, other = "busy.renew.test", "other.renew.test"
    issue(pebble, state, busy)
    issue(pebble, state, other)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""\
            import sys, time
            from ssa_engine.store import AcmeMeta, Material, Store, load_material
            with Store({str(state)!r}).lock({busy!r}):
                print("locked", flush=True)
                time.sleep(60)
            """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        res = renew(state, "--force")
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    assert res.returncode == 1
    assert re.search(rf"^{re.escape(busy)}: failed: busy: .*is being changed by another "
                     rf"process \(process {holder.pid}\)", res.stderr, re.M), res.stderr
    assert "nothing was changed" in res.stderr
    assert f"{other}: renewed: version 2 (was 1)" in res.stdout
    assert "1 failed, 1 renewed." in res.stdout or "1 renewed, 1 failed." in res.stdout
    store = Store(state)
    assert store.current_version(busy).number == 1
    assert store.current_version(other).number == 2


def test_scheduled_run_and_names(pebble, tmp_path) -> None:
    state = tmp_path / "state"
    name = "sched.renew.test"
    issue(pebble, state, name)
    store = Store(state)
    # an imported certificate is not renewed by `renew` (all), and named it is an error
    store.add("imported.test", _material(store, name), source="import")
    env = dict(os.environ, SSA_RENEW_MAX_JITTER="0")
    started = time.monotonic()
    res = renew(state, "--scheduled", env=env)
    assert time.monotonic() - started < 30
    assert res.returncode == 0, res.stderr
    assert f"{name}: not due: renewal due" in res.stdout
    assert "imported.test" not in res.stdout + res.stderr
    res = renew(state, "imported.test", "no-such.test")
    assert res.returncode == 1
    assert "imported.test: failed: imported.test was imported, not issued through ACME" in \
        res.stderr
    assert "no-such.test: failed: no certificate named 'no-such.test'" in res.stderr

    # a hook given while the certificate is not due is saved for its renewal
    hook, hook_out = hook_script(tmp_path)
    res = renew(state, name, "--deploy-hook", hook)
    assert res.returncode == 0, res.stderr
    assert f"note: deploy hooks saved: {hook}" in res.stdout
    acme = store.current_version(name).meta.acme
    assert acme is not None and acme.deploy_hooks == (hook,)
    assert not hook_out.exists()

    # with --scheduled, progress is plain lines prefixed by the name
    now = dt.datetime.now(UTC)
    pebble.set_renewal_info(store.current_version(name).cert_path.read_bytes(),
                            now - dt.timedelta(hours=2), now - dt.timedelta(hours=1))
    res = renew(state, "--scheduled", name, env=env)
    assert res.returncode == 0, res.stderr
    assert f"{name}: validated: {name}" in res.stdout
    assert f"{name}: renewed: version 2 (was 1)" in res.stdout
    assert len(hook_out.read_text().splitlines()) == 1


def _material(store: Store, name: str) -> Material:
    entry = store.current(name)
    return load_material(entry.cert_pem, entry.key_pem, entry.chain_pem)


# -- revoke and delete -------------------------------------------------------------------------
def test_revoke_with_the_account_and_with_the_key(pebble, tmp_path) -> None:
    state = tmp_path / "state"
    by_account, by_key = "revoke1.renew.test", "revoke2.renew.test"
    issue(pebble, state, by_account)
    issue(pebble, state, by_key)
    store = Store(state)
    cert1 = store.current_version(by_account).cert_path.read_bytes()
    cert2 = store.current_version(by_key).cert_path.read_bytes()

    res = ssa_admin("cert", "revoke", by_account, "--state-dir", str(state))
    assert res.returncode == 2 and "pass --yes" in res.stderr
    res = ssa_admin("cert", "revoke", by_account, "--reason", "stolen", "--yes",
                    "--state-dir", str(state))
    assert res.returncode == 2 and "--reason: one of unspecified, keyCompromise" in res.stderr
    assert pebble.cert_status(cert1)["Status"] == "Valid"

    res = ssa_admin("cert", "revoke", by_account, "--reason", "superseded", "--yes",
                    "--state-dir", str(state))
    assert res.returncode == 0, res.stderr
    assert "reason superseded, signed with the account" in res.stdout
    status = pebble.cert_status(cert1)
    assert status["Status"] == "Revoked" and status["Reason"] == 4

    res = ssa_admin("cert", "revoke", by_key, "--reason", "keyCompromise", "--yes", "--json",
                    "--state-dir", str(state))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["signed_with"] == "certificate key" and doc["already_revoked"] is False
    status = pebble.cert_status(cert2)
    assert status["Status"] == "Revoked" and status["Reason"] == 1

    # again: the CA says alreadyRevoked, which is no failure
    res = ssa_admin("cert", "revoke", by_account, "--yes", "--state-dir", str(state))
    assert res.returncode == 0, res.stderr
    assert "was already revoked" in res.stdout

    # a revoked certificate is due at once
    res = renew(state, by_account)
    assert res.returncode == 0, res.stderr
    assert f"{by_account}: renewed: version 2 (was 1)" in res.stdout
    assert "(revoked)" in res.stdout
    assert pebble.cert_status(store.current_version(by_account).cert_path.read_bytes())[
        "Status"] == "Valid"


def test_delete(pebble, tmp_path) -> None:
    state = tmp_path / "state"
    name = "delete.renew.test"
    issue(pebble, state, name)
    config = tmp_path / "config"
    (config / "profiles.d").mkdir(parents=True)
    profile = config / "profiles.d" / "web.yaml"
    profile.write_text(f"match:\n  name: lighttpd\nserver:\n  certificates: [{name}]\n")

    res = ssa_admin("cert", "delete", name, "--yes", "--state-dir", str(state))
    assert res.returncode == 1
    assert f"{name} is listed in server.certificates of {profile}" in res.stderr
    res = ssa_admin("cert", "delete", name, "--state-dir", str(state))
    assert res.returncode == 1  # refused before asking
    assert Store(state).names() == [name]

    profile.unlink()
    res = ssa_admin("cert", "delete", name, "--state-dir", str(state))
    assert res.returncode == 2 and "pass --yes" in res.stderr
    res = ssa_admin("cert", "delete", name, "--yes", "--state-dir", str(state))
    assert res.returncode == 0, res.stderr
    assert f"Deleted {name} (1 version(s)). It was not revoked" in res.stdout
    assert "no engine is running" in res.stderr
    assert Store(state).names() == []
    assert not (state / "certs" / name).exists()
    res = ssa_admin("cert", "delete", name, "--yes", "--state-dir", str(state))
    assert res.returncode == 1 and f"no certificate named {name!r}" in res.stderr


# -- the timer ------------------------------------------------------------------------------
def test_systemd_units() -> None:
    def read(name: str) -> configparser.ConfigParser:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string((REPO / "docs" / "systemd" / name).read_text())
        return parser

    service, timer = read("ssa-renew.service"), read("ssa-renew.timer")
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["ExecStart"].endswith("ssa-admin cert renew --scheduled")
    assert timer["Timer"]["RandomizedDelaySec"] == "1h"
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Timer"]["OnCalendar"].split() == ["*-*-*", "00,12:00:00"]
    assert timer["Install"]["WantedBy"] == "timers.target"
