"""Read a configuration directory into policies.

``CONFIG/ssa.yaml`` (optional) is the default policy; ``CONFIG/profiles.d/*.yaml``
are the applied profiles. Everything is validated before anything is used:
:func:`load_config` returns a complete :class:`Config` or raises
:class:`ConfigErrors` listing every problem in every file, so the engine can
keep its last good configuration.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from .. import paths
from ..policy.match import Match, Program, choose
from ..policy.model import DEFAULT_POLICY, Layer, Policy, conflicts, overlay
from ..policy.schema import AuditLogSettings, ConfigError, ConfigErrors, Document, parse_document
from . import yamlio

_PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    file: Path
    match: Match
    layer: Layer
    description: str | None
    #: the default policy overlaid by this profile
    policy: Policy


@dataclass(frozen=True, slots=True)
class Selection:
    """The policy for one program, and why."""

    policy: Policy
    profile: Profile | None
    reason: str
    tied: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    directory: Path
    default: Policy
    default_layer: Layer
    profiles: tuple[Profile, ...] = ()
    audit_log: AuditLogSettings = field(default_factory=AuditLogSettings)
    loaded_at: float = 0.0
    files: tuple[Path, ...] = ()

    def profile(self, name: str) -> Profile | None:
        return next((p for p in self.profiles if p.name == name), None)

    def select(self, program: Program) -> Selection:
        """The policy that governs ``program`` (docs/policy.md, "Matching")."""
        if not self.profiles:
            return Selection(self.default, None, "no profile is applied")
        found = choose([(p.name, p.match) for p in self.profiles], program)
        if found is None:
            return Selection(self.default, None, "no profile matches")
        name, why, tied = found
        prof = self.profile(name)
        assert prof is not None
        return Selection(prof.policy, prof, f"matched by {why}", tuple(tied))


def _locate_in(tree: object, file: str, key_path: str) -> ConfigError:
    keys = tuple(key_path.split("."))
    line, col = yamlio.locator(tree)(keys, False) or (None, None)
    return ConfigError(file, line, col, keys, "")


def read_document(path: Path, *, profile: bool) -> tuple[Document, object]:
    """Load and validate one file: its document and its YAML tree."""
    tree = yamlio.load_file(path)
    return parse_document(tree, str(path), yamlio.locator(tree), profile=profile), tree


def check_policy(policy: Policy, tree: object, file: str,
                 inherited: Collection[tuple[str, str]] = ()) -> list[ConfigError]:
    """Conflicting settings in a merged policy, located in the file that made it.

    ``inherited`` conflicts are already reported against the file below (ssa.yaml)
    and are not repeated for every profile.
    """
    errors = []
    for key_path, message in conflicts(policy):
        if (key_path, message) in inherited:
            continue
        where = _locate_in(tree, file, key_path)
        errors.append(ConfigError(file, where.line, where.column, where.keys, message))
    return errors


def check_files(layer: Layer, file: str, tree: object) -> list[ConfigError]:
    """Files a layer names must exist now (a missing trust store would fail every handshake)."""
    errors = []
    for attr, keys in (("trust_store", ("verify", "trust_store")),
                       ("client_ca", ("server", "client_ca"))):
        value = getattr(layer, attr)
        if value is not None and not os.path.isfile(value):
            pos = yamlio.locator(tree)(keys, False) or (None, None)
            errors.append(ConfigError(file, pos[0], pos[1], keys,
                                      f"{value}: no such file (a PEM bundle is expected)"))
    return errors


def _with_real_paths(match: Match) -> Match:
    # /proc/PID/exe is the resolved path: /usr/bin/python3 must also match
    # when it is a symlink to /usr/bin/python3.13
    extra = []
    for p in match.paths:
        if not set("*?[") & set(p):
            real = os.path.realpath(p)
            if real != p and real not in match.paths:
                extra.append(real)
    return Match(match.paths + tuple(extra), match.units, match.names, match.users)


def profile_files(directory: Path) -> list[Path]:
    """The applied profile files, in name order (editor backups and dot files skipped)."""
    pdir = paths.profiles_dir(directory)
    try:
        entries = sorted(pdir.iterdir())
    except FileNotFoundError:
        return []
    return [e for e in entries if e.suffix == ".yaml" and not e.name.startswith(".")]


def load_config(directory: Path, base: Policy = DEFAULT_POLICY) -> Config:
    """Load ``directory``; raise :class:`ConfigErrors` listing every problem.

    ``base`` is the built-in policy (with the engine's command-line defaults);
    ``ssa.yaml`` overlays it.
    """
    errors: list[ConfigError] = []
    default, default_layer, audit_log = base, Layer(), AuditLogSettings()
    files: list[Path] = []
    main = directory / paths.CONFIG_FILE
    if main.exists():
        files.append(main)
        try:
            doc, tree = read_document(main, profile=False)
        except ConfigErrors as exc:
            errors.extend(exc.errors)
        else:
            default_layer = doc.layer
            default = overlay(base, doc.layer, source=f"default policy ({main})")
            audit_log = doc.audit_log or AuditLogSettings()
            errors.extend(check_policy(default, tree, str(main)))
            errors.extend(check_files(doc.layer, str(main), tree))
    inherited = set(conflicts(default))
    profiles = []
    for path in profile_files(directory):
        files.append(path)
        name = path.stem
        if not _PROFILE_NAME.match(name):
            errors.append(ConfigError(str(path), None, None, (),
                                      "a profile file name is letters, digits, '.', '_' or '-'"))
            continue
        try:
            doc, tree = read_document(path, profile=True)
        except ConfigErrors as exc:
            errors.extend(exc.errors)
            continue
        assert doc.match is not None
        policy = overlay(default, doc.layer, source=f"profile {name} ({path})", profile=name)
        errors.extend(check_policy(policy, tree, str(path), inherited))
        errors.extend(check_files(doc.layer, str(path), tree))
        profiles.append(Profile(name, path, _with_real_paths(doc.match), doc.layer,
                                doc.description, policy))
    if errors:
        raise ConfigErrors(errors)
    return Config(directory, default, default_layer, tuple(profiles), audit_log,
                  time.time(), tuple(files))


def signature(directory: Path) -> tuple[tuple[str, int, int, int], ...]:
    """What changes when any configuration file does (cheap: a few stat calls)."""
    found = []
    candidates = [directory / paths.CONFIG_FILE, paths.profiles_dir(directory)]
    candidates += profile_files(directory)
    for p in candidates:
        try:
            st = p.stat()
        except OSError:
            continue
        found.append((str(p), st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(found)
