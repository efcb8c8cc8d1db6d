"""``ssa-admin``: one module per command group; this one wires them together."""

from __future__ import annotations

import typer

from . import cert as _cert
from . import report as _report
from . import status as _status

app = typer.Typer(
    name="ssa-admin",
    help="Administer the Secure Socket API: policy, profiles, pins, certificates.",
    no_args_is_help=True,
)
app.command("status")(_status.status)
app.command("report")(_report.report)
app.add_typer(_cert.app, name="cert")


def main() -> None:
    app()
