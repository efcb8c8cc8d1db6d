"""``ssa-admin profile``, ``policy``, ``reload`` and ``status``, through the real CLI.

Every command runs in a subprocess (``python -m ssa_admin``) with
SSA_CONFIG_DIR, SSA_PROFILES_DIR and SSA_ENGINE_SOCKET pointing into tmp
directories; one engine serves the tests that need a running one. The golden
files in tests/golden/ are hand-written, commented YAML and the exact bytes
an edit must produce from them.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO, EngineProcess

TRUE = os.path.realpath(shutil.which("true") or "/bin/true")
GOLDEN = Path(__file__).resolve().parent / "golden"
#: file:line:col: at the start of an error line
LOCATED = re.compile(r"^(?P<file>/[^:]+\.yaml):(?P<line>\d+):(?P<col>\d+): ", re.M)
MISSING = ("mytool is not installed on this machine (not found in PATH); pass --path to name "
           "it, or --name-only to match by name")


class Admin:
    """Runs ``ssa-admin`` against one configuration, bundled-profile and bin directory."""

    def __init__(self, root: Path, socket: Path | None = None) -> None:
        self.config = root / "config"
        self.bundled = root / "bundled"
        self.bin = root / "bin"
        for d in (self.config, self.bundled, self.bin):
            d.mkdir(parents=True, exist_ok=True)
        self.socket = socket or root / "no-engine.sock"
        self.profiles = self.config / "profiles.d"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(SSA_CONFIG_DIR=str(self.config), SSA_PROFILES_DIR=str(self.bundled),
                   SSA_ENGINE_SOCKET=str(self.socket), COLUMNS="200")
        env.update(extra)
        return env

    def __call__(self, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
        env = self.env() if path is None else self.env(PATH=path)
        return subprocess.run([sys.executable, "-m", "ssa_admin", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    def program(self, name: str, *, script: bool = False) -> Path:
        """An executable ``bin/NAME``: a copy of true(1), or a shell script."""
        exe = self.bin / name
        if script:
            exe.write_text("#!/bin/sh\nexit 0\n")
        else:
            shutil.copyfile(TRUE, exe)
        exe.chmod(0o755)
        return exe

    def path_with_bin(self) -> str:
        return os.pathsep.join([str(self.bin), os.environ.get("PATH", "/usr/bin:/bin")])

    def path_without_bin(self) -> str:
        return str(self.bin.parent / "empty-path")  # a directory that does not exist

    def bundle(self, name: str, text: str) -> Path:
        p = self.bundled / f"{name}.yaml"
        p.write_text(text)
        return p

    def applied(self, name: str, text: str) -> Path:
        self.profiles.mkdir(exist_ok=True)
        p = self.profiles / f"{name}.yaml"
        p.write_text(text)
        return p


@pytest.fixture
def admin(tmp_path: Path) -> Admin:
    return Admin(tmp_path)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    """One engine for this module, on its own (initially empty) configuration directory."""
    eng = EngineProcess(tmp_path_factory.mktemp("engine"))
    yield eng
    eng.stop()
    log = eng.log.read_text()
    assert "Traceback" not in log, log[log.index("Traceback") - 500:][:3000]


def ok(res: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert res.returncode == 0, f"exit {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"
    return res


def changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.ndiff(before.splitlines(), after.splitlines())
            if line.startswith(("- ", "+ "))]


# -- golden files: only the edited value changes ------------------------------------------
def test_set_level_keeps_everything_else_byte_for_byte(admin: Admin) -> None:
    original = (GOLDEN / "ssa.yaml").read_text()
    (admin.config / "ssa.yaml").write_text(original)
    res = ok(admin("policy", "set-level", "modern"))
    assert "level modern (was default)" in res.stdout
    # no engine runs: a warning, not a failure
    assert "warning: no engine is running" in res.stderr
    after = (admin.config / "ssa.yaml").read_text()
    assert after == (GOLDEN / "ssa.set-level.expected.yaml").read_text()
    assert changed_lines(original, after) == [
        "- level: default   # modern once the old printers are gone",
        "+ level: modern    # modern once the old printers are gone",
    ]
    doc = json.loads(ok(admin("policy", "show", "--json")).stdout)
    assert doc["settings"]["level"] == "modern" and doc["origins"]["level"] == "ssa.yaml"
    assert doc["settings"]["tls"]["min_version"] == "1.3"
    assert doc["origins"]["tls.min_version"] == "ssa.yaml (level modern)"
    assert doc["origins"]["tls.groups"] == "ssa.yaml"
    assert doc["settings"]["handshake_timeout"] == 15.0
    assert doc["origins"]["verify.verify_depth"] == "built-in"


def test_set_level_refuses_what_would_not_load(admin: Admin) -> None:
    text = 'level: default\ntls:\n  min_version: "1.2"   # keep TLS 1.2\n'
    (admin.config / "ssa.yaml").write_text(text)
    res = admin("policy", "set-level", "modern")  # modern has no TLS 1.2 ciphers
    assert res.returncode == 1
    assert f"{admin.config}/ssa.yaml:3:3: tls -> ciphers: is empty but TLS 1.2 is allowed" in (
        res.stderr)
    assert "nothing was changed" in res.stderr
    assert (admin.config / "ssa.yaml").read_text() == text
    res = admin("policy", "set-level", "ultra")
    assert res.returncode == 2 and "one of legacy, default, modern, future, fips" in res.stderr


def test_apply_keeps_the_bundled_comments_and_adds_the_path(admin: Admin) -> None:
    admin.bundle("mytool", (GOLDEN / "mytool.yaml").read_text())
    exe = admin.program("mytool")
    res = ok(admin("profile", "apply", "mytool", path=admin.path_with_bin()))
    assert f"match.path: {exe} (found in PATH)" in res.stdout
    applied = (admin.profiles / "mytool.yaml").read_text()
    expected = (GOLDEN / "mytool.applied.expected.yaml").read_text().replace("@BIN@", str(admin.bin))
    assert applied == expected
    assert changed_lines((GOLDEN / "mytool.yaml").read_text(), applied) == [
        f"+   path: {exe}  # set by ssa-admin profile apply"]

    # the same again: nothing to do; `diff` finds the bundled profile as applied
    res = ok(admin("profile", "apply", "mytool", path=admin.path_with_bin()))
    assert "nothing to do" in res.stdout
    res = ok(admin("profile", "diff", "mytool"))
    assert res.stdout == ""
    assert ok(admin("profile", "list", "--json")).stdout.count('"state": "applied"') == 1

    # the administrator edits it: diff shows the edit (exit 1), apply will not overwrite it
    (admin.profiles / "mytool.yaml").write_text(applied.replace("level: modern ", "level: future "))
    res = admin("profile", "diff", "mytool")
    assert res.returncode == 1
    assert "-level: modern " in res.stdout and "+level: future " in res.stdout
    body = res.stdout.splitlines()[2:]  # after the --- and +++ headers
    assert [line for line in body if line.startswith(("+", "-"))] == [
        "-level: modern         # mytool only talks to modern servers",
        "+level: future         # mytool only talks to modern servers"]
    rows = json.loads(ok(admin("profile", "list", "--json")).stdout)
    assert rows[0]["state"] == "applied, differs from bundled" and rows[0]["level"] == "future"
    res = admin("profile", "apply", "mytool", path=admin.path_with_bin())
    assert res.returncode == 1
    assert "was changed since it was applied" in res.stderr and "--force" in res.stderr
    ok(admin("profile", "apply", "mytool", "--force", path=admin.path_with_bin()))
    assert (admin.profiles / "mytool.yaml").read_text() == expected


def test_apply_when_the_program_is_absent(admin: Admin) -> None:
    admin.bundle("mytool", (GOLDEN / "mytool.yaml").read_text())
    res = admin("profile", "apply", "mytool", path=admin.path_without_bin())
    assert res.returncode == 1
    assert res.stderr.strip() == f"ssa-admin: {MISSING}"
    assert not (admin.profiles / "mytool.yaml").exists()

    # --path names it (it must exist and be executable)
    res = admin("profile", "apply", "mytool", "--path", str(admin.bin / "nope"),
                path=admin.path_without_bin())
    assert res.returncode == 1 and "--path" in res.stderr and "no such file" in res.stderr
    (admin.bin / "plain").write_text("not a program")
    res = admin("profile", "apply", "mytool", "--path", str(admin.bin / "plain"))
    assert res.returncode == 1 and "not an executable file" in res.stderr
    exe = admin.program("elsewhere")
    res = ok(admin("profile", "apply", "mytool", "--path", str(exe), path=admin.path_without_bin()))
    assert f"match.path: {exe} (named by --path)" in res.stdout
    assert f"  path: {exe}  # set by ssa-admin profile apply\n" in (
        admin.profiles / "mytool.yaml").read_text()

    # --name-only: no path at all, the bundled file as it is
    res = ok(admin("profile", "apply", "mytool", "--name-only", "--force",
                   path=admin.path_without_bin()))
    assert (admin.profiles / "mytool.yaml").read_text() == (GOLDEN / "mytool.yaml").read_text()
    assert admin("profile", "apply", "mytool", "--name-only", "--path", str(exe)).returncode == 2

    # unknown names and files
    res = admin("profile", "apply", "nosuch")
    assert res.returncode == 1 and "no bundled profile named 'nosuch' (bundled: mytool)" in res.stderr


def test_apply_keeps_matching_by_name_what_a_path_cannot_express(admin: Admin) -> None:
    """Every kind a match gives must match: a path written for ``mytool`` alone would
    stop the profile from matching ``helper-*`` or a script (whose exe is its interpreter)."""
    admin.program("mytool")
    admin.bundle("multi", "match:\n  name: [mytool, 'helper-*']\n")
    res = ok(admin("profile", "apply", "multi", path=admin.path_with_bin()))
    assert "note: matching by name only: helper-* is a pattern" in res.stdout
    assert "path" not in (admin.profiles / "multi.yaml").read_text()
    script = admin.program("myscript", script=True)
    res = admin("profile", "apply", "multi", "--force", "--path", str(script))
    assert res.returncode == 1 and "is a script (#!)" in res.stderr


def test_apply_a_file_of_ones_own_and_its_errors(admin: Admin, tmp_path: Path) -> None:
    exe = admin.program("myapp")
    own = tmp_path / "myapp.yaml"
    own.write_text("match:\n  path: " + str(exe) + "\nlevel: future\n")
    res = ok(admin("profile", "apply", str(own)))
    assert "applied myapp" in res.stdout
    assert (admin.profiles / "myapp.yaml").read_text() == own.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("match:\n  name: bad\ntls:\n  min_versoin: '1.3'\n")
    res = admin("profile", "apply", str(bad))
    assert res.returncode == 1
    assert f"{bad}:4:3: tls -> min_versoin: unknown key; did you mean min_version?" in res.stderr
    assert not (admin.profiles / "bad.yaml").exists()


# -- validate --------------------------------------------------------------------------
BROKEN = {
    "malformed": ("match:\n  name: x\nlevel: [modern\n", "invalid YAML"),
    "unknown-key": ("match:\n  name: x\nciphers: []\n", "ciphers: unknown key"),
    "wrong-type": ("match:\n  name: x\nhandshake_timeout: soon\n",
                   "handshake_timeout: must be a number"),
    "min-above-max": ('match:\n  name: x\ntls:\n  min_version: "1.3"\n  max_version: "1.2"\n',
                      "tls -> min_version: is above tls.max_version"),
    "unknown-level": ("match:\n  name: x\nlevel: paranoid\n",
                      "level: must be one of legacy, default, modern, future, fips"),
}


def test_validate_names_file_line_and_column(admin: Admin) -> None:
    files = {case: admin.applied(case, text) for case, (text, _) in BROKEN.items()}
    res = admin("profile", "validate", *map(str, files.values()))
    assert res.returncode == 1
    assert f"{len(BROKEN)} errors" in res.stderr
    lines = res.stdout.splitlines()
    for case, (_, message) in BROKEN.items():
        mine = [line for line in lines if line.startswith(f"{files[case]}:")]
        assert len(mine) == 1, (case, res.stdout)
        assert LOCATED.match(mine[0]) and message in mine[0], mine[0]

    # no arguments: the whole configuration directory, the same errors
    res = admin("profile", "validate", "--json")
    assert res.returncode == 1
    doc = json.loads(res.stdout)
    assert doc["ok"] is False
    assert sorted(e["file"] for e in doc["errors"]) == sorted(str(f) for f in files.values())
    assert all(e["line"] and e["column"] for e in doc["errors"])
    assert {e["text"] for e in doc["errors"]} == {line for line in lines if LOCATED.match(line)}
    for f in files.values():
        f.unlink()
    admin.applied("good", "match:\n  name: good\n")
    res = ok(admin("profile", "validate"))
    assert res.stdout.startswith("valid: ") and "good.yaml" in res.stdout


# -- new, remove, show, list -------------------------------------------------------------
def test_new_writes_a_commented_skeleton_and_remove_deletes_it(admin: Admin) -> None:
    exe = admin.program("svc")
    res = ok(admin("profile", "new", "svc", "--path", str(exe), "--user", "root",
                   "--level", "modern"))
    assert "created svc" in res.stdout
    text = (admin.profiles / "svc.yaml").read_text()
    assert f"  path: {exe}" in text and "level: modern" in text and "# pins:" in text
    doc = json.loads(ok(admin("profile", "show", "svc", "--json")).stdout)
    assert doc["state"] == "applied" and doc["match"] == {"path": [str(exe)], "user": ["root"]}
    assert doc["settings"]["tls"]["min_version"] == "1.3"
    assert doc["origins"]["tls.min_version"] == "profile svc (level modern)"
    assert doc["origins"]["handshake_timeout"] == "built-in"
    shown = ok(admin("profile", "show", "svc")).stdout
    assert re.search(r"^level: modern +# profile svc$", shown, re.M)

    res = admin("profile", "new", "svc", "--name", "svc")
    assert res.returncode == 1 and "exists" in res.stderr
    assert admin("profile", "new", "other").returncode == 2  # no match criteria
    res = admin("profile", "new", "a b", "--name", "x")
    assert res.returncode == 1 and "not a profile name" in res.stderr

    ok(admin("profile", "remove", "svc"))
    assert not (admin.profiles / "svc.yaml").exists()
    res = admin("profile", "remove", "svc")
    assert res.returncode == 1 and "no applied profile named 'svc'" in res.stderr


def test_list_and_show_bundled_and_local_profiles(admin: Admin) -> None:
    admin.bundle("mytool", (GOLDEN / "mytool.yaml").read_text())
    admin.applied("local", "match:\n  name: local\ndescription: mine\n")
    rows = {r["name"]: r for r in json.loads(ok(admin("profile", "list", "--json")).stdout)}
    assert rows["mytool"]["state"] == "bundled only" and rows["mytool"]["level"] == "modern"
    assert rows["mytool"]["match"] == {"name": ["mytool"]}
    assert rows["local"]["state"] == "applied (local)" and rows["local"]["description"] == "mine"
    plain = ok(admin("profile", "list")).stdout
    assert re.search(r"^mytool +bundled only +modern +name=mytool", plain, re.M)
    doc = json.loads(ok(admin("profile", "show", "mytool", "--json")).stdout)
    assert doc["state"] == "bundled" and doc["settings"]["tls"]["groups"] == ["X25519", "P-256"]
    assert "bundled, not applied" in ok(admin("profile", "show", "mytool")).stdout
    res = admin("profile", "show", "nosuch")
    assert res.returncode == 1 and "no applied or bundled profile named 'nosuch'" in res.stderr
    res = admin("profile", "diff", "local")
    assert res.returncode == 2 and "local profile" in res.stderr


# -- explain ---------------------------------------------------------------------------
def test_explain_a_running_process_and_a_path(admin: Admin) -> None:
    me = os.path.realpath(sys.executable)
    admin.applied("interp", f"match:\n  path: {me}\nlevel: modern\n")
    admin.applied("byuser", f"match:\n  user: '{os.getuid()}'\n")
    admin.applied("other", "match:\n  name: no-such-program\n")

    doc = json.loads(ok(admin("profile", "explain", str(os.getpid()), "--json")).stdout)
    assert doc["program"]["pid"] == os.getpid() and doc["program"]["exe"] == me
    assert doc["profile"] == "interp" and doc["level"] == "modern"
    assert doc["reason"] == f"matched by path exactly ({me})"
    assert [(c["name"], c["result"]) for c in doc["candidates"]] == [
        ("interp", "selected"), ("byuser", "lost")]
    assert doc["candidates"][1]["why_lost"] == (
        "a path match is more specific than a user match")
    assert doc["not_matching"] == ["other"]
    human = ok(admin("profile", "explain", str(os.getpid()))).stdout
    assert "interp" in human and "byuser" in human and "lost" in human

    exe = admin.program("tool")
    doc = json.loads(ok(admin("profile", "explain", str(exe), "--json")).stdout)
    assert doc["profile"] == "byuser" and doc["program"]["pid"] is None
    doc = json.loads(ok(admin("profile", "explain", str(exe), "--user", "65534", "--json")).stdout)
    assert doc["profile"] is None and doc["reason"] == "no profile matches"
    assert admin("profile", "explain", str(os.getpid()), "--user", "root").returncode == 2
    res = admin("profile", "explain", "99999999")
    assert res.returncode == 1 and "no process 99999999" in res.stderr


def test_explain_a_tie(admin: Admin) -> None:
    exe = admin.program("twin")
    for name in ("zeta", "alpha"):
        admin.applied(name, "match:\n  name: twin\n")
    admin.applied("glob", "match:\n  name: 'tw*'\n")
    doc = json.loads(ok(admin("profile", "explain", str(exe), "--json")).stdout)
    assert doc["profile"] == "alpha" and doc["tied"] == ["zeta"]
    assert [(c["name"], c["result"]) for c in doc["candidates"]] == [
        ("alpha", "selected"), ("zeta", "tied"), ("glob", "lost")]
    assert doc["candidates"][1]["why_lost"] == "tie: equally specific, alpha sorts first by name"
    assert doc["candidates"][2]["why_lost"] == "an exact value beats a pattern"
    human = ok(admin("profile", "explain", str(exe))).stdout
    assert "zeta match as specifically; alpha wins by name order" in human


# -- the running engine -----------------------------------------------------------------
def test_reload_and_status_without_an_engine(admin: Admin) -> None:
    res = admin("reload")
    assert res.returncode == 1 and f"no engine is running at {admin.socket}" in res.stderr
    res = admin("status")
    assert res.returncode == 1 and "not running" in res.stderr


def _status(admin: Admin) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ok(admin("status", "--json")).stdout)
    return doc


def test_apply_reaches_the_running_engine(engine: EngineProcess, tmp_path: Path) -> None:
    admin = Admin(tmp_path, engine.socket)
    admin.config = engine.config
    admin.profiles = engine.config / "profiles.d"
    admin.bundle("mytool", (GOLDEN / "mytool.yaml").read_text())
    admin.program("mytool")
    res = ok(admin("profile", "apply", "mytool", path=admin.path_with_bin()))
    assert "reloaded (1 profile)" in res.stdout and res.stderr == ""
    doc = _status(admin)
    assert doc["running"] is True and doc["config_dir"] == str(engine.config)
    assert [p["name"] for p in doc["profiles"]] == ["mytool"]
    assert doc["profiles"][0]["level"] == "modern"
    assert not doc["last_reload_errors"]
    plain = ok(admin("status")).stdout
    assert "configuration in force" in plain and "connected" in plain
    assert re.search(r"^mytool +modern +path=", plain, re.M)
    assert "reloaded (0 profiles)" in ok(admin("profile", "remove", "mytool")).stdout


def test_a_broken_file_keeps_the_old_configuration(engine: EngineProcess, tmp_path: Path) -> None:
    admin = Admin(tmp_path, engine.socket)
    admin.config = engine.config
    admin.profiles = engine.config / "profiles.d"
    exe = admin.program("kept")
    res = ok(admin("profile", "new", "kept", "--path", str(exe), "--level", "modern"))
    assert "reloaded (1 profile)" in res.stdout
    broken = admin.applied("broken", "match:\n  name: broken\ntls:\n  min_version: 1.1\n")
    try:
        res = admin("reload")
        assert res.returncode == 1
        assert f"{broken}:4:16: tls -> min_version: must be one of" in res.stderr
        assert "kept its old configuration" in res.stderr
        doc = _status(admin)
        assert any(str(broken) in e for e in doc["last_reload_errors"])
        assert doc["last_reload_failed_at"]
        assert [p["name"] for p in doc["profiles"]] == ["kept"]  # the old one, in force
        plain = ok(admin("status")).stdout
        assert "LAST RELOAD FAILED" in plain and f"{broken}:4:16" in plain
    finally:
        broken.unlink()
    res = ok(admin("reload"))
    assert res.stdout.strip() == "reloaded (1 profile)"
    assert "reloaded (0 profiles)" in ok(admin("profile", "remove", "kept")).stdout

