"""``ssa-admin pin``: SPKI pins per remote host, in ``ssa.yaml`` or an applied profile.

A connection to a pinned host fails unless its verified chain holds one of
the host's pins (ARCHITECTURE.md section 6). Edits are round trips through
:class:`ssa_admin.profiles.EditableFile` (comments survive, nothing is saved
unless the whole configuration still loads); a running engine is then asked
to reload, a stopped one only earns a warning. ``add --from`` reads the
live chain with verification on (:mod:`ssa_admin.live_chain`) and never
pins a chain that does not verify.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from ssa_engine import paths

from .common import (
    ConfigDir,
    Json,
    Socket,
    abort,
    config_dir,
    failures,
    is_terminal,
    print_json,
    report_reload,
    table,
)
from .completion import complete_applied_profiles

if TYPE_CHECKING:  # heavy: imported when a command runs
    from ssa_admin.engine import ReloadResult
    from ssa_admin.live_chain import LiveChain
    from ssa_admin.profiles import EditableFile

app = typer.Typer(
    name="pin",
    help="SPKI pins per remote host: add (by hand or from the live chain), list, remove.",
    no_args_is_help=True,
)

DEFAULT_PORT = 443

ProfileName = Annotated[
    str | None,
    typer.Option("--profile", show_default=False, autocompletion=complete_applied_profiles,
                 help="Edit the applied profile NAME (profiles.d/NAME.yaml) instead of "
                      "the default policy in ssa.yaml."),
]
Host = Annotated[str, typer.Argument(show_default=False, metavar="HOST",
                                     help="Remote host name, *.domain or IP address.")]


def note(message: str) -> None:
    typer.echo(f"ssa-admin: note: {message}", err=True)


def pin_table(title: str | None, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """:func:`common.table`, except that a terminal never shortens a pin (the last column)."""
    if not is_terminal():
        table(title, headers, rows)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for h in headers[:-1]:
        t.add_column(h, overflow="fold")
    t.add_column(headers[-1], no_wrap=True, min_width=51)  # len("sha256/") + 44
    for row in rows:
        t.add_row(*row)
    Console().print(t)


def usage(message: str) -> NoReturn:
    """A usage error: exit status 2, like typer's own."""
    typer.echo(f"ssa-admin: {message}", err=True)
    raise typer.Exit(code=2)


# -- arguments ---------------------------------------------------------------------------
def _host_key(host: str) -> str:
    """The host as the policy keys it (lower case, no final dot, canonical IP); exit 1 if bad."""
    from ssa_engine.policy.schema import pin_host_problem

    problem = pin_host_problem(host)
    if problem:
        abort(f"{host!r} {problem}" if problem.startswith("is ") else f"{host!r}: {problem}")
    return _normal(host)


def _check_pins(pins: Sequence[str]) -> list[str]:
    """The pins in order without repeats; exit 1 naming every one that is not a pin."""
    from ssa_engine.policy.schema import valid_pin

    bad = [p for p in pins if not valid_pin(p)]
    for p in bad:
        typer.echo(f"ssa-admin: {p!r} is not a pin: expected sha256/ and the base64 of a SHA-256 "
                   "digest of a SubjectPublicKeyInfo (44 characters ending in =)", err=True)
    if bad:
        abort("nothing changed")
    return list(dict.fromkeys(pins))


