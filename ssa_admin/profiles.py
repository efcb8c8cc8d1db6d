"""Edit the configuration files the way an administrator would by hand.

Every edit is a round trip: the file is loaded with its comments, key order
and quoting, one value changes, and it is written back atomically; what the
administrator wrote elsewhere in the file survives byte for byte. A change
is saved only when the whole configuration directory still loads (the file
itself and its merge with ``ssa.yaml`` or the profiles); otherwise the old
file is put back and the errors are raised, naming file, line and key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssa_engine import paths
from ssa_engine.config import ConfigErrors, load_config, yamlio
from ssa_engine.policy.schema import Key, parse_document


def bundled_profiles() -> dict[str, Path]:
    """Profiles shipped with ssa, by name."""
    directory = paths.bundled_profiles_dir()
    try:
        return {p.stem: p for p in sorted(directory.glob("*.yaml"))}
    except OSError:
        return {}


def applied_profiles(config_dir: Path) -> dict[str, Path]:
    """Profiles in ``CONFIG/profiles.d``, by name."""
    directory = paths.profiles_dir(config_dir)
    try:
        return {p.stem: p for p in sorted(directory.glob("*.yaml")) if not p.name.startswith(".")}
    except OSError:
        return {}


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
        """Set a value, creating the mappings on the way."""
        node = self.tree
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = yamlio.new_map()
            node = node[key]
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


@dataclass(frozen=True, slots=True)
class ReloadResult:
    running: bool
    reloaded: bool = False
    errors: tuple[str, ...] = ()
    message: str = ""


def reload_engine(socket: Path | None = None) -> ReloadResult:
    """Ask the running engine to reload; report what happened (never raises)."""
    from ssa_engine.api.control import ControlChannel
    from ssa_engine.protocol import ReloadRequest, StatusReply

    path = socket or paths.engine_socket()
    try:
        ctl = ControlChannel(path)
        try:
            reply = ctl.open(ReloadRequest())
        finally:
            ctl.close()
    except OSError as exc:
        return ReloadResult(False, message=f"no engine at {path} ({exc.strerror}); the change "
                            "applies when the engine starts")
    if not isinstance(reply, StatusReply):
        return ReloadResult(True, message="the engine did not answer the reload request")
    doc = json.loads(reply.document)
    errors = tuple(doc.get("errors") or ())
    ok = bool(doc.get("reloaded"))
    return ReloadResult(True, ok, errors,
                        "engine reloaded" if ok else "engine kept its old configuration")
