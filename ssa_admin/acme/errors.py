"""ACME failures in words an administrator can act on.

Every ACME error is a problem document (RFC 8555 section 6.7, RFC 7807):
a type URN, a detail, maybe subproblems per identifier. :func:`explain`
turns one into a message that says what happened and what to do; the CLI
prints it and exits 1, never with a traceback.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

_PREFIX = "urn:ietf:params:acme:error:"

#: what to do about each problem type (RFC 8555 section 6.7 and RFC 9773)
ADVICE = {
    "accountDoesNotExist": "the account is unknown to this CA; register one with "
                           "`ssa-admin account register`",
    "alreadyRevoked": "the certificate is already revoked; nothing to do",
    "badCSR": "the CA refused the certificate request; check the names and the key type",
    "badNonce": "the CA refused a replayed nonce; ssa-admin retried and gave up, try again",
    "badPublicKey": "the CA does not accept this key; pick another --key-type",
    "badRevocationReason": "the CA does not accept this revocation reason",
    "badSignatureAlgorithm": "the CA does not accept the account key's algorithm",
    "caa": "a CAA record in DNS forbids this CA from issuing for the name; add the CA's "
           "domain to the CAA record",
    "compound": "several problems; see each name below",
    "connection": "the CA could not connect to the server answering the challenge; check "
                  "that the name points at this machine and that the port is reachable "
                  "from the internet (firewall, NAT)",
    "dns": "the CA could not resolve the name; check its DNS records",
    "externalAccountRequired": "this CA requires External Account Binding: pass "
                               "--eab-kid and --eab-hmac-key from your CA account",
    "incorrectResponse": "the CA fetched the challenge and got a different answer: another "
                         "server answered on that address, or a proxy changed the response",
    "invalidContact": "the CA refuses the e-mail address given with --email",
    "malformed": "the CA could not parse the request",
    "orderNotReady": "the order is not ready to be finalized; its challenges are not done",
    "rateLimited": "the CA's rate limit is reached",
    "rejectedIdentifier": "the CA will not issue for this name (it may be a public suffix, "
                          "a blocked name, or a type of identifier the CA does not support)",
    "serverInternal": "the CA failed internally; try again later",
    "tls": "the CA's TLS connection to the challenge server failed",
    "unauthorized": "the CA did not accept the proof of control of the name",
    "unsupportedContact": "the CA does not support that kind of contact address",
    "unsupportedIdentifier": "the CA does not issue for this kind of identifier",
    "userActionRequired": "the CA needs you to act (for example, accept new terms) at the "
                          "address it gives",
    "badCertificateStatus": "the certificate is not in a state the request needs",
    "alreadyReplaced": "another order already replaced this certificate (ARI replaces)",
    "invalidProfile": "the CA does not offer that ACME profile",
}


class AcmeError(Exception):
    """Root of ssa-admin's ACME errors; ``str()`` is the whole message for the user."""


class ProblemError(AcmeError):
    """The CA answered with a problem document."""

    def __init__(self, problem: Mapping[str, Any], context: str = "",
                 retry_after: dt.datetime | None = None) -> None:
        self.problem = dict(problem)
        self.context = context
        self.retry_after = retry_after
        super().__init__(explain(self.problem, context, retry_after))

    @property
    def kind(self) -> str:
        return short_type(self.problem.get("type"))


class NetworkError(AcmeError):
    """The CA could not be reached, or its TLS certificate is not trusted."""


class ChallengeError(AcmeError):
    """A challenge could not be prepared on this machine (port busy, no permission, ...)."""


def short_type(kind: object) -> str:
    text = str(kind or "")
    return text[len(_PREFIX):] if text.startswith(_PREFIX) else text


def explain(problem: Mapping[str, Any], context: str = "",
            retry_after: dt.datetime | None = None) -> str:
    """A problem document as lines for the administrator."""
    kind = short_type(problem.get("type"))
    detail = str(problem.get("detail") or "").strip()
    head = f"{context}: " if context else ""
    lines = [f"{head}{kind or 'error'}: {detail}" if detail else f"{head}{kind or 'error'}"]
    advice = ADVICE.get(kind)
    if kind == "unauthorized" and "deactivated" in detail.lower():
        advice = ("the account is deactivated; register a new one with "
                  "`ssa-admin account register`")
    if advice:
        lines.append(f"  what to do: {advice}")
    if kind == "rateLimited" and retry_after is not None:
        lines.append(f"  try again after {retry_after.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC")
    if kind == "userActionRequired" and problem.get("instance"):
        lines.append(f"  see {problem['instance']}")
    for sub in problem.get("subproblems") or ():
        ident = sub.get("identifier") or {}
        who = ident.get("value", "?")
        sub_kind = short_type(sub.get("type"))
        lines.append(f"  {who}: {sub_kind}: {sub.get('detail', '')}".rstrip())
        if ADVICE.get(sub_kind) and sub_kind != kind:
            lines.append(f"    what to do: {ADVICE[sub_kind]}")
    return "\n".join(lines)


def explain_challenge(challenge: Mapping[str, Any], identifier: str) -> str:
    """Why a challenge failed: its error, its URL, and what the CA saw."""
    error = challenge.get("error") or {}
    lines = [explain(error, f"{identifier}: {challenge.get('type', 'challenge')} failed")]
    if challenge.get("url"):
        lines.append(f"  challenge: {challenge['url']}")
    for record in challenge.get("validationRecord") or ():
        seen = []
        if record.get("url"):
            seen.append(f"fetched {record['url']}")
        if record.get("hostname"):
            seen.append(f"host {record['hostname']}")
        if record.get("port"):
            seen.append(f"port {record['port']}")
        if record.get("addressUsed"):
            seen.append(f"connected to {record['addressUsed']}")
        elif record.get("addressesResolved"):
            seen.append(f"resolved {', '.join(record['addressesResolved'])}")
        if seen:
            lines.append("  the CA " + ", ".join(seen))
    return "\n".join(lines)
