"""Renewing and revoking ACME certificates with what was recorded at issue.

**When a certificate is due.** If the CA's directory has ``renewalInfo``,
ACME Renewal Information (RFC 9773) decides: the CA suggests a window, and
the renewal time is one point of it (section 4.2 asks for a uniformly random
point; ours is derived from the certificate's ARI id, so it is spread like a
random one across certificates but stays the same from one run to the next,
and ``renew`` can say when a certificate will be renewed). A window that lies
in the past, a revoked certificate and an expired one are due at once. Without
ARI, or when the CA cannot answer it, a certificate is due when one third of
its lifetime is left (30 days of a 90-day certificate, 2 days of a 6-day one).

**Renewing** repeats the order of the current version: same server, account,
``--ca-bundle``, challenge and its settings (ports, webroot, DNS hook), key
type, ACME profile and preferred chain, with a new key, and ``replaces`` set to
the old certificate's ARI id (RFC 9773 section 5) so that the CA can exempt the
order from rate limits and knows the old certificate is superseded. The store
keeps the old version current until the new one is complete (``order.issue``).

The CLI (``ssa_admin/cli/cert_renew.py``) supplies the responder for a
challenge and the deploy-hook runner; this module holds no terminal I/O.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ssa_engine.store import AcmeMeta, LockTimeout, Store, StoreError, Version, iso

from .accounts import Account, AccountStore, connect
from .client import STAGING, Acme
from .errors import AcmeError, ProblemError, explain, short_type
from .order import IssueRequest, Progress, issue
from .responders import Responder

#: revocation reasons a subscriber may give (RFC 5280 section 5.3.1; the ones Let's
#: Encrypt accepts). cACompromise, certificateHold, removeFromCRL, privilegeWithdrawn
#: and aACompromise are for CAs, not for the holder of a certificate.
REVOCATION_REASONS = {
    "unspecified": 0,
    "keyCompromise": 1,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
}

#: the options ``order.issue`` writes itself (from the responder and the request);
#: every other key of ``AcmeMeta.options`` is carried over to the renewed version
_ISSUE_OPTIONS = frozenset({"http_port", "tls_port", "webroot", "dns_hook", "via", "key_type",
                            "domains", "preferred_chain", "revoked", "revocation_reason",
                            "dns_server", "dns_zone", "dns_tsig_key", "dns_propagation_timeout"})

ResponderFor = Callable[[AcmeMeta], Responder]
HookRunner = Callable[[tuple[str, ...], str, Version], list[str]]


# -- when ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Due:
    """When a certificate should be renewed, and why then."""

    when: dt.datetime
    #: ``ari`` (the CA's window), ``lifetime`` (one third left), ``expired``, ``revoked``
    source: str
    window: tuple[dt.datetime, dt.datetime] | None = None
    explanation_url: str | None = None
    #: ask the CA again no sooner than this (the ARI response's Retry-After)
    next_check: dt.datetime | None = None
    #: why ARI was not used although the CA offers it
    note: str | None = None

    def is_due(self, now: dt.datetime) -> bool:
        return now >= self.when

    def describe(self) -> str:
        if self.source == "ari" and self.window:
            text = f"ARI window {_short(self.window[0])} to {_short(self.window[1])}"
            if self.explanation_url:
                text += f", see {self.explanation_url}"
            return text
        return {"lifetime": "one third of the lifetime left", "expired": "expired",
                "revoked": "revoked"}.get(self.source, self.source)

    def to_json(self) -> dict[str, Any]:
        return {"due": iso(self.when), "source": self.source,
                "window": [iso(t) for t in self.window] if self.window else None,
                "explanation_url": self.explanation_url,
                "next_check": iso(self.next_check) if self.next_check else None,
                "note": self.note}


def _short(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def lifetime_due(not_before: dt.datetime, not_after: dt.datetime) -> dt.datetime:
    """When one third of the lifetime is left (certbot's and lego's rule of thumb)."""
    return not_after - (not_after - not_before) / 3


def point_in_window(start: dt.datetime, end: dt.datetime, cert_id: str) -> dt.datetime:
    """A point of the window, uniform over certificates and stable for one certificate."""
    digest = hashlib.sha256(cert_id.encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    return start + (end - start) * fraction


def parse_renewal_info(doc: Any) -> tuple[dt.datetime, dt.datetime, str | None]:
    """``suggestedWindow`` (RFC 9773 section 4.2) -> (start, end, explanationURL)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("suggestedWindow"), dict):
        raise ValueError("no suggestedWindow object")
    window = doc["suggestedWindow"]
    try:
        start = dt.datetime.fromisoformat(str(window["start"]).replace("Z", "+00:00"))
        end = dt.datetime.fromisoformat(str(window["end"]).replace("Z", "+00:00"))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"suggestedWindow: {exc}") from None
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("suggestedWindow: times without a time zone")
    if end < start:  # section 4.2: such a window is invalid
        raise ValueError("suggestedWindow ends before it starts")
    url = doc.get("explanationURL")
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC), url if isinstance(url, str) else None


