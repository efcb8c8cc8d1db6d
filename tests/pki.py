"""Test certificates, generated at test time (never committed)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.UTC)


@dataclass
class Pair:
    cert: Path
    key: Path
    chain: Path  # leaf + issuing intermediates (what a server sends)


def _name(cn: str, org: str = "Example") -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _key(kind: str):  # type: ignore[no-untyped-def]
    if kind.startswith("rsa"):  # "rsa" (2048 bits) or "rsa-BITS"
        bits = int(kind.partition("-")[2] or 2048)
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if kind == "ec-p224":
        return ec.generate_private_key(ec.SECP224R1())
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:  # type: ignore[no-untyped-def]
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CA:
    def __init__(self, directory: Path, name: str) -> None:
        self.dir = directory
        self.name = name
        self.key = _key("ec")
        subject = _name(f"{name} Root CA", org=name)
        self.subject = subject
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = directory / f"{name}-ca.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self,
        label: str,
        names: list[str],
        *,
        kind: str = "ec",
        days_from: int = -1,
        days_to: int = 10,
        client: bool = False,
        cn: str | None = None,
        ocsp_url: str | None = None,
        crl_url: str | None = None,
    ) -> Pair:
        """A leaf; ``ocsp_url``/``crl_url`` name its OCSP responder (AIA) and CRL."""
        key = _key(kind)
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn or (names[0] if names else label)))
            .issuer_name(self.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW + dt.timedelta(days=days_from))
            .not_valid_after(NOW + dt.timedelta(days=days_to))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        if ocsp_url:
            builder = builder.add_extension(x509.AuthorityInformationAccess([
                x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                       x509.UniformResourceIdentifier(ocsp_url))]), critical=False)
        if crl_url:
            builder = builder.add_extension(x509.CRLDistributionPoints([
                x509.DistributionPoint([x509.UniformResourceIdentifier(crl_url)], None, None,
                                       None)]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return _write(self.dir, label, cert, key)


def _write(directory: Path, label: str, cert: x509.Certificate, key) -> Pair:  # type: ignore[no-untyped-def]
    cert_path = directory / f"{label}.pem"
    key_path = directory / f"{label}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem_key(key))
    key_path.chmod(0o600)
    return Pair(cert_path, key_path, cert_path)


def self_signed(directory: Path, label: str, name: str) -> Pair:
    key = _key("ec")
    subject = _name(name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=10))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, label, cert, key)


@dataclass
class PKI:
    dir: Path
    ca: CA
    other_ca: CA
    server: Pair  # localhost, 127.0.0.1, ::1 (ECDSA)
    server_rsa: Pair
    expired: Pair
    not_yet_valid: Pair
    wrong_host: Pair
    self_signed: Pair
    untrusted: Pair  # signed by other_ca, which nobody trusts
    client: Pair


def make_pki(directory: Path) -> PKI:
    ca = CA(directory, "Test")
    other = CA(directory, "Rogue")
    local = ["localhost", "127.0.0.1", "::1"]
    return PKI(
        dir=directory,
        ca=ca,
        other_ca=other,
        server=ca.issue("server", local),
        server_rsa=ca.issue("server-rsa", local, kind="rsa"),
        expired=ca.issue("expired", local, days_from=-20, days_to=-2),
        not_yet_valid=ca.issue("future", local, days_from=3, days_to=20),
        wrong_host=ca.issue("wrong-host", ["other.example"]),
        self_signed=self_signed(directory, "self-signed", "localhost"),
        untrusted=other.issue("untrusted", local),
        client=ca.issue("client", [], client=True, cn="app-client"),
    )
