"""The policy model: what the administrator allows, independent of YAML.

A :class:`Policy` is complete: every setting has a value. A :class:`Layer` is
what one file sets (``None`` = not set there); :func:`overlay` puts a layer
on a policy. The default policy is the built-in one overlaid by ``ssa.yaml``;
a program's policy is the default overlaid by its profile.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

from .levels import DEFAULT_LEVEL, LEVELS, Level

#: default TLS handshake timeout, seconds (ARCHITECTURE.md section 3)
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: default lifetime of a listener's session-ticket keys, seconds
DEFAULT_TICKET_ROTATION = 12 * 3600.0

#: what ``server.client_auth`` may say, weakest first
CLIENT_AUTH = ("none", "request", "require")

#: settings that ``app_overrides`` may hand to the application, and what each
#: lets it do beyond tightening
OVERRIDES = {
    "min_version": "set TLS_VERSION_MIN below the policy's minimum",
    "max_version": "set TLS_VERSION_MAX above the policy's maximum",
    "ciphers": "enable ciphers the policy's list does not contain",
    "client_auth": "ask for less client authentication than server.client_auth",
    "revocation": "turn off revocation checks that the policy turns on (or the cache on "
                  "where it is off)",
}

#: what ``revocation.mode`` may say: what a client does when no revocation
#: answer can be had (responder down, no CRL): "soft" logs and continues,
#: "hard" refuses the connection
REVOCATION_MODES = ("soft", "hard")
#: what ``revocation.scope`` may say: which certificates of a server's chain are
#: checked ("leaf": the server's own; "chain": every intermediate CA's as well)
REVOCATION_SCOPES = ("leaf", "chain")


def normalize_host(host: str) -> str:
    """The form a pin table is keyed and looked up by.

    Lower case without a final dot; an IP address without brackets and in its
    canonical spelling (``[::0001]`` -> ``::1``), as the engine compares it.
    """
    h = host.strip().rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(h[1:-1] if h.startswith("[") and h.endswith("]") else h))
    except ValueError:
        return h


@dataclass(frozen=True, slots=True)
class VerifyPolicy:
    #: PEM bundle file; None = OpenSSL's default (SSL_CERT_FILE/SSL_CERT_DIR)
    trust_store: str | None = None
    verify_depth: int = 10
    #: may TLS_TRUSTED_PEER_CERTIFICATES add trust anchors for this program?
    allow_app_trust: bool = True
    #: may a socket verify a server by IP address (no host name)?
    allow_ip_names: bool = False


@dataclass(frozen=True, slots=True)
class RevocationPolicy:
    """How a client checks that the server's certificate is not revoked.

    Off by default, as in OpenSSL, GnuTLS and the system crypto-policies
    (docs/policy.md, "Revocation", says why); the methods apply once
    ``checks`` is on, in this order: the stapled response, the OCSP
    responders, the CRLs.
    """

    checks: bool = False
    mode: str = "soft"  # one of REVOCATION_MODES
    scope: str = "leaf"  # one of REVOCATION_SCOPES
    #: trust a valid OCSP response the server staples
    ocsp_stapling: bool = True
    #: ask the OCSP responders named in the certificate (AIA)
    ocsp: bool = True
    #: fetch the CRLs named in the certificate (CRL distribution points)
    crl: bool = True
    #: reuse answers until their nextUpdate
    cache: bool = True


@dataclass(frozen=True, slots=True)
class Policy:
    """Settings one program's sockets start from, before its own setsockopt calls."""

    #: where this policy came from, for error messages ("built-in default", a file)
    source: str = "built-in default policy"
    #: the profile's name, None for the default policy
    profile: str | None = None
    level: Level = field(default_factory=lambda: LEVELS[DEFAULT_LEVEL])
    min_version: int | None = None  # None: the level's
    max_version: int | None = None
    ciphers: tuple[str, ...] | None = None  # TLS 1.2; None: the level's
    ciphersuites: tuple[str, ...] | None = None  # TLS 1.3
    groups: tuple[str, ...] | None = None
    verify: VerifyPolicy = field(default_factory=VerifyPolicy)
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    #: option names the application may relax (keys of OVERRIDES)
    app_overrides: frozenset[str] = frozenset()
    #: host name (or ``*.domain``) -> SPKI SHA-256 pins (``sha256/BASE64``)
    pins: tuple[tuple[str, frozenset[str]], ...] = ()
    #: store names of the certificates this program's listeners serve when it
    #: supplies none; the first is the default (no SNI, or no match)
    server_certificates: tuple[str, ...] = ()
    #: the least client authentication a listener of this program asks for
    client_auth: str = "none"
    #: PEM bundle that client certificates are verified against
    client_ca: str | None = None
    #: write this program's connections to the audit log (when one is configured)
    audit: bool = True
    #: client revocation checks
    revocation: RevocationPolicy = field(default_factory=RevocationPolicy)
    #: listeners staple OCSP responses for certificates whose issuer has a responder
    server_ocsp_stapling: bool = True
    #: listeners that ask for it (TLS_0RTT) may take TLS 1.3 early data, which an
    #: attacker can replay: off unless the administrator allows it
    early_data: bool = False
    #: seconds between two session-ticket keys of a listener (new keys: new tickets)
    ticket_rotation: float = DEFAULT_TICKET_ROTATION

    @property
    def effective_min_version(self) -> int:
        return self.min_version if self.min_version is not None else self.level.min_version

    @property
    def effective_max_version(self) -> int:
        return self.max_version if self.max_version is not None else self.level.max_version

    @property
    def effective_ciphers(self) -> tuple[str, ...]:
        return self.ciphers if self.ciphers is not None else self.level.ciphers

    @property
    def effective_ciphersuites(self) -> tuple[str, ...]:
        return self.ciphersuites if self.ciphersuites is not None else self.level.ciphersuites

    @property
    def effective_groups(self) -> tuple[str, ...]:
        return self.groups if self.groups is not None else self.level.groups

    def pins_for(self, host: str) -> frozenset[str]:
        """The pins that apply to ``host``: its own, else a one-label wildcard's."""
        host = normalize_host(host)
        table = dict(self.pins)
        if host in table:
            return table[host]
        label, _, parent = host.partition(".")
        if parent and label:
            return table.get("*." + parent, frozenset())
        return frozenset()