def fetch_window(acme: Acme, cert_id: str, name: str
                 ) -> tuple[dt.datetime, dt.datetime, str | None, dt.datetime | None]:
    """GET the certificate's renewalInfo resource (RFC 9773 section 4.1); AcmeError/ValueError."""
    from .client import retry_after

    url = acme.directory["renewalInfo"].rstrip("/") + "/" + cert_id
    response = acme.call(acme.net.get, url, content_type="application/json",
                         context=f"{name}: reading the renewal information")
    try:
        doc = response.json()
    except ValueError:
        raise ValueError("the renewal information is not JSON") from None
    start, end, explanation = parse_renewal_info(doc)
    return start, end, explanation, retry_after(response)


def has_ari(acme: Acme) -> bool:
    try:
        acme.directory["renewalInfo"]
    except KeyError:
        return False
    return True


def due_time(version: Version, acme: Acme | None, now: dt.datetime) -> Due:
    """When ``version`` should be renewed (see the module's docstring)."""
    meta = version.meta
    revoked = meta.acme.options.get("revoked") if meta.acme else None
    if revoked:
        return Due(now, "revoked", note=f"revoked on {revoked}")
    if meta.not_after <= now:  # RFC 9773 section 4.3: never ask ARI about an expired one
        return Due(meta.not_after, "expired")
    fallback = lifetime_due(meta.not_before, meta.not_after)
    cert_id = meta.acme.ari_cert_id if meta.acme else None
    if acme is None or not cert_id or not has_ari(acme):
        return Due(fallback, "lifetime")
    try:
        start, end, explanation, next_check = fetch_window(acme, cert_id, version.name)
    except (AcmeError, ValueError) as exc:
        return Due(fallback, "lifetime", note=f"the CA's renewal information is unusable "
                   f"({str(exc).splitlines()[0]}); using one third of the lifetime")
    return Due(point_in_window(start, end, cert_id), "ari", (start, end), explanation,
               next_check)


# -- results ------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What happened to one certificate."""

    name: str
    #: ``renewed``, ``not due``, ``failed``, ``dry run``
    status: str
    due: Due | None = None
    reason: str | None = None
    version: Version | None = None  # the new version (renewed, dry run: in a temporary store)
    previous: int | None = None  # the version that was current before
    server: str | None = None  # the directory the order went to
    replaces: str | None = None  # the ARI id sent as ``replaces``
    forced: bool = False  # renewed (or tried) before it was due
    notes: list[str] = field(default_factory=list)
    hook_failures: list[str] = field(default_factory=list)
    steps: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status != "failed" and not self.hook_failures

    def to_json(self) -> dict[str, Any]:
        v = self.version
        renewed = self.status == "renewed" and v is not None
        return {
            "name": self.name, "status": self.status, "reason": self.reason,
            **(self.due.to_json() if self.due else {"due": None}),
            # the version current after the run, and the one it replaced
            "version": v.number if renewed and v else self.previous,
            "renewed_from": self.previous if renewed else None,
            "not_after": iso(v.meta.not_after) if renewed and v else None,
            "test_not_after": iso(v.meta.not_after) if v and self.status == "dry run" else None,
            "server": self.server, "replaces": self.replaces, "forced": self.forced,
            "notes": self.notes,
            "deploy_hook_failures": self.hook_failures, "steps": self.steps,
        }


