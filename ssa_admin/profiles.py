"""Edit the configuration files the way an administrator would by hand.

Every edit is a round trip: the file is loaded with its comments, key order
and quoting, one value changes, and it is written back atomically; what the
administrator wrote elsewhere in the file survives byte for byte. A change
is saved only when the whole configuration directory still loads (the file
itself and its merge with ``ssa.yaml`` or the profiles); otherwise the old
file is put back and the errors are raised, naming file, line and key.

The services behind ``ssa-admin profile`` and ``ssa-admin policy`` that
change files live here (apply, new, remove, diff, set-level); the read-only
views (effective settings, validate, list, explain) are in
:mod:`ssa_admin.effective`, and talking to the engine in
:mod:`ssa_admin.engine`. Nothing here imports typer or rich.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssa_engine import paths
from ssa_engine.config import ConfigErrors, load_config, yamlio
from ssa_engine.policy.levels import LEVELS
from ssa_engine.policy.match import KINDS
from ssa_engine.policy.schema import Key, parse_document

#: what the loader accepts as a profile file's stem (ssa_engine/config/loader.py)
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_GLOB_CHARS = frozenset("*?[")
#: the comment ``profile apply`` puts on a ``match.path`` it adds
APPLIED_COMMENT = "set by ssa-admin profile apply"
BUILT_IN = "built-in"
MAIN_LABEL = paths.CONFIG_FILE


class ProfileError(Exception):
    """A failure that one sentence explains (the command prints it and exits 1)."""


# -- where profiles are --------------------------------------------------------------------
def bundled_profiles() -> dict[str, Path]:
    """Profiles shipped with ssa, by name."""
    directory = paths.bundled_profiles_dir()
    try:
        return {p.stem: p for p in sorted(directory.glob("*.yaml")) if not p.name.startswith(".")}
    except OSError:
        return {}


def applied_profiles(config_dir: Path) -> dict[str, Path]:
    """Profiles in ``CONFIG/profiles.d``, by name."""
    directory = paths.profiles_dir(config_dir)
    try:
        return {p.stem: p for p in sorted(directory.glob("*.yaml")) if not p.name.startswith(".")}
    except OSError:
        return {}


def check_name(name: str) -> str:
    if not _PROFILE_NAME.match(name):
        raise ProfileError(f"{name!r} is not a profile name: letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    return name


@dataclass(frozen=True, slots=True)
class Source:
    """A profile to apply: a bundled one, or the administrator's own file."""

    name: str
    path: Path
    bundled: bool


def find_source(arg: str) -> Source:
    """``wget`` (bundled) or ``./myapp.yaml`` (a file; its stem names the profile)."""
    if "/" in arg or arg.endswith((".yaml", ".yml")):
        path = Path(arg)
        if not path.is_file():
            raise ProfileError(f"{arg}: no such file")
        return Source(check_name(path.stem), path, False)
    bundled = bundled_profiles()
    if arg in bundled:
        return Source(arg, bundled[arg], True)
    known = ", ".join(bundled) or f"none in {paths.bundled_profiles_dir()}"
    raise ProfileError(f"no bundled profile named {arg!r} (bundled: {known}); "
                       "give the path of a file to apply your own")


def find_profile(config_dir: Path, name: str, *, bundled: bool = False) -> Source:
    """The applied profile ``name`` (else the bundled one); ``bundled=True``: the bundled one."""
    if not bundled and (path := applied_profiles(config_dir).get(name)):
        return Source(name, path, False)
    if path := bundled_profiles().get(name):
        return Source(name, path, True)
    where = "bundled" if bundled else "applied or bundled"
    raise ProfileError(f"no {where} profile named {name!r} (see ssa-admin profile list)")


