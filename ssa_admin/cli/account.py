"""``ssa-admin account``: the ACME account of each server (RFC 8555 section 7.3).

One account per ACME server, stored under ``STATE/accounts`` (key 0600,
folders 0700; :mod:`ssa_admin.acme.accounts`). ``cert issue`` registers one
on first use; these commands register one explicitly (with EAB or a chosen
key type), show it (and what the CA says about it), change its contact,
roll its key over and deactivate it. Thin: the work is in ssa_admin.acme;
failures are one message on stderr and exit 1 (`acme_failures`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ssa_engine import paths

from .cert_acme import CaBundle, Reporter, ServerOpt, acme_failures
from .common import Json, StateDir, abort, pairs, print_json, usage_error

if TYPE_CHECKING:
    from ssa_admin.acme.accounts import Account, AccountStore

app = typer.Typer(
    name="account",
    help="ACME accounts, one per CA: register, show, update, rollover, deactivate.",
    no_args_is_help=True,
)

KeyType = Annotated[str | None, typer.Option(
    "--key-type", show_default=False,
    help="Account key: ec-p256 (default for register), ec-p384, rsa-2048, rsa-3072 or rsa-4096.")]


def _setup(server: str, ca_bundle: Path | None, state_dir: Path | None
           ) -> tuple[str, str | None, AccountStore]:
    """Checked options: the directory URL, the CA bundle path and the account store."""
    from ssa_admin.acme.accounts import AccountStore
    from ssa_admin.acme.client import resolve_server

    try:
        url = resolve_server(server)
    except ValueError as exc:
        usage_error(str(exc))
    if ca_bundle is not None:
        _check_ca_bundle(ca_bundle)
    return url, str(ca_bundle) if ca_bundle else None, AccountStore(state_dir or paths.state_dir())


def _check_ca_bundle(path: Path) -> None:
    """A --ca-bundle that holds no certificate fails here, not as "the CA is not trusted"."""
    import ssl

    if not path.is_file():
        abort(f"--ca-bundle {path}: no such file")
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError:
        abort(f"--ca-bundle {path}: holds no PEM certificate")
    except OSError as exc:
        abort(f"--ca-bundle {path}: {exc.strerror or exc}")


def _check_key_type(key_type: str | None) -> None:
    from ssa_admin.acme.accounts import ACCOUNT_KEY_TYPES

    if key_type is not None and key_type not in ACCOUNT_KEY_TYPES:
        usage_error(f"--key-type: one of {', '.join(ACCOUNT_KEY_TYPES)}")


def _rows(account: Account) -> list[tuple[str, str]]:
    from ssa_admin.acme.accounts import key_type_of

    return [("server", account.server), ("account", account.uri), ("status", account.status),
            ("contact", ", ".join(account.emails) or "(none)"),
            ("key type", key_type_of(account.key)),
            ("key thumbprint", account.thumbprint()), ("key file", str(account.key_path)),
            ("created", account.created or "?")]


@app.command()
def register(
    server: ServerOpt = "letsencrypt",
    email: Annotated[list[str] | None, typer.Option(
        "--email", help="Contact address (repeat for several).", show_default=False)] = None,
    agree_tos: Annotated[bool, typer.Option("--agree-tos", help="Accept the CA's terms of "
                                            "service.")] = False,
    key_type: KeyType = None,
    eab_kid: Annotated[str | None, typer.Option("--eab-kid", help="External Account Binding "
                                                "key id.", show_default=False)] = None,
    eab_hmac_key: Annotated[str | None, typer.Option(
        "--eab-hmac-key", help="External Account Binding HMAC key (base64url).",
        show_default=False)] = None,
    ca_bundle: CaBundle = None,
    state_dir: StateDir = None,
    as_json: Json = False,
) -> None:
    """Register an account at the CA; a server that already has one keeps it (exit 0)."""
    from ssa_admin.acme.accounts import contacts, generate_key
    from ssa_admin.acme.accounts import register as run_register
    from ssa_admin.acme.client import Acme

    _check_key_type(key_type)
    url, bundle, store = _setup(server, ca_bundle, state_dir)
    try:
        contact = contacts(email or ())
    except ValueError as exc:
        usage_error(str(exc))
    retired: Path | None = None
    reporter = Reporter(as_json)
    with acme_failures(reporter):
        with store.lock(url):
            existing = store.load(url)
            if existing is not None and existing.status == "valid":
                reporter.close()
                _already(existing, as_json)
                return
            key = generate_key(key_type or "ec-p256")
            with Acme(url, key, ca_bundle=bundle) as acme:
                if existing is not None:  # deactivated (or revoked): keep it, aside
                    retired = store.retire(existing)
                try:
                    account = run_register(
                        acme, store, key, agree_tos=agree_tos, eab_kid=eab_kid,
                        eab_hmac_key=eab_hmac_key,
                        email=",".join(c.removeprefix("mailto:") for c in contact) or None)
                except BaseException:
                    if retired is not None and not existing.folder.exists():
                        retired.rename(existing.folder)  # no new account: as it was
                        retired = None
                    raise
    if as_json:
        print_json({**account.to_json(), "registered": True,
                    "retired": str(retired) if retired else None})
        return
    typer.echo(f"Registered an account at {url}.")
    if retired is not None:
        typer.echo(f"The {existing.status if existing else 'old'} account's files were moved "
                   f"to {retired}.")
    pairs(_rows(account))


def _already(account: Account, as_json: bool) -> None:
    if as_json:
        print_json({**account.to_json(), "registered": False, "retired": None})
        return
    typer.echo(f"An account for {account.server} is already registered: {account.uri}")
    typer.echo("One account per ACME server: it is kept. To start over, deactivate it first "
               f"(`ssa-admin account deactivate --server {account.server}`).")


@app.command()
def show(
    server: Annotated[str | None, typer.Option(
        "--server", show_default=False,
        help="ACME directory URL, or letsencrypt / letsencrypt-staging: show that account "
             "and what the CA says about it. Without it: every stored account.")] = None,
    ca_bundle: CaBundle = None,
    state_dir: StateDir = None,
    as_json: Json = False,
) -> None:
    """Show the stored accounts, or one account as stored and as the CA sees it."""
    from ssa_admin.acme.accounts import AccountStore

    if server is None:
        store = AccountStore(state_dir or paths.state_dir())
        with acme_failures():
            accounts = store.all()
        if as_json:
            print_json([a.to_json() for a in accounts])
        elif not accounts:
            typer.echo(f"No ACME account is stored in {store.root}.")
        else:
            # one block per account: a table's columns would cut the URLs on a terminal
            for n, a in enumerate(accounts):
                if n:
                    typer.echo("")
                pairs(_rows(a))
        return
    _show_live(server, ca_bundle, state_dir, as_json)


def _show_live(server: str, ca_bundle: Path | None, state_dir: Path | None,
               as_json: bool) -> None:
    from ssa_admin.acme.accounts import open_account, query, sync

    url, bundle, store = _setup(server, ca_bundle, state_dir)
    if store.load(url) is None:
        abort(f"no account for {url} is stored; register one with `ssa-admin account register "
              f"--server {server}`")
    live: dict[str, Any] | None = None
    note = ""
    reporter = Reporter(as_json)
    with acme_failures(reporter), store.lock(url):
        account = store.load(url)
        assert account is not None
        if account.status == "deactivated":
            # RFC 8555 section 7.3.6: the CA answers nothing signed by a deactivated account
            note = "not asked: the CA accepts no request from a deactivated account"
        else:
            acme, account = open_account(url, store, ca_bundle=bundle)
            with acme:
                live = query(acme, account)
            if sync(store, account, live):
                note = "the stored account was updated to match the CA"
    key_matches = None if live is None or live["key_thumbprint"] is None else (
        live["key_thumbprint"] == account.thumbprint())
    if as_json:
        print_json({**account.to_json(), "live": live, "key_matches": key_matches,
                    "note": note or None})
        return
    rows = _rows(account)
    if live is not None:
        rows += [("CA: status", str(live["status"])),
                 ("CA: contact", ", ".join(c.removeprefix("mailto:") for c in live["contact"])
                  or "(none)"),
                 ("CA: key", "matches key file" if key_matches else
                  "unknown" if key_matches is None else "DIFFERS from the key file")]
        if live["orders"]:
            rows.append(("CA: orders", str(live["orders"])))
    if note:
        rows.append(("note", note))
    pairs(rows)


@app.command()
def update(
    server: ServerOpt = "letsencrypt",
    email: Annotated[list[str] | None, typer.Option(
        "--email", help="New contact address (repeat for several); replaces the old ones.",
        show_default=False)] = None,
    no_email: Annotated[bool, typer.Option("--no-email", help="Remove every contact address."
                                           )] = False,
    ca_bundle: CaBundle = None,
    state_dir: StateDir = None,
    as_json: Json = False,
) -> None:
    """Change the account's contact addresses at the CA."""
    from ssa_admin.acme.accounts import contacts, open_account, update_contact

    if bool(email) == no_email:
        usage_error("give --email ADDR (one or more) or --no-email")
    try:
        contact = contacts(email or ())
    except ValueError as exc:
        usage_error(str(exc))
    url, bundle, store = _setup(server, ca_bundle, state_dir)
    reporter = Reporter(as_json)
    with acme_failures(reporter), store.lock(url):
        acme, account = open_account(url, store, ca_bundle=bundle)
        with acme:
            _require_valid(account)
            update_contact(acme, store, account, contact)
    if as_json:
        print_json(account.to_json())
        return
    typer.echo(f"Contact of {account.uri}: {', '.join(account.emails) or '(none)'}")


