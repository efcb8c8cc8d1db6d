"""``ssa-admin cert renew``, ``cert revoke``, ``cert delete``.

Thin: the work is in :mod:`ssa_admin.acme.renew` and the store. Renewal
reuses what ``cert issue`` recorded (docs/acme.md); each certificate ends as
renewed, not due (with the date) or failed (with the reason), one failure
never stops the others, and the exit status is 1 if any failed.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ssa_engine import paths

from .cert_acme import Reporter, acme_failures, make_responder, run_deploy_hooks
from .common import ConfigDir, Json, Socket, StateDir, abort, config_dir, print_json, usage_error, warn
from .completion import complete_certificates

if TYPE_CHECKING:
    from ssa_admin.acme.renew import Outcome
    from ssa_engine.store import AcmeMeta

#: ``--scheduled`` waits a random 0..MAX_JITTER seconds first, so that machines started by
#: the same timer do not reach the CA in the same second (certbot sleeps up to 8 minutes,
#: even when run by hand; the timer's RandomizedDelaySec already spreads the runs)
MAX_JITTER = 60.0
#: overrides MAX_JITTER (seconds; 0 turns the jitter off)
ENV_JITTER = "SSA_RENEW_MAX_JITTER"

Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
Name = Annotated[str, typer.Argument(help="Store name.", show_default=False,
                                     autocompletion=complete_certificates)]


def _jitter() -> float:
    try:
        limit = float(os.environ.get(ENV_JITTER, MAX_JITTER))
    except ValueError:
        limit = MAX_JITTER
    return random.uniform(0, max(0.0, min(limit, MAX_JITTER)))


def _responder_for(socket: Path | None) -> Any:
    """The challenge responder that ``cert issue`` used, from the recorded settings."""
    def build(acme: AcmeMeta) -> Any:
        opts = acme.options
        extra: dict[str, Any] = {}
        if opts.get("dns_server"):  # dns-01 by RFC 2136 dynamic update
            extra = {"dns_server": opts["dns_server"], "dns_zone": opts.get("dns_zone"),
                     "dns_tsig_key": Path(opts["dns_tsig_key"]) if opts.get("dns_tsig_key")
                     else None, "identifiers": list(opts.get("domains") or ())}
            if opts.get("dns_propagation_timeout") is not None:
                extra["dns_propagation_timeout"] = float(opts["dns_propagation_timeout"])
        try:
            return make_responder(
                acme.challenge or "http-01", http_port=int(opts.get("http_port", 80)),
                tls_port=int(opts.get("tls_port", 443)),
                webroot=Path(opts["webroot"]) if opts.get("webroot") else None,
                dns_hook=opts.get("dns_hook"), engine_socket=socket, **extra)
        except typer.Exit:  # make_responder printed why
            from ssa_admin.acme.errors import ChallengeError

            raise ChallengeError(f"cannot answer {acme.challenge} as recorded at issue "
                                 "(see above)") from None
    return build


def _line(o: Outcome) -> str:
    """The one line that says what happened to a certificate."""
    due = o.due
    if o.status == "renewed":
        v = o.version
        assert v is not None
        text = (f"renewed: version {v.number} (was {o.previous}), valid until "
                f"{v.meta.not_after:%Y-%m-%d %H:%M} UTC")
        if o.replaces:
            text += ", ARI replaces sent"
        if o.forced:
            text += " (forced)"
        elif due:
            text += f" ({due.describe()})"
    elif o.status == "not due":
        assert due is not None
        text = f"not due: renewal due {due.when:%Y-%m-%d %H:%M} UTC ({due.describe()})"
    elif o.status == "dry run":
        v = o.version
        assert v is not None
        text = (f"dry run: {o.server} issued a test certificate (valid until "
                f"{v.meta.not_after:%Y-%m-%d %H:%M} UTC); nothing was stored, no hook ran")
        if due:
            text += (f"; the real renewal is due {due.when:%Y-%m-%d %H:%M} UTC "
                     f"({due.describe()})")
    else:
        text = f"failed: {o.reason}"
        if o.previous is not None:
            text += f"\n  version {o.previous} is still current"
    return f"{o.name}: {text}"


class _Plain:
    """Progress as plain lines (``--scheduled``: the journal, no spinner)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps: list[dict[str, str]] = []

    def __call__(self, step: str, detail: str) -> None:
        self.steps.append({"step": step, "detail": detail})
        typer.echo(f"{self.name}: {step}: {detail}")


