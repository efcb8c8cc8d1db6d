"""``ssa-admin cert``: put certificates into the store and look at them.

Thin commands over :mod:`ssa_engine.store`; they edit files only and never
contact the engine. Every failure is one line on stderr and exit status 1.
Output is a rich table on a terminal, plain columns otherwise, JSON with
``--json`` (ARCHITECTURE.md section 8 pins the ``list`` fields).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ssa_engine import paths

from .common import Json, StateDir, abort, warn
from .common import pairs as _pairs
from .common import print_json as _print_json
from .common import table as _table
from .completion import complete_certificates

if TYPE_CHECKING:  # the store pulls in cryptography: imported when a command runs
    from ssa_engine.store import Store, Version

app = typer.Typer(
    name="cert",
    help="Certificates: issue (ACME), renew, revoke, import, list, show, delete.",
    no_args_is_help=True,
)


# -- output ------------------------------------------------------------------------------
@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Turn any store or file error into one line and exit status 1."""
    from ssa_engine.store import StoreError

    try:
        yield
    except StoreError as exc:
        abort(str(exc))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        abort(f"{where}{exc.strerror or exc}")


# -- the data shown ----------------------------------------------------------------------
def _open_store(state_dir: Path | None) -> Store:
    from ssa_engine.store import Store

    return Store(state_dir or paths.state_dir())


def _status(v: Version, now: dt.datetime) -> str:
    if v.meta.not_after <= now:
        return "expired"
    if v.meta.not_before > now:
        return "not yet valid"
    return "valid"


def _summary(store: Store, v: Version, now: dt.datetime) -> dict[str, Any]:
    """The ``cert list --json`` object (field names pinned by ARCHITECTURE.md section 8)."""
    from ssa_engine.store import iso

    m = v.meta
    return {
        "name": v.name,
        "domains": list(m.domains),
        "not_before": iso(m.not_before),
        "not_after": iso(m.not_after),
        "days_left": m.days_left(now),
        "status": _status(v, now),
        "issuer": m.issuer,
        "key_type": m.key_type,
        "serial": m.serial,
        "spki_pin": m.spki_pin,
        "source": m.source,
        "version": v.number,
        "path": str(store.folder(v.name)),
        "next_renewal": _next_renewal(v, now),
    }


def _next_renewal(v: Version, now: dt.datetime) -> str | None:
    """When `cert renew` will renew it, estimated offline (one third of the lifetime
    left; `cert show` asks the CA's renewal information). None: not an ACME certificate."""
    from ssa_engine.store import iso

    m = v.meta
    if m.acme is None:
        return None
    if m.acme.options.get("revoked") or m.not_after <= now:
        return iso(now)
    return iso(m.not_after - (m.not_after - m.not_before) / 3)


def _files(store: Store, name: str) -> dict[str, str]:
    """Stable paths through the ``current`` link (what a non-SSA daemon should use)."""
    current = store.folder(name) / "current"
    return {kind: str(current / f"{kind}.pem")
            for kind in ("cert", "chain", "fullchain", "privkey")}


# -- commands ----------------------------------------------------------------------------
@app.command("import")
def import_(
    name: Annotated[str, typer.Argument(help="Store name (e.g. example.com).", show_default=False,
                                        autocompletion=complete_certificates)],
    cert: Annotated[Path, typer.Option("--cert", help="PEM certificate (the leaf, optionally "
                                       "followed by its chain).", show_default=False)],
    key: Annotated[Path, typer.Option("--key", help="PEM private key, unencrypted.",
                                      show_default=False)],
    chain: Annotated[Path | None, typer.Option("--chain", help="PEM issuing certificates, "
                                               "leaf's issuer first.", show_default=False)] = None,
    state_dir: StateDir = None,
    as_json: Json = False,
) -> None:
    """Import a certificate and its key as the next version of NAME, and make it current."""
    from ssa_engine.store import read_material, validate_name

    with store_errors():
        name = validate_name(name)
        material = read_material(cert, key, chain)
        for w in material.warnings:
            warn(w)
        store = _open_store(state_dir)
        version = store.add(name, material, source="import")
    now = dt.datetime.now(dt.UTC)
    doc = {**_summary(store, version, now), "files": _files(store, name),
           "warnings": list(material.warnings)}
    if as_json:
        _print_json(doc)
        return
    typer.echo(f"Imported {name} as version {version.number} ({version.meta.key_type}, "
               f"{', '.join(version.domains) or 'no host names'}; valid until "
               f"{doc['not_after']}, {doc['days_left']} days left).")
    typer.echo(f"Certificate chain: {doc['files']['fullchain']}")
    typer.echo(f"Private key:       {doc['files']['privkey']}")


