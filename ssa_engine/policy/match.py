"""Which profile governs a program.

A profile's ``match`` lists criteria by kind (``path``, ``unit``, ``name``,
``user``); within a kind any listed value may match, and every kind the
profile gives must match (``path: /usr/bin/python3`` with ``user: www-data``
matches only that interpreter run by that user).

The most specific profile wins (ARCHITECTURE.md section 6):
path > unit > name > user > the default policy. The rank of a profile is the
rank of its most specific matching kind. Ties (docs/policy.md, "Matching"):
an exact value beats a glob, then the glob with more literal characters, then
the profile matching more kinds, then the profile whose name sorts first
(and the engine logs the tie once).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

#: match kinds, most specific first
KINDS = ("path", "unit", "name", "user")
_RANK = {kind: len(KINDS) - i for i, kind in enumerate(KINDS)}
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class Program:
    """What the engine knows of the process behind a socket."""

    pid: int | None = None
    exe: str | None = None  # resolved /proc/PID/exe
    comm: str | None = None  # /proc/PID/comm
    uid: int | None = None
    user: str | None = None
    unit: str | None = None  # systemd unit from /proc/PID/cgroup

    @property
    def names(self) -> tuple[str, ...]:
        """The names ``match.name`` compares with: comm and the executable's base name."""
        found = []
        if self.comm:
            found.append(self.comm)
        if self.exe:
            base = self.exe.rsplit("/", 1)[-1]
            if base not in found:
                found.append(base)
        return tuple(found)


@dataclass(frozen=True, slots=True)
class Match:
    paths: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    users: tuple[str, ...] = ()  # user names or decimal uids

    def is_empty(self) -> bool:
        return not (self.paths or self.units or self.names or self.users)

    def values(self, kind: str) -> tuple[str, ...]:
        result: tuple[str, ...] = getattr(self, kind + "s")
        return result


@dataclass(frozen=True, slots=True, order=True)
class Score:
    """How well a profile matches; a greater score is more specific."""

    rank: int
    exact: bool
    literal: int
    kinds: int

    def explain(self, kind: str, value: str) -> str:
        how = "exactly" if self.exact else "by pattern"
        return f"{kind} {how} ({value})"


def _is_glob(value: str) -> bool:
    return bool(_GLOB_CHARS & set(value))


def _unit_candidates(pattern: str) -> tuple[str, ...]:
    # `nginx` means `nginx.service`, as systemctl reads it
    return (pattern,) if "." in pattern or _is_glob(pattern) else (pattern, pattern + ".service")


def _hit(kind: str, pattern: str, program: Program) -> bool:
    if kind == "path":
        return program.exe is not None and (
            program.exe == pattern or (_is_glob(pattern) and fnmatch.fnmatchcase(program.exe, pattern))
        )
    if kind == "name":
        return any(fnmatch.fnmatchcase(n, pattern) for n in program.names)
    if kind == "user":
        if pattern.isdigit():
            return int(pattern) == program.uid
        # a glob (www-*) matches like name and unit globs do; it used to match nothing
        return program.user is not None and fnmatch.fnmatchcase(program.user, pattern)
    if kind == "unit":
        return program.unit is not None and any(
            fnmatch.fnmatchcase(program.unit, p) for p in _unit_candidates(pattern)
        )
    raise ValueError(kind)


def score(match: Match, program: Program) -> tuple[Score, str] | None:
    """Score ``match`` against ``program``: None when it does not match.

    Returns the score and the reason in words ("path exactly (/usr/bin/wget)").
    """
    if match.is_empty():
        return None
    best: tuple[Score, str] | None = None
    kinds = 0
    for kind in KINDS:
        patterns = match.values(kind)
        if not patterns:
            continue
        hits = [p for p in patterns if _hit(kind, p, program)]
        if not hits:
            return None  # every kind the profile names must match
        kinds += 1
        if best is None:
            # the most specific kind decides; prefer its exact, then longest, value
            value = max(hits, key=lambda p: (not _is_glob(p), len(p.replace("*", ""))))
            s = Score(_RANK[kind], not _is_glob(value), len(value.replace("*", "")), 0)
            best = (s, s.explain(kind, value))
    assert best is not None
    s, why = best
    return Score(s.rank, s.exact, s.literal, kinds), why


def choose(candidates: list[tuple[str, Match]], program: Program) -> tuple[str, str, list[str]] | None:
    """Pick the profile for ``program`` among ``(name, match)`` pairs.

    Returns ``(name, reason, tied)``, ``tied`` naming equally specific
    profiles that lost on the name order, or None when none matches.
    """
    scored = []
    for name, match in candidates:
        result = score(match, program)
        if result is not None:
            scored.append((result[0], name, result[1]))
    if not scored:
        return None
    top = max(s for s, _, _ in scored)
    winners = sorted((name, why) for s, name, why in scored if s == top)
    name, why = winners[0]
    return name, why, [n for n, _ in winners[1:]]
