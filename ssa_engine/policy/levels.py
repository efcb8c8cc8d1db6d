"""Named security levels, in the spirit of the system crypto-policies.

Each level expands to exact TLS settings. The lists are deliberately explicit
(no OpenSSL keywords such as ``HIGH``) so that what a level allows does not
change with the OpenSSL build, and docs/ can print them verbatim.

- ``legacy``: TLS 1.2 and 1.3; also CBC-mode and non-forward-secret RSA key
  exchange ciphers, for old servers. Never TLS 1.0/1.1 (RFC 8996).
- ``default``: TLS 1.2 and 1.3, forward-secret AEAD ciphers only, groups
  X25519, P-256, P-384 (Mozilla "intermediate").
- ``modern``: TLS 1.3 only (Mozilla "modern").
- ``future``: TLS 1.3 only, 256-bit ciphers, the post-quantum hybrid
  X25519MLKEM768 first where OpenSSL has it, RSA keys of 3072 bits or more.
- ``fips``: TLS 1.2 and 1.3, AES-GCM only, NIST curves only.
"""

from __future__ import annotations

from dataclasses import dataclass

TLS_1_2 = 0x0303
TLS_1_3 = 0x0304

VERSION_NAMES = {TLS_1_2: "1.2", TLS_1_3: "1.3"}
VERSIONS_BY_NAME = {"1.2": TLS_1_2, "1.3": TLS_1_3}

_FS_AEAD_12 = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)
_LEGACY_EXTRA_12 = (
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA256",
    "AES128-SHA",
    "AES256-SHA",
)
_SUITES_13 = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")

#: IANA spellings accepted for TLS 1.2 cipher names, mapped to OpenSSL's.
IANA_NAMES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
}

#: every cipher name this project knows (so that disabling a typo is an error)
KNOWN_CIPHERS = frozenset(_FS_AEAD_12 + _LEGACY_EXTRA_12 + _SUITES_13)
KNOWN_SUITES = frozenset(_SUITES_13)

#: key-exchange groups a policy may name (OpenSSL spellings); the engine drops
#: those its OpenSSL lacks (the post-quantum hybrids need OpenSSL 3.5)
KNOWN_GROUPS = frozenset((
    "X25519", "X448", "P-256", "P-384", "P-521",
    "X25519MLKEM768", "SecP256r1MLKEM768", "SecP384r1MLKEM1024",
    "ffdhe2048", "ffdhe3072", "ffdhe4096",
))

# Signature algorithms (RFC 8446 section 4.2.3 names, as OpenSSL's
# SSL_CTX_set1_sigalgs_list takes them). SHA-1 and SHA-224 are never offered.
_SIGALGS_ECDSA = ("ecdsa_secp256r1_sha256", "ecdsa_secp384r1_sha384", "ecdsa_secp521r1_sha512")
_SIGALGS_EDDSA = ("ed25519", "ed448")
_SIGALGS_PSS = ("rsa_pss_rsae_sha256", "rsa_pss_rsae_sha384", "rsa_pss_rsae_sha512",
                "rsa_pss_pss_sha256", "rsa_pss_pss_sha384", "rsa_pss_pss_sha512")
_SIGALGS_PKCS1 = ("rsa_pkcs1_sha256", "rsa_pkcs1_sha384", "rsa_pkcs1_sha512")
_SIGALGS = _SIGALGS_ECDSA + _SIGALGS_EDDSA + _SIGALGS_PSS + _SIGALGS_PKCS1


@dataclass(frozen=True, slots=True)
class Level:
    """The TLS settings one named level stands for."""

    name: str
    summary: str
    min_version: int
    max_version: int
    ciphers: tuple[str, ...]  # TLS 1.2, OpenSSL names, in preference order
    ciphersuites: tuple[str, ...]  # TLS 1.3
    groups: tuple[str, ...]  # OpenSSL group names, in preference order
    min_rsa_bits: int
    #: smallest elliptic-curve key, bits
    min_ec_bits: int
    #: signature algorithms for the handshake and certificates, in preference order
    sigalgs: tuple[str, ...]
    #: OpenSSL security level, which also bounds key sizes and signature hashes
    openssl_seclevel: int


LEVELS: dict[str, Level] = {
    "legacy": Level(
        "legacy",
        "TLS 1.2+, also CBC and RSA key exchange for old servers",
        TLS_1_2,
        TLS_1_3,
        _FS_AEAD_12 + _LEGACY_EXTRA_12,
        _SUITES_13,
        ("X25519", "P-256", "P-384", "P-521"),
        2048,
        224,
        _SIGALGS,
        1,
    ),
    "default": Level(
        "default",
        "TLS 1.2+, forward-secret AEAD ciphers only",
        TLS_1_2,
        TLS_1_3,
        _FS_AEAD_12,
        _SUITES_13,
        ("X25519", "P-256", "P-384"),
        2048,
        256,
        _SIGALGS,
        2,
    ),
    "modern": Level(
        "modern",
        "TLS 1.3 only",
        TLS_1_3,
        TLS_1_3,
        (),
        _SUITES_13,
        ("X25519", "P-256", "P-384"),
        2048,
        256,
        _SIGALGS,
        2,
    ),
    "future": Level(
        "future",
        "TLS 1.3 only, 256-bit ciphers, post-quantum hybrid key exchange first",
        TLS_1_3,
        TLS_1_3,
        (),
        ("TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"),
        ("X25519MLKEM768", "X25519", "P-384"),
        3072,
        256,
        _SIGALGS_ECDSA + _SIGALGS_EDDSA + _SIGALGS_PSS,
        3,
    ),
    "fips": Level(
        "fips",
        "TLS 1.2+, AES-GCM and NIST curves only",
        TLS_1_2,
        TLS_1_3,
        (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-RSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-RSA-AES256-GCM-SHA384",
        ),
        ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384"),
        ("P-256", "P-384"),
        2048,
        256,
        _SIGALGS_ECDSA + _SIGALGS_PSS + _SIGALGS_PKCS1,
        2,
    ),
}

DEFAULT_LEVEL = "default"


def normalize_cipher(name: str) -> str:
    """Return the OpenSSL spelling of a cipher name given in either spelling."""
    return IANA_NAMES.get(name, name)
