"""Obtaining one certificate: order, prove control, finalize, store.

The steps are reported through a ``progress(step, detail)`` callback so that
the CLI can show them (a rich status line, or JSON events). Nothing is
written to the store until the certificate is in hand; the store then adds
it as a new version and switches ``current`` atomically, under the name's
lock, so a killed issuance leaves the store as it was.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import josepy as jose
from acme import errors as acme_errors
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ssa_engine.store import AcmeMeta, Store, Version, ari_cert_id, load_material

from . import polling
from .accounts import Account
from .client import Acme
from .errors import AcmeError, ChallengeError, explain_challenge
from .responders import Responder  # also registers the tls-alpn-01 challenge type

Progress = Callable[[str, str], None]

#: certificate key types (``--key-type``), as the store spells them
KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
#: how long the CA may take to validate all challenges, and to issue (seconds)
VALIDATION_TIMEOUT = 180
ISSUANCE_TIMEOUT = 180


class _NewOrder(messages.NewOrder):
    """newOrder with ``replaces`` (RFC 9773 section 5), which the acme library lacks."""

    replaces: str | None = jose.field("replaces", omitempty=True)


@dataclass
class IssueRequest:
    identifiers: Sequence[str]  # DNS names (``*.`` wildcards allowed) and IP addresses
    cert_name: str
    key_type: str = "ec-p256"
    profile: str | None = None
    preferred_chain: str | None = None  # issuer CN of the chain's top certificate
    replaces: str | None = None  # ARI certificate id of the certificate this one replaces
    deploy_hooks: tuple[str, ...] = ()
    ca_bundle: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


def generate_certificate_key(kind: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    if kind not in KEY_TYPES:
        raise AcmeError(f"--key-type {kind}: one of {', '.join(KEY_TYPES)}")
    if kind.startswith("ec-"):
        curve = ec.SECP256R1() if kind == "ec-p256" else ec.SECP384R1()
        return ec.generate_private_key(curve)
    return rsa.generate_private_key(65537, int(kind.split("-")[1]))


def normalize_identifiers(values: Sequence[str]) -> list[str]:
    """Lower-case names, canonical IPs, no duplicates, order kept; ValueError when bad."""
    out: list[str] = []
    for value in values:
        v = value.strip().rstrip(".").lower()
        try:
            v = str(ipaddress.ip_address(v.strip("[]")))
        except ValueError:
            labels = v.split(".")
            if labels[0] == "*":
                labels = labels[1:]
            if len(labels) < 2 or not all(
                    label and len(label) <= 63 and all(c.isalnum() or c == "-" for c in label)
                    and not label.startswith("-") and not label.endswith("-")
                    for label in labels):
                raise ValueError(f"{value!r} is not a host name, *.domain or IP address") from None
            v = v.encode("idna").decode("ascii") if not v.isascii() else v
        if v not in out:
            out.append(v)
    if not out:
        raise ValueError("no names given")
    return out


def make_csr(identifiers: Sequence[str], key: Any) -> bytes:
    sans: list[x509.GeneralName] = []
    for ident in identifiers:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ident)))
        except ValueError:
            sans.append(x509.DNSName(ident))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    first_dns = next((i for i in identifiers if not _is_ip(i)), None)
    if first_dns is not None and len(first_dns) <= 64:
        builder = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, first_dns)]))
    csr = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False).sign(
        key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def new_order(acme: Acme, identifiers: Sequence[str], csr_pem: bytes, *,
              profile: str | None, replaces: str | None) -> messages.OrderResource:
    idents = [messages.Identifier(typ=messages.IDENTIFIER_IP if _is_ip(i) else
                                  messages.IDENTIFIER_FQDN, value=i) for i in identifiers]
    body = _NewOrder(identifiers=idents, profile=profile, replaces=replaces)
    client = acme.client
    response = acme.call(client._post, acme.directory["newOrder"], body,  # noqa: SLF001
                         context="placing the order")
    order = messages.Order.from_json(response.json())
    authzrs = [
        acme.call(lambda url=url: client._authzr_from_response(  # noqa: SLF001
            client._post_as_get(url), uri=url), context="reading an authorization")  # noqa: SLF001
        for url in order.authorizations
    ]
    return messages.OrderResource(body=order, uri=response.headers.get("Location"),
                                  authorizations=authzrs, csr_pem=csr_pem)


def check_profile(acme: Acme, profile: str | None) -> None:
    if profile is None:
        return
    offered = (acme.directory.meta.profiles if acme.directory.meta else None) or {}
    if profile not in offered:
        names = ", ".join(sorted(offered)) or "none"
        raise AcmeError(f"--profile {profile}: {acme.directory_url} does not offer it "
                        f"(profiles offered: {names})")


def _identifier_of(authzr: messages.AuthorizationResource) -> str:
    value = str(authzr.body.identifier.value)
    return f"*.{value}" if authzr.body.wildcard else value


def prove_control(acme: Acme, account: Account, order: messages.OrderResource,
                  responder: Responder, progress: Progress) -> messages.OrderResource:
    """Answer every pending authorization with ``responder`` and wait for the CA."""
    pending = [a for a in order.authorizations if a.body.status != messages.STATUS_VALID]
    for authzr in pending:
        ident = _identifier_of(authzr)
        offered = [c for c in authzr.body.challenges if c.chall.typ == responder.challenge_type]
        if not offered:
            kinds = ", ".join(sorted({str(c.to_partial_json().get("type"))
                                      for c in authzr.body.challenges}))
            hint = " (wildcard names need dns-01)" if ident.startswith("*.") else ""
            raise ChallengeError(f"{ident}: the CA offers no {responder.challenge_type} "
                                 f"challenge{hint}; it offers {kinds}")
        responder.add(ident, offered[0], account.key)
        progress("challenge", f"{ident}: {responder.challenge_type} ready")
    for authzr in pending:
        challb = next(c for c in authzr.body.challenges
                      if c.chall.typ == responder.challenge_type)
        acme.call(acme.client.answer_challenge, challb, challb.chall.response(account.key),
                  context=f"{_identifier_of(authzr)}: answering the challenge")
    if pending:
        progress("validation", f"waiting for the CA to validate {len(pending)} name(s)")
    try:
        order = polling.wait_for_authorizations(acme, order, VALIDATION_TIMEOUT)
    except acme_errors.ValidationError as exc:
        lines = []
        for failed in exc.failed_authzrs:
            ident = _identifier_of(failed)
            bad = [c for c in failed.body.challenges if c.error is not None] or \
                failed.body.challenges
            for c in bad:
                lines.append(explain_challenge(_raw_challenge(acme, c), ident))
        raise AcmeError("\n".join(lines) or "validation failed") from None
    except acme_errors.TimeoutError:
        raise AcmeError(f"the CA did not finish validating within {VALIDATION_TIMEOUT} s") from None
    for authzr in order.authorizations:
        progress("validated", _identifier_of(authzr))
    return order


def _raw_challenge(acme: Acme, challb: messages.ChallengeBody) -> dict[str, Any]:
    """The challenge as the CA wrote it, with its validationRecord (the acme library
    drops that field): what the CA fetched and which address it used."""
    try:
        doc = acme.client._post_as_get(challb.uri).json()  # noqa: SLF001
        if isinstance(doc, dict):
            return doc
    except Exception:  # noqa: BLE001 - the explanation is best effort
        pass
    doc = challb.to_json()
    return doc if isinstance(doc, dict) else {}


def choose_chain(default: str, alternatives: Sequence[str], preferred: str | None) -> str:
    """The chain whose topmost certificate's issuer CN is ``preferred`` (else the default)."""
    if not preferred:
        return default
    for pem in (default, *alternatives):
        certs = x509.load_pem_x509_certificates(pem.encode())
        top = certs[-1]
        cns = [a.value for a in top.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if preferred in cns:
            return pem
    return default


def issue(acme: Acme, account: Account, responder: Responder, request: IssueRequest,
          store: Store, progress: Progress) -> Version:
    """Run one issuance to the end; the new version is current when this returns."""
    identifiers = normalize_identifiers(request.identifiers)
    check_profile(acme, request.profile)
    key = generate_certificate_key(request.key_type)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    csr_pem = make_csr(identifiers, key)
    with store.lock(request.cert_name, timeout=0) as lock:
        responder.start()
        try:
            progress("order", ", ".join(identifiers) + (f" (profile {request.profile})"
                                                        if request.profile else ""))
            order = new_order(acme, identifiers, csr_pem, profile=request.profile,
                              replaces=request.replaces)
            order = prove_control(acme, account, order, responder, progress)
        finally:
            responder.stop()
        progress("finalize", "sending the certificate request")
        try:
            order = polling.finalize(acme, order, ISSUANCE_TIMEOUT,
                                     alternatives=bool(request.preferred_chain))
        except acme_errors.IssuanceError as exc:
            raise AcmeError(f"the CA refused to issue: {exc}") from None
        except acme_errors.TimeoutError:
            raise AcmeError(f"the CA did not issue within {ISSUANCE_TIMEOUT} s") from None
        progress("download", "certificate chain")
        fullchain = choose_chain(order.fullchain_pem, order.alternative_fullchains_pem or (),
                                 request.preferred_chain)
        certs = x509.load_pem_x509_certificates(fullchain.encode())
        leaf_pem = certs[0].public_bytes(serialization.Encoding.PEM)
        chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs[1:])
        material = load_material(leaf_pem, key_pem, chain_pem, cert_label="issued certificate",
                                 key_label="new key", chain_label="issued chain")
        meta = AcmeMeta(server=acme.directory_url, account=account.uri, order=order.uri,
                        ari_cert_id=ari_cert_id(certs[0]), profile=request.profile,
                        ca_bundle=request.ca_bundle, challenge=responder.challenge_type,
                        deploy_hooks=request.deploy_hooks,
                        options={**responder.describe(), **request.options,
                                 "key_type": request.key_type, "domains": identifiers,
                                 "preferred_chain": request.preferred_chain})
        version = store.add(request.cert_name, material, source="acme", acme=meta, lock=lock)
        progress("stored", f"{request.cert_name} version {version.number}")
        return version
