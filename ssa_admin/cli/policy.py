"""``ssa-admin policy``: the default policy in ``ssa.yaml`` (every program without a profile)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import ConfigDir, Json, Socket, config_dir, failures, report_reload
from .completion import complete_levels

app = typer.Typer(
    name="policy",
    help="The default policy (ssa.yaml): show it, set its security level.",
    no_args_is_help=True,
)


@app.command("show")
def show(config: ConfigDir = None, as_json: Json = False) -> None:
    """Show the default policy in force: built-in defaults overlaid by ssa.yaml."""
    from ssa_admin.effective import effective_default

    from .profile import show_effective

    directory = config_dir(config)
    with failures():
        eff = effective_default(directory)
    main = directory / "ssa.yaml"
    where = str(main) if main.exists() else f"{main} is absent: built-in defaults"
    show_effective(eff, f"the default policy ({where})", as_json)


@app.command("set-level")
def set_level(
    level: Annotated[str, typer.Argument(help="legacy, default, modern, future or fips.",
                                         show_default=False, autocompletion=complete_levels)],
    config: ConfigDir = None,
    socket: Socket = None,
) -> None:
    """Set the default security level in ssa.yaml (comments and layout kept) and reload."""
    from ssa_admin import engine as _engine
    from ssa_admin import profiles
    from ssa_engine.policy.levels import LEVELS

    if level not in LEVELS:
        raise typer.BadParameter(f"{level!r}; one of {', '.join(LEVELS)}", param_hint="LEVEL")
    directory = config_dir(config)
    with failures(edit=True):
        old = profiles.set_level(directory, level)
    was = f" (was {old})" if old is not None else ""
    typer.echo(f"{directory / 'ssa.yaml'}: level {level}{was}")
    report_reload(_engine.reload_engine(socket), after_edit=True)
