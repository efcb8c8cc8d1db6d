"""ACME accounts on disk: one per ACME server, its key 0600.

Layout (``STATE/accounts/HOST/ID/``, ID = the first 12 hex digits of the
SHA-256 of the directory URL, so two directories on one host stay apart)::

    key.pem        the account key, 0600 (PKCS#8 PEM)
    account.json   {"server", "uri", "contact", "created", "status", "key_type"}

Both files are replaced atomically (temporary file, fsync, rename). Key
rollover (RFC 8555 section 7.3.5) writes the new key only after the CA has
accepted it, and keeps the previous key as ``key.pem.previous`` (0600) so an
interrupted rollover can be repaired by hand.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import josepy as jose
from acme import jws as acme_jws
from acme import messages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ssa_engine.store import fsutil, iso

from .client import Acme, signing_alg
from .errors import AcmeError

#: account key types (``account register --key-type``); ES256 is what CAs expect
ACCOUNT_KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")


def generate_key(kind: str) -> jose.JWK:
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
    def regr(self) -> messages.RegistrationResource:
        return messages.RegistrationResource(
            uri=self.uri, body=messages.Registration(contact=self.contact))

    def thumbprint(self) -> str:
        return jose.b64encode(self.key.thumbprint()).decode()

    def to_json(self) -> dict[str, object]:
        return {"server": self.server, "uri": self.uri, "contact": list(self.contact),
                "status": self.status, "created": self.created, "folder": str(self.folder),
                "key_type": key_type_of(self.key), "thumbprint": self.thumbprint()}


def key_type_of(key: jose.JWK) -> str:
    raw = key.key
    if isinstance(raw, ec.EllipticCurvePrivateKey):
        return f"ec-p{raw.curve.key_size}"
    return f"rsa-{raw.key_size}"


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
        found = []
        for meta in sorted(self.root.glob("*/*/account.json")):
            try:
                server = json.loads(meta.read_text())["server"]
            except (OSError, ValueError, KeyError):
                continue
            account = self.load(server)
            if account is not None:
                found.append(account)
        return found

    def save(self, account: Account, *, key_changed: bool = False) -> None:
        for d in (self.root, account.folder.parent, account.folder):
            fsutil.ensure_dir(d)
        key_path = account.folder / "key.pem"
        if key_changed and key_path.exists():
            fsutil.replace_file(account.folder / "key.pem.previous", key_path.read_bytes(), 0o600)
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
    return account


def connect(server: str, store: AccountStore, *, ca_bundle: str | None, email: str | None = None,
            agree_tos: bool = False, eab_kid: str | None = None, eab_hmac_key: str | None = None,
            register_if_missing: bool = True) -> tuple[Acme, Account]:
    """An Acme client signed in with this server's stored account (registered on first use)."""
    account = store.load(server)
    if account is None:
        if not register_if_missing:
            raise AcmeError(f"no account for {server}; run `ssa-admin account register`")
        key = generate_key("ec-p256")
        acme = Acme(server, key, ca_bundle=ca_bundle)
        try:
            account = register(acme, store, key, email=email, agree_tos=agree_tos,
                               eab_kid=eab_kid, eab_hmac_key=eab_hmac_key)
        except BaseException:
            acme.close()
            raise
        acme.net.account = account.regr
        return acme, account
    if account.status != "valid":
        raise AcmeError(f"the account {account.uri} is {account.status}; register a new one "
                        f"after moving {account.folder} away")
    acme = Acme(server, account.key, ca_bundle=ca_bundle, account=account.regr)
    return acme, account


def rollover(acme: Acme, store: AccountStore, account: Account, new_key: jose.JWK) -> Account:
    """Change the account key (RFC 8555 section 7.3.5): inner JWS by the new key."""
    url = acme.directory["keyChange"]
    inner_payload = json.dumps({"account": account.uri,
                                "oldKey": account.key.public_key().to_partial_json()}).encode()
    # the inner JWS has jwk and url but no nonce (RFC 8555 section 7.3.5)
    inner = acme_jws.JWS.sign(inner_payload, key=new_key, alg=signing_alg(new_key), nonce=None,
                              url=url)

    class _Inner(jose.JSONDeSerializable):
        def to_partial_json(self) -> object:
            return inner.to_partial_json()

        @classmethod
        def from_json(cls, jobj: object) -> _Inner:  # pragma: no cover - never parsed
            raise NotImplementedError

    acme.call(acme.net.post, url, _Inner(), context="changing the account key")
    account.key = new_key
    store.save(account, key_changed=True)
    return account
