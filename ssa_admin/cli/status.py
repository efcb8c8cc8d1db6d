"""``ssa-admin status``: is the engine running, and what is it doing.

Shows the engine, the configuration in force and when it was loaded, the
last reload's errors (prominently: the engine kept its old configuration),
the applied profiles and the live sockets per program. ``--json`` prints the
engine's STATUS document as it is, plus ``"running": true``.
"""

from __future__ import annotations

from typing import Any

import typer

from .common import Json, Socket, is_terminal, print_json

#: keys shown in a section of their own; any others go under "other"
_SHOWN = {
    "running", "engine", "pid", "uptime_seconds", "socket", "config_dir", "config_loaded_at",
    "config_files", "default_policy", "level", "server_certificates", "profiles", "reloads",
    "last_reload_errors", "last_reload_failed_at", "listeners", "sockets", "connected",
    "sockets_created_total", "connections_total", "bytes_relayed_total", "programs",
}


def _duration(seconds: Any) -> str:
    try:
        s = int(float(seconds))
    except (TypeError, ValueError):
        return "?"
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] * bool(d) + [f"{h}h"] * bool(h) + [f"{m}m"] * bool(m) + [f"{s}s"]
    return " ".join(parts[:3])


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def _match(match: dict[str, list[str]]) -> str:
    return " ".join(f"{k}={','.join(v)}" for k, v in (match or {}).items()) or "-"


def _sections(doc: dict[str, Any]) -> dict[str, Any]:
    """The document arranged for people: (title, pairs) and the tables."""
    engine = [
        ("engine", f"{doc.get('engine', '?')} (pid {doc.get('pid', '?')}, up "
                   f"{_duration(doc.get('uptime_seconds'))})"),
        ("socket", str(doc.get("socket", "?"))),
    ]
    files = doc.get("config_files") or []
    config = [
        ("directory", str(doc.get("config_dir", "?"))),
        ("loaded at", f"{doc.get('config_loaded_at', '?')} ({doc.get('reloads', 0)} reloads "
                      "since start)"),
        ("files", ", ".join(files) if files else "none: built-in defaults"),
        ("default policy", f"level {doc.get('level', '?')} ({doc.get('default_policy', '?')})"),
    ]
    if doc.get("server_certificates"):
        config.append(("certificates", ", ".join(doc["server_certificates"])))
    sockets = [
        ("sockets", f"{doc.get('sockets', 0)} open: {doc.get('connected', 0)} connected, "
                    f"{doc.get('listeners', 0)} listening"),
        ("since start", f"{doc.get('sockets_created_total', 0)} sockets, "
                        f"{doc.get('connections_total', 0)} connections, "
                        f"{doc.get('bytes_relayed_total', 0)} bytes relayed"),
    ]
    other = [(k.replace("_", " "), _value(v)) for k, v in doc.items() if k not in _SHOWN]
    profiles = [[p.get("name", "?"), p.get("level", "?"), _match(p.get("match", {})),
                 p.get("file", "")] for p in doc.get("profiles") or []]
    programs = [[str(p.get("program", "?")), str(p.get("pid", "?")), str(p.get("uid", "?")),
                 str(p.get("profile") or "default"), str(p.get("sockets", 0)),
                 str(p.get("connected", 0)), str(p.get("listeners", 0))]
                for p in doc.get("programs") or []]
    return {"engine": engine + sockets + other, "config": config, "profiles": profiles,
            "programs": programs}


_PROFILE_HEADERS = ["profile", "level", "match", "file"]
_PROGRAM_HEADERS = ["program", "pid", "uid", "profile", "sockets", "connected", "listening"]


def _failed_title(doc: dict[str, Any]) -> str:
    return (f"LAST RELOAD FAILED at {doc.get('last_reload_failed_at') or '?'}: the "
            f"configuration loaded at {doc.get('config_loaded_at', '?')} stays in force")


def _rich(doc: dict[str, Any]) -> None:
    from rich.console import Console, Group
    from rich.panel import Panel
    from rich.table import Table

    parts = _sections(doc)

    def grid(items: list[tuple[str, str]]) -> Table:
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold")
        t.add_column()
        for k, v in items:
            t.add_row(k, v)
        return t

    def tab(title: str, headers: list[str], rows: list[list[str]]) -> Table:
        t = Table(title=title, title_justify="left", expand=False)
        for h in headers:
            t.add_column(h)
        for r in rows:
            t.add_row(*r)
        return t

    out: list[Any] = [Panel(grid(parts["engine"]), title="ssa engine", title_align="left")]
    errors = doc.get("last_reload_errors") or []
    if errors:
        from rich.text import Text

        out.append(Panel(Text("\n".join(errors)), title=_failed_title(doc), title_align="left",
                         border_style="bold red"))
    out.append(Panel(grid(parts["config"]), title="configuration in force", title_align="left"))
    if parts["profiles"]:
        out.append(tab("profiles", _PROFILE_HEADERS, parts["profiles"]))
    else:
        out.append("no profiles applied: every program gets the default policy")
    if "programs" in doc:
        out.append(tab("live sockets per program", _PROGRAM_HEADERS, parts["programs"])
                   if parts["programs"] else "no live sockets")
    Console().print(Group(*out))


def _plain(doc: dict[str, Any]) -> None:
    from .common import pairs, table

    parts = _sections(doc)
    pairs(parts["engine"])
    errors = doc.get("last_reload_errors") or []
    if errors:
        typer.echo(f"\n{_failed_title(doc)}:")
        for line in errors:
            typer.echo(f"  {line}")
    typer.echo("\nconfiguration in force:")
    pairs(parts["config"])
    typer.echo("")
    if parts["profiles"]:
        table("profiles:", _PROFILE_HEADERS, parts["profiles"])
    else:
        typer.echo("no profiles applied: every program gets the default policy")
    if "programs" in doc:
        typer.echo("")
        if parts["programs"]:
            table("live sockets per program:", _PROGRAM_HEADERS, parts["programs"])
        else:
            typer.echo("no live sockets")


def status(socket: Socket = None, as_json: Json = False) -> None:
    """Show the running engine's status; exit 1 when no engine is running."""
    from ssa_admin.engine import engine_status
    from ssa_engine import paths

    path = socket or paths.engine_socket()
    try:
        doc = {"running": True, **engine_status(path)}
    except OSError as exc:
        if as_json:
            print_json({"running": False, "socket": str(path), "error": exc.strerror})
        else:
            typer.echo(f"ssa-admin: {exc.strerror or exc}", err=True)
        raise typer.Exit(code=1) from None
    if as_json:
        print_json(doc)
    elif is_terminal():
        _rich(doc)
    else:
        _plain(doc)
