"""Waiting for the CA: validation and issuance, polled without dead time.

The acme library sleeps a fixed second before every poll (and before the
first one), which makes a whole issuance take several seconds against a CA
that answers in milliseconds. Here the first poll comes after
``FIRST_INTERVAL`` and the interval doubles up to ``MAX_INTERVAL``; a
``Retry-After`` from the CA (RFC 8555 section 7.5.1 and 7.4) always wins, and
nothing waits past the deadline.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from acme import errors as acme_errors
from acme import messages

from .client import Acme, retry_after
from .errors import AcmeError

#: seconds before the first poll; doubled after each one up to MAX_INTERVAL
FIRST_INTERVAL = 0.1
MAX_INTERVAL = 2.0


class _Backoff:
    def __init__(self, timeout: float, sleep: Callable[[float], None]) -> None:
        self.deadline = time.monotonic() + timeout
        self.interval = FIRST_INTERVAL
        self.sleep = sleep

    def wait(self, response: Any, what: str) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise acme_errors.TimeoutError(what)
        delay = self.interval
        when = retry_after(response)
        if when is not None:
            delay = max(delay, (when - dt.datetime.now(dt.UTC)).total_seconds())
        self.sleep(min(delay, left))
        self.interval = min(self.interval * 2, MAX_INTERVAL)


def wait_for_authorizations(acme: Acme, order: messages.OrderResource, timeout: float,
                            sleep: Callable[[float], None] = time.sleep
                            ) -> messages.OrderResource:
    """Poll every authorization until none is pending; ValidationError if one failed."""
    client = acme.client
    urls = list(order.body.authorizations)
    done: dict[str, messages.AuthorizationResource] = {}
    backoff = _Backoff(timeout, sleep)
    backoff.sleep(FIRST_INTERVAL)  # the CA has just been told to look
    while True:
        last = None
        for url in urls:
            if url in done:
                continue
            last = acme.call(client._post_as_get, url,  # noqa: SLF001
                             context="waiting for validation")
            authzr = client._authzr_from_response(last, uri=url)  # noqa: SLF001
            if authzr.body.status not in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                done[url] = authzr
        if len(done) == len(urls):
            break
        backoff.wait(last, "validation")
    failed = [a for a in done.values() if a.body.status != messages.STATUS_VALID]
    if failed:
        raise acme_errors.ValidationError(failed)
    return order.update(authorizations=[done[u] for u in urls])


def finalize(acme: Acme, order: messages.OrderResource, timeout: float, *,
             alternatives: bool, sleep: Callable[[float], None] = time.sleep
             ) -> messages.OrderResource:
    """Send the CSR, wait for the certificate, download it (and alternate chains)."""
    client = acme.client
    order = acme.call(client.begin_finalization, order, context="finalizing the order")
    backoff = _Backoff(timeout, sleep)
    body, response = order.body, None
    while True:
        if body.status == messages.STATUS_INVALID:
            if body.error is not None:
                raise acme_errors.IssuanceError(body.error)
            raise AcmeError("the CA abandoned the order without saying why")
        if body.status == messages.STATUS_VALID and body.certificate is not None:
            break
        if body.status == messages.STATUS_READY:  # an earlier finalize came too soon
            order = acme.call(client.begin_finalization, order, context="finalizing the order")
            body = order.body
            continue
        backoff.wait(response, "issuance")
        response = acme.call(client._post_as_get, order.uri,  # noqa: SLF001
                             context="waiting for the certificate")
        body = messages.Order.from_json(response.json())
    cert = acme.call(client._post_as_get, body.certificate,  # noqa: SLF001
                     context="downloading the certificate")
    order = order.update(body=body, fullchain_pem=cert.text)
    if alternatives:
        urls = client._get_links(cert, "alternate")  # noqa: SLF001
        order = order.update(alternative_fullchains_pem=[
            acme.call(client._post_as_get, u, context="downloading an alternate chain").text  # noqa: SLF001
            for u in urls])
    return order