def problem_of(exc: AcmeError, acme: Acme | None) -> dict[str, Any] | None:
    """The ACME problem document behind ``exc``, if there is one.

    The acme library turns every HTTP 409 into a ConflictError without its problem
    document (to it, 409 meant "the account exists"), and ``alreadyReplaced`` comes
    with a 409 (RFC 9773 section 5): when the error carries no problem, the last
    response is read.
    """
    if isinstance(exc, ProblemError):
        return exc.problem
    response = acme.net.last_response if acme is not None else None
    if response is None or not response.headers.get("Content-Type", "").startswith(
            "application/problem+json"):
        return None
    try:
        doc = response.json()
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


# -- renewing -----------------------------------------------------------------------------
class Renewer:
    """Renews the ACME certificates of one store; one instance per ``renew`` run.

    ACME clients are kept per (server, CA bundle), so ten certificates from one
    CA read its directory once.
    """

    def __init__(self, store: Store, accounts: AccountStore, *, responder_for: ResponderFor,
                 run_hooks: HookRunner, force: bool = False, dry_run: bool = False,
                 extra_hooks: Sequence[str] = (), now: Callable[[], dt.datetime] | None = None
                 ) -> None:
        self.store = store
        self.accounts = accounts
        self.responder_for = responder_for
        self.run_hooks = run_hooks
        self.force = force
        self.dry_run = dry_run
        self.extra_hooks = tuple(dict.fromkeys(extra_hooks))
        self.now = now or (lambda: dt.datetime.now(dt.UTC))
        self._clients: dict[tuple[str, str | None], tuple[Acme, Account]] = {}
        self._acme: Acme | None = None  # the client of the renewal under way

    def close(self) -> None:
        for acme, _ in self._clients.values():
            acme.close()
        self._clients.clear()

    def __enter__(self) -> Renewer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _client(self, server: str, ca_bundle: str | None, *, register: bool = False,
                email: str | None = None) -> tuple[Acme, Account]:
        key = (server, ca_bundle)
        if key not in self._clients:
            self._clients[key] = connect(server, self.accounts, ca_bundle=ca_bundle,
                                         email=email, agree_tos=register,
                                         register_if_missing=register)
        self._acme = self._clients[key][0]
        return self._clients[key]

    def candidates(self, names: Sequence[str]) -> list[Version | Outcome]:
        """The current version of each name (all ACME certificates when none is named).

        A name that cannot be renewed is an Outcome ``failed`` already.
        """
        if not names:
            found: list[Version | Outcome] = []
            for name in self.store.names():
                try:
                    v = self.store.current_version(name)
                except StoreError as exc:
                    found.append(Outcome(name, "failed", reason=str(exc)))
                    continue
                if v.meta.acme is not None:
                    found.append(v)
            return found
        out: list[Version | Outcome] = []
        for name in dict.fromkeys(n.lower() for n in names):
            try:
                v = self.store.current_version(name)
            except StoreError as exc:
                out.append(Outcome(name, "failed", reason=str(exc)))
                continue
            if v.meta.acme is None:
                out.append(Outcome(v.name, "failed", reason=(
                    f"{v.name} was {v.meta.source}ed, not issued through ACME; there is nothing "
                    "to renew it with (import its successor with `ssa-admin cert import`, or "
                    "issue one with `ssa-admin cert issue`)")))
                continue
            out.append(v)
        return out

    def renew(self, version: Version, progress: Progress) -> Outcome:
        """Renew one certificate if it is due (or forced); never raises for ACME/store errors."""
        outcome = Outcome(version.name, "failed", previous=version.number)
        try:
            self._renew(version, progress, outcome)
        except LockTimeout as exc:
            outcome.reason = (f"busy: {exc} Another ssa-admin is issuing or renewing it; "
                              "nothing was changed")
        except AcmeError as exc:
            problem = None if isinstance(exc, ProblemError) else problem_of(exc, self._acme)
            outcome.reason = explain(problem, str(exc).rstrip(": ")) if problem else str(exc)
        except (StoreError, ValueError) as exc:
            outcome.reason = str(exc)
        except OSError as exc:
            outcome.reason = f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
        finally:
            self._acme = None
        return outcome

    def _renew(self, version: Version, progress: Progress, outcome: Outcome) -> None:
        acme_meta = version.meta.acme
        assert acme_meta is not None
        now = self.now()
        acme, account = self._client(acme_meta.server, acme_meta.ca_bundle)
        outcome.due = due_time(version, acme, now)
        if outcome.due.note:
            outcome.notes.append(outcome.due.note)
        hooks = tuple(dict.fromkeys((*acme_meta.deploy_hooks, *self.extra_hooks)))
        if not (self.force or self.dry_run or outcome.due.is_due(now)):
            outcome.status = "not due"
            if hooks != acme_meta.deploy_hooks:
                self.store.update_acme(version.name,
                                       dataclasses.replace(acme_meta, deploy_hooks=hooks))
                outcome.notes.append("deploy hooks saved: " + "; ".join(
                    h for h in hooks if h not in acme_meta.deploy_hooks))
            return
        outcome.forced = not outcome.due.is_due(now)
        if self.dry_run:
            self._dry_run(version, acme_meta, account, progress, outcome)
            return
        replaces = None
        if acme_meta.ari_cert_id and has_ari(acme):
            if acme_meta.account and acme_meta.account != account.uri:
                outcome.notes.append(f"issued to the account {acme_meta.account}, renewed "
                                     f"with {account.uri}: no ARI replaces sent")
            else:
                replaces = acme_meta.ari_cert_id
        responder = self.responder_for(acme_meta)
        request = self._request(version, acme_meta, acme, responder, replaces, hooks, outcome)
        try:
            new = issue(acme, account, responder, request, self.store, progress)
        except AcmeError as exc:
            problem = problem_of(exc, acme)
            kind = short_type((problem or {}).get("type"))
            if not replaces:
                raise
            if kind == "alreadyReplaced":
                # An earlier order replaced this certificate (a renewal killed before it
                # was stored, or an older version made current again): the CA takes no
                # second replacement, but an ordinary order still works.
                outcome.notes.append(f"the CA says version {version.number} was already "
                                     "replaced by another order; renewed without ARI replaces")
            elif kind == "serverInternal" and getattr(exc, "context", "") == "placing the order":
                # The CA failed on the order itself, where the only thing out of the
                # ordinary is the link to the old certificate (Pebble does, when it has
                # not indexed that certificate's order yet): the renewal matters more.
                outcome.notes.append(f"the CA could not place an order replacing version "
                                     f"{version.number} ({(problem or {}).get('detail', '')}); "
                                     "renewed without ARI replaces")
            else:
                raise
            request.replaces = replaces = None
            new = issue(acme, account, self.responder_for(acme_meta), request, self.store,
                        progress)
        outcome.status = "renewed"
        outcome.version = new
        outcome.server = acme_meta.server
        outcome.replaces = replaces
        outcome.hook_failures = self.run_hooks(hooks, version.name, new)

    def _request(self, version: Version, acme_meta: AcmeMeta, acme: Acme, responder: Responder,
                 replaces: str | None, hooks: tuple[str, ...], outcome: Outcome) -> IssueRequest:
        options = acme_meta.options
        profile = acme_meta.profile
        offered = (acme.directory.meta.profiles if acme.directory.meta else None) or {}
        if profile and profile not in offered:
            # An unattended renewal must not let the certificate expire because the CA
            # retired a profile: take the CA's default and say so.
            outcome.notes.append(f"{acme.directory_url} no longer offers the profile "
                                 f"{profile!r}; renewed with the CA's default profile")
            profile = None
        domains = options.get("domains") or list(version.meta.domains)
        return IssueRequest(
            identifiers=list(domains), cert_name=version.name,
            key_type=str(options.get("key_type") or version.meta.key_type), profile=profile,
            preferred_chain=options.get("preferred_chain"), replaces=replaces,
            deploy_hooks=hooks, ca_bundle=acme_meta.ca_bundle,
            # what the responder records it records afresh (issue() lets request.options
            # win over the responder's, so stale values must not be passed on)
            options={k: v for k, v in options.items()
                     if k not in _ISSUE_OPTIONS and k not in responder.describe()})

    def _dry_run(self, version: Version, acme_meta: AcmeMeta, account: Account,
                 progress: Progress, outcome: Outcome) -> None:
        """A full issuance against the CA's staging directory into a throw-away store.

        ``replaces`` is never sent: against the production server (no staging known)
        it would mark the real certificate as replaced and make its real renewal fail.
        """
        server = STAGING.get(acme_meta.server, acme_meta.server)
        outcome.server = server
        if server != acme_meta.server:
            had_account = self.accounts.load(server) is not None
            email = next((c.removeprefix("mailto:") for c in account.contact
                          if c.startswith("mailto:")), None)
            acme, test_account = self._client(server, acme_meta.ca_bundle, register=True,
                                              email=email)
            if not had_account:
                outcome.notes.append(f"registered an account at the staging server {server} "
                                     f"(kept in {test_account.folder} for later dry runs)")
        else:
            acme, test_account = self._client(acme_meta.server, acme_meta.ca_bundle)
            outcome.notes.append(f"no staging server is known for {acme_meta.server}; the "
                                 "test certificate came from the server itself")
        responder = self.responder_for(acme_meta)
        request = self._request(version, acme_meta, acme, responder, None, (), outcome)

        def report(step: str, detail: str) -> None:
            if step == "stored":
                step, detail = "discarded", "the test certificate (nothing was stored)"
            progress(step, detail)

        with tempfile.TemporaryDirectory(prefix="ssa-dry-run-") as tmp:
            new = issue(acme, test_account, responder, request, Store(tmp), report)
            outcome.version = new
        outcome.status = "dry run"

    def reload_needed(self, outcomes: Sequence[Outcome]) -> bool:
        return not self.dry_run and any(o.status == "renewed" for o in outcomes)


