"""The Pebble fixtures work: real ACME orders, driven directly with the `acme` library.

This also shows how acme 5.x / josepy 2.x are driven (a cookbook for ssa_admin/acme/):

    key = jose.jwk.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))      # account key
    net = client.ClientNetwork(key, alg=jose.jwa.ES256, verify_ssl="ca.pem", user_agent="...")
    acme = client.ClientV2(client.ClientV2.get_directory(directory_url, net), net)
    acme.new_account(messages.NewRegistration.from_data(
        email="a@b", terms_of_service_agreed=True,
        external_account_binding=messages.ExternalAccountBinding.from_data(     # EAB only
            account_public_key=key.public_key(), kid=KID, hmac_key=HMAC, directory=acme.directory)))
    csr_pem = crypto_util.make_csr(domain_key_pem, ["a.example.test"])   # PKCS#8 PEM key
    order = acme.new_order(csr_pem, profile="shortlived")    # no profile: Pebble picks one
    for authzr in order.authorizations:      # skip those already valid (authorization reuse)
        challb = <the ChallengeBody in authzr.body.challenges whose .chall is an HTTP01/DNS01>
        response, validation = challb.chall.response_and_validation(net.key)
        ...publish validation (http-01: at challb.chall.path; dns-01: TXT at
           challb.chall.validation_domain_name(identifier))...
        acme.answer_challenge(challb, response)
    order = acme.poll_and_finalize(order, deadline)                      # -> order.fullchain_pem
    acme.renewal_time(leaf_pem)      # ARI: (random time in the suggested window, next check)
    acme.revoke(leaf_cert, reason)

Pebble sends no Retry-After here and the library sleeps a second between
polls: an order takes one to two seconds.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import josepy as jose
import pytest
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from .acme_server import PebbleServer
from .pki import CA

DEADLINE = dt.timedelta(seconds=60)


# -- an http-01 responder on the port Pebble's validation authority connects to -------------------

class Http01Responder:
    """Serves ``/.well-known/acme-challenge/<token>`` -> key authorization on 127.0.0.1:port."""

    def __init__(self, port: int) -> None:
        self.answers: dict[str, str] = {}   # path -> key authorization
        self.seen: list[tuple[str, str]] = []  # (Host header, path) of every request
        responder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                responder.seen.append((self.headers.get("Host", ""), self.path))
                body = responder.answers.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write((body or "not found").encode())

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def http01(pebble: PebbleServer) -> Iterator[Http01Responder]:
    responder = Http01Responder(pebble.http_port)
    try:
        yield responder
    finally:
        responder.close()


# -- acme-library helpers ------------------------------------------------------------------------

def acme_client(server: PebbleServer) -> client.ClientV2:
    """A client with a new ES256 account key (not registered yet)."""
    key = jose.jwk.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    # verify_ssl goes to requests' `verify`: a CA bundle path works as well as a bool
    # (acme types it as bool, hence the ignore)
    net = client.ClientNetwork(key, alg=jose.jwa.ES256,
                               verify_ssl=str(server.ca_bundle),  # type: ignore[arg-type]
                               user_agent="ssa-tests")
    directory = client.ClientV2.get_directory(server.directory_url, net)
    return client.ClientV2(directory, net)


def register(acme: client.ClientV2, **extra: Any) -> messages.RegistrationResource:
    return acme.new_account(messages.NewRegistration.from_data(
        email="admin@example.test", terms_of_service_agreed=True, **extra))


def new_key_and_csr(names: list[str]) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key, crypto_util.make_csr(key_pem, names)


def pick(authzr: messages.AuthorizationResource,
         kind: type[challenges.Challenge]) -> messages.ChallengeBody:
    for challb in authzr.body.challenges:
        if isinstance(challb.chall, kind):
            return challb
    raise AssertionError(f"no {kind.__name__} offered for {authzr.body.identifier.value}: "
                         f"{[c.chall.typ for c in authzr.body.challenges]}")


def verify_chain(fullchain_pem: str, roots_pem: str, name: str) -> list[x509.Certificate]:
    """Leaf + intermediates from the order, verified up to roots for `name` (RFC 5280 + CABF)."""
    leaf, *intermediates = x509.load_pem_x509_certificates(fullchain_pem.encode())
    verifier = (PolicyBuilder()
                .store(Store(x509.load_pem_x509_certificates(roots_pem.encode())))
                .build_server_verifier(x509.DNSName(name)))
    return verifier.verify(leaf, intermediates)


def sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName))


# -- tests ---------------------------------------------------------------------------------------

def test_directory_offers_ari_and_profiles(pebble: PebbleServer) -> None:
    acme = acme_client(pebble)
    try:
        assert acme.directory["renewalInfo"].endswith("/renewalInfo")  # ARI (RFC 9773)
        assert set(acme.directory.meta.profiles) == {"default", "shortlived"}
        assert not acme.external_account_required()
        assert pebble.resolve_a("anything.example.test") == ["127.0.0.1"]
    finally:
        acme.net.session.close()


def test_http01_issue_verify_ari_revoke(pebble: PebbleServer, http01: Http01Responder,
                                        tmp_path: Path) -> None:
    name = "a.example.test"
    acme = acme_client(pebble)
    try:
        regr = register(acme)
        assert regr.body.status == "valid"
        assert regr.uri.startswith(pebble.directory_url.removesuffix("/dir"))

        key, csr_pem = new_key_and_csr([name])
        # with no profile, Pebble picks one at random ("chaos"): ask for one
        order = acme.new_order(csr_pem, profile="default")
        assert [a.body.identifier.value for a in order.authorizations] == [name]
        for authzr in order.authorizations:
            assert authzr.body.status == messages.STATUS_PENDING  # authz reuse is off
            challb = pick(authzr, challenges.HTTP01)
            response, validation = challb.chall.response_and_validation(acme.net.key)
            http01.answers[challb.chall.path] = validation
            acme.answer_challenge(challb, response)
        order = acme.poll_and_finalize(order, dt.datetime.now() + DEADLINE)

        # Pebble's validation authority really fetched the token from our responder,
        # resolving the name through challtestsrv to 127.0.0.1
        assert (f"{name}:{pebble.http_port}", challb.chall.path) in http01.seen

        chain = verify_chain(order.fullchain_pem, pebble.roots_pem(), name)
        leaf = chain[0]
        assert sans(leaf) == {name}
        assert leaf.public_key() == key.public_key()
        assert chain[-1] == x509.load_pem_x509_certificate(pebble.roots_pem().encode())
        assert chain[1] == x509.load_pem_x509_certificate(pebble.intermediates_pem().encode())
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert dt.timedelta(days=89) < lifetime <= dt.timedelta(days=90, seconds=1)  # "default"

        # the same chain does not verify against another root, nor for another name
        with pytest.raises(VerificationError):
            verify_chain(order.fullchain_pem, CA(tmp_path, "other").pem.read_text(), name)
        with pytest.raises(VerificationError):
            verify_chain(order.fullchain_pem, pebble.roots_pem(), "b.example.test")

        # ARI: Pebble's own window lies within the lifetime; a forced one is honoured
        leaf_pem = leaf.public_bytes(serialization.Encoding.PEM)
        when, _next_check = acme.renewal_time(leaf_pem)
        assert when is not None
        assert leaf.not_valid_before_utc < when < leaf.not_valid_after_utc
        now = dt.datetime.now(dt.UTC)
        pebble.set_renewal_info(leaf_pem, now - dt.timedelta(hours=2), now - dt.timedelta(hours=1))
        when, _next_check = acme.renewal_time(leaf_pem)
        assert when is not None and when < now

        # revocation, as Pebble's management API records it
        assert pebble.cert_status(leaf) == {
            "Status": "Valid", "Serial": f"{leaf.serial_number:x}",
            "Certificate": leaf_pem.decode()}
        acme.revoke(leaf, 4)  # superseded
        status = pebble.cert_status(leaf_pem)
        assert status is not None
        assert (status["Status"], status["Reason"]) == ("Revoked", 4)
        assert pebble.cert_status(leaf.serial_number + 1) is None
    finally:
        acme.net.session.close()


def test_dns01_wildcard_shortlived(pebble: PebbleServer) -> None:
    names = ["d.example.test", "*.d.example.test"]
    acme = acme_client(pebble)
    try:
        register(acme)
        _key, csr_pem = new_key_and_csr(names)
        order = acme.new_order(csr_pem, profile="shortlived")
        assert order.body.profile == "shortlived"
        assert len(order.authorizations) == 2
        for authzr in order.authorizations:
            # both authorizations are for d.example.test; the wildcard's has wildcard=True
            domain = authzr.body.identifier.value
            assert domain == "d.example.test"
            challb = pick(authzr, challenges.DNS01)
            response, validation = challb.chall.response_and_validation(acme.net.key)
            pebble.add_dns01(domain, validation)
            assert validation in pebble.resolve_txt(challb.chall.validation_domain_name(domain))
            acme.answer_challenge(challb, response)
        order = acme.poll_and_finalize(order, dt.datetime.now() + DEADLINE)

        chain = verify_chain(order.fullchain_pem, pebble.roots_pem(), "x.d.example.test")
        leaf = chain[0]
        assert sans(leaf) == set(names)
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert dt.timedelta(days=5) < lifetime <= dt.timedelta(days=6, seconds=1)
    finally:
        pebble.clear_dns01("d.example.test")
        acme.net.session.close()
    assert pebble.resolve_txt("_acme-challenge.d.example.test") == []


def test_dns01_wrong_value_is_refused(pebble: PebbleServer) -> None:
    """The validation is real: a wrong TXT value fails the order, with Pebble's reason."""
    acme = acme_client(pebble)
    try:
        register(acme)
        _key, csr_pem = new_key_and_csr(["wrong.example.test"])
        order = acme.new_order(csr_pem)
        challb = pick(order.authorizations[0], challenges.DNS01)
        pebble.add_dns01("wrong.example.test", "not-the-key-authorization-digest")
        acme.answer_challenge(challb, challb.chall.response(acme.net.key))
        with pytest.raises(errors.ValidationError) as failed:
            acme.poll_and_finalize(order, dt.datetime.now() + DEADLINE)
        (authzr,) = failed.value.failed_authzrs
        assert authzr.body.status == messages.STATUS_INVALID
        (chall,) = [c for c in authzr.body.challenges if c.error is not None]
        assert chall.error is not None and chall.error.code == "unauthorized"
    finally:
        pebble.clear_dns01("wrong.example.test")
        acme.net.session.close()


def test_eab_required(pebble_eab: PebbleServer) -> None:
    assert pebble_eab.eab_kid is not None and pebble_eab.eab_hmac_key is not None
    acme = acme_client(pebble_eab)
    try:
        assert acme.external_account_required()
        with pytest.raises(messages.Error) as refused:
            register(acme)
        assert refused.value.code == "externalAccountRequired"

        def binding(kid: str, hmac_key: str) -> dict[str, Any]:
            assert acme.net.key is not None
            return messages.ExternalAccountBinding.from_data(
                account_public_key=acme.net.key.public_key(), kid=kid, hmac_key=hmac_key,
                directory=acme.directory)

        # a binding signed with another kid's key is refused
        other_kid = next(k for k in pebble_eab.eab_keys if k != pebble_eab.eab_kid)
        with pytest.raises(messages.Error) as refused:
            register(acme, external_account_binding=binding(
                pebble_eab.eab_kid, pebble_eab.eab_keys[other_kid]))
        assert refused.value.code == "unauthorized"

        regr = register(acme, external_account_binding=binding(
            pebble_eab.eab_kid, pebble_eab.eab_hmac_key))
        assert regr.body.status == "valid"
    finally:
        acme.net.session.close()