def renew(
    names: Annotated[list[str] | None, typer.Argument(
        help="Store names (default: every ACME certificate).", show_default=False,
        autocompletion=complete_certificates)] = None,
    force: Annotated[bool, typer.Option("--force", help="Renew now, due or not.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Run a full issuance against the CA's staging server (the same "
        "server if none is known) and store nothing.")] = False,
    scheduled: Annotated[bool, typer.Option(
        "--scheduled", help="Run by the timer: wait a random 0-60 s first, print plain "
        "lines.")] = False,
    deploy_hook: Annotated[list[str] | None, typer.Option(
        "--deploy-hook", help="Command run after each renewal; saved for later renewals "
        "(repeat).", show_default=False)] = None,
    state_dir: StateDir = None,
    socket: Socket = None,
    as_json: Json = False,
) -> None:
    """Renew the ACME certificates that are due (ARI, else one third of the lifetime left)."""
    from ssa_admin.acme.accounts import AccountStore
    from ssa_admin.acme.renew import Outcome, Renewer
    from ssa_admin.engine import reload_engine
    from ssa_engine.store import Store, StoreError

    if dry_run and deploy_hook:
        usage_error("--deploy-hook with --dry-run: a dry run runs and saves no hooks")
    if scheduled:
        time.sleep(_jitter())
    state = state_dir or paths.state_dir()
    store = Store(state)
    outcomes: list[Outcome] = []
    with Renewer(store, AccountStore(state), responder_for=_responder_for(socket),
                 run_hooks=run_deploy_hooks, force=force, dry_run=dry_run,
                 extra_hooks=deploy_hook or ()) as renewer:
        try:
            todo = renewer.candidates(names or [])
        except StoreError as exc:
            abort(str(exc))
        if not todo and not as_json:
            typer.echo(f"No ACME certificates in {store.certs}.")
        for item in todo:
            if isinstance(item, Outcome):
                outcome = item
            else:
                progress = _Plain(item.name) if scheduled and not as_json else Reporter(as_json)
                try:
                    outcome = renewer.renew(item, progress)
                finally:
                    if isinstance(progress, Reporter):
                        progress.close()
                outcome.steps = progress.steps
            outcomes.append(outcome)
            if not as_json:
                typer.echo(_line(outcome), err=outcome.status == "failed")
                for note in outcome.notes:
                    typer.echo(f"  note: {note}")
                for failure in outcome.hook_failures:
                    warn(f"{outcome.name}: {failure}")
        reload = reload_engine(socket) if renewer.reload_needed(outcomes) else None
    failed = [o for o in outcomes if not o.ok]
    if as_json:
        print_json({"dry_run": dry_run, "certificates": [o.to_json() for o in outcomes],
                    "engine_reloaded": reload.reloaded if reload else None,
                    "engine_message": reload.message if reload else None})
    else:
        counts: dict[str, int] = {}
        for o in outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        if len(outcomes) > 1:
            typer.echo(", ".join(f"{n} {status}" for status, n in counts.items()) + ".")
        if reload is not None:
            if reload.reloaded:
                typer.echo("The engine reloaded and serves the renewed certificates.")
            elif not reload.running:
                warn(f"{reload.message}; it serves the renewed certificates when it starts")
            else:
                warn(f"{reload.message}; it picks up renewed certificates by itself within "
                     "seconds")
    if failed:
        raise typer.Exit(code=1)