@dataclass(frozen=True, slots=True)
class Layer:
    """What one configuration file sets; ``None`` means "not set here"."""

    level: Level | None = None
    min_version: int | None = None
    max_version: int | None = None
    ciphers: tuple[str, ...] | None = None
    ciphersuites: tuple[str, ...] | None = None
    groups: tuple[str, ...] | None = None
    trust_store: str | None = None
    verify_depth: int | None = None
    allow_app_trust: bool | None = None
    allow_ip_names: bool | None = None
    handshake_timeout: float | None = None
    app_overrides: frozenset[str] | None = None
    pins: Mapping[str, frozenset[str]] | None = None
    server_certificates: tuple[str, ...] | None = None
    client_auth: str | None = None
    client_ca: str | None = None
    audit: bool | None = None
    revocation_checks: bool | None = None
    revocation_mode: str | None = None
    revocation_scope: str | None = None
    revocation_ocsp_stapling: bool | None = None
    revocation_ocsp: bool | None = None
    revocation_crl: bool | None = None
    revocation_cache: bool | None = None
    server_ocsp_stapling: bool | None = None
    early_data: bool | None = None
    ticket_rotation: float | None = None

    def is_set(self, name: str) -> bool:
        return getattr(self, name) is not None

    def set_names(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


_TLS_FROM_LEVEL = ("min_version", "max_version", "ciphers", "ciphersuites", "groups")
#: RevocationPolicy field -> Layer attribute
_REVOCATION_LAYER = {name: f"revocation_{name}" for name in (
    "checks", "mode", "scope", "ocsp_stapling", "ocsp", "crl", "cache")}


def overlay(base: Policy, layer: Layer, *, source: str, profile: str | None = None) -> Policy:
    """Put ``layer`` on ``base``.

    Rules (docs/policy.md, "Merging"):
    - a layer that names a ``level`` starts the TLS settings (versions,
      ciphers, suites, groups) afresh from that level, then applies its own
      ``tls`` keys; a layer without ``level`` adjusts the base's settings;
    - every other key set in the layer replaces the base's value;
    - ``pins`` replace the base's pins host by host (a profile that pins
      ``example.com`` decides that host's pins alone); other hosts are kept;
    - ``verify`` and ``revocation`` keys replace the base's one by one.
    """
    changes: dict[str, object] = {"source": source, "profile": profile}
    if layer.level is not None:
        changes["level"] = layer.level
        changes.update({name: None for name in _TLS_FROM_LEVEL})
    for name in _TLS_FROM_LEVEL + ("handshake_timeout", "app_overrides", "server_certificates",
                                   "client_auth", "client_ca", "audit",
                                   "server_ocsp_stapling", "early_data", "ticket_rotation"):
        value = getattr(layer, name)
        if value is not None:
            changes[name] = value
    verify = {
        name: getattr(layer, attr)
        for name, attr in (("trust_store", "trust_store"), ("verify_depth", "verify_depth"),
                           ("allow_app_trust", "allow_app_trust"),
                           ("allow_ip_names", "allow_ip_names"))
        if getattr(layer, attr) is not None
    }
    if verify:
        changes["verify"] = replace(base.verify, **verify)
    revocation = {name: getattr(layer, attr) for name, attr in _REVOCATION_LAYER.items()
                  if getattr(layer, attr) is not None}
    if revocation:
        changes["revocation"] = replace(base.revocation, **revocation)
    if layer.pins is not None:
        pins = dict(base.pins)
        pins.update(layer.pins)
        changes["pins"] = tuple(sorted(pins.items()))
    return replace(base, **changes)  # type: ignore[arg-type]


def conflicts(policy: Policy) -> list[tuple[str, str]]:
    """Settings that cannot work together: (key path, message) pairs."""
    found: list[tuple[str, str]] = []
    lo, hi = policy.effective_min_version, policy.effective_max_version
    if lo > hi:
        found.append(("tls.min_version", "is above tls.max_version"))
    if lo <= 0x0303 <= hi and not policy.effective_ciphers:
        found.append(("tls.ciphers", "is empty but TLS 1.2 is allowed "
                      f"(level {policy.level.name} has no TLS 1.2 ciphers; "
                      "list some or set tls.min_version to 1.3)"))
    if hi >= 0x0304 and lo <= 0x0304 and not policy.effective_ciphersuites:
        found.append(("tls.ciphersuites", "is empty but TLS 1.3 is allowed"))
    if not policy.effective_groups:
        found.append(("tls.groups", "is empty: no key exchange is possible"))
    return found


DEFAULT_POLICY = Policy()