@app.command("list")
def list_(state_dir: StateDir = None, as_json: Json = False) -> None:
    """List the certificates in the store (the current version of each)."""
    from ssa_engine.store import StoreError

    now = dt.datetime.now(dt.UTC)
    with store_errors():
        store = _open_store(state_dir)
        names = store.names()
    docs: list[dict[str, Any]] = []
    errors: list[str] = []
    for name in names:
        try:
            docs.append(_summary(store, store.current_version(name), now))
        except StoreError as exc:  # one damaged entry does not hide the others
            errors.append(str(exc))
            docs.append({"name": name, "path": str(store.folder(name)), "error": str(exc)})
    if as_json:
        _print_json(docs)
    elif not docs:
        typer.echo(f"No certificates in {store.certs}.")
    else:
        rows = [[d["name"], ", ".join(d["domains"]), d["key_type"], d["issuer"],
                 d["not_after"], str(d["days_left"]), d["next_renewal"] or "- (imported)",
                 d["status"]] if "error" not in d
                else [d["name"], "-", "-", "-", "-", "-", "-", "damaged"] for d in docs]
        _table(None, ["name", "domains", "key type", "issuer", "not after", "days left",
                      "next renewal", "status"], rows)
    for message in errors:
        typer.echo(f"ssa-admin: {message}", err=True)
    if errors:
        raise typer.Exit(code=1)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Store name.", show_default=False,
                                        autocompletion=complete_certificates)],
    state_dir: StateDir = None,
    offline: Annotated[bool, typer.Option("--offline", help="Do not ask the CA for its "
                                          "renewal window (ARI).")] = False,
    as_json: Json = False,
) -> None:
    """Show one certificate: files, chain, SPKI pin, dates, renewal window, every version."""
    from cryptography import x509

    from ssa_engine.store import CorruptEntry, iso

    now = dt.datetime.now(dt.UTC)
    with store_errors():
        store = _open_store(state_dir)
        current = store.current_version(name)
        versions = store.versions(name)
        try:
            chain = x509.load_pem_x509_certificates(current.fullchain_path.read_bytes())
        except ValueError as exc:
            raise CorruptEntry(f"{current.fullchain_path}: not valid PEM ({exc})") from None
    m = current.meta
    doc = {
        **_summary(store, current, now),
        "subject": m.subject,
        "created": iso(m.created),
        "files": _files(store, current.name),
        "version_path": str(current.path),
        "chain": [{"subject": c.subject.rfc4514_string(), "issuer": c.issuer.rfc4514_string(),
                   "not_after": iso(c.not_valid_after_utc)} for c in chain],
        "versions": [{"version": v.number, "current": v.current, "serial": v.meta.serial,
                      "not_after": iso(v.meta.not_after), "source": v.meta.source,
                      "created": iso(v.meta.created)} for v in versions],
        "acme": m.acme.to_json() if m.acme else None,
        "renewal": _renewal(current, now, offline),
    }
    if as_json:
        _print_json(doc)
        return
    pairs = [
        ("name", doc["name"]), ("path", doc["path"]), ("domains", ", ".join(m.domains)),
        ("status", f"{doc['status']}, {doc['days_left']} days left"),
        ("not before", doc["not_before"]), ("not after", doc["not_after"]),
        ("key type", m.key_type), ("SPKI pin", m.spki_pin), ("subject", m.subject),
        ("issuer", m.issuer), ("serial", m.serial), ("source", m.source),
        ("version", f"{current.number} of {len(versions)} ({current.path})"),
    ]
    pairs += [(f"{kind} file", path) for kind, path in doc["files"].items()]
    pairs += [(f"chain[{i}]", c["subject"]) for i, c in enumerate(doc["chain"])]
    if doc["renewal"]:
        r = doc["renewal"]
        text = f"{r['due']} ({r['source']}"
        if r.get("window"):
            text += f": ARI window {r['window'][0]} to {r['window'][1]}"
        pairs.append(("next renewal", text + ")" + (f"; {r['note']}" if r.get("note") else "")))
    if m.acme:
        pairs += [(f"acme {k}", str(v)) for k, v in m.acme.to_json().items() if v]
    _pairs(pairs)


def _renewal(v: Version, now: dt.datetime, offline: bool) -> dict[str, Any] | None:
    """The renewal time `cert renew` would use, asking the CA's ARI unless offline."""
    if v.meta.acme is None:
        return None
    from ssa_admin.acme.client import Acme
    from ssa_admin.acme.errors import AcmeError
    from ssa_admin.acme.renew import due_time

    acme = None
    note = None
    if not offline:
        try:
            acme = Acme(v.meta.acme.server, None, ca_bundle=v.meta.acme.ca_bundle, max_wait=5)
        except AcmeError as exc:
            note = f"the CA was not asked: {str(exc).splitlines()[0]}"
    try:
        doc = due_time(v, acme, now).to_json()
    finally:
        if acme is not None:
            acme.close()
    if note and not doc.get("note"):
        doc["note"] = note
    return doc