def _require_valid(account: Account) -> None:
    from ssa_admin.acme.errors import AcmeError

    if account.status != "valid":
        raise AcmeError(f"the account {account.uri} is {account.status}: the CA accepts no "
                        "change to it; register a new one with `ssa-admin account register "
                        f"--server {account.server}`")


@app.command()
def rollover(
    server: ServerOpt = "letsencrypt",
    key_type: KeyType = None,
    ca_bundle: CaBundle = None,
    state_dir: StateDir = None,
    as_json: Json = False,
) -> None:
    """Replace the account key (RFC 8555 section 7.3.5); the account URL stays the same.

    The new key is saved before the CA is asked, the old one is kept as
    key.pem.previous; the CA refuses the old key afterwards. Default key type:
    the current key's.
    """
    from ssa_admin.acme.accounts import generate_key, key_type_of, open_account
    from ssa_admin.acme.accounts import rollover as run_rollover

    _check_key_type(key_type)
    url, bundle, store = _setup(server, ca_bundle, state_dir)
    reporter = Reporter(as_json)
    with acme_failures(reporter), store.lock(url):
        acme, account = open_account(url, store, ca_bundle=bundle)
        with acme:
            _require_valid(account)
            old_thumbprint = account.thumbprint()
            new_key = generate_key(key_type or key_type_of(account.key))
            run_rollover(acme, store, account, new_key)
    doc = {**account.to_json(), "previous_thumbprint": old_thumbprint,
           "previous_key_file": str(account.previous_key_path)}
    if as_json:
        print_json(doc)
        return
    typer.echo(f"New key for {account.uri} ({doc['key_type']}, thumbprint "
               f"{account.thumbprint()}).")
    typer.echo(f"The old key (thumbprint {old_thumbprint}) is kept in "
               f"{account.previous_key_path}; the CA no longer accepts it.")


