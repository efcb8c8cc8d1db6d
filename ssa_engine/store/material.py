"""Certificates and keys on their way into the store: parse, check, describe.

:func:`read_material` (files) and :func:`load_material` (bytes) return a
:class:`Material` only when the certificate can be served: the key is an
unencrypted key of a supported type (ARCHITECTURE.md section 8:
``ec-p256 | ec-p384 | rsa-2048 | rsa-3072 | rsa-4096``) and belongs to the
leaf; each chain certificate issued the one before it (name and signature);
the leaf has not expired. A leaf that is not valid yet is accepted with a
warning (a certificate may well be installed ahead of its start date).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import NameOID

from .errors import (
    CertificateExpired,
    ChainError,
    KeyMismatch,
    PEMError,
    UnreadableFile,
    UnsupportedKeyType,
)

#: the key types the store accepts, spelled as ``cert issue --key-type`` spells them
KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
_CURVES = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}
_RSA_SIZES = (2048, 3072, 4096)

#: an input file larger than this is not a certificate or key (a security bound:
#: ``--cert /dev/zero`` must not exhaust memory)
MAX_INPUT = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Material:
    """A checked leaf certificate, its chain and its private key."""

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # issuing certificates, leaf excluded
    key: PrivateKeyTypes
    key_type: str
    warnings: tuple[str, ...] = ()

    @property
    def cert_pem(self) -> bytes:
        return self.leaf.public_bytes(serialization.Encoding.PEM)

    @property
    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    @property
    def fullchain_pem(self) -> bytes:
        return self.cert_pem + self.chain_pem

    @property
    def key_pem(self) -> bytes:
        # PKCS#8, whatever form it came in: one format for every reader
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    @property
    def domains(self) -> tuple[str, ...]:
        return certificate_domains(self.leaf)


# -- descriptions of a certificate --------------------------------------------------
def certificate_domains(cert: x509.Certificate) -> tuple[str, ...]:
    """Names the certificate is for: SAN DNS names (lower case) and IP addresses.

    With no subjectAltName, the subject's common name (what old clients used).
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        names = [str(a.value) for a in cns]
    else:
        names = list(san.get_values_for_type(x509.DNSName))
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    seen: dict[str, None] = {}
    for n in names:
        seen.setdefault(n.lower().rstrip("."), None)
    return tuple(seen)


def spki_pin(key: PublicKeyTypes) -> str:
    """The SPKI SHA-256 pin of a public key, ``sha256/BASE64`` (RFC 7469 section 2.4)."""
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode()


