"""Imports only point down (ARCHITECTURE.md section 2)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# package -> packages of this project it may import (itself always allowed).
# ssa_engine.paths is a leaf (standard library only) shared by both sides.
ALLOWED = {
    "ssa_engine.protocol": set(),
    "ssa_engine.policy": set(),
    "ssa_engine.store": {"ssa_engine.policy"},
    "ssa_engine.config": {"ssa_engine.policy", "ssa_engine.paths"},
    "ssa_engine.api": {"ssa_engine.protocol", "ssa_engine.paths"},
    "ssa_engine.daemon": {"ssa_engine.protocol", "ssa_engine.policy", "ssa_engine.store",
                          "ssa_engine.config",
                          "ssa_engine.paths", "ssa_engine.__version__"},
    "ssa_admin": {"ssa_engine.policy", "ssa_engine.store", "ssa_engine.paths", "ssa_engine.config",
                  "ssa_engine.api.control", "ssa_engine.protocol"},
}
FORBIDDEN_IN_PROTOCOL = {"socket", "asyncio", "os", "selectors", "select"}


def _imports(path: Path, package: str) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = path.relative_to(REPO).with_suffix("").parts
                base = ".".join(parts[: len(parts) - node.level])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            # "from X import y" uses X.y (a submodule or a name inside X)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


def _owner(module: str) -> str | None:
    for pkg in sorted(ALLOWED, key=len, reverse=True):
        if module == pkg or module.startswith(pkg + "."):
            return pkg
    return None


def test_imports_point_down() -> None:
    problems = []
    for pkg, allowed in ALLOWED.items():
        root = REPO / pkg.replace(".", "/")
        for path in root.rglob("*.py"):
            for mod in _imports(path, pkg):
                if not mod.startswith(("ssa_engine", "ssa_admin")):
                    continue
                if mod == pkg or mod.startswith(pkg + "."):
                    continue
                if any(mod == a or mod.startswith(a + ".") for a in allowed):
                    continue
                problems.append(f"{path.relative_to(REPO)} imports {mod}")
    assert not problems, "\n".join(problems)


def test_nothing_in_ssa_engine_imports_ssa_admin() -> None:
    for path in (REPO / "ssa_engine").rglob("*.py"):
        assert not any(m.startswith("ssa_admin") for m in _imports(path, "ssa_engine")), path


def test_protocol_is_sans_io() -> None:
    for path in (REPO / "ssa_engine" / "protocol").rglob("*.py"):
        bad = _imports(path, "ssa_engine.protocol") & FORBIDDEN_IN_PROTOCOL
        assert not bad, f"{path.name} imports {bad}"


def test_only_yamlio_touches_yaml() -> None:
    # STYLE.md: one module touches ruamel.yaml; the policy model knows nothing of YAML
    users = sorted(
        str(path.relative_to(REPO))
        for top in ("ssa_engine", "ssa_admin")
        for path in (REPO / top).rglob("*.py")
        if any(m.startswith("ruamel") for m in _imports(path, top))
    )
    assert users == ["ssa_engine/config/yamlio.py"]
