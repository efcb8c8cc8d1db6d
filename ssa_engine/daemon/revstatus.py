"""Revocation answers: validate OCSP responses and CRLs for one certificate.

No I/O and no clock: the caller passes the bytes it fetched (or the server
stapled) and ``now``. Everything that is not a trustworthy answer for this
certificate raises :class:`InvalidAnswer` with a few words saying why, and
the caller tries its next source:

- an OCSP response (RFC 6960) counts when it is successful, signed by the
  issuer or by a responder certificate that the issuer issued for
  id-kp-OCSPSigning (section 4.2.2.2), answers for this certificate's
  CertID, and is current: thisUpdate not in the future and nextUpdate not
  past, each with ``CLOCK_SKEW`` of tolerance (section 4.2.2.1);
- a CRL (RFC 5280 section 6.3) counts when the issuer signed it with a key
  allowed to sign CRLs, it covers this certificate's distribution point, it
  is current, and it is a complete CRL (no delta, no indirect or partial
  CRL, no critical extension this module does not understand).
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    CRLEntryExtensionOID,
    ExtendedKeyUsageOID,
    ExtensionOID,
)

#: Security parameter: clock difference tolerated on thisUpdate/nextUpdate.
CLOCK_SKEW = dt.timedelta(minutes=5)
#: Security parameter: how long an answer without nextUpdate counts as current
#: (RFC 6960 section 4.2.2.1 lets a responder leave it out; RFC 5280 does not).
MAX_AGE_WITHOUT_NEXT_UPDATE = dt.timedelta(hours=1)
#: Security parameter: OCSP responders and CRLs taken from one certificate.
MAX_SOURCES = 2


class Status(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"


class InvalidAnswer(Exception):
    """Not a trustworthy answer for this certificate (the message says why)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: Status
    #: where it came from, for messages: "stapled OCSP response", "CRL http://..."
    source: str
    #: until when it is current (nextUpdate, or thisUpdate + MAX_AGE_WITHOUT_NEXT_UPDATE)
    valid_until: dt.datetime
    reason: str | None = None  # REVOKED: the reason code's name, if given
    revoked_at: dt.datetime | None = None

    def describe(self, cert: x509.Certificate) -> str:
        """The TLS_ERROR text for a revoked certificate."""
        reason = self.reason or "no reason given"
        since = f", since {self.revoked_at:%Y-%m-%d %H:%M:%S} UTC" if self.revoked_at else ""
        return (f"certificate revoked: {cert.subject.rfc4514_string()} (serial "
                f"{cert.serial_number:X}), reason {reason}{since}, according to the {self.source}")