def _endpoint(text: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or a bare IPv6 address -> (host, port)."""
    host, port = text, str(DEFAULT_PORT)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            usage(f"--from {text!r}: expected [IPv6]:PORT")
        port = rest[1:] or port
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        usage(f"--from {text!r}: expected HOST or HOST:PORT with a port from 1 to 65535")
    return host, int(port)


# -- the files ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Target:
    path: Path
    profile: str | None

    @property
    def where(self) -> str:
        return f"profile {self.profile}" if self.profile else paths.CONFIG_FILE


def _target(config: Path, profile: str | None) -> Target:
    if profile is None:
        return Target(config / paths.CONFIG_FILE, None)
    from ssa_admin.profiles import applied_profiles

    applied = applied_profiles(config)
    if profile not in applied:
        names = ", ".join(applied) or "none"
        abort(f"no applied profile {profile!r} in {paths.profiles_dir(config)} (applied: {names}); "
              f"'ssa-admin profile apply {profile}' installs a bundled one")
    return Target(applied[profile], profile)


def _all_targets(config: Path) -> list[Target]:
    from ssa_admin.profiles import applied_profiles

    return [Target(config / paths.CONFIG_FILE, None),
            *(Target(path, name) for name, path in applied_profiles(config).items())]


def _open(target: Target) -> EditableFile:
    """The file, open for a round-trip edit; exit 1 on a YAML error or a strange shape."""
    from ssa_admin.profiles import EditableFile

    with failures(edit=True):
        ef = EditableFile(target.path, profile=target.profile is not None)
    if not isinstance(ef.tree, dict):
        abort(f"{target.path}: the file is not a YAML mapping; fix it before editing pins")
    if not isinstance(ef.get(("pins",), {}), dict):
        abort(f"{target.path}: pins: must map host names to lists of pins; fix it by hand first")
    return ef


def _find_host(ef: EditableFile, host: str) -> str | None:
    """The key under which ``pins:`` holds ``host`` (written in any case, with a final dot)."""
    hosts = ef.get(("pins",)) or {}
    for key in hosts:
        if isinstance(key, str) and _normal(key) == host:
            return key
    return None


def _normal(key: str) -> str:
    """How the policy keys a host: lower case, no final dot, an IP address canonical."""
    from ssa_engine.policy.model import normalize_host

    return normalize_host(key)


def _pins_of(value: Any) -> list[str]:
    """A host's pins as the file has them (a list, or one string: the schema allows both)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value]
    return []


def _save_and_reload(ef: EditableFile, config: Path, socket: Path | None) -> ReloadResult:
    from ssa_admin.engine import reload_engine

    with failures(edit=True):
        ef.save(config)
    return reload_engine(socket)


def _engine_doc(result: ReloadResult | None) -> dict[str, Any] | None:
    if result is None:
        return None
    return {"running": result.running, "reloaded": result.reloaded,
            "errors": list(result.errors), "message": result.message}


def _finish(result: ReloadResult | None, as_json: bool) -> None:
    """Report the reload; with --json only the exit status (1: the engine refused the files)."""
    if result is None:
        return
    if not as_json:
        report_reload(result, after_edit=True)
    elif result.running and not result.reloaded and result.errors:
        for e in result.errors:
            typer.echo(str(e), err=True)
        raise typer.Exit(code=1)


# -- the live chain ----------------------------------------------------------------------
def _server_name(host: str, from_host: str) -> str:
    """The name to send as SNI and to verify: HOST, or the --from name a wildcard covers."""
    if not host.startswith("*."):
        return host
    label, _, parent = _normal(from_host).partition(".")
    if not label or parent != host[2:] or label == "*":
        usage(f"{host} is a wildcard: --from must name one host it covers "
              f"(like www.{host[2:]}), which is then sent as SNI and verified")
    return _normal(from_host)


def _fetch(host: str, port: int, name: str, cafile: str | None, *, quiet: bool) -> LiveChain:
    """The verified chain (a spinner on a terminal); exit 1 with one line if it cannot be had."""
    from ssa_admin.live_chain import FetchError, fetch_chain

    try:
        if quiet or not sys.stderr.isatty():
            return fetch_chain(host, port, name, cafile)
        from rich.console import Console

        with Console(stderr=True).status(f"Fetching the chain of {host}:{port} ..."):
            return fetch_chain(host, port, name, cafile)
    except FetchError as exc:
        abort(str(exc))


def _show_chain(chain: LiveChain, rows: list[dict[str, Any]], proposed: list[int]) -> None:
    from ssa_admin.live_chain import ADVICE

    typer.echo(f"{chain.address}: {chain.version}, chain verified for {chain.server_name} "
               f"against {chain.trust}.")
    pin_table("Verified chain (leaf first)", ["#", "role", "subject CN", "issuer CN", "not after",
                                           "key", "pin"],
           [[str(r["position"]), r["role"], r["subject"], r["issuer"], r["not_after"][:10],
             r["key"], r["pin"]] for r in rows])
    typer.echo(ADVICE)
    suggested = ", ".join(f"{p} ({rows[p]['role']})" for p in proposed)
    typer.echo(f"To pin: {suggested}.")


def _proposed(rows: list[dict[str, Any]], select: str | None) -> list[int]:
    """The positions --select names, else the leaf and its issuer."""
    from ssa_admin.live_chain import default_positions, parse_positions

    if select is None:
        return default_positions(len(rows))
    chosen = parse_positions(select, len(rows))
    if chosen is None:
        usage(f"--select {select!r}: expected positions from 0 to {len(rows) - 1} "
              "separated by commas, or all")
    return chosen


def _confirm(rows: list[dict[str, Any]], proposed: list[int]) -> list[int]:
    """Ask which positions to pin; exit 1 if there is no terminal to ask on or on 'none'."""
    from ssa_admin.live_chain import parse_positions

    if not sys.stdin.isatty():
        abort("adding pins from a live chain needs a confirmation: run on a terminal, "
              "or pass --yes (and --select to choose the positions)")
    while True:
        answer = typer.prompt("Positions to pin (comma-separated, 'all', or 'none' to cancel)",
                              default=",".join(map(str, proposed)))
        if answer.strip().lower() in ("none", "n", "no", "q"):
            abort("cancelled; nothing changed")
        chosen = parse_positions(answer, len(rows))
        if chosen is not None:
            return chosen
        typer.echo(f"Positions go from 0 to {len(rows) - 1}.", err=True)


def _trust_store(config: Path, profile: str | None) -> str | None:
    """The trust store the engine would verify this host with (verify.trust_store), if set."""
    from ssa_engine.config import load_config

    with failures(edit=True):
        loaded = load_config(config)
    policy = loaded.default
    if profile is not None:
        prof = loaded.profile(profile)
        policy = prof.policy if prof is not None else policy
    return policy.verify.trust_store


# -- commands ----------------------------------------------------------------------------
@app.command("add")
def add(
    host: Host,
    pins: Annotated[list[str] | None, typer.Argument(
        show_default=False, metavar="PIN",
        help="Pins to add: sha256/BASE64 of a SubjectPublicKeyInfo.")] = None,
    from_: Annotated[str | None, typer.Option(
        "--from", show_default=False, metavar="HOST[:PORT]",
        help="Read the chain that HOST[:PORT] serves (port 443 by default), verified for "
             "HOST, and pin keys from it after confirmation.")] = None,
    cafile: Annotated[Path | None, typer.Option(
        "--cafile", show_default=False, exists=True, dir_okay=False,
        help="With --from: verify against the CA certificates in this PEM file instead of "
             "the policy's verify.trust_store or the system trust store.")] = None,
    select: Annotated[str | None, typer.Option(
        "--select", show_default=False, metavar="POSITIONS",
        help="With --from: the chain positions to pin (0 = leaf), comma-separated, or 'all'; "
             "default the leaf and its issuer.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y",
                                      help="With --from: do not ask for confirmation.")] = False,
    profile: ProfileName = None,
    config: ConfigDir = None,
    socket: Socket = None,
    as_json: Json = False,
) -> None:
    """Pin HOST to keys: given as sha256/... or taken from the live chain with --from."""
    key = _host_key(host)
    given = _check_pins(pins or [])
    if from_ is None:
        if not given:
            usage("give at least one pin (sha256/...) or --from HOST[:PORT]")
        for option, value in (("--cafile", cafile), ("--select", select)):
            if value is not None:
                usage(f"{option} goes with --from")
    elif as_json and not yes:
        usage("--json with --from needs --yes (and --select to choose the positions)")
    directory = config_dir(config)
    target = _target(directory, profile)
    ef = _open(target)

    chain_rows: list[dict[str, Any]] = []
    if from_ is not None:
        from ssa_admin.live_chain import describe

        from_host, port = _endpoint(from_)
        trust = str(cafile) if cafile is not None else _trust_store(directory, profile)
        chain = _fetch(from_host, port, _server_name(key, from_host), trust, quiet=as_json)
        chain_rows = describe(chain)
        chosen = _proposed(chain_rows, select)
        if not as_json:
            _show_chain(chain, chain_rows, chosen)
        if not yes:
            chosen = _confirm(chain_rows, chosen)
        given = list(dict.fromkeys([*given, *(chain_rows[p]["pin"] for p in chosen)]))

    existing = _find_host(ef, key)
    current = _pins_of(ef.get(("pins", existing))) if existing else []
    added = [p for p in given if p not in current]
    already = [p for p in given if p in current]
    for p in already:
        note(f"{p} is already pinned for {key} in {target.where}")
    result = None
    if added:
        value = ef.get(("pins", existing)) if existing else None
        if isinstance(value, list):
            value.extend(added)  # the file's own sequence: its comments stay put
        else:
            ef.set(("pins", existing or key), [*current, *added])
        result = _save_and_reload(ef, directory, socket)
    pinned = [*current, *added]
    if as_json:
        print_json({"host": key, "where": target.where, "file": str(target.path),
                    "added": added, "already_pinned": already, "pins": pinned,
                    "chain": chain_rows, "engine": _engine_doc(result)})
    elif added:
        typer.echo(f"Pinned {key} in {target.where} ({target.path}): {len(added)} added, "
                   f"{len(pinned)} in all.")
        for p in added:
            typer.echo(f"  + {p}")
    else:
        typer.echo(f"Nothing changed: every pin given is already pinned for {key} in "
                   f"{target.where}.")
    _finish(result, as_json)


@app.command("list")
def list_(profile: ProfileName = None, config: ConfigDir = None, as_json: Json = False) -> None:
    """List the pinned hosts of ssa.yaml and of every applied profile."""
    from ssa_admin.profiles import EditableFile
    from ssa_engine.config import ConfigErrors

    directory = config_dir(config)
    targets = [_target(directory, profile)] if profile is not None else _all_targets(directory)
    docs: list[dict[str, Any]] = []
    errors: list[str] = []
    for target in targets:
        try:
            ef = EditableFile(target.path, profile=target.profile is not None)
        except ConfigErrors as exc:  # one broken file does not hide the others
            errors.extend(str(e) for e in exc.errors)
            continue
        except OSError as exc:
            errors.append(f"{target.path}: {exc.strerror}")
            continue
        hosts = ef.get(("pins",))
        if not isinstance(hosts, dict):
            continue
        for host, value in hosts.items():
            docs.append({"host": _normal(str(host)), "pins": _pins_of(value),
                         "where": target.where, "file": str(target.path)})
    if as_json:
        print_json(docs)
    elif not docs:
        typer.echo(f"No pins in {paths.CONFIG_FILE}" +
                   (f" or profile {profile}." if profile else " or any applied profile."))
    else:
        pin_table(None, ["host", "where", "pin"],
                  [[d["host"], d["where"], p] for d in docs for p in d["pins"] or ["-"]])
    for message in errors:
        typer.echo(f"ssa-admin: {message}", err=True)
    if errors:
        raise typer.Exit(code=1)


@app.command("remove")
def remove(
    host: Host,
    pins: Annotated[list[str] | None, typer.Argument(
        show_default=False, metavar="PIN",
        help="Pins to remove; none removes the host and all its pins.")
    ] = None,
    profile: ProfileName = None,
    config: ConfigDir = None,
    socket: Socket = None,
    as_json: Json = False,
) -> None:
    """Remove pins of HOST, or the host entirely; a host left with no pin is unpinned."""
    key = _host_key(host)
    given = _check_pins(pins or [])
    directory = config_dir(config)
    target = _target(directory, profile)
    ef = _open(target)
    existing = _find_host(ef, key)
    if existing is None:
        elsewhere = [t.where for t in _all_targets(directory)
                     if t != target and _pinned_in(t, key)]
        hint = f"; it is pinned in {', '.join(elsewhere)} (use --profile)" if elsewhere else ""
        abort(f"{key} has no pins in {target.where} ({target.path}){hint}")
    current = _pins_of(ef.get(("pins", existing)))
    missing = [p for p in given if p not in current]
    for p in missing:
        typer.echo(f"ssa-admin: {p} is not pinned for {key} in {target.where}", err=True)
    if missing:
        abort("nothing changed; 'ssa-admin pin list' shows the pins")
    removed = given or current
    left = [p for p in current if p not in removed]
    value = ef.get(("pins", existing))
    if not left:  # an empty list is invalid: the host goes (and pins: with its last host)
        ef.delete(("pins", existing))
    elif isinstance(value, list):
        for p in removed:  # in place: the comments of the other items stay
            while p in value:
                value.remove(p)
    else:
        ef.set(("pins", existing), left)
    result = _save_and_reload(ef, directory, socket)
    if as_json:
        print_json({"host": key, "where": target.where, "file": str(target.path),
                    "removed": removed, "pins": left, "unpinned": not left,
                    "engine": _engine_doc(result)})
    elif left:
        typer.echo(f"Removed {len(removed)} pin(s) of {key} from {target.where} "
                   f"({target.path}); {len(left)} left.")
    else:
        typer.echo(f"Unpinned {key} in {target.where} ({target.path}): its {len(removed)} "
                   "pin(s) removed.")
    _finish(result, as_json)


def _pinned_in(target: Target, host: str) -> bool:
    from ssa_admin.profiles import EditableFile
    from ssa_engine.config import ConfigErrors

    try:
        ef = EditableFile(target.path, profile=target.profile is not None)
    except (ConfigErrors, OSError):
        return False
    return isinstance(ef.get(("pins",)), dict) and _find_host(ef, host) is not None