# -- revoking -----------------------------------------------------------------------------
@dataclass
class Revocation:
    name: str
    serial: str
    reason: str
    server: str
    signed_with: str  # "account" or "certificate key"
    already: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "serial": self.serial, "reason": self.reason,
                "server": self.server, "signed_with": self.signed_with,
                "already_revoked": self.already, "revoked": True}


@contextlib.contextmanager
def _certificate_key_client(server: str, key_pem: bytes, ca_bundle: str | None
                            ) -> Iterator[Acme]:
    import josepy as jose
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = serialization.load_pem_private_key(key_pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        jwk: jose.JWK = jose.JWKEC(key=key)
    elif isinstance(key, rsa.RSAPrivateKey):
        jwk = jose.JWKRSA(key=key)
    else:  # the store accepts EC and RSA keys only
        raise AcmeError(f"cannot sign with a {type(key).__name__}")
    acme = Acme(server, jwk, ca_bundle=ca_bundle)
    try:
        yield acme
    finally:
        acme.close()


def revoke(store: Store, accounts: AccountStore, name: str, reason: str | None,
           now: dt.datetime | None = None) -> Revocation:
    """Revoke the current version of ``name`` at the CA that issued it (RFC 8555 section 7.6).

    Signed by the account recorded at issue; for ``keyCompromise`` by the
    certificate's own key instead, which proves possession of the key and works
    even when the account is lost. The revocation is recorded in the version's
    metadata, so that the next ``renew`` replaces the certificate at once.
    """
    entry = store.current(name)
    acme_meta = entry.meta.acme
    if acme_meta is None:
        raise AcmeError(f"{entry.name} was {entry.meta.source}ed, not issued through ACME; "
                        "revoke it through the CA that issued it")
    reason = reason or "unspecified"
    if reason not in REVOCATION_REASONS:
        raise ValueError(f"--reason: one of {', '.join(REVOCATION_REASONS)}")
    cert = x509.load_pem_x509_certificate(entry.cert_pem)
    result = Revocation(entry.name, entry.meta.serial, reason, acme_meta.server,
                        "certificate key" if reason == "keyCompromise" else "account")
    context = f"revoking {entry.name} (serial {entry.meta.serial})"
    try:
        if reason == "keyCompromise":
            with _certificate_key_client(acme_meta.server, entry.key_pem,
                                         acme_meta.ca_bundle) as acme:
                acme.call(acme.client.revoke, cert, REVOCATION_REASONS[reason], context=context)
        else:
            acme, _account = connect(acme_meta.server, accounts, ca_bundle=acme_meta.ca_bundle,
                                     register_if_missing=False)
            with acme:
                acme.call(acme.client.revoke, cert, REVOCATION_REASONS[reason], context=context)
    except ProblemError as exc:
        if exc.kind != "alreadyRevoked":
            raise
        result.already = True
    if result.already and acme_meta.options.get("revoked"):
        return result  # recorded by the revocation that did it
    options = {**acme_meta.options, "revoked": iso(now or dt.datetime.now(dt.UTC)),
               "revocation_reason": reason}
    with store.lock(entry.name) as lock:
        if store.current_version(entry.name).number == entry.version.number:
            store.update_acme(entry.name, dataclasses.replace(acme_meta, options=options),
                              lock=lock)
    return result
