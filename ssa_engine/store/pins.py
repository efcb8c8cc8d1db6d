"""SPKI pins of certificates: ``sha256/BASE64`` (RFC 7469 section 2.4).

Shared by the engine (which checks a verified chain against the pins in
force) and ``ssa-admin pin`` (which computes them from a live chain). The
policy package stays free of ``cryptography``; it only checks the syntax of
a pin (:func:`ssa_engine.policy.schema.valid_pin`).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

from cryptography import x509

_SEQUENCE = 0x30
_EXPLICIT_0 = 0xA0  # [0] EXPLICIT Version


def _element(der: bytes, pos: int) -> tuple[int, int, int]:
    """The DER element at ``pos``: (tag, content start, end). ValueError if malformed."""
    if pos + 2 > len(der):
        raise ValueError("truncated DER")
    tag, first = der[pos], der[pos + 1]
    if tag & 0x1F == 0x1F:
        raise ValueError("unexpected high-tag-number form in a TBSCertificate")
    start = pos + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or start + count > len(der):
            raise ValueError("bad DER length")
        length = int.from_bytes(der[start:start + count], "big")
        start += count
    end = start + length
    if end > len(der):
        raise ValueError("truncated DER")
    return tag, start, end


def spki_der(cert: x509.Certificate) -> bytes:
    """The certificate's SubjectPublicKeyInfo, byte for byte as it is encoded in it.

    RFC 7469 section 2.4 hashes the DER SPKI of the certificate. Taking the
    bytes from the TBSCertificate (rather than re-encoding the parsed key)
    works for every key type, including those ``cryptography`` cannot load.
    """
    der = cert.tbs_certificate_bytes
    tag, pos, end = _element(der, 0)
    if tag != _SEQUENCE or end != len(der):
        raise ValueError("TBSCertificate is not one DER SEQUENCE")
    # RFC 5280 section 4.1: [0] version (optional), serialNumber, signature,
    # issuer, validity, subject, subjectPublicKeyInfo
    tag, _, next_pos = _element(der, pos)
    if tag == _EXPLICIT_0:
        pos = next_pos
    for _ in range(5):
        _, _, pos = _element(der, pos)
    tag, _, end = _element(der, pos)
    if tag != _SEQUENCE:
        raise ValueError("no SubjectPublicKeyInfo where RFC 5280 puts it")
    return der[pos:end]


def spki_pin(cert: x509.Certificate) -> str:
    """``sha256/`` + base64 of the SHA-256 of the certificate's DER SPKI (RFC 7469 section 2.4)."""
    return "sha256/" + base64.b64encode(hashlib.sha256(spki_der(cert)).digest()).decode("ascii")


def chain_pins(certs: Sequence[x509.Certificate]) -> list[str]:
    """The pin of every certificate in ``certs``, in chain order (leaf first).

    A connection to a pinned host passes when any of these is among the
    host's pins. RFC 7469 section 2.6 computes them over the *validated*
    chain (trust anchor included) and ignores superfluous certificates the
    peer sent: pass the verified chain, not the peer's list.
    """
    return [spki_pin(c) for c in certs]