# -- one file, edited --------------------------------------------------------------------
class EditableFile:
    """One YAML configuration file, open for a round-trip edit."""

    def __init__(self, path: Path, *, profile: bool) -> None:
        self.path = path
        self.profile = profile
        try:
            self.original: bytes | None = path.read_bytes()
        except FileNotFoundError:
            self.original = None
        self.tree: Any = (yamlio.load_text(self.original.decode("utf-8"), str(path))
                          if self.original else None)
        if self.tree is None:
            self.tree = yamlio.new_map()

    def get(self, keys: Sequence[Key], default: Any = None) -> Any:
        node = self.tree
        for key in keys:
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                return default
        return node

    def set(self, keys: Sequence[Key], value: Any) -> None:
        """Set a value, creating the mappings on the way.

        A string replacing a quoted string keeps its quotes (``level: "default"``
        becomes ``level: "modern"``); comments on the line stay where they were.
        """
        node = self.tree
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = yamlio.new_map()
            node = node[key]
        old = node.get(keys[-1]) if isinstance(node, dict) else None
        if isinstance(value, str) and isinstance(old, str) and type(old) is not str:
            value = type(old)(value)  # the loader's quoted-string type
        node[keys[-1]] = value

    def delete(self, keys: Sequence[Key]) -> bool:
        """Remove a key (and mappings it leaves empty); False if it was not there."""
        parents = []
        node = self.tree
        for key in keys[:-1]:
            if not isinstance(node, dict) or key not in node:
                return False
            parents.append((node, key))
            node = node[key]
        if not isinstance(node, dict) or keys[-1] not in node:
            return False
        del node[keys[-1]]
        while parents and not node:
            parent, key = parents.pop()
            del parent[key]
            node = parent
        return True

    def text(self) -> str:
        return yamlio.dump(self.tree)

    def validate(self) -> None:
        """Check this file alone; raise ConfigErrors."""
        text = self.text()
        tree = yamlio.load_text(text, str(self.path))
        parse_document(tree, str(self.path), yamlio.locator(tree), profile=self.profile)

    def save(self, config_dir: Path) -> None:
        """Write the file if the whole configuration still loads; else restore and raise."""
        self.validate()
        yamlio.write_atomic(self.path, self.text())
        try:
            load_config(config_dir)
        except ConfigErrors:
            self.restore()
            raise

    def restore(self) -> None:
        if self.original is None:
            self.path.unlink(missing_ok=True)
        else:
            yamlio.write_atomic(self.path, self.original.decode("utf-8"))


def set_level(config_dir: Path, level: str) -> str | None:
    """``level: LEVEL`` in ``ssa.yaml`` (created if absent); returns the old level."""
    if level not in LEVELS:
        raise ProfileError(f"unknown level {level!r}; one of {', '.join(LEVELS)}")
    editable = EditableFile(config_dir / paths.CONFIG_FILE, profile=False)
    old = editable.get(("level",))
    editable.set(("level",), level)
    editable.save(config_dir)
    return str(old) if old is not None else None


# -- apply, new, remove, diff --------------------------------------------------------------
def _is_glob(value: str) -> bool:
    return bool(_GLOB_CHARS & set(value))


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


def _plain(value: Any) -> str | list[str]:
    return str(value) if isinstance(value, str) else [str(v) for v in value]