def sources(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """The ``http://`` OCSP responders (AIA) and CRLs (distribution points) it names."""
    responders: list[str] = []
    crls: list[str] = []
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
        responders = [d.access_location.value for d in aia
                      if d.access_method == AuthorityInformationAccessOID.OCSP
                      and isinstance(d.access_location, x509.UniformResourceIdentifier)]
    except x509.ExtensionNotFound:
        pass
    try:
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        for point in cdp:
            # a partial (reasons) or indirect (crl_issuer) point cannot say "good"
            if point.full_name and point.reasons is None and point.crl_issuer is None:
                crls += [n.value for n in point.full_name
                         if isinstance(n, x509.UniformResourceIdentifier)]
    except x509.ExtensionNotFound:
        pass
    http = [u for u in responders if u.lower().startswith("http://")]
    return http[:MAX_SOURCES], [u for u in crls if u.lower().startswith("http://")][:MAX_SOURCES]


def key_id(cert: x509.Certificate) -> bytes:
    """SHA-1 of the subjectPublicKey bits: an OCSP responder's byKey id (RFC 6960 4.2.1)."""
    return x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest  # type: ignore[arg-type]


def ocsp_request(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """A DER OCSP request for ``cert``; SHA-1 CertID as RFC 5019 responders expect."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303
    return builder.build().public_bytes(serialization.Encoding.DER)


def validate_ocsp(der: bytes, cert: x509.Certificate, issuer: x509.Certificate,
                  now: dt.datetime, source: str) -> Answer:
    """The answer of an OCSP response for ``cert``, or InvalidAnswer."""
    try:
        resp = ocsp.load_der_ocsp_response(der)
    except ValueError:
        raise InvalidAnswer("not an OCSP response") from None
    if resp.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise InvalidAnswer(f"the responder answered {resp.response_status.name.lower()}")
    single = _single_response(resp, cert, issuer)
    signer = _ocsp_signer(resp, issuer, now)
    try:
        _verify(signer.public_key(), resp.signature, resp.tbs_response_bytes,
                resp.signature_hash_algorithm)
    except (InvalidSignature, UnsupportedAlgorithm, TypeError, ValueError):
        raise InvalidAnswer("bad signature") from None
    valid_until = _current(single.this_update_utc, single.next_update_utc, now)
    status = single.certificate_status
    if status is ocsp.OCSPCertStatus.GOOD:
        return Answer(Status.GOOD, source, valid_until)
    if status is ocsp.OCSPCertStatus.REVOKED:
        reason = single.revocation_reason.value if single.revocation_reason else None
        return Answer(Status.REVOKED, source, valid_until, reason, single.revocation_time_utc)
    raise InvalidAnswer("the responder does not know the certificate (status unknown)")


def _single_response(resp: ocsp.OCSPResponse, cert: x509.Certificate,
                     issuer: x509.Certificate) -> ocsp.OCSPSingleResponse:
    ids: dict[str, tuple[bytes, bytes]] = {}
    for single in resp.responses:
        if single.serial_number != cert.serial_number:
            continue
        alg = single.hash_algorithm
        if alg.name not in ids:
            try:
                req = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, alg).build()
            except (ValueError, UnsupportedAlgorithm):
                continue
            ids[alg.name] = (req.issuer_name_hash, req.issuer_key_hash)
        if (single.issuer_name_hash, single.issuer_key_hash) == ids[alg.name]:
            return single
    raise InvalidAnswer("it answers for another certificate")


def _ocsp_signer(resp: ocsp.OCSPResponse, issuer: x509.Certificate,
                 now: dt.datetime) -> x509.Certificate:
    """The issuer itself, or a responder certificate it delegated to (RFC 6960 4.2.2.2)."""
    def is_responder(c: x509.Certificate) -> bool:
        if resp.responder_key_hash is not None:
            return resp.responder_key_hash == key_id(c)
        return resp.responder_name == c.subject

    if is_responder(issuer):
        return issuer
    for c in resp.certificates:
        if not is_responder(c):
            continue
        try:
            c.verify_directly_issued_by(issuer)
            eku = c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm,
                x509.ExtensionNotFound):
            continue
        if (ExtendedKeyUsageOID.OCSP_SIGNING in eku
                and c.not_valid_before_utc <= now + CLOCK_SKEW
                and now - CLOCK_SKEW <= c.not_valid_after_utc):
            return c
    raise InvalidAnswer("signed by a responder the issuer did not authorize")


def _verify(key: object, signature: bytes, data: bytes,
            algorithm: hashes.HashAlgorithm | None) -> None:
    if isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
        key.verify(signature, data, padding.PKCS1v15(), algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
        key.verify(signature, data, ec.ECDSA(algorithm))
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        key.verify(signature, data)
    else:
        raise UnsupportedAlgorithm("signature algorithm")


def _current(this_update: dt.datetime, next_update: dt.datetime | None,
             now: dt.datetime) -> dt.datetime:
    """Until when an answer is current; InvalidAnswer if it is not current now."""
    if this_update > now + CLOCK_SKEW:
        raise InvalidAnswer(f"issued in the future ({this_update:%Y-%m-%d %H:%M:%S} UTC)")
    until = next_update if next_update is not None else this_update + MAX_AGE_WITHOUT_NEXT_UPDATE
    if until < now - CLOCK_SKEW:
        raise InvalidAnswer(f"stale: its nextUpdate {until:%Y-%m-%d %H:%M:%S} UTC has passed")
    return until


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL in DER or PEM; InvalidAnswer if it is neither."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise InvalidAnswer("not a CRL") from None


def check_crl(crl: x509.CertificateRevocationList, url: str, issuer: x509.Certificate,
              now: dt.datetime) -> dt.datetime:
    """Check that ``crl`` is ``issuer``'s complete, current CRL for ``url``.

    Returns until when it is current; raises InvalidAnswer. The signature
    check is the expensive part: callers keep the result (see :func:`crl_answer`).
    """
    if crl.issuer != issuer.subject:
        raise InvalidAnswer("issued by another CA (indirect CRLs are not supported)")
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.crl_sign:
            raise InvalidAnswer("the issuer's key may not sign CRLs")
    except x509.ExtensionNotFound:
        pass
    for ext in crl.extensions:
        if ext.oid == ExtensionOID.DELTA_CRL_INDICATOR:
            raise InvalidAnswer("a delta CRL")
        if isinstance(ext.value, x509.IssuingDistributionPoint):
            idp = ext.value
            if (idp.only_contains_ca_certs or idp.only_contains_attribute_certs
                    or idp.indirect_crl or idp.only_some_reasons):
                raise InvalidAnswer("a partial CRL that does not cover this certificate")
            names = [n.value for n in idp.full_name or ()
                     if isinstance(n, x509.UniformResourceIdentifier)]
            if idp.full_name and url not in names:
                raise InvalidAnswer("the CRL of another distribution point")
        elif ext.critical:
            raise InvalidAnswer(f"unknown critical extension {ext.oid.dotted_string}")
    if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
        raise InvalidAnswer("bad signature")
    return _current(crl.last_update_utc, crl.next_update_utc, now)


#: estimated bytes of memory per serial number in a CRL's index (a Python int
#: of a 20-byte serial and its slot in a frozenset)
INDEX_BYTES_PER_ENTRY = 80


def crl_serials(crl: x509.CertificateRevocationList) -> frozenset[int]:
    """The serial numbers ``crl`` lists, for lookups in constant time.

    cryptography looks a serial number up by reading the CRL from its start
    (milliseconds for every 10,000 entries, on every connection); build this
    once per CRL, in a worker thread: it runs Python code between short calls,
    so the event loop keeps running meanwhile.
    """
    return frozenset(entry.serial_number for entry in crl)


def crl_answer(crl: x509.CertificateRevocationList, valid_until: dt.datetime,
               cert: x509.Certificate, source: str,
               serials: frozenset[int] | None = None) -> Answer:
    """What a checked CRL says about ``cert`` (``serials``: its :func:`crl_serials`)."""
    if serials is not None and cert.serial_number not in serials:
        return Answer(Status.GOOD, source, valid_until)
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is None:
        return Answer(Status.GOOD, source, valid_until)
    reason = None
    for ext in entry.extensions:
        if ext.oid == CRLEntryExtensionOID.CRL_REASON:
            reason = ext.value.reason
        elif ext.critical:  # a certificate issuer entry: an indirect CRL
            raise InvalidAnswer(f"unknown critical entry extension {ext.oid.dotted_string}")
    if reason is x509.ReasonFlags.remove_from_crl:  # only meaningful in delta CRLs
        return Answer(Status.GOOD, source, valid_until)
    return Answer(Status.REVOKED, source, valid_until, reason.value if reason else None,
                  entry.revocation_date_utc)
