"""The policy model: what the administrator allows, independent of YAML."""

from __future__ import annotations

from dataclasses import dataclass, field

from .levels import DEFAULT_LEVEL, LEVELS, Level

#: default TLS handshake timeout, seconds (ARCHITECTURE.md section 3)
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


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
class Policy:
    """Settings one program's sockets start from, before its own setsockopt calls."""

    #: where this policy came from, for error messages ("built-in default", a file)
    source: str = "built-in default policy"
    level: Level = field(default_factory=lambda: LEVELS[DEFAULT_LEVEL])
    min_version: int | None = None  # None: the level's
    max_version: int | None = None
    verify: VerifyPolicy = field(default_factory=VerifyPolicy)
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    #: option names the application may relax (e.g. "min_version", "ciphers")
    app_overrides: frozenset[str] = frozenset()
    #: store names of the certificates this program's listeners serve when it
    #: supplies none; the first is the default (no SNI, or no match)
    server_certificates: tuple[str, ...] = ()

    @property
    def effective_min_version(self) -> int:
        return self.min_version if self.min_version is not None else self.level.min_version

    @property
    def effective_max_version(self) -> int:
        return self.max_version if self.max_version is not None else self.level.max_version


DEFAULT_POLICY = Policy()
