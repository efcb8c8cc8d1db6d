"""What the command groups share: options, output, and turning failures into exit codes.

Exit status: 0 success, 1 failure (one line on stderr per problem), 2 a usage
error (typer's). Output: rich on a terminal, plain text when stdout is piped,
JSON with ``--json``. Heavy modules (ruamel.yaml through ssa_admin.profiles,
cryptography) are imported by the commands that need them, not here, so that
``--help`` and TAB completion stay fast.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from ssa_engine import paths

if TYPE_CHECKING:
    from ssa_admin.engine import ReloadResult
    from ssa_engine.config import ConfigError

StateDir = Annotated[
    Path | None,
    typer.Option("--state-dir", envvar=paths.ENV_STATE_DIR, show_default=False,
                 help="State directory holding the store (default /var/lib/ssa as root, "
                      "else $XDG_STATE_HOME/ssa)."),
]
ConfigDir = Annotated[
    Path | None,
    typer.Option("--config-dir", envvar=paths.ENV_CONFIG_DIR, show_default=False,
                 help="Configuration: ssa.yaml and profiles.d/ (default /etc/ssa as root, "
                      "else $XDG_CONFIG_HOME/ssa)."),
]
Socket = Annotated[
    Path | None,
    typer.Option("--socket", envvar=paths.ENV_ENGINE_SOCKET, show_default=False,
                 help="The engine's control socket (default /run/ssa/engine.sock as root, "
                      "else $XDG_RUNTIME_DIR/ssa/engine.sock)."),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def config_dir(value: Path | None) -> Path:
    return value if value is not None else paths.config_dir()


# -- output ------------------------------------------------------------------------------
def is_terminal() -> bool:
    return sys.stdout.isatty()


def abort(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"ssa-admin: {message}", err=True)
    raise typer.Exit(code=code)


def usage_error(message: str) -> NoReturn:
    """A command line that cannot work: exit status 2, like typer's own usage errors."""
    abort(f"{message} (see --help)", code=2)


def warn(message: str) -> None:
    typer.echo(f"ssa-admin: warning: {message}", err=True)


def print_json(doc: Any) -> None:
    typer.echo(json.dumps(doc, indent=2))


def table(title: str | None, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A rich table on a terminal; plain aligned columns (no colour, no box) otherwise."""
    if is_terminal():
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title)
        for h in headers:
            t.add_column(h)
        for row in rows:
            t.add_row(*row)
        Console().print(t)
        return
    if title:
        typer.echo(title)
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    for line in (headers, *rows):
        typer.echo("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def pairs(items: Sequence[tuple[str, str]]) -> None:
    """``key: value`` lines (a borderless rich table on a terminal)."""
    if is_terminal():
        from rich.console import Console
        from rich.table import Table

        t = Table(show_header=False, box=None)
        for key, value in items:
            t.add_row(f"[bold]{key}[/bold]", value)
        Console().print(t)
        return
    width = max(len(k) for k, _ in items)
    for key, value in items:
        typer.echo(f"{key + ':':<{width + 1}} {value}".rstrip())


def print_config_errors(errors: Iterable[ConfigError | str], *, err: bool = True) -> None:
    """One ``file:line:col: keys: message`` line per problem."""
    for e in errors:
        typer.echo(str(e), err=err)


@contextlib.contextmanager
def failures(*, edit: bool = False) -> Iterator[None]:
    """Configuration errors, ProfileError and file errors -> lines on stderr, exit 1.

    ``edit``: the command changes files (and says that it changed nothing).
    """
    from ssa_admin.profiles import ProfileError
    from ssa_engine.config import ConfigErrors

    try:
        yield
    except ConfigErrors as exc:
        print_config_errors(exc.errors)
        n = len(exc.errors)
        abort(f"{n} configuration error{'s' if n != 1 else ''}"
              + ("; nothing was changed" if edit else ""))
    except ProfileError as exc:
        abort(str(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        abort(f"{where}{exc.strerror or exc}")


def report_reload(result: ReloadResult, *, after_edit: bool) -> None:
    """Say what the engine did with a reload request.

    After an edit, a stopped engine is only a warning (it reads the files when
    it starts); an engine that kept its old configuration is a failure.
    """
    if not result.running:
        if after_edit:
            warn(f"{result.message}; the change applies when the engine starts")
            return
        abort(result.message)
    if result.reloaded:
        n = len(result.profiles)
        typer.echo(f"reloaded ({n} profile{'s' if n != 1 else ''})")
        return
    if result.errors:
        print_config_errors(result.errors)
        abort(f"{result.message}: it did not load (the errors above)")
    if after_edit:
        warn(f"{result.message}; the engine notices changed files by itself within seconds")
        return
    abort(result.message)
