"""OCSP stapling for listeners: fetch, validate, cache, refresh, staple.

Theory of operation: when a listener starts (or its store certificates are
renewed), :meth:`Stapler.attach` looks at each of its certificates. One
whose leaf names an ``http://`` OCSP responder and whose chain holds its
issuer gets an entry, shared by every listener serving the same
certificate, with a background task that fetches a response, validates it
exactly as a client would (:func:`.revstatus.validate_ocsp`) and fetches
again halfway to its nextUpdate (between ``MIN_REFRESH`` and
``MAX_REFRESH``), or after a growing pause when the responder fails.

OpenSSL asks for the staple during each handshake whose client sent
``status_request`` (``SSL_CTX_set_tlsext_status_cb``, called after the
certificate was chosen, so SNI and RSA/ECDSA selection are done). The
callback staples the entry's response only while it is current: a response
past its nextUpdate, a "revoked" or "unknown" one, or one that failed
validation is never sent (as nginx does); the client then checks on its own.

An entry lives while a listener's contexts use it (weak references): its
task ends at its next wake-up after the last listener closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from OpenSSL._util import ffi, lib

from .httpfetch import FetchError
from .revstatus import InvalidAnswer, Status, sources

if TYPE_CHECKING:
    from .revocation import Revocation
    from .servertls import ServerContexts

log = logging.getLogger("ssa.stapling")

#: seconds between fetches of a current response: half its remaining
#: validity, within these bounds
MIN_REFRESH = 10.0
MAX_REFRESH = 3600.0
#: seconds before the first retry after a failed fetch; doubled up to RETRY_MAX
RETRY_MIN = 5.0
RETRY_MAX = 600.0

_TLSEXT_ERR_OK = 0
_TLSEXT_ERR_NOACK = 3  # no staple in this handshake


@dataclass(eq=False)
class _Entry:
    leaf: x509.Certificate
    issuer: x509.Certificate
    responders: list[str]
    label: str
    der: bytes | None = None
    #: POSIX time at which ``der`` stops being current (its nextUpdate)
    until: float = 0.0
    failures: int = 0
    users: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet)
    task: asyncio.Task[None] | None = None

    def staple(self, now: float) -> bytes | None:
        return self.der if self.der is not None and now < self.until else None


class Stapler:
    """The OCSP responses the engine's listeners staple, by leaf fingerprint."""

    def __init__(self, revocation: Revocation) -> None:
        self._revocation = revocation
        self._entries: dict[bytes, _Entry] = {}
        self._sha256 = lib.EVP_get_digestbyname(b"sha256")
        # one callback for the engine's lifetime: contexts may outlive any listener
        self._callback = ffi.callback("int (*)(SSL *, void *)", self._on_status)

    def count(self) -> int:
        """Certificates with a current response to staple."""
        now = time.time()
        return sum(1 for e in self._entries.values() if e.staple(now) is not None)

    def attach(self, contexts: ServerContexts, enabled: bool) -> None:
        """Staple for the certificates of ``contexts`` that have a responder."""
        if not enabled:
            return
        stapled = False
        for cred in contexts.cfg.credentials:
            leaf = cred.chain[0]
            try:
                responders, _ = sources(leaf)
            except ValueError as exc:  # a malformed extension: serve, without staples
                log.warning("not stapling for %s: %s", leaf.subject.rfc4514_string(), exc)
                continue
            if not responders:
                continue
            label = leaf.subject.rfc4514_string()
            issuer = _issuer(leaf, cred.chain[1:])
            if issuer is None:
                log.info("not stapling for %s: its chain does not hold its issuer", label)
                continue
            fp = leaf.fingerprint(hashes.SHA256())
            entry = self._entries.get(fp)
            if entry is None:
                entry = _Entry(leaf, issuer, responders, label)
                self._entries[fp] = entry
                entry.task = asyncio.get_running_loop().create_task(self._run(fp, entry))
            entry.users.add(contexts)
            stapled = True
        if stapled:
            for group in contexts.groups:
                lib.SSL_CTX_set_tlsext_status_cb(group.ctx._context, self._callback)  # noqa: SLF001

    async def _run(self, fp: bytes, entry: _Entry) -> None:
        try:
            while entry.users:
                await asyncio.sleep(await self._refresh(entry))
        finally:
            if self._entries.get(fp) is entry:
                del self._entries[fp]

    async def _refresh(self, entry: _Entry) -> float:
        """Fetch a response for ``entry``; return the seconds until the next fetch."""
        problems = []
        for url in entry.responders:
            try:
                answer, der = await self._revocation.ask_responder(url, entry.leaf, entry.issuer)
            except (FetchError, InvalidAnswer) as exc:
                problems.append(f"{url}: {exc}")
                continue
            entry.failures = 0
            if answer.status is Status.REVOKED:
                entry.der = None
                log.error("not stapling for %s: %s", entry.label, answer.describe(entry.leaf))
                return MAX_REFRESH
            entry.der, entry.until = der, answer.valid_until.timestamp()
            log.info("stapling an OCSP response for %s from %s, current until %s", entry.label,
                     url, answer.valid_until.isoformat(timespec="seconds"))
            return min(max((entry.until - time.time()) / 2, MIN_REFRESH), MAX_REFRESH)
        entry.failures += 1
        delay = min(RETRY_MIN * 2 ** (entry.failures - 1), RETRY_MAX)
        kept = "keeping the current one" if entry.staple(time.time()) else "stapling nothing"
        log.warning("no OCSP response to staple for %s (%s); %s, retrying in %g s", entry.label,
                    "; ".join(problems), kept, delay)
        return delay

    def _on_status(self, ssl: Any, arg: Any) -> int:
        # Called by OpenSSL inside a server handshake: never raise.
        try:
            cert = lib.SSL_get_certificate(ssl)
            if cert == ffi.NULL:
                return _TLSEXT_ERR_NOACK
            digest = ffi.new("unsigned char[]", 64)
            size = ffi.new("unsigned int *")
            if lib.X509_digest(cert, self._sha256, digest, size) != 1:
                lib.ERR_clear_error()
                return _TLSEXT_ERR_NOACK
            entry = self._entries.get(bytes(ffi.buffer(digest, size[0])))
            der = entry.staple(time.time()) if entry is not None else None
            if der is None:
                return _TLSEXT_ERR_NOACK
            buf = lib.OPENSSL_malloc(len(der))  # OpenSSL frees it with the connection
            if buf == ffi.NULL:
                return _TLSEXT_ERR_NOACK
            ffi.memmove(buf, der, len(der))
            lib.SSL_set_tlsext_status_ocsp_resp(ssl, ffi.cast("unsigned char *", buf), len(der))
            return _TLSEXT_ERR_OK
        except Exception:  # noqa: BLE001 - an exception must not cross into OpenSSL
            log.exception("OCSP stapling callback failed")
            return _TLSEXT_ERR_NOACK


def _issuer(leaf: x509.Certificate, rest: tuple[x509.Certificate, ...]) -> x509.Certificate | None:
    for c in rest:
        try:
            leaf.verify_directly_issued_by(c)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return c
    return None
