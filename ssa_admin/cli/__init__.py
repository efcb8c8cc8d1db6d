"""``ssa-admin``: one module per command group; this one wires them together."""

from __future__ import annotations

import typer

from . import account as _account
from . import cert as _cert
from . import cert_acme as _cert_acme
from . import cert_renew as _cert_renew
from . import pin as _pin
from . import policy as _policy
from . import profile as _profile
from . import reload as _reload
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
app.add_typer(_account.app, name="account")
_cert.app.command("issue")(_cert_acme.issue)
_cert.app.command("renew")(_cert_renew.renew)
_cert.app.command("revoke")(_cert_renew.revoke)
_cert.app.command("delete")(_cert_renew.delete)
app.add_typer(_profile.app, name="profile")
app.add_typer(_policy.app, name="policy")
app.command("reload")(_reload.reload)
app.add_typer(_pin.app, name="pin")


def main() -> None:
    app()