def revoke(
    name: Name,
    reason: Annotated[str | None, typer.Option(
        "--reason", help="unspecified, keyCompromise (signed with the certificate's own key), "
        "affiliationChanged, superseded or cessationOfOperation.", show_default=False)] = None,
    yes: Yes = False,
    state_dir: StateDir = None,
    as_json: Json = False,
) -> None:
    """Revoke the current certificate of NAME at the CA that issued it."""
    from ssa_admin.acme.accounts import AccountStore
    from ssa_admin.acme.renew import REVOCATION_REASONS
    from ssa_admin.acme.renew import revoke as run_revoke
    from ssa_engine.store import Store

    if reason is not None and reason not in REVOCATION_REASONS:
        usage_error(f"--reason: one of {', '.join(REVOCATION_REASONS)}")
    state = state_dir or paths.state_dir()
    store = Store(state)
    with acme_failures():
        v = store.current_version(name)
    if v.meta.acme is None:
        abort(f"{v.name} was {v.meta.source}ed, not issued through ACME; revoke it through "
              "the CA that issued it")
    if not yes:
        if not sys.stdin.isatty():
            usage_error("revoking cannot be undone: pass --yes to confirm")
        if not typer.confirm(
                f"Revoke {v.name} (serial {v.meta.serial}, {', '.join(v.domains)}, valid until "
                f"{v.meta.not_after:%Y-%m-%d}) at {v.meta.acme.server}"
                f"{f' as {reason}' if reason else ''}? Clients will refuse it.", default=False):
            abort("nothing was changed")
    with acme_failures():
        result = run_revoke(store, AccountStore(state), v.name, reason)
    if as_json:
        print_json(result.to_json())
        return
    if result.already:
        typer.echo(f"{v.name} (serial {result.serial}) was already revoked at {result.server}.")
    else:
        typer.echo(f"Revoked {v.name} (serial {result.serial}, reason {result.reason}, signed "
                   f"with the {result.signed_with}).")
    typer.echo(f"It is still in the store and served until replaced: `ssa-admin cert renew "
               f"{v.name}` renews it now (a revoked certificate is always due), `ssa-admin "
               f"cert delete {v.name}` removes it.")


def _config_users(directory: Path, name: str) -> tuple[list[str], str | None]:
    """The configuration files whose ``server.certificates`` list ``name``, or why unknown."""
    from ssa_engine.config import ConfigErrors, load_config

    try:
        config = load_config(directory)
    except ConfigErrors as exc:
        return [], f"{len(exc.errors)} error(s) in the configuration in {directory}"
    except OSError as exc:
        return [], f"{directory}: {exc.strerror or exc}"
    users = []
    if name in (config.default_layer.server_certificates or ()):
        users.append(str(directory / paths.CONFIG_FILE))
    users += [str(p.file) for p in config.profiles
              if name in (p.layer.server_certificates or ())]
    return users, None


def delete(
    name: Name,
    yes: Yes = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Delete even when the configuration still lists it.")] = False,
    state_dir: StateDir = None,
    config: ConfigDir = None,
    socket: Socket = None,
    as_json: Json = False,
) -> None:
    """Remove NAME and all its versions from the store (it is not revoked)."""
    from ssa_admin.engine import reload_engine
    from ssa_engine.store import Store

    store = Store(state_dir or paths.state_dir())
    with acme_failures():
        v = store.current_version(name)
        count = len(store.versions(name))
    users, unknown = _config_users(config_dir(config), v.name)
    if users and not force:
        abort(f"{v.name} is listed in server.certificates of {', '.join(users)}; remove it "
              "there first (or pass --force: listeners then lose this certificate)")
    if unknown:
        warn(f"cannot check whether the configuration uses {v.name}: {unknown}")
    if not yes:
        if not sys.stdin.isatty():
            usage_error("deleting cannot be undone: pass --yes to confirm")
        if not typer.confirm(f"Delete {v.name} ({', '.join(v.domains)}, {count} version(s), "
                             f"key included) from {store.certs}?", default=False):
            abort("nothing was changed")
    with acme_failures():
        store.delete(v.name)
    reload = reload_engine(socket)
    if as_json:
        print_json({"name": v.name, "deleted": True, "versions": count,
                    "configured_in": users, "engine_reloaded": reload.reloaded})
        return
    revoked = v.meta.acme.options.get("revoked") if v.meta.acme else None
    typer.echo(f"Deleted {v.name} ({count} version(s))." + (
        "" if revoked or v.meta.acme is None else " It was not revoked: it stays valid until "
        f"{v.meta.not_after:%Y-%m-%d} (`ssa-admin cert revoke` before deleting revokes it)."))
    for user in users:
        warn(f"{user} still lists {v.name} in server.certificates")
    if not reload.running:
        warn(f"{reload.message}; nothing to reload")
    elif not reload.reloaded:
        warn(reload.message)
