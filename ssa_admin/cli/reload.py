"""``ssa-admin reload``: make the running engine read its configuration again."""

from __future__ import annotations

from .common import Socket, report_reload


def reload(socket: Socket = None) -> None:
    """Reload the engine's configuration; exit 1 when it kept the old one or none runs.

    The engine also reloads by itself when a file changes and on SIGHUP; a
    broken file is reported and the last good configuration stays in force.
    """
    from ssa_admin.engine import reload_engine

    report_reload(reload_engine(socket), after_edit=False)
