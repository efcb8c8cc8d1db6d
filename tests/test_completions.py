"""Shell completion: the committed scripts are current, and they complete in a real shell."""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import typer
from typer.testing import CliRunner

from ssa_admin.cli import completion

REPO = Path(__file__).resolve().parent.parent
COMPLETIONS = REPO / "completions"
REGENERATE = "python3 scripts/gen_completions.py"


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_completions", REPO / "scripts" / "gen_completions.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_generator()
CASES = [(prog, shell) for prog in gen.PROGRAMS for shell in gen.SHELLS]


def _need(prog: str) -> str:
    exe = gen.entry_point(prog)
    if exe is None:
        pytest.skip(f"the {prog} entry point is not installed (pip install -e .)")
    return str(exe)


# -- the committed scripts are what the programs generate ----------------------------
@pytest.mark.parametrize(("prog", "shell"), CASES)
def test_committed_script_is_current(prog: str, shell: str) -> None:
    _need(prog)
    path = COMPLETIONS / gen.file_name(prog, shell)
    assert path.exists(), f"{path.relative_to(REPO)} is missing: run {REGENERATE}"
    assert path.read_text() == gen.generate(prog, shell), (
        f"{path.relative_to(REPO)} is stale ({shell} completion for {prog}): run {REGENERATE} "
        "and commit completions/")


def test_scripts_do_not_depend_on_the_commands() -> None:
    """A different command tree under the same name gives the same shim, so adding an
    ssa-admin command group needs no regeneration (only a typer upgrade can)."""
    other = typer.Typer()

    @other.command()
    def profile() -> None: ...

    @other.command()
    def policy(level: str = "x") -> None: ...

    for shell in gen.SHELLS:
        res = CliRunner().invoke(other, [], env={"_SSA_ADMIN_COMPLETE": f"source_{shell}"},
                                 prog_name="ssa-admin")
        assert res.exit_code == 0, res.output
        committed = (COMPLETIONS / gen.file_name("ssa-admin", shell)).read_text()
        body = committed.replace(gen.HEADER.format(var="_SSA_ADMIN_COMPLETE", shell=shell,
                                                   prog="ssa-admin"), "")
        assert body == res.stdout.strip() + "\n"


# -- bash, for real ------------------------------------------------------------------
@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A store with one certificate (example.com) and two folders that are not one."""
    certs = tmp_path / "state" / "certs"
    (certs / "example.com" / "versions" / "0001").mkdir(parents=True)
    (certs / "example.com" / "current").symlink_to("versions/0001")
    (certs / "half-written" / "versions").mkdir(parents=True)  # no current: not offered
    (certs / ".locks").mkdir()
    return tmp_path / "state"


def bash_complete(*words: str, env: dict[str, str] | None = None) -> list[str]:
    """COMPREPLY after sourcing the committed script and pressing TAB after ``words``
    (the last word is the one being completed; "" for a new word)."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    prog = words[0]
    exe = _need(prog)
    script = COMPLETIONS / gen.file_name(prog, "bash")
    line = " ".join(words)
    run_env = gen.environment()
    run_env["PATH"] = os.pathsep.join([str(Path(exe).parent), run_env.get("PATH", "")])
    run_env.update(env or {})
    code = f"""
        source {shlex.quote(str(script))}
        COMP_WORDS=({" ".join(shlex.quote(w) for w in words)})
        COMP_CWORD={len(words) - 1}
        COMP_LINE={shlex.quote(line)}
        COMP_POINT={len(line)}
        spec=$(complete -p {shlex.quote(prog)}) || exit 3
        func=${{spec##*-F }}; func=${{func%% *}}
        "$func" {shlex.quote(prog)} "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    res = subprocess.run([bash, "--norc", "--noprofile", "-c", code], env=run_env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    return [w for w in res.stdout.splitlines() if w]


def test_bash_completes_a_command_group() -> None:
    assert bash_complete("ssa-admin", "ce") == ["cert"]
    assert {"cert", "status"} <= set(bash_complete("ssa-admin", ""))
    assert {"import", "list", "show"} <= set(bash_complete("ssa-admin", "cert", ""))


def test_bash_completes_certificate_names_from_the_store(state: Path) -> None:
    env = {"SSA_STATE_DIR": str(state)}
    assert bash_complete("ssa-admin", "cert", "show", "", env=env) == ["example.com"]
    assert bash_complete("ssa-admin", "cert", "show", "ex", env=env) == ["example.com"]
    assert bash_complete("ssa-admin", "cert", "show", "zz", env=env) == []
    assert bash_complete("ssa-admin", "cert", "import", "e", env=env) == ["example.com"]


def test_bash_completes_levels() -> None:
    assert bash_complete("ssa-engine", "serve", "--level", "mo") == ["modern"]
    assert set(bash_complete("ssa-engine", "serve", "--level", "")) == {
        "legacy", "default", "modern", "future", "fips"}
    assert bash_complete("ssa-engine", "st") == ["status"]


# -- zsh and fish: syntax only (not installed for the tests) -------------------------
@pytest.mark.parametrize(("shell", "check"), [("zsh", ["-n"]), ("fish", ["--no-execute"])])
@pytest.mark.parametrize("prog", gen.PROGRAMS)
def test_script_syntax(prog: str, shell: str, check: list[str]) -> None:
    exe = shutil.which(shell)
    if exe is None:
        pytest.skip(f"{shell} is not installed; its script's syntax is not checked")
    path = COMPLETIONS / gen.file_name(prog, shell)
    res = subprocess.run([exe, *check, str(path)], capture_output=True, text=True, timeout=30,
                         check=False)
    assert res.returncode == 0, res.stderr


def test_zsh_script_starts_with_compdef() -> None:
    """compinit only autoloads a file from fpath whose first line is ``#compdef``."""
    for prog in gen.PROGRAMS:
        first = (COMPLETIONS / gen.file_name(prog, "zsh")).read_text().splitlines()[0]
        assert first == f"#compdef {prog}"


