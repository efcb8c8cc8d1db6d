"""Talking to an ACME server: the ``acme`` library, with retries and clear errors.

:class:`Acme` wraps ``acme.client.ClientV2``. Every call goes through
:meth:`Acme.call`, which retries what RFC 8555 says may be retried
(``badNonce``, section 6.5, as many times as it takes up to a bound: certbot
retries once; ``Retry-After`` on 429/503, section 6.6, with exponential backoff
when the server gives no time) and turns every failure into an
:class:`~ssa_admin.acme.errors.AcmeError` whose text says what to do.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import josepy as jose
import requests
from acme import client as acme_client
from acme import errors as acme_errors
from acme import messages

from .errors import NetworkError, ProblemError

log = logging.getLogger("ssa.acme")

T = TypeVar("T")

#: well-known servers (``--server letsencrypt``)
SERVERS = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
#: the staging directory of a production CA (``renew --dry-run``)
STAGING = {SERVERS["letsencrypt"]: SERVERS["letsencrypt-staging"]}

#: Security parameter: how often a badNonce is retried before giving up.
MAX_BAD_NONCE = 5
#: how long one call may wait for Retry-After / backoff in total (seconds)
MAX_WAIT = 120.0
#: network timeout per HTTP request (seconds)
TIMEOUT = 30


def resolve_server(value: str) -> str:
    """``letsencrypt`` -> its directory URL; a URL is returned as it is."""
    if value in SERVERS:
        return SERVERS[value]
    if not value.startswith(("https://", "http://")):
        raise ValueError(f"--server: {value!r} is neither a URL nor one of {', '.join(SERVERS)}")
    return value


def signing_alg(key: jose.JWK) -> jose.JWASignature:
    """The JWS algorithm for an account key (RFC 7518 section 3.1)."""
    # josepy wraps the cryptography key (JWKEC.key is a ComparableECKey, not an
    # EllipticCurvePrivateKey), so the JWK class says what kind of key it is
    if isinstance(key, jose.JWKEC):
        return {256: jose.ES256, 384: jose.ES384, 521: jose.ES512}[key.key.curve.key_size]
    if isinstance(key, jose.JWKRSA):
        return jose.RS256
    raise ValueError(f"unsupported account key {type(key).__name__}")


class _Network(acme_client.ClientNetwork):
    """Remembers the last response, for its Retry-After header."""

    last_response: requests.Response | None = None

    def _check_response(self, response: requests.Response, content_type: str | None = None
                        ) -> requests.Response:
        self.last_response = response
        return super()._check_response(response, content_type=content_type)

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        """POST, retrying a rejected nonce per request (the library retries once).

        RFC 8555 section 6.5: a badNonce error carries a fresh nonce, so the
        retry is safe; retrying here rather than around a whole operation
        keeps a poll loop (finalize) from starting over.
        """
        for _ in range(MAX_BAD_NONCE):
            try:
                return self._post_once(*args, **kwargs)
            except messages.Error as error:
                if error.code != "badNonce":
                    raise
                log.debug("badNonce, retrying the request")
        return self._post_once(*args, **kwargs)


def retry_after(response: requests.Response | None, now: dt.datetime | None = None
                ) -> dt.datetime | None:
    """The time a Retry-After header names (seconds or an HTTP date), or None."""
    if response is None:
        return None
    value = response.headers.get("Retry-After")
    if not value:
        return None
    now = now or dt.datetime.now(dt.UTC)
    if value.strip().isdigit():
        return now + dt.timedelta(seconds=int(value))
    try:
        from email.utils import parsedate_to_datetime

        return parsedate_to_datetime(value).astimezone(dt.UTC)
    except (TypeError, ValueError):
        return None


class Acme:
    """One ACME server, one account key."""

    def __init__(self, directory_url: str, key: jose.JWK | None = None, *,
                 ca_bundle: str | None = None, account: messages.RegistrationResource | None = None,
                 max_wait: float = MAX_WAIT, sleep: Callable[[float], None] = time.sleep) -> None:
        from ssa_admin import __version__

        self.directory_url = directory_url
        self.ca_bundle = ca_bundle
        self.max_wait = max_wait
        self.sleep = sleep
        self.net = _Network(key, account=account, alg=signing_alg(key) if key else jose.RS256,
                            verify_ssl=ca_bundle or True, user_agent=f"ssa-admin/{__version__}",
                            timeout=TIMEOUT)
        self.directory: messages.Directory = self.call(
            acme_client.ClientV2.get_directory, directory_url, self.net,
            context=f"reading the directory {directory_url}")
        self.client = acme_client.ClientV2(self.directory, self.net)

    def close(self) -> None:
        self.net.session.close()

    def __enter__(self) -> Acme:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, fn: Callable[..., T], *args: Any, context: str, **kwargs: Any) -> T:
        """Run one ACME operation with retries; raise AcmeError with ``context``."""
        waited = 0.0
        nonces = 0
        backoff = 1.0
        while True:
            self.net.last_response = None
            try:
                return fn(*args, **kwargs)
            except messages.Error as exc:
                problem = exc.to_partial_json()
                kind = exc.code
                when = retry_after(self.net.last_response)
                if kind == "badNonce" and nonces < MAX_BAD_NONCE:
                    nonces += 1
                    log.info("%s: badNonce, retrying (%d)", context, nonces)
                    continue
                status = self.net.last_response.status_code if self.net.last_response else 0
                if status in (429, 503) or kind in ("rateLimited", "serverInternal"):
                    delay = ((when - dt.datetime.now(dt.UTC)).total_seconds()
                             if when is not None else backoff)
                    if delay >= 0 and waited + delay <= self.max_wait:
                        log.info("%s: %s, retrying in %.1f s", context, kind or status, delay)
                        self.sleep(max(delay, 0.0))
                        waited += delay
                        backoff = min(backoff * 2, 60.0)
                        continue
                raise ProblemError(problem, context, when) from None
            except requests.exceptions.SSLError as exc:
                raise NetworkError(
                    f"{context}: the CA's TLS certificate is not trusted ({_reason(exc)}); "
                    "for a private ACME server pass --ca-bundle FILE with its CA") from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                # a refused connection is not worth much waiting: 1 + 2 s at most
                if waited + backoff <= min(self.max_wait, 3.0):
                    log.info("%s: %s, retrying in %.0f s", context, _reason(exc), backoff)
                    self.sleep(backoff)
                    waited += backoff
                    backoff *= 2
                    continue
                raise NetworkError(f"{context}: cannot reach the CA ({_reason(exc)})") from None
            except OSError as exc:  # e.g. --ca-bundle names an unreadable file
                raise NetworkError(f"{context}: {exc}") from None
            except acme_errors.ConflictError:
                # the library drops the problem document of a 409 (e.g. alreadyReplaced)
                problem = _problem_of(self.net.last_response)
                if problem is not None:
                    raise ProblemError(problem, context) from None
                raise NetworkError(f"{context}: the CA answered 409 Conflict") from None
            except acme_errors.ClientError as exc:
                raise NetworkError(f"{context}: {exc}") from None


def _problem_of(response: requests.Response | None) -> dict[str, Any] | None:
    if response is None:
        return None
    try:
        doc = response.json()
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and "type" in doc else None


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("certificate verify failed", "Connection refused", "Name or service not known",
                   "timed out", "No route to host", "Temporary failure in name resolution"):
        if marker in text:
            return marker
    return text.splitlines()[0][:200] if text else type(exc).__name__