def key_type(key: PrivateKeyTypes | PublicKeyTypes) -> str:
    """``ec-p256`` ... ``rsa-4096``; :class:`UnsupportedKeyType` for anything else."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        kind = _CURVES.get(key.curve.name)
        if kind:
            return kind
        what = f"EC key on curve {key.curve.name}"
    elif isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size in _RSA_SIZES:
            return f"rsa-{key.key_size}"
        what = f"RSA key of {key.key_size} bits"
    else:
        what = type(key).__name__.removeprefix("_").replace("PrivateKey", " key")
    raise UnsupportedKeyType(f"{what} is not supported; use one of {', '.join(KEY_TYPES)}")


def subject_text(name: x509.Name) -> str:
    """A distinguished name as RFC 4514 text (``CN=R11,O=Let's Encrypt,C=US``)."""
    return name.rfc4514_string()


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def ari_cert_id(cert: x509.Certificate) -> str | None:
    """The ACME Renewal Information certificate ID (RFC 9773 section 4.1).

    ``base64url(AKI keyIdentifier) "." base64url(DER serial bytes)``; None when
    the certificate has no authority key identifier.
    """
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    if aki.key_identifier is None:
        return None
    n = cert.serial_number
    # the INTEGER's content octets: two's complement, a leading 0 when the top bit is set
    serial = n.to_bytes((n.bit_length() + 8) // 8, "big")

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{b64(aki.key_identifier)}.{b64(serial)}"


# -- parsing and checking -------------------------------------------------------------
def _read(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_INPUT + 1)
    except FileNotFoundError:
        raise UnreadableFile(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise UnreadableFile(f"{path}: is a directory, not a {what} file") from None
    except OSError as exc:
        raise UnreadableFile(f"{path}: cannot read the {what} file: {exc.strerror}") from None
    if len(data) > MAX_INPUT:
        raise PEMError(f"{path}: larger than {MAX_INPUT // 1024} KiB; not a {what} file")
    return data


def read_material(cert: Path, key: Path, chain: Path | None = None, *,
                  now: dt.datetime | None = None) -> Material:
    """Read and check a certificate, its private key and optionally its chain.

    ``cert`` may hold the leaf alone or the leaf followed by its chain.
    Errors name the file they are about.
    """
    return load_material(
        _read(cert, "certificate"), _read(key, "private key"),
        _read(chain, "chain") if chain is not None else b"",
        cert_label=str(cert), key_label=str(key),
        chain_label=str(chain) if chain is not None else "chain", now=now)


def _certificates(pem: bytes, label: str) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        hint = " (it holds a private key)" if b"PRIVATE KEY-----" in pem else ""
        raise PEMError(f"{label}: no PEM certificate found{hint}")
    try:
        return list(x509.load_pem_x509_certificates(pem))
    except ValueError as exc:
        raise PEMError(f"{label}: not a valid PEM certificate ({exc})") from None


def _private_key(pem: bytes, label: str) -> PrivateKeyTypes:
    if b"PRIVATE KEY-----" not in pem:
        hint = " (it holds a certificate)" if b"-----BEGIN CERTIFICATE" in pem else ""
        raise PEMError(f"{label}: no PEM private key found{hint}")
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise PEMError(f"{label}: the private key is encrypted; give it unencrypted "
                       "(openssl pkey -in KEY -out KEY.plain)") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PEMError(f"{label}: not a valid PEM private key ({exc})") from None


def _short(cert: x509.Certificate) -> str:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns:
        value = cns[0].value
        return "CN=" + (value.decode(errors="replace") if isinstance(value, bytes) else value)
    return subject_text(cert.subject) or "an empty subject"


def _check_chain(certs: Sequence[tuple[x509.Certificate, str]]) -> None:
    for i in range(len(certs) - 1):
        (child, _), (parent, parent_label) = certs[i], certs[i + 1]
        try:
            child.verify_directly_issued_by(parent)
        except ValueError:
            problem = "its subject is not the issuer named by"
        except (InvalidSignature, TypeError):
            problem = "its key did not sign"
        else:
            continue
        raise ChainError(
            f"{parent_label}: the chain is out of order or incomplete: certificate "
            f"{i + 2} ({_short(parent)}) does not issue certificate {i + 1} "
            f"({_short(child)}): {problem} certificate {i + 1}; list the leaf first, "
            "then each issuer in turn")


def load_material(cert_pem: bytes, key_pem: bytes, chain_pem: bytes = b"", *,
                  cert_label: str = "certificate", key_label: str = "private key",
                  chain_label: str = "chain", now: dt.datetime | None = None) -> Material:
    """Parse and check PEM inputs; the labels name them in error messages."""
    now = now or dt.datetime.now(dt.UTC)
    certs = [(c, cert_label) for c in _certificates(cert_pem, cert_label)]
    if chain_pem.strip():
        certs += [(c, chain_label) for c in _certificates(chain_pem, chain_label)]
    # a --cert that already holds the chain, given with --chain too: keep one copy
    unique: list[tuple[x509.Certificate, str]] = []
    for c, label in certs:
        if all(c != u for u, _ in unique):
            unique.append((c, label))
    leaf = unique[0][0]
    key = _private_key(key_pem, key_label)
    try:
        kind = key_type(key)
    except UnsupportedKeyType as exc:
        raise UnsupportedKeyType(f"{key_label}: {exc}") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, pub)
            != leaf.public_key().public_bytes(serialization.Encoding.DER, pub)):
        raise KeyMismatch(f"{key_label}: this private key does not belong to the certificate in "
                          f"{cert_label} ({_short(leaf)}, key {spki_pin(leaf.public_key())})")
    _check_chain(unique)

    warnings: list[str] = []
    not_after, not_before = leaf.not_valid_after_utc, leaf.not_valid_before_utc
    names = ", ".join(certificate_domains(leaf)) or _short(leaf)
    if not_after <= now:
        raise CertificateExpired(
            f"{cert_label}: the certificate for {names} expired on "
            f"{not_after:%Y-%m-%d %H:%M:%S} UTC; an expired certificate is never stored")
    if not_before > now:
        warnings.append(f"{cert_label}: the certificate for {names} is not valid until "
                        f"{not_before:%Y-%m-%d %H:%M:%S} UTC; clients will refuse it until then")
    if not certificate_domains(leaf):
        warnings.append(f"{cert_label}: the certificate names no host; it can only be served "
                        "as a listener's default certificate")
    return Material(leaf, tuple(c for c, _ in unique[1:]), key, kind, tuple(warnings))