@app.command()
def deactivate(
    server: ServerOpt = "letsencrypt",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    ca_bundle: CaBundle = None,
    state_dir: StateDir = None,
    as_json: Json = False,
) -> None:
    """Deactivate the account at the CA for good (RFC 8555 section 7.3.6); keep its files."""
    from ssa_admin.acme.accounts import deactivate as run_deactivate
    from ssa_admin.acme.accounts import open_account

    url, bundle, store = _setup(server, ca_bundle, state_dir)
    with acme_failures():
        stored = store.load(url)
    if stored is None:
        abort(f"no account for {url} is stored; nothing to deactivate")
    if stored.status == "deactivated":
        if as_json:
            print_json({**stored.to_json(), "deactivated": False})
        else:
            typer.echo(f"The account {stored.uri} is already deactivated.")
        return
    if not yes:
        if not sys.stdin.isatty():
            usage_error("deactivating an account cannot be undone: pass --yes to confirm")
        if not typer.confirm(f"Deactivate the account {stored.uri} at {url}? The CA will "
                             "accept nothing from it again (certificates already issued stay "
                             "valid).", default=False):
            abort("nothing was changed")
    reporter = Reporter(as_json)
    with acme_failures(reporter), store.lock(url):
        acme, account = open_account(url, store, ca_bundle=bundle)
        with acme:
            run_deactivate(acme, store, account)
    if as_json:
        print_json({**account.to_json(), "deactivated": True})
        return
    typer.echo(f"Deactivated {account.uri} (status at the CA: {account.status}).")
    typer.echo(f"Its files stay in {account.folder}; `ssa-admin account register --server "
               f"{server}` starts a new account.")
