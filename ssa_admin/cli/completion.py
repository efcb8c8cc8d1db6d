"""Values for shell completion: levels, profiles and certificate names.

Typer ``autocompletion=`` callbacks, run by the shell's completion script
(``completions/``) on every TAB. So they are fast, import nothing heavy (no
cryptography, no ruamel.yaml: they list directories instead of opening the
store or parsing profiles), and never raise: any error means no suggestions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ssa_engine import paths

__all__ = [
    "complete_applied_profiles",
    "complete_bundled_profiles",
    "complete_certificates",
    "complete_levels",
    "complete_profiles",
]

#: what ``Store.names()`` requires of a certificate folder (ssa_engine/store/store.py)
_CERTS = "certs"
_CURRENT = "current"


def _matching(names: Iterable[str], incomplete: str) -> list[str]:
    return sorted({n for n in names if n.startswith(incomplete)})


def _safely(produce: Callable[[], Iterable[str]], incomplete: str) -> list[str]:
    """``produce()`` filtered by the prefix, or ``[]`` if anything goes wrong."""
    try:
        return _matching(produce(), incomplete or "")
    except Exception:  # a completion must never print a traceback into the shell
        return []


def _yaml_stems(directory: Path) -> list[str]:
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return []
    return [e.name[: -len(".yaml")] for e in entries
            if e.name.endswith(".yaml") and not e.name.startswith(".") and len(e.name) > 5]


def _levels() -> list[str]:
    from ssa_engine.policy.levels import LEVELS

    return list(LEVELS)


def _certificates() -> list[str]:
    try:
        entries = list(os.scandir(paths.state_dir() / _CERTS))
    except OSError:
        return []
    return [e.name for e in entries
            if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)
            and os.path.lexists(os.path.join(e.path, _CURRENT))]


def complete_levels(incomplete: str) -> list[str]:
    """Security level names (legacy, default, modern, future, fips)."""
    try:
        names = _levels()
    except Exception:
        return []
    # keep the levels' own order (weakest to strongest), not alphabetical
    return [n for n in names if n.startswith(incomplete or "")]


def complete_bundled_profiles(incomplete: str) -> list[str]:
    """Profiles shipped with ssa (``*.yaml`` in the bundled profiles directory)."""
    return _safely(lambda: _yaml_stems(paths.bundled_profiles_dir()), incomplete)


def complete_applied_profiles(incomplete: str) -> list[str]:
    """Applied profiles (``CONFIG/profiles.d/*.yaml``; honours SSA_CONFIG_DIR)."""
    return _safely(lambda: _yaml_stems(paths.profiles_dir()), incomplete)


def complete_profiles(incomplete: str) -> list[str]:
    """Bundled and applied profile names, sorted, each once."""
    return _safely(lambda: [*_yaml_stems(paths.bundled_profiles_dir()),
                            *_yaml_stems(paths.profiles_dir())], incomplete)


def complete_certificates(incomplete: str) -> list[str]:
    """Certificate names in the store (``STATE/certs/NAME`` with a ``current`` version)."""
    return _safely(_certificates, incomplete)
