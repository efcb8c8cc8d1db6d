"""ACME accounts on disk: one per ACME server, its key 0600.

Layout (``STATE/accounts/HOST/ID/``, ID = the first 12 hex digits of the
SHA-256 of the directory URL, so two directories on one host stay apart)::

    key.pem           the account key, 0600 (PKCS#8 PEM)
    account.json      {"server", "uri", "contact", "created", "status", "key_type"}
    key.pem.next      during a key rollover only: the new key, before the CA has it
    key.pem.previous  after a key rollover: the key the CA no longer accepts

Files are replaced atomically (temporary file, fsync, rename); folders are
0700 and every file 0600. ``HOST/ID.lock`` serializes the processes that
change one account (two rollovers at once could lose the key the CA holds).

Key rollover (RFC 8555 section 7.3.5) writes the new key to ``key.pem.next``
*before* asking the CA, so that a process killed after the CA switched keys,
or an answer lost on the network, never loses the only key the CA accepts;
the next command that uses the account finds out which of the two keys the
CA holds and finishes (or forgets) the rollover (`settle_rollover`).

A deactivated account (RFC 8555 section 7.3.6) keeps its files and its
status; registering again on that server moves its folder aside to
``ID.deactivated-TIMESTAMP`` and starts a new one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import josepy as jose
from acme import jws as acme_jws
from acme import messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ssa_engine.store import FileLock, fsutil, iso

from .client import Acme, signing_alg
from .errors import AcmeError, ProblemError

#: how long a command waits for another one changing the same account (seconds)
LOCK_TIMEOUT = 60.0

#: account key types (``account register --key-type``); ES256 is what CAs expect
ACCOUNT_KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")


def generate_key(kind: str) -> jose.JWK:
    if kind not in ACCOUNT_KEY_TYPES:
        raise ValueError(f"--key-type: one of {', '.join(ACCOUNT_KEY_TYPES)}")
    if kind.startswith("ec-p"):
        curve = {"ec-p256": ec.SECP256R1(), "ec-p384": ec.SECP384R1()}[kind]
        return jose.JWKEC(key=ec.generate_private_key(curve))
    bits = int(kind.split("-")[1])
    return jose.JWKRSA(key=rsa.generate_private_key(65537, bits))


def _pem(key: jose.JWK) -> bytes:
    return key.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def _load_key(pem: bytes) -> jose.JWK:
    key = serialization.load_pem_private_key(pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return jose.JWKEC(key=key)
    if isinstance(key, rsa.RSAPrivateKey):
        return jose.JWKRSA(key=key)
    raise AcmeError(f"unsupported account key type {type(key).__name__}")


@dataclass
class Account:
    server: str
    folder: Path
    key: jose.JWK
    uri: str
    contact: tuple[str, ...] = ()
    status: str = "valid"
    created: str = ""

    @property
    def key_path(self) -> Path:
        return self.folder / "key.pem"

    @property
    def next_key_path(self) -> Path:
        return self.folder / "key.pem.next"

    @property
    def previous_key_path(self) -> Path:
        return self.folder / "key.pem.previous"

    @property
    def emails(self) -> tuple[str, ...]:
        return tuple(c.removeprefix("mailto:") for c in self.contact)

    @property
    def regr(self) -> messages.RegistrationResource:
        return messages.RegistrationResource(
            uri=self.uri, body=messages.Registration(contact=self.contact))

    def thumbprint(self) -> str:
        return jose.b64encode(self.key.thumbprint()).decode()

    def to_json(self) -> dict[str, object]:
        return {"server": self.server, "uri": self.uri, "contact": list(self.contact),
                "status": self.status, "created": self.created, "folder": str(self.folder),
                "key_type": key_type_of(self.key), "thumbprint": self.thumbprint(),
                "key_file": str(self.key_path)}


def key_type_of(key: jose.JWK) -> str:
    # josepy wraps the cryptography key (ComparableECKey): ask the JWK class
    if isinstance(key, jose.JWKEC):
        return f"ec-p{key.key.curve.key_size}"
    return f"rsa-{key.key.key_size}"


def thumbprint_of(jwk: jose.JWK) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url), the same for a private key and its public key."""
    return jose.b64encode(jwk.thumbprint()).decode()


class AccountStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "accounts"

    def folder(self, server: str) -> Path:
        host = urlsplit(server).hostname or "server"
        digest = hashlib.sha256(server.encode()).hexdigest()[:12]
        return self.root / host / digest

    def load(self, server: str) -> Account | None:
        folder = self.folder(server)
        try:
            doc = json.loads((folder / "account.json").read_text())
            key = _load_key((folder / "key.pem").read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise AcmeError(f"{folder}: the stored account is unreadable ({exc}); move the "
                            "folder away and register again") from None
        return Account(server, folder, key, doc["uri"], tuple(doc.get("contact") or ()),
                       doc.get("status", "valid"), doc.get("created", ""))

    def all(self) -> list[Account]:
        """Every server's current account (not the ones moved aside by a new registration)."""
        found = []
        for meta in sorted(self.root.glob("*/*/account.json")):
            try:
                server = json.loads(meta.read_text())["server"]
            except (OSError, ValueError, KeyError):
                continue
            if meta.parent != self.folder(server):
                continue  # ID.deactivated-TIMESTAMP
            account = self.load(server)
            if account is not None:
                found.append(account)
        return found

    def lock(self, server: str) -> FileLock:
        """The lock of one server's account (held while it is registered or changed)."""
        folder = self.folder(server)
        fsutil.ensure_dir(folder.parent)
        return FileLock(folder.with_name(folder.name + ".lock"), f"the account for {server}",
                        LOCK_TIMEOUT)

    def retire(self, account: Account) -> Path:
        """Move a deactivated account's folder aside (kept, never deleted); return where."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        target = account.folder.with_name(f"{account.folder.name}.deactivated-{stamp}")
        os.rename(account.folder, target)
        fsutil.fsync_dir(target.parent)
        return target

    def save(self, account: Account, *, key_changed: bool = False) -> None:
        for d in (self.root, account.folder.parent, account.folder):
            fsutil.ensure_dir(d)
        key_path = account.key_path
        if key_changed and key_path.exists():
            fsutil.replace_file(account.previous_key_path, key_path.read_bytes(), 0o600)
        if key_changed or not key_path.exists():
            fsutil.replace_file(key_path, _pem(account.key), 0o600)
        doc = {"server": account.server, "uri": account.uri, "contact": list(account.contact),
               "status": account.status, "created": account.created,
               "key_type": key_type_of(account.key)}
        fsutil.replace_file(account.folder / "account.json",
                            (json.dumps(doc, indent=2) + "\n").encode(), 0o600)


def register(acme: Acme, store: AccountStore, key: jose.JWK, *, email: str | None,
             agree_tos: bool, eab_kid: str | None = None, eab_hmac_key: str | None = None
             ) -> Account:
    """Create (or find, for the same key) the account on the server and store it."""
    tos = acme.directory.meta.terms_of_service if acme.directory.meta else None
    if tos and not agree_tos:
        raise AcmeError(f"the CA's terms of service ({tos}) must be accepted: pass --agree-tos")
    eab = None
    if eab_kid or eab_hmac_key:
        if not (eab_kid and eab_hmac_key):
            raise AcmeError("External Account Binding needs both --eab-kid and --eab-hmac-key")
        eab = messages.ExternalAccountBinding.from_data(
            account_public_key=key.public_key(), kid=eab_kid, hmac_key=eab_hmac_key,
            directory=acme.directory)
    elif acme.directory.meta and acme.directory.meta.external_account_required:
        raise AcmeError(f"{acme.directory_url} requires External Account Binding: pass "
                        "--eab-kid and --eab-hmac-key from your account at the CA")
    new = messages.NewRegistration.from_data(
        email=email, terms_of_service_agreed=bool(tos and agree_tos),
        external_account_binding=eab)
    regr = acme.call(acme.client.new_account, new, context="registering the account")
    account = Account(acme.directory_url, store.folder(acme.directory_url), key, regr.uri,
                      tuple(regr.body.contact or ()), str(regr.body.status or "valid"),
                      iso(dt.datetime.now(dt.UTC)))
    store.save(account, key_changed=True)
    acme.net.account = account.regr
    return account


def contacts(emails: Iterable[str]) -> tuple[str, ...]:
    """``--email`` values as ACME contact URLs (``mailto:``, RFC 8555 section 7.3)."""
    out = []
    for email in emails:
        address = email.strip().removeprefix("mailto:")
        if not address or "@" not in address or "," in address or any(c.isspace()
                                                                       for c in address):
            raise ValueError(f"--email {email!r}: not an e-mail address")
        out.append(f"mailto:{address}")
    return tuple(dict.fromkeys(out))


def connect(server: str, store: AccountStore, *, ca_bundle: str | None, email: str | None = None,
            agree_tos: bool = False, eab_kid: str | None = None, eab_hmac_key: str | None = None,
            register_if_missing: bool = True) -> tuple[Acme, Account]:
    """An Acme client signed in with this server's stored account (registered on first use)."""
    account = store.load(server)
    if account is None:
        if not register_if_missing:
            raise AcmeError(f"no account for {server} is stored; run `ssa-admin account "
                            f"register --server {server}`")
        with store.lock(server):
            account = store.load(server)  # registered by another process meanwhile?
            if account is None:
                key = generate_key("ec-p256")
                acme = Acme(server, key, ca_bundle=ca_bundle)
                try:
                    account = register(acme, store, key, email=email, agree_tos=agree_tos,
                                       eab_kid=eab_kid, eab_hmac_key=eab_hmac_key)
                except BaseException:
                    acme.close()
                    raise
                return acme, account
    if account.status != "valid":
        raise AcmeError(
            f"the ACME account {account.uri} is {account.status} (its files are kept in "
            f"{account.folder}); register a new one with `ssa-admin account register "
            f"--server {server}`")
    with store.lock(server):
        return open_account(server, store, ca_bundle=ca_bundle)


def open_account(server: str, store: AccountStore, *, ca_bundle: str | None
                 ) -> tuple[Acme, Account]:
    """A client signed in with the stored account, whatever its status.

    The caller holds ``store.lock(server)``: a rollover left unfinished by a
    killed process is settled here first (`settle_rollover`).
    """
    account = store.load(server)
    if account is None:
        raise AcmeError(f"no account for {server} is stored; run `ssa-admin account "
                        f"register --server {server}`")
    acme = Acme(server, account.key, ca_bundle=ca_bundle, account=account.regr)
    try:
        if account.next_key_path.exists():
            settle_rollover(acme, store, account)
    except BaseException:
        acme.close()
        raise
    return acme, account


# -- operations on an account the CA knows ---------------------------------------------------

class _Json(jose.JSONDeSerializable):
    """A JWS payload that is exactly this JSON object (RFC 8555 section 7.3)."""

    def __init__(self, doc: object) -> None:
        self.doc = doc

    def to_partial_json(self) -> object:
        return self.doc

    @classmethod
    def from_json(cls, jobj: object) -> _Json:
        return cls(jobj)


def _post(acme: Acme, url: str, payload: _Json | None, *, context: str) -> Any:
    """A JWS POST (``None``: POST-as-GET, RFC 8555 section 6.3) signed by acme.net's key."""
    response = acme.call(acme.net.post, url, payload, new_nonce_url=acme.directory["newNonce"],
                         context=context)
    try:
        return response.json()
    except ValueError:  # keyChange answers 200 with no body at Pebble (RFC 8555 names none)
        return {}


def _use_key(acme: Acme, key: jose.JWK) -> None:
    acme.net.key = key
    acme.net.alg = signing_alg(key)


def query(acme: Acme, account: Account) -> dict[str, Any]:
    """The account as the CA sees it: POST-as-GET on the account URL (RFC 8555 section 7.3).

    Returns ``{"status", "contact", "orders", "key_thumbprint"}`` (absent fields: None).
    A CA answers nothing signed by a deactivated account (RFC 8555 section 7.3.6),
    only an ``unauthorized`` problem; when its detail says "deactivated" (Boulder
    and Pebble do) that is the answer: status "deactivated".
    """
    try:
        doc = _post(acme, account.uri, None, context="reading the account from the CA")
    except ProblemError as exc:
        if exc.kind == "unauthorized" and "deactivated" in str(exc.problem.get("detail", "")):
            return {"status": "deactivated", "contact": [], "orders": None,
                    "key_thumbprint": None}
        raise
    return _live(doc)


def _live(doc: Any) -> dict[str, Any]:
    doc = doc if isinstance(doc, dict) else {}
    key = doc.get("key")
    try:
        thumb = thumbprint_of(jose.JWK.from_json(key)) if isinstance(key, dict) else None
    except jose.DeserializationError:
        thumb = None
    contact = doc.get("contact") or []
    return {"status": doc.get("status"),
            "contact": [str(c) for c in contact] if isinstance(contact, list) else [],
            "orders": doc.get("orders"), "key_thumbprint": thumb}


def sync(store: AccountStore, account: Account, live: dict[str, Any]) -> bool:
    """Record what the CA says (status, contact) in the stored account; True if it changed."""
    status = str(live.get("status") or account.status)
    contact = tuple(live.get("contact") or ()) if status != "deactivated" else account.contact
    if (status, contact) == (account.status, account.contact):
        return False
    account.status, account.contact = status, contact
    store.save(account)
    return True


def update_contact(acme: Acme, store: AccountStore, account: Account,
                   contact: Sequence[str]) -> Account:
    """Replace the account's contact URLs (an empty list removes them; RFC 8555 section 7.3.2)."""
    doc = _post(acme, account.uri, _Json({"contact": list(contact)}),
                context="updating the account's contact")
    live = _live(doc)
    # the CA's answer is the account as it now is; a CA that echoes nothing gets ours
    account.contact = tuple(live["contact"]) if "contact" in doc else tuple(contact)
    store.save(account)
    return account


def deactivate(acme: Acme, store: AccountStore, account: Account) -> Account:
    """Deactivate the account at the CA (RFC 8555 section 7.3.6); keep its files, marked so.

    The CA accepts nothing signed by the account afterwards; there is no undo.
    """
    doc = _post(acme, account.uri, _Json({"status": "deactivated"}),
                context="deactivating the account")
    account.status = str(_live(doc)["status"] or "deactivated")
    store.save(account)
    return account


def rollover(acme: Acme, store: AccountStore, account: Account, new_key: jose.JWK) -> Account:
    """Change the account key (RFC 8555 section 7.3.5); hold ``store.lock`` around it.

    The outer JWS is signed by the old key (kid = the account URL), the inner
    one by the new key (jwk, url, no nonce) over ``{"account", "oldKey"}``.
    The new key is on disk (``key.pem.next``) before the CA hears of it; on
    success ``key.pem`` becomes ``key.pem.previous`` and the new key
    ``key.pem``, and ``acme`` signs with the new key from then on.
    """
    if account.next_key_path.exists():
        settle_rollover(acme, store, account)
    if thumbprint_of(new_key) == account.thumbprint():
        raise AcmeError("the new account key is the current one")
    url = acme.directory["keyChange"]
    inner_payload = json.dumps({"account": account.uri,
                                "oldKey": account.key.public_key().to_partial_json()}).encode()
    inner = acme_jws.JWS.sign(inner_payload, key=new_key, alg=signing_alg(new_key), nonce=None,
                              url=url)
    fsutil.replace_file(account.next_key_path, _pem(new_key), 0o600)
    try:
        _post(acme, url, _Json(inner.to_partial_json()), context="changing the account key")
    except AcmeError as exc:
        # even a refusal may follow a first attempt that the CA carried out (Acme.call
        # retries a request whose answer was lost): ask which key it holds before
        # forgetting the new one
        try:
            outcome = settle_rollover(acme, store, account)
        except AcmeError:
            raise AcmeError(
                f"{exc}\n  the CA may or may not have switched to the new key, kept in "
                f"{account.next_key_path}; the next `ssa-admin account` or `cert` command on "
                "this server finds out which key the CA holds") from None
        if outcome == "finished":
            return account
        raise
    # a 200 is no proof: Pebble answers 200 to a new key that another account holds and
    # keeps the old key. The account must answer to the new key.
    if settle_rollover(acme, store, account, new_first=True) != "finished":
        raise AcmeError("changing the account key: the CA said yes but still holds the old "
                        "key; nothing was changed (is the new key another account's?)")
    return account


def _finish_rollover(acme: Acme, store: AccountStore, account: Account, new_key: jose.JWK
                     ) -> None:
    account.key = new_key
    store.save(account, key_changed=True)  # key.pem -> key.pem.previous, new -> key.pem
    account.next_key_path.unlink(missing_ok=True)
    fsutil.fsync_dir(account.folder)
    _use_key(acme, new_key)


def settle_rollover(acme: Acme, store: AccountStore, account: Account, *,
                    new_first: bool = False) -> str:
    """With ``key.pem.next`` on disk (a rollover under way or interrupted): which key does
    the CA hold? Asks with each key in turn (the new one first if ``new_first``).

    Returns "finished" (the CA had switched: the new key is now ``key.pem``) or
    "discarded" (the CA still holds the old key; the unused new key is deleted).
    """
    try:
        new_key = _load_key(account.next_key_path.read_bytes())
    except (ValueError, AcmeError):
        account.next_key_path.unlink(missing_ok=True)  # a torn write: never sent to the CA
        return "discarded"
    tries = [(account.key, "discarded"), (new_key, "finished")]
    for key, outcome in reversed(tries) if new_first else tries:
        _use_key(acme, key)
        try:  # not query(): a deactivated account's refusal says nothing about the key
            live = _live(_post(acme, account.uri, None, context="asking the CA for its key"))
        except ProblemError:
            continue
        if live["key_thumbprint"] not in (None, thumbprint_of(key)):
            continue
        if outcome == "finished":
            _finish_rollover(acme, store, account, new_key)
        else:
            account.next_key_path.unlink(missing_ok=True)
        return outcome
    _use_key(acme, account.key)
    raise AcmeError(f"the CA accepts neither {account.key_path} nor {account.next_key_path} for "
                    f"the account {account.uri}; it may have been deactivated")