# -- the callbacks, in process -------------------------------------------------------
def test_callbacks(state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundled, config = tmp_path / "bundled", tmp_path / "config"
    bundled.mkdir()
    (config / "profiles.d").mkdir(parents=True)
    for name in ("curl.yaml", "wget.yaml", "nginx.yaml", "README.md", ".hidden.yaml"):
        (bundled / name).touch()
    for name in ("curl.yaml", "myapp.yaml", "notes.txt"):
        (config / "profiles.d" / name).touch()
    monkeypatch.setenv("SSA_PROFILES_DIR", str(bundled))
    monkeypatch.setenv("SSA_CONFIG_DIR", str(config))
    monkeypatch.setenv("SSA_STATE_DIR", str(state))

    assert completion.complete_levels("") == ["legacy", "default", "modern", "future", "fips"]
    assert completion.complete_levels("f") == ["future", "fips"]
    assert completion.complete_bundled_profiles("") == ["curl", "nginx", "wget"]
    assert completion.complete_applied_profiles("") == ["curl", "myapp"]
    assert completion.complete_profiles("") == ["curl", "myapp", "nginx", "wget"]
    assert completion.complete_profiles("n") == ["nginx"]
    assert completion.complete_certificates("") == ["example.com"]
    assert completion.complete_certificates("x") == []


def test_callbacks_never_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "missing"
    not_a_dir = tmp_path / "file"
    not_a_dir.touch()
    for where in (missing, not_a_dir):
        monkeypatch.setenv("SSA_PROFILES_DIR", str(where))
        monkeypatch.setenv("SSA_CONFIG_DIR", str(where))
        monkeypatch.setenv("SSA_STATE_DIR", str(where))
        for func in (completion.complete_bundled_profiles, completion.complete_applied_profiles,
                     completion.complete_profiles, completion.complete_certificates):
            assert func("") == []

    def broken() -> Path:
        raise RuntimeError("boom")

    monkeypatch.setattr(completion.paths, "state_dir", broken)
    monkeypatch.setattr(completion.paths, "profiles_dir", broken)
    assert completion.complete_certificates("") == []
    assert completion.complete_applied_profiles("") == []
    assert completion.complete_profiles("") == []


def test_callbacks_import_nothing_heavy() -> None:
    code = ("import sys, ssa_admin.cli.completion as c; c.complete_levels(''); "
            "c.complete_profiles(''); c.complete_certificates(''); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('cryptography', 'ruamel', 'OpenSSL', 'acme', 'josepy')))")
    res = subprocess.run([sys.executable, "-c", code], env=gen.environment(),
                         capture_output=True, text=True, timeout=30, check=True)
    assert res.stdout.strip() == "[]"
