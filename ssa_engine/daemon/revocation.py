"""Is the server's certificate revoked? The client check after a verified handshake.

Theory of operation: the engine asks for a stapled OCSP response in the
ClientHello (``status_request``) when the socket's checks use staples. Once
the handshake has verified the chain and the host name,
:meth:`Revocation.check_server` looks for an answer about the leaf
certificate, in this order, and stops at the first trustworthy one:

1. the stapled OCSP response, if the server sent one;
2. the OCSP cache (answers from responders and from earlier staples);
3. the OCSP responders named in the certificate's AIA extension (an HTTP
   POST of a DER request);
4. per CRL distribution point: the CRL cache, then the CRL (HTTP GET).

"Revoked" fails the connection with EPROTO and a ``certificate revoked``
text. When no source gives an answer (responder down, stale staple, CRL
unreachable), the policy's mode decides: soft logs and continues, hard
refuses. A certificate that names no responder and no CRL, and came with no
staple, has nothing to check: it passes (short-lived certificates and many
private CAs are like that). A resumed session is checked too (it brings no
chain and no staple: the leaf is checked against the issuer its full
handshake was verified with, mostly from the cache), so that a session
cannot outlive a revocation the engine knows of.

Answers are cached engine-wide until their nextUpdate: OCSP by issuer key
and serial, CRLs by URL; both caches are bounded. Concurrent connections
that need the same fetch share one, and a source that just failed is not
asked again for ``RETRY_AFTER_FAILURE`` seconds, so that a dead responder
costs one timeout, not one per connection. Validation is in
:mod:`.revstatus`, HTTP in :mod:`.httpfetch`, server stapling in
:mod:`.stapling`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cryptography import x509
from OpenSSL import SSL, crypto
from OpenSSL._util import ffi, lib

from ..policy.enforce import RevocationSettings
from . import fastio
from .httpfetch import FetchError, fetch
from .options import ApiError
from .revstatus import (
    INDEX_BYTES_PER_ENTRY,
    Answer,
    InvalidAnswer,
    Status,
    check_crl,
    crl_answer,
    crl_serials,
    key_id,
    load_crl,
    ocsp_request,
    sources,
    validate_ocsp,
)
from .stapling import Stapler

log = logging.getLogger("ssa.revocation")

#: Security parameter: the largest OCSP response accepted (stapled or fetched).
MAX_OCSP_RESPONSE = 64 * 1024
#: Security parameter: seconds all the fetches of one check may take together
#: (each one also has httpfetch.FETCH_TIMEOUT); past it there is no answer.
CHECK_DEADLINE = 10.0
#: Security parameter: the largest CRL fetched.
MAX_CRL_SIZE = 16 * 1024 * 1024
#: Security parameter: OCSP answers kept in the cache.
MAX_OCSP_CACHE = 4096
#: Security parameter: bytes of CRLs kept in the cache, with their serial-number
#: indexes (about four times the CRL's own size: revstatus.INDEX_BYTES_PER_ENTRY).
MAX_CRL_CACHE_BYTES = 128 * 1024 * 1024
#: Security parameter: seconds a source that failed is not asked again.
RETRY_AFTER_FAILURE = 10.0
#: Security parameter: issuers remembered for resumed sessions.
MAX_ISSUERS = 4096
#: Security parameter: sources remembered as failed.
MAX_FAILURES_REMEMBERED = 1024

T = TypeVar("T")


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def stapled_response(conn: SSL.Connection) -> bytes | None:
    """The OCSP response the server stapled, if any (the bindings cryptography ships)."""
    ptr = ffi.new("unsigned char **")
    n = lib.SSL_get_tlsext_status_ocsp_resp(conn._ssl, ptr)  # noqa: SLF001
    if n <= 0 or ptr[0] == ffi.NULL:
        return None
    return bytes(ffi.buffer(ptr[0], n))


@dataclass(slots=True)
class _CachedCrl:
    crl: x509.CertificateRevocationList
    size: int
    valid_until: dt.datetime
    #: key ids of the issuers it was checked against (signature, scope, time)
    checked_for: set[bytes] = field(default_factory=set)
    #: the serial numbers it lists (revstatus.crl_serials)
    serials: frozenset[int] | None = None


class Revocation:
    """Engine-wide revocation state: caches, shared fetches, the stapler."""

    def __init__(self) -> None:
        self.ocsp_cache: OrderedDict[tuple[bytes, int], Answer] = OrderedDict()
        self.crl_cache: OrderedDict[str, _CachedCrl] = OrderedDict()
        self.crl_bytes = 0
        self.failed: OrderedDict[str, tuple[float, str]] = OrderedDict()
        #: leaf fingerprint -> its issuers (the rest of its verified chain), for
        #: resumed sessions, which have no chain
        self.issuers: OrderedDict[bytes, list[crypto.X509]] = OrderedDict()
        self._inflight: dict[object, asyncio.Future[Any]] = {}
        #: fetches made (for status and tests): "ocsp", "crl"
        self.fetches = {"ocsp": 0, "crl": 0}
        self.stapler = Stapler(self)

    # -- the client check -----------------------------------------------------------
    async def check_server(self, conn: SSL.Connection, rs: RevocationSettings, policy_source: str,
                           who: str) -> None:
        """Raise ApiError(EPROTO) if the server's certificate is revoked (or, with
        ``revocation.scope: chain``, an intermediate CA's), or if no answer can be
        had and the policy says hard; return otherwise."""
        if not rs.checks:
            return
        found = self._chain(conn)
        if found is None:
            return
        chain = [c.to_cryptography() for c in found]
        # the last certificate is the trust anchor (or the one the store vouches for)
        last = len(chain) - 1 if rs.chain else 1
        for i in range(last):
            await self._check_one(conn if i == 0 else None, chain[i], chain[i + 1], rs,
                                  policy_source, who, "" if i == 0 else "intermediate CA ")

    async def _check_one(self, conn: SSL.Connection | None, cert: x509.Certificate,
                         issuer: x509.Certificate, rs: RevocationSettings, policy_source: str,
                         who: str, what: str) -> None:
        """Check one certificate of the chain (``conn``: the leaf's, for its staple)."""
        problems: list[str] = []
        answer = None
        if conn is not None and rs.ocsp_stapling:
            answer = self._staple_answer(conn, cert, issuer, problems)
        if answer is None and rs.cache:
            answer = self._cached_ocsp(cert, issuer)
        if answer is None:
            try:
                responders, crls = sources(cert)
            except ValueError as exc:  # cryptography reads extensions more strictly than OpenSSL
                responders, crls = [], []
                problems.append(f"its revocation extensions cannot be read ({exc})")
            if not (responders or crls or problems):
                log.debug("%s: %s names no OCSP responder or CRL", who,
                          cert.subject.rfc4514_string())
                return
            try:
                async with asyncio.timeout(CHECK_DEADLINE):
                    answer = await self._ask(cert, issuer, responders, crls, rs, problems)
            except TimeoutError:
                problems.append(f"no answer within {CHECK_DEADLINE:g} s")
        if answer is not None:
            log.debug("%s: %s is %s according to the %s", who, cert.subject.rfc4514_string(),
                      answer.status.value, answer.source)
            if answer.status is Status.REVOKED:
                raise ApiError(errno.EPROTO, what + answer.describe(cert))
            return
        message = f"{what}certificate revocation status unknown: " + "; ".join(problems)
        if what:
            message += f" ({cert.subject.rfc4514_string()})"
        if rs.hard:
            raise ApiError(errno.EPROTO, f"{message} (the {policy_source} requires an answer: "
                           "revocation.mode hard)")
        log.warning("%s: %s; continuing (revocation.mode soft)", who, message)

    def _staple_answer(self, conn: SSL.Connection, cert: x509.Certificate,
                       issuer: x509.Certificate, problems: list[str]) -> Answer | None:
        staple = stapled_response(conn)
        if staple is None:
            return None
        try:
            if len(staple) > MAX_OCSP_RESPONSE:
                raise InvalidAnswer(f"larger than {MAX_OCSP_RESPONSE} bytes")
            answer = validate_ocsp(staple, cert, issuer, now_utc(), "stapled OCSP response")
        except InvalidAnswer as exc:
            problems.append(f"stapled OCSP response not trusted: {exc}")
            return None
        self._remember_ocsp(cert, issuer, answer)
        return answer

    async def _ask(self, cert: x509.Certificate, issuer: x509.Certificate, responders: list[str],
                   crls: list[str], rs: RevocationSettings, problems: list[str]) -> Answer | None:
        """The OCSP responders, then the CRLs: the first answer, or None."""
        if responders and not rs.ocsp:
            problems.append("OCSP checks are off")
        for url in responders if rs.ocsp else ():
            answer = await self._source(url, problems, self._ask_responder, url, cert, issuer)
            if answer is not None:
                return answer
        if crls and not rs.crl:
            problems.append("CRL checks are off")
        for url in crls if rs.crl else ():
            answer = await self._source(url, problems, self._crl_answer, url, cert, issuer,
                                        rs.cache)
            if answer is not None:
                return answer
        return None

    def _chain(self, conn: SSL.Connection) -> list[crypto.X509] | None:
        """The server's verified chain (leaf first), None when there is nothing to check.

        A resumed session carries no chain (and no staple): its leaf is checked
        with the issuers that this engine saw when the session's full handshake
        was verified. Only sockets that check need them: the client session
        cache keys sessions by the revocation settings too, so a checking
        socket only resumes sessions that a checking socket made, and noted.
        """
        chain = conn.get_verified_chain()
        if chain is not None and len(chain) >= 2:
            fp = fastio.cert_sha256(chain[0])
            self.issuers[fp] = chain[1:]
            self.issuers.move_to_end(fp)
            while len(self.issuers) > MAX_ISSUERS:
                self.issuers.popitem(last=False)
            return chain
        if not fastio.session_reused(conn):
            return None  # a trusted self-signed certificate: no issuer to ask
        leaf = conn.get_peer_certificate()
        if leaf is None:
            return None
        issuers = self.issuers.get(fastio.cert_sha256(leaf))
        if issuers is None:
            log.info("resumed session with %s: its issuer is no longer known; not checked",
                     fastio.peer_subject_oneline(conn))
            return None
        return [leaf, *issuers]

    async def _source(self, url: str, problems: list[str],
                      ask: Callable[..., Awaitable[Answer]], *args: Any) -> Answer | None:
        """Ask one source; None (and a line in ``problems``) when it gives no answer."""
        failed = self.failed.get(url)
        if failed is not None and failed[0] > time.monotonic():
            problems.append(f"{url}: {failed[1]} (failed less than {RETRY_AFTER_FAILURE:g} s ago)")
            return None
        try:
            return await ask(*args)
        except (FetchError, InvalidAnswer) as exc:
            problems.append(f"{url}: {exc}")
            self.failed[url] = (time.monotonic() + RETRY_AFTER_FAILURE, str(exc))
            self.failed.move_to_end(url)
            while len(self.failed) > MAX_FAILURES_REMEMBERED:
                self.failed.popitem(last=False)
            return None

    # -- OCSP -------------------------------------------------------------------------
    async def ask_responder(self, url: str, cert: x509.Certificate,
                            issuer: x509.Certificate) -> tuple[Answer, bytes]:
        """Fetch and validate a fresh OCSP response: the answer and its DER."""
        self.fetches["ocsp"] += 1
        der = await fetch(url, limit=MAX_OCSP_RESPONSE, body=ocsp_request(cert, issuer),
                          content_type="application/ocsp-request",
                          accept="application/ocsp-response")
        answer = validate_ocsp(der, cert, issuer, now_utc(), f"OCSP responder {url}")
        self._remember_ocsp(cert, issuer, answer)
        return answer, der

    async def _ask_responder(self, url: str, cert: x509.Certificate,
                             issuer: x509.Certificate) -> Answer:
        key = ("ocsp", url, key_id(issuer), cert.serial_number)
        answer, _ = await self._shared(key, lambda: self.ask_responder(url, cert, issuer))
        return answer

    def _cached_ocsp(self, cert: x509.Certificate, issuer: x509.Certificate) -> Answer | None:
        key = (key_id(issuer), cert.serial_number)
        answer = self.ocsp_cache.get(key)
        if answer is None:
            return None
        if answer.valid_until <= now_utc():
            del self.ocsp_cache[key]
            return None
        self.ocsp_cache.move_to_end(key)
        return answer

    def _remember_ocsp(self, cert: x509.Certificate, issuer: x509.Certificate,
                       answer: Answer) -> None:
        key = (key_id(issuer), cert.serial_number)
        self.ocsp_cache[key] = answer
        self.ocsp_cache.move_to_end(key)
        while len(self.ocsp_cache) > MAX_OCSP_CACHE:
            self.ocsp_cache.popitem(last=False)

    # -- CRLs -------------------------------------------------------------------------
    async def _crl_answer(self, url: str, cert: x509.Certificate, issuer: x509.Certificate,
                          use_cache: bool) -> Answer:
        entry = self._cached_crl(url) if use_cache else None
        if entry is None:
            entry = await self._shared(("crl", url), lambda: self._fetch_crl(url))
        ident = key_id(issuer)
        if ident not in entry.checked_for:
            entry.valid_until = check_crl(entry.crl, url, issuer, now_utc())
            entry.checked_for.add(ident)
            self._remember_crl(url, entry)  # only a CRL that passed its checks
        return crl_answer(entry.crl, entry.valid_until, cert, f"CRL {url}", entry.serials)

    async def _fetch_crl(self, url: str) -> _CachedCrl:
        self.fetches["crl"] += 1
        data = await fetch(url, limit=MAX_CRL_SIZE)
        crl = load_crl(data)
        serials = await asyncio.to_thread(crl_serials, crl)
        # the cache's budget covers the index too
        size = len(data) + INDEX_BYTES_PER_ENTRY * len(serials)
        return _CachedCrl(crl, size, now_utc(), serials=serials)

    def _remember_crl(self, url: str, entry: _CachedCrl) -> None:
        old = self.crl_cache.pop(url, None)
        if old is not None:
            self.crl_bytes -= old.size
        if entry.size > MAX_CRL_CACHE_BYTES // 2:  # one huge CRL must not empty the cache
            return
        self.crl_cache[url] = entry
        self.crl_bytes += entry.size
        while self.crl_bytes > MAX_CRL_CACHE_BYTES:
            _, dropped = self.crl_cache.popitem(last=False)
            self.crl_bytes -= dropped.size

    def _cached_crl(self, url: str) -> _CachedCrl | None:
        entry = self.crl_cache.get(url)
        if entry is None:
            return None
        if entry.valid_until <= now_utc():
            del self.crl_cache[url]
            self.crl_bytes -= entry.size
            return None
        self.crl_cache.move_to_end(url)
        return entry

    # -- shared fetches -----------------------------------------------------------------
    async def _shared(self, key: object, start: Callable[[], Awaitable[T]]) -> T:
        """Run ``start()`` once for all callers that ask for ``key`` at the same time.

        The fetch runs as its own task: a caller that gives up (its socket was
        closed) does not cancel it for the others.
        """
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(start())
            self._inflight[key] = future

            def done(f: asyncio.Future[Any], key: object = key) -> None:
                self._inflight.pop(key, None)
                if not f.cancelled():
                    f.exception()  # retrieved here; each caller re-raises it

            future.add_done_callback(done)
        return await asyncio.shield(future)  # type: ignore[no-any-return]

    def status(self) -> dict[str, object]:
        return {"ocsp_cached": len(self.ocsp_cache), "crls_cached": len(self.crl_cache),
                "fetches": dict(self.fetches), "stapled_certificates": self.stapler.count()}

