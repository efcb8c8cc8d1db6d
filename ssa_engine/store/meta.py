"""``meta.json``: what the store records next to each version.

The file is JSON (``"format": 1``), written once with the version and read
back into :class:`Meta`. Times are ISO 8601 in UTC (``2025-01-31T12:00:00Z``).
Unknown keys are ignored on reading, so a newer ``ssa-admin`` may add fields
without breaking an older engine.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import CorruptEntry
from .material import (
    KEY_TYPES,
    Material,
    serial_hex,
    spki_pin,
    subject_text,
)

FORMAT = 1
#: where a version came from
SOURCES = ("import", "acme")


def iso(t: dt.datetime) -> str:
    """ISO 8601 in UTC with a ``Z``."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(text)
    if t.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return t.astimezone(dt.UTC)


@dataclass(frozen=True, slots=True)
class AcmeMeta:
    """How an ACME-issued version was obtained, so that renew and revoke can reuse it."""

    server: str  # the directory URL
    account: str | None = None  # the account URL (the JWS "kid")
    order: str | None = None  # the order URL
    ari_cert_id: str | None = None  # RFC 9773 section 4.1
    profile: str | None = None  # the ACME profile asked for
    ca_bundle: str | None = None  # file trusted for the server's own TLS certificate
    challenge: str | None = None  # http-01 | tls-alpn-01 | dns-01
    deploy_hooks: tuple[str, ...] = ()
    #: anything else renewal must repeat (webroot, ports, dns settings): JSON values
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"server": self.server, "account": self.account, "order": self.order,
                "ari_cert_id": self.ari_cert_id, "profile": self.profile,
                "ca_bundle": self.ca_bundle, "challenge": self.challenge,
                "deploy_hooks": list(self.deploy_hooks), "options": dict(self.options)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> AcmeMeta:
        def opt(key: str) -> str | None:
            value = doc.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"acme -> {key}: not a string")
            return value

        server = doc.get("server")
        if not isinstance(server, str):
            raise ValueError("acme -> server: missing or not a string")
        hooks = doc.get("deploy_hooks") or []
        options = doc.get("options") or {}
        if not isinstance(hooks, list) or not all(isinstance(h, str) for h in hooks):
            raise ValueError("acme -> deploy_hooks: not a list of strings")
        if not isinstance(options, dict):
            raise ValueError("acme -> options: not an object")
        return cls(server, opt("account"), opt("order"), opt("ari_cert_id"), opt("profile"),
                   opt("ca_bundle"), opt("challenge"), tuple(hooks), options)


@dataclass(frozen=True, slots=True)
class Meta:
    """The description of one stored version."""

    domains: tuple[str, ...]
    key_type: str  # one of KEY_TYPES
    not_before: dt.datetime
    not_after: dt.datetime
    subject: str  # RFC 4514
    issuer: str  # RFC 4514
    serial: str  # lower-case hex
    spki_pin: str  # sha256/BASE64 of the leaf's key
    source: str  # one of SOURCES
    created: dt.datetime
    acme: AcmeMeta | None = None

    def __post_init__(self) -> None:
        if self.key_type not in KEY_TYPES:
            raise ValueError(f"key_type: {self.key_type!r} is not one of {', '.join(KEY_TYPES)}")
        if self.source not in SOURCES:
            raise ValueError(f"source: {self.source!r} is not one of {', '.join(SOURCES)}")

    @classmethod
    def describe(cls, material: Material, *, source: str, acme: AcmeMeta | None,
                 created: dt.datetime) -> Meta:
        leaf = material.leaf
        return cls(material.domains, material.key_type, leaf.not_valid_before_utc,
                   leaf.not_valid_after_utc, subject_text(leaf.subject),
                   subject_text(leaf.issuer), serial_hex(leaf), spki_pin(leaf.public_key()),
                   source, created.astimezone(dt.UTC), acme)

    def days_left(self, now: dt.datetime | None = None) -> int:
        """Whole days until notAfter (negative once expired)."""
        return (self.not_after - (now or dt.datetime.now(dt.UTC))) // dt.timedelta(days=1)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "domains": list(self.domains), "key_type": self.key_type,
            "not_before": iso(self.not_before), "not_after": iso(self.not_after),
            "subject": self.subject, "issuer": self.issuer, "serial": self.serial,
            "spki_pin": self.spki_pin, "source": self.source, "created": iso(self.created),
            "acme": self.acme.to_json() if self.acme else None,
        }

    def dumps(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2) + "\n").encode()

    @classmethod
    def loads(cls, data: bytes, where: str) -> Meta:
        """Parse ``meta.json``; :class:`CorruptEntry` naming ``where`` if it is not valid."""
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}; this version reads {FORMAT}")
            domains = doc["domains"]
            if not isinstance(domains, list) or not all(isinstance(d, str) for d in domains):
                raise ValueError("domains: not a list of strings")
            strings = {k: doc[k] for k in ("key_type", "subject", "issuer", "serial",
                                            "spki_pin", "source")}
            for key, value in strings.items():
                if not isinstance(value, str):
                    raise ValueError(f"{key}: not a string")
            acme = doc.get("acme")
            if acme is not None and not isinstance(acme, dict):
                raise ValueError("acme: not an object")
            return cls(
                tuple(domains), strings["key_type"], parse_iso(doc["not_before"]),
                parse_iso(doc["not_after"]), strings["subject"], strings["issuer"],
                strings["serial"], strings["spki_pin"], strings["source"],
                parse_iso(doc["created"]), AcmeMeta.from_json(acme) if acme else None)
        except KeyError as exc:
            raise CorruptEntry(f"{where}: missing key {exc.args[0]!r}") from None
        except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            raise CorruptEntry(f"{where}: not valid store metadata: {exc}") from None