def _set_match_path(tree: Any, value: str | list[str]) -> None:
    match = tree["match"]
    if "path" in match:
        match["path"] = value  # the source's own comment on the line stays
        return
    # before name: the most specific criterion first, as in ARCHITECTURE.md section 6
    match.insert(0, "path", value)
    match.yaml_add_eol_comment(APPLIED_COMMENT, "path")


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _is_script(path: str) -> bool:
    """``#!`` first: /proc/PID/exe of a running script is its interpreter, never the script."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


_SCRIPT = ("is a script (#!): a process running it shows its interpreter as the "
           "executable, so only its name can match it")


def _resolve(match: Mapping[str, Any], name: str, *, path: str | None, name_only: bool
             ) -> tuple[list[str] | None, list[str]]:
    """The ``match.path`` to write (None: keep the source's match) and notes to show.

    Every kind a match gives must match (policy/match.py), so a path added to
    ``name: [a, b*]`` would stop the profile from matching ``b*``: the path is
    written only when every name resolves to an executable in PATH.
    """
    names = _as_list(match.get("name"))
    if path is not None:
        full = os.path.abspath(path)
        if not os.path.exists(full):
            raise ProfileError(f"--path {path}: no such file")
        if not _executable(full):
            raise ProfileError(f"--path {path}: not an executable file")
        if _is_script(full):
            raise ProfileError(f"--path {path} {_SCRIPT}; use --name-only")
        return [full], []
    if name_only:
        if not names:
            raise ProfileError(f"profile {name} has no match.name to match by; "
                               "pass --path to name the program")
        return None, [f"matches programs named {', '.join(names)} (by name only)"]
    if "path" in match:
        listed = _as_list(match["path"])
        exact = [p for p in listed if not _is_glob(p)]
        if exact and not any(os.path.exists(p) for p in exact):
            return None, [f"{', '.join(exact)}: not on this machine; pass --path to name "
                          "the program's executable here"]
        return None, []
    patterns = [n for n in names if _is_glob(n)]
    exact_names = [n for n in names if not _is_glob(n)]
    if not exact_names:
        return None, []  # user, unit or name patterns: nothing to look up
    found: list[str] = []
    missing: list[str] = []
    scripts: list[str] = []
    for n in exact_names:
        where = shutil.which(n)  # honours PATH
        if where is None:
            missing.append(n)
        elif _is_script(where):
            scripts.append(f"{n} ({where})")
        elif os.path.abspath(where) not in found:
            found.append(os.path.abspath(where))
    if not (found or scripts or patterns):  # nothing of it on this machine
        what = (f"{missing[0]} is not installed on this machine (not found in PATH)"
                if len(missing) == 1 else f"none of {', '.join(missing)} is installed "
                "on this machine (none found in PATH)")
        raise ProfileError(f"{what}; pass --path to name it, or --name-only to match by name")
    unresolved = ([f"{n} is a pattern" for n in patterns] + [f"{n} is not in PATH" for n in missing]
                  + [f"{n} {_SCRIPT}" for n in scripts])
    if unresolved:
        return None, [f"matching by name only: {u}" for u in unresolved] + [
            "a match.path would stop the profile from matching those "
            "(--path restricts it to one executable)"]
    return found, []


def _as_applied(source: Path, applied: Any) -> str:
    """What ``apply`` writes from ``source`` with the ``match.path`` of ``applied``."""
    tree = yamlio.load_file(source)
    try:
        applied_path = applied["match"]["path"]
        source_path = tree["match"].get("path")
    except (KeyError, TypeError, AttributeError):
        return yamlio.dump(tree)
    if _as_list(applied_path) != _as_list(source_path):
        _set_match_path(tree, _plain(applied_path))
    return yamlio.dump(tree)


def was_edited(current: str, dest: Path, source: Path) -> bool:
    try:
        applied = yamlio.load_text(current, str(dest))
    except ConfigErrors:
        return True
    return current != _as_applied(source, applied)


@dataclass(frozen=True, slots=True)
class Applied:
    name: str
    file: Path
    source: Source
    #: ``match.path`` as written; empty when the source's match was kept
    paths: tuple[str, ...]
    notes: tuple[str, ...]
    changed: bool
    replaced: bool


def apply_profile(config_dir: Path, arg: str, *, path: str | None = None,
                  name_only: bool = False, force: bool = False) -> Applied:
    """Install a bundled profile (or a file) as ``profiles.d/NAME.yaml``.

    Raises ProfileError, or ConfigErrors naming the source file (or, when
    the merge with the rest of the configuration fails, the files involved).
    """
    source = find_source(arg)
    tree = yamlio.load_file(source.path)
    parse_document(tree, str(source.path), yamlio.locator(tree), profile=True)
    found, notes = _resolve(tree["match"], source.name, path=path, name_only=name_only)
    if found is not None:
        _set_match_path(tree, found[0] if len(found) == 1 else found)
    text = yamlio.dump(tree)
    dest = paths.profiles_dir(config_dir) / f"{source.name}.yaml"
    written = tuple(found or ())
    replaced = False
    if dest.exists():
        current = dest.read_text(encoding="utf-8", errors="replace")
        if current == text:
            return Applied(source.name, dest, source, written, tuple(notes), False, False)
        if not force and was_edited(current, dest, source.path):
            how = (f"ssa-admin profile diff {source.name} shows how" if source.bundled
                   else f"it differs from {source.path}")
            raise ProfileError(f"{dest} was changed since it was applied ({how}); "
                               "pass --force to replace it")
        replaced = True
    editable = EditableFile(dest, profile=True)
    editable.tree = tree
    editable.save(config_dir)
    return Applied(source.name, dest, source, written, tuple(notes), True, replaced)


def remove_profile(config_dir: Path, name: str) -> Path:
    path = applied_profiles(config_dir).get(name)
    if path is None:
        raise ProfileError(f"no applied profile named {name!r} in {paths.profiles_dir(config_dir)}")
    path.unlink()
    return path


def _scalar(value: str) -> str:
    """``value`` as a YAML scalar: plain when it reads back as itself, else quoted."""
    if re.fullmatch(r"[A-Za-z0-9/_.@+-][A-Za-z0-9/_.@+:-]*", value):
        try:
            if yamlio.load_text(f"v: {value}\n", "-")["v"] == value:
                return value
        except ConfigErrors:
            pass
    return json.dumps(value)  # a JSON string is a YAML double-quoted scalar


def _scalars(values: Sequence[str]) -> str:
    return _scalar(values[0]) if len(values) == 1 else f"[{', '.join(map(_scalar, values))}]"


_SKELETON_TAIL = """\
# Everything below is optional: what a profile does not set comes from ssa.yaml.
# tls:
#   min_version: "1.3"          # "1.2" | "1.3"
#   max_version: "1.3"
#   ciphersuites: [TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256]
#   groups: [X25519, P-256]
# verify:
#   trust_store: /etc/ssl/certs/ca-certificates.crt
#   allow_app_trust: false      # may the program add trust anchors of its own?
# pins:                         # host -> SPKI pins (ssa-admin pin add)
#   example.com: ["sha256/BASE64SPKIHASH="]
# server:
#   certificates: [example.com] # store names; the first is the default
#   client_auth: none           # none | request | require
# app_overrides: []             # min_version, max_version, ciphers, client_auth
# handshake_timeout: 10         # seconds
# audit: true                   # write this program's connections to the audit log
"""


def _commented_line(code: str, comment: str) -> str:
    return f"{code:<31} # {comment}"


def new_profile(config_dir: Path, name: str, *, match: Mapping[str, Sequence[str]],
                level: str | None = None) -> Path:
    """Write a commented skeleton ``profiles.d/NAME.yaml`` matching ``match``."""
    check_name(name)
    if level is not None and level not in LEVELS:
        raise ProfileError(f"unknown level {level!r}; one of {', '.join(LEVELS)}")
    dest = paths.profiles_dir(config_dir) / f"{name}.yaml"
    if dest.exists():
        raise ProfileError(f"{dest} exists; edit it, or remove it first (ssa-admin profile remove "
                           f"{name})")
    what = {"path": "executable, exact or glob", "unit": "systemd unit",
            "name": "program name (its comm or executable's base name)",
            "user": "user name or uid"}
    lines = [f"# {name}: created by ssa-admin profile new; check it with",
             f"# ssa-admin profile show {name}.",
             f"description: {_scalar(name + ' (local profile)')}",
             _commented_line("match:", "every criterion given must match")]
    for kind in KINDS:
        if values := list(match.get(kind) or ()):
            lines.append(_commented_line(f"  {kind}: {_scalars(values)}", what[kind]))
    if not any(match.get(k) for k in KINDS):
        raise ProfileError("a profile needs a match: --path, --name, --user or --unit")
    levels = " | ".join(LEVELS)
    lines.append(_commented_line(f"level: {level}", levels) if level else
                 _commented_line("# level: default", f"{levels}; unset: ssa.yaml's"))
    editable = EditableFile(dest, profile=True)
    editable.tree = yamlio.load_text("\n".join(lines) + "\n" + _SKELETON_TAIL, str(dest))
    editable.save(config_dir)
    return dest


def diff_profile(config_dir: Path, name: str) -> tuple[str, Path, Path]:
    """Unified diff from the bundled profile (as ``apply`` writes it here) to the applied one.

    Empty when they are the same. ``apply`` adds this machine's ``match.path``,
    so the bundled side gets the applied file's path before comparing.
    """
    applied = applied_profiles(config_dir).get(name)
    bundled = bundled_profiles().get(name)
    if applied is None:
        raise ProfileError(f"{name} is not applied (no {paths.profiles_dir(config_dir)}/{name}.yaml)")
    if bundled is None:
        raise ProfileError(f"no bundled profile named {name!r}: {applied} is a local profile")
    current = applied.read_text(encoding="utf-8", errors="replace")
    try:
        expected = _as_applied(bundled, yamlio.load_text(current, str(applied)))
    except ConfigErrors:
        expected = bundled.read_text(encoding="utf-8", errors="replace")
    lines = difflib.unified_diff(expected.splitlines(keepends=True),
                                 current.splitlines(keepends=True),
                                 fromfile=f"{bundled} (as applied)", tofile=str(applied))
    text = "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
                   for line in lines)
    return text, bundled, applied
