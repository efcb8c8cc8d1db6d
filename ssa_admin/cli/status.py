"""``ssa-admin status``: is the engine running, and what is it doing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ssa_engine import paths


def status(
    socket: Annotated[Path | None, typer.Option("--socket", envvar=paths.ENV_ENGINE_SOCKET,
                                                help="Engine control socket.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show the running engine's status; exit 1 when no engine is running."""
    from ssa_engine.api.control import ControlChannel
    from ssa_engine.protocol import StatusReply, StatusRequest

    path = socket or paths.engine_socket()
    try:
        ctl = ControlChannel(path)
        try:
            reply = ctl.open(StatusRequest())
        finally:
            ctl.close()
    except OSError as exc:
        if as_json:
            typer.echo(json.dumps({"running": False, "socket": str(path), "error": exc.strerror}))
        else:
            typer.echo(f"ssa-admin: {exc.strerror}", err=True)
        raise typer.Exit(code=1) from None
    assert isinstance(reply, StatusReply)
    doc = {"running": True, **json.loads(reply.document)}
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ssa engine", show_header=False)
    for key, value in doc.items():
        table.add_row(key.replace("_", " "), str(value))
    Console().print(table)
