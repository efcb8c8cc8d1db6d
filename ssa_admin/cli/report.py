"""``ssa-admin report``: summarise the engine's audit log per program.

Reads the JSON-lines files the engine writes (docs/audit.md), plain or gzip,
and counts per program: connections, failures, TLS versions, ciphers, groups,
the most frequent errors, first and last time seen. It only reads files and
never contacts the engine. A file that cannot be read is one line on stderr
and exit status 1; a malformed line (a crash or a full disk can leave half a
record) is counted and skipped, never fatal. Output is a rich table on a
terminal, plain text otherwise, JSON with ``--json`` (the same data).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from .common import Json, abort

#: how many distinct error texts to show per program
TOP_FAILURES = 5
#: ``audit.log.3`` or ``audit.log.3.gz`` beside ``audit.log`` (RotatingFileHandler, logrotate)
_ROTATED = re.compile(r"\.(\d+)(\.gz)?")


@dataclass
class _Program:
    """What one program did, as counted from its records."""

    connections: int = 0
    failures: int = 0
    versions: Counter[str] = field(default_factory=Counter)
    ciphers: Counter[str] = field(default_factory=Counter)
    groups: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    first: tuple[dt.datetime, str] | None = None
    last: tuple[dt.datetime, str] | None = None

    def add(self, rec: dict[str, Any], when: dt.datetime) -> None:
        self.connections += 1
        for counter, key in ((self.versions, "version"), (self.ciphers, "cipher"),
                             (self.groups, "group")):
            if value := rec.get(key):  # null when the handshake failed before choosing
                counter[str(value)] += 1
        error = rec.get("error")
        if error or rec.get("verify") == "failed":
            self.failures += 1
            self.errors[str(error) if error else "certificate verification failed"] += 1
        stamp = (when, str(rec["time"]))
        if self.first is None or when < self.first[0]:
            self.first = stamp
        if self.last is None or when > self.last[0]:
            self.last = stamp

    def to_json(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "failures": self.failures,
            "versions": dict(self.versions.most_common()),
            "ciphers": dict(self.ciphers.most_common()),
            "groups": dict(self.groups.most_common()),
            "top_failures": [{"error": e, "count": n}
                             for e, n in self.errors.most_common(TOP_FAILURES)],
            "first_seen": self.first[1] if self.first else None,
            "last_seen": self.last[1] if self.last else None,
        }


# -- reading -----------------------------------------------------------------------------
def _with_rotated(path: Path) -> list[Path]:
    """PATH.N and PATH.N.gz beside PATH, oldest (highest N) first, then PATH itself."""
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        siblings = []  # PATH's own error is reported when it is read
    found = [(int(m[1]), p.name, p) for p in siblings if p.name.startswith(path.name)
             and (m := _ROTATED.fullmatch(p.name[len(path.name):]))]
    return [p for _, _, p in sorted(found, key=lambda t: (-t[0], t[1]))] + [path]


def _lines(path: Path) -> Iterator[bytes]:
    """The file's lines; gzip is recognised by its magic number, whatever the name."""
    import gzip

    with path.open("rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        if compressed:
            with gzip.GzipFile(fileobj=raw) as unzipped:
                yield from unzipped
        else:
            yield from raw


def _parse(line: bytes) -> tuple[dict[str, Any], dt.datetime] | None:
    """A record and its time, or None when the line is not one."""
    try:
        rec = json.loads(line)
        when = dt.datetime.fromisoformat(rec["time"])
    except (ValueError, TypeError, KeyError):  # UnicodeDecodeError is a ValueError
        return None
    return rec, when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _read(paths: list[Path], start: dt.datetime | None) -> tuple[dict[str, _Program], int, str]:
    """Count every record at or after START; returns the programs, the number of malformed
    lines and where the first one is (``FILE:LINE``). Exit 1 on a file that cannot be read."""
    programs: dict[str, _Program] = {}
    malformed, first_bad = 0, ""
    for path in paths:
        try:
            for number, line in enumerate(_lines(path), 1):
                if not line.strip():
                    continue
                if (parsed := _parse(line)) is None:
                    malformed += 1
                    first_bad = first_bad or f"{path}:{number}"
                    continue
                rec, when = parsed
                if start is None or when >= start:
                    programs.setdefault(str(rec.get("program") or "(unknown)"),
                                        _Program()).add(rec, when)
        except (OSError, EOFError, zlib.error) as exc:  # EOFError: a truncated .gz
            abort(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
    return programs, malformed, first_bad


def _since(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO 8601 time "
                                 "(e.g. 2026-11-30T10:00:00Z)", param_hint="--since") from None
    return when if when.tzinfo else when.astimezone()  # no offset: local time, as journalctl


# -- output ------------------------------------------------------------------------------
def _safe(text: str) -> str:
    """Escape control characters: program names and error texts come from unprivileged
    programs, and an escape sequence must not reach the administrator's terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _counts(counter: dict[str, int], sep: str = ", ") -> str:
    return sep.join(f"{_safe(name)} {n}" for name, n in counter.items()) or "-"


def _plain(programs: dict[str, dict[str, Any]]) -> None:
    for name, p in programs.items():
        typer.echo(f"{_safe(name)}: {_n(p['connections'], 'connection')}, "
                   f"{_n(p['failures'], 'failure')}; first {p['first_seen']}, last {p['last_seen']}")
        typer.echo(f"  versions: {_counts(p['versions'])}")
        typer.echo(f"  ciphers:  {_counts(p['ciphers'])}")
        typer.echo(f"  groups:   {_counts(p['groups'])}")
        if p["top_failures"]:
            typer.echo("  top failures:")
            for f in p["top_failures"]:
                typer.echo(f"    {f['count']:>6}  {_safe(f['error'])}")
        typer.echo("")


def _rich(programs: dict[str, dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # not markup: "[SSL: ...]" in an error is text, not a style

    table = Table(title="TLS connections by program")
    for h in ("program", "connections", "failures", "versions", "ciphers", "groups",
              "first seen", "last seen"):
        table.add_column(h, justify="right" if h in ("connections", "failures") else "left")
    failures = Table(title=f"Top failure reasons (up to {TOP_FAILURES} per program)")
    for h in ("program", "count", "error"):
        failures.add_column(h, justify="right" if h == "count" else "left")
    for name, p in programs.items():
        table.add_row(Text(_safe(name)), str(p["connections"]), str(p["failures"]),
                      *(Text(_counts(p[k], "\n")) for k in ("versions", "ciphers", "groups")),
                      Text(p["first_seen"]), Text(p["last_seen"]))
        for f in p["top_failures"]:
            failures.add_row(Text(_safe(name)), str(f["count"]), Text(_safe(f["error"])))
    console = Console()
    console.print(table)
    if failures.row_count:
        console.print(failures)


# -- the command -------------------------------------------------------------------------
def report(
    files: Annotated[list[Path], typer.Argument(metavar="AUDITLOG", show_default=False,
                                                help="Audit log files (JSON lines, gzip or not).")],
    since: Annotated[str | None, typer.Option("--since", metavar="ISO-TIME", show_default=False,
                                              help="Only records at or after this time "
                                                   "(no offset: local time).")] = None,
    include_rotated: Annotated[bool, typer.Option(
        "--include-rotated", help="Also read the rotated AUDITLOG.1, AUDITLOG.2.gz ... files.")
    ] = False,
    as_json: Json = False,
) -> None:
    """Summarise TLS connections per program from the engine's audit log."""
    start = _since(since)
    paths: list[Path] = []
    for path in files:
        for p in _with_rotated(path) if include_rotated else [path]:
            if p not in paths:
                paths.append(p)
    programs, malformed, first_bad = _read(paths, start)
    ordered = sorted(programs.items(), key=lambda item: (-item[1].connections, item[0]))
    doc: dict[str, Any] = {
        "files": [str(p) for p in paths],
        "since": start.isoformat() if start else None,
        "connections": sum(p.connections for p in programs.values()),
        "failures": sum(p.failures for p in programs.values()),
        "malformed": {"count": malformed, "first": first_bad or None},
        "programs": {name: p.to_json() for name, p in ordered},
    }
    if malformed:
        typer.echo(f"ssa-admin: {malformed} malformed {'line' if malformed == 1 else 'lines'} "
                   f"skipped (first at {first_bad})", err=True)
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
    elif not programs:
        typer.echo("No connections recorded.")
    else:
        (_rich if sys.stdout.isatty() else _plain)(doc["programs"])
        typer.echo(f"Total: {_n(doc['connections'], 'connection')}, "
                   f"{_n(doc['failures'], 'failure')}, {_n(len(programs), 'program')}.")

