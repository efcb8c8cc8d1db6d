"""``ssa-engine``: run the engine, ask a running engine how it is."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from . import paths

app = typer.Typer(
    name="ssa-engine",
    help="The Secure Socket API engine: TLS for every program, under the administrator's policy.",
    no_args_is_help=True,
    add_completion=True,
)

SocketOption = Annotated[
    Path | None,
    typer.Option("--socket", help="Control socket path.", envvar=paths.ENV_ENGINE_SOCKET,
                 show_default=False),
]


def _complete_level(incomplete: str) -> list[str]:
    """Level names for ``serve --level`` completion (never raises: it runs on every TAB)."""
    try:
        from .policy.levels import LEVELS
    except Exception:
        return []
    return [name for name in LEVELS if name.startswith(incomplete)]


def _setup_logging(level: str) -> None:
    numeric = getattr(logging, level.upper(), None)
    if not isinstance(numeric, int):
        raise typer.BadParameter(f"unknown log level {level!r}", param_hint="--log-level")
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, rich_tracebacks=True)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)


@app.command()
def serve(
    socket: SocketOption = None,
    config_dir: Annotated[
        Path | None,
        typer.Option("--config-dir", envvar=paths.ENV_CONFIG_DIR, show_default=False,
                     help="Configuration: ssa.yaml and profiles.d/ (default /etc/ssa as root, "
                          "else $XDG_CONFIG_HOME/ssa)."),
    ] = None,
    level: Annotated[str, typer.Option(help="Security level when ssa.yaml sets none.",
                                       autocompletion=_complete_level)] = "default",
    handshake_timeout: Annotated[
        float, typer.Option(help="Seconds a TLS handshake may take, when ssa.yaml sets none.",
                            min=0.1, max=300)
    ] = 10.0,
    certificate: Annotated[
        list[str] | None,
        typer.Option("--certificate", help="Store certificate served by listeners that bring "
                     "none, when ssa.yaml lists none (repeat; the first is the default).",
                     show_default=False),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", envvar=paths.ENV_STATE_DIR, show_default=False,
                     help="Certificate store and other state."),
    ] = None,
    max_sockets_per_user: Annotated[
        int, typer.Option(help="TLS sockets one user may hold at once.", min=1)
    ] = 16384,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run the engine in the foreground (systemd, a terminal, a container).

    The options give the embedded defaults; ssa.yaml in the configuration
    directory overrides them, and profiles.d/*.yaml adjust them per program.
    """
    from .daemon.server import EngineError, run
    from .policy import DEFAULT_POLICY, LEVELS
    from .policy.enforce import with_level

    _setup_logging(log_level)
    if level not in LEVELS:
        typer.echo(f"ssa-engine: unknown level {level!r}; one of {', '.join(LEVELS)}", err=True)
        raise typer.Exit(code=2)
    policy = replace(with_level(DEFAULT_POLICY, level), handshake_timeout=handshake_timeout,
                     server_certificates=tuple(certificate or ()))
    try:
        run(socket or paths.engine_socket(), policy, state_dir, max_sockets_per_user,
            config_dir or paths.config_dir())
    except EngineError as exc:
        typer.echo(f"ssa-engine: {exc}", err=True)
        raise typer.Exit(code=1) from None


@app.command()
def status(
    socket: SocketOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Say whether an engine is running and how many sockets it holds."""
    from .api.control import ControlChannel
    from .protocol import StatusReply, StatusRequest

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
            typer.echo(f"ssa-engine: {exc.strerror}", err=True)
        raise typer.Exit(code=1) from None
    assert isinstance(reply, StatusReply)
    doc = {"running": True, **json.loads(reply.document)}
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for key, value in doc.items():
        table.add_row(key.replace("_", " "), str(value))
    Console().print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
