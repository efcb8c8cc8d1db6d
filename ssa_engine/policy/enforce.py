"""Apply an application's setsockopt requests on top of the policy.

The rule (ARCHITECTURE.md section 6): an application may only make its
connection stricter, unless the policy's ``app_overrides`` lists the setting.
A weakening attempt raises :class:`PolicyViolation` (EPROTO in the API), a
meaningless value raises :class:`InvalidSetting` (EINVAL).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .levels import KNOWN_CIPHERS, LEVELS, VERSION_NAMES, normalize_cipher
from .model import Policy


class PolicyError(Exception):
    """Root of the policy errors."""


class PolicyViolation(PolicyError):
    """The application asked for something the administrator's policy forbids."""


class InvalidSetting(PolicyError):
    """The value is not a valid setting at all."""


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """The effective TLS settings of one socket."""

    min_version: int
    max_version: int
    ciphers: tuple[str, ...]
    ciphersuites: tuple[str, ...]
    groups: tuple[str, ...]
    seclevel: int
    sigalgs: tuple[str, ...] = ()


@dataclass(slots=True)
class AppRequests:
    """What the application asked for with setsockopt, before checking."""

    min_version: int | None = None
    max_version: int | None = None
    disabled: set[str] = field(default_factory=set)
    enabled: set[str] = field(default_factory=set)
    #: revocation switches (REVOCATION_SWITCHES) the application set, already checked
    revocation: dict[str, bool] = field(default_factory=dict)


def _version_name(v: int) -> str:
    return "TLS " + VERSION_NAMES.get(v, hex(v))


def check_version(policy: Policy, which: str, value: int) -> None:
    """Validate TLS_VERSION_MIN/MAX = value against the policy."""
    if value not in VERSION_NAMES:
        raise InvalidSetting(
            f"TLS_VERSION_{which.upper()}: {value:#06x} is not a supported version "
            "(TLS_1_2=0x0303, TLS_1_3=0x0304)"
        )
    lo, hi = policy.effective_min_version, policy.effective_max_version
    relaxable = f"{which}_version" in policy.app_overrides
    if which == "min" and value < lo and not relaxable:
        raise PolicyViolation(
            f"TLS_VERSION_MIN {_version_name(value)} is below the minimum "
            f"{_version_name(lo)} set by the {policy.source}"
        )
    if which == "max" and value < lo:
        raise PolicyViolation(
            f"TLS_VERSION_MAX {_version_name(value)} is below the minimum "
            f"{_version_name(lo)} set by the {policy.source}"
        )
    if which == "max" and value > hi and not relaxable:
        raise PolicyViolation(
            f"TLS_VERSION_MAX {_version_name(value)} is above the maximum "
            f"{_version_name(hi)} set by the {policy.source}"
        )


def allowed_ciphers(policy: Policy) -> frozenset[str]:
    return frozenset(policy.effective_ciphers + policy.effective_ciphersuites)


def check_cipher(policy: Policy, action: str, name: str) -> str:
    """Validate TLS_ENABLE_CIPHER / TLS_DISABLE_CIPHER; return the OpenSSL name."""
    cipher = normalize_cipher(name.strip())
    if cipher not in KNOWN_CIPHERS:
        raise InvalidSetting(f"TLS_{action.upper()}_CIPHER: unknown cipher {name!r}")
    if action == "enable" and cipher not in allowed_ciphers(policy):
        if "ciphers" not in policy.app_overrides:
            raise PolicyViolation(
                f"TLS_ENABLE_CIPHER {cipher}: not allowed by the {policy.source}"
            )
    return cipher


def effective(policy: Policy, app: AppRequests) -> TLSSettings:
    """Combine the policy with already-checked application requests."""
    lo = policy.effective_min_version if app.min_version is None else app.min_version
    hi = policy.effective_max_version if app.max_version is None else app.max_version
    base_ciphers = policy.effective_ciphers
    ciphers = [c for c in base_ciphers if c not in app.disabled]
    suites = [c for c in policy.effective_ciphersuites if c not in app.disabled]
    if "ciphers" in policy.app_overrides:
        for c in sorted(app.enabled):
            if c.startswith("TLS_") and c not in suites:
                suites.append(c)
            elif not c.startswith("TLS_") and c not in ciphers:
                ciphers.append(c)
    else:
        # re-enabling a cipher that this socket disabled earlier
        ciphers += [c for c in base_ciphers if c in app.enabled and c not in ciphers]
    return TLSSettings(
        min_version=lo,
        max_version=hi,
        ciphers=tuple(ciphers),
        ciphersuites=tuple(suites),
        groups=policy.effective_groups,
        seclevel=policy.level.openssl_seclevel,
        sigalgs=policy.level.sigalgs,
    )


def with_level(policy: Policy, level: str) -> Policy:
    """Return ``policy`` based on another named level."""
    if level not in LEVELS:
        raise InvalidSetting(f"unknown level {level!r}; one of {', '.join(LEVELS)}")
    return replace(policy, level=LEVELS[level])


#: what the application's revocation options switch: RevocationPolicy fields
REVOCATION_SWITCHES = ("checks", "ocsp_stapling", "ocsp", "crl", "cache")
_REVOCATION_METHODS = ("ocsp_stapling", "ocsp", "crl")


@dataclass(frozen=True, slots=True)
class RevocationSettings:
    """The revocation checks of one client socket (policy + application)."""

    checks: bool
    hard: bool
    #: the intermediate CAs' certificates too, not only the server's
    chain: bool
    ocsp_stapling: bool
    ocsp: bool
    crl: bool
    cache: bool


def check_revocation(policy: Policy, switch: str, on: bool, option: str) -> None:
    """Validate an application's revocation switch (``option`` names it in errors).

    Turning a check on is always allowed. Turning off one that the policy turns
    on needs ``revocation`` in ``app_overrides``. The cache is the other way
    round: without it the engine only asks again, so turning it off is always
    allowed, and turning it on where the policy turns it off is the weakening.
    """
    if switch not in REVOCATION_SWITCHES:
        raise InvalidSetting(f"{option}: unknown revocation switch {switch!r}")
    r = policy.revocation
    if "revocation" in policy.app_overrides or not r.checks:
        return
    if switch == "cache":
        if on and not r.cache:
            raise PolicyViolation(f"{option} 1: the {policy.source} turns the revocation "
                                  "cache off (revocation.cache)")
    elif not on and getattr(r, switch):
        key = "revocation.checks" if switch == "checks" else f"revocation.{switch}"
        raise PolicyViolation(f"{option} 0: the {policy.source} turns this check on ({key}), "
                              "and the application may not turn it off")


def effective_revocation(policy: Policy, app: AppRequests) -> RevocationSettings:
    """Combine the policy's revocation section with already-checked switches.

    A method the application turns on also turns checking on (it would mean
    nothing otherwise), unless the application turned checking off itself.
    """
    r, a = policy.revocation, app.revocation
    methods = {m: a.get(m, getattr(r, m)) for m in _REVOCATION_METHODS}
    checks = a.get("checks", r.checks or any(a.get(m) for m in _REVOCATION_METHODS))
    return RevocationSettings(checks=checks, hard=r.mode == "hard", chain=r.scope == "chain",
                              cache=a.get("cache", r.cache), **methods)


def check_server_stapling(policy: Policy, on: bool) -> None:
    """TLS_SERVER_OCSP_STAPLING: off is always allowed, on only where the policy allows it."""
    if on and not policy.server_ocsp_stapling:
        raise PolicyViolation(f"TLS_SERVER_OCSP_STAPLING 1: the {policy.source} turns OCSP "
                              "stapling off (server.ocsp_stapling)")
