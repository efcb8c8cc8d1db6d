"""Read the certificate chain a TLS server serves, verified, for ``ssa-admin pin add --from``.

The stdlib ``ssl`` module does the connection with its default client
verification (CERT_REQUIRED, host name checked against ``server_name``);
nothing here weakens it, so a chain that does not verify is never returned
and so never pinned. The chain returned is the one OpenSSL *built and
verified* (leaf first, trust anchor last), which is what pins are checked
against (RFC 7469 section 2.6), not the list the server happened to send.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from ssa_engine.store.pins import chain_pins

#: Security parameter: how long to wait for the TCP connection, then again
#: for the TLS handshake.
TIMEOUT = 10.0

_NOT_TLS = ("WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "RECORD_LAYER_FAILURE",
            "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST", "HTTPS_PROXY_REQUEST")
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


class FetchError(Exception):
    """The chain could not be read or did not verify; the text is one line for people."""


@dataclass(frozen=True, slots=True)
class LiveChain:
    address: str
    server_name: str
    #: what the chain was verified against, for people
    trust: str
    version: str
    certs: list[x509.Certificate]


def _verified_chain_der(tls: ssl.SSLSocket) -> list[bytes]:
    public: Any = getattr(tls, "get_verified_chain", None)  # Python 3.13: DER bytes
    if public is not None:
        return [bytes(c) for c in public()]
    # Python 3.10-3.12 have the same call on the private _ssl object
    # (bpo-18233), returning _ssl.Certificate objects.
    private = getattr(getattr(tls, "_sslobj", None), "get_verified_chain", None)
    if private is None:
        raise FetchError("this Python's ssl module cannot return the verified chain; "
                         "give the pins explicitly")
    import _ssl

    return [c.public_bytes(_ssl.ENCODING_DER) for c in private()]


def fetch_chain(host: str, port: int, server_name: str, cafile: str | None = None,
                timeout: float = TIMEOUT) -> LiveChain:
    """Connect to ``host:port``, verify the chain for ``server_name``, return it.

    ``cafile`` replaces the system trust store. Raises :class:`FetchError`.
    """
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    trust = cafile or "the system trust store"
    try:
        ctx = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise FetchError(f"{cafile}: cannot load CA certificates from it "
                         f"({getattr(exc, 'strerror', None) or exc})") from None
    stage = "connecting"
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            stage = "the TLS handshake"  # with a timeout of its own (the socket's)
            with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
                ders = _verified_chain_der(tls)
                version = tls.version() or "TLS"
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve {host}: {exc.strerror}") from None
    except TimeoutError:
        raise FetchError(f"{address}: no answer within {timeout:g} s ({stage})") from None
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or exc.reason or str(exc)
        raise FetchError(
            f"{address}: the certificate chain does not verify for {server_name} against "
            f"{trust}: {reason}. Nothing was pinned; pass --cafile with the right CA, or "
            "give pins you obtained another way (ssa-admin pin add HOST sha256/...)") from None
    except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
        raise FetchError(f"{address}: the server closed the connection during {stage}") from None
    except ssl.SSLError as exc:
        if exc.reason in _NOT_TLS:
            raise FetchError(f"{address}: does not speak TLS ({exc.reason})") from None
        raise FetchError(f"{address}: TLS handshake failed ({exc.reason or exc})") from None
    except ConnectionRefusedError:
        raise FetchError(f"{address}: connection refused") from None
    except OSError as exc:
        raise FetchError(f"{address}: {exc.strerror or exc} ({stage})") from None
    certs = [x509.load_der_x509_certificate(d) for d in ders]
    return LiveChain(address, server_name, trust, version, certs)


# -- describing it -----------------------------------------------------------------------
def _cn(name: x509.Name) -> str:
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else name.rfc4514_string() or "-"


def key_text(cert: x509.Certificate) -> str:
    """``EC P-256``, ``RSA 2048``, ``Ed25519`` ... for people."""
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

    try:
        key = cert.public_key()
    except Exception:  # a key type cryptography cannot load is still pinnable
        return cert.public_key_algorithm_oid.dotted_string
    if isinstance(key, rsa.RSAPublicKey | dsa.DSAPublicKey):
        return f"{'RSA' if isinstance(key, rsa.RSAPublicKey) else 'DSA'} {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {_CURVES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(key).__name__


def _role(i: int, certs: list[x509.Certificate]) -> str:
    if i == 0:
        return "leaf"
    if i == len(certs) - 1 and certs[i].subject == certs[i].issuer:
        return "root"
    return "intermediate"


def describe(chain: LiveChain) -> list[dict[str, Any]]:
    """One row per certificate: position, role, subject and issuer CN, not after, key, pin."""
    return [{"position": i, "role": _role(i, chain.certs), "subject": _cn(c.subject),
             "issuer": _cn(c.issuer),
             "not_after": c.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
             "key": key_text(c), "pin": pin}
            for i, (c, pin) in enumerate(zip(chain.certs, chain_pins(chain.certs), strict=True))]


def default_positions(n: int) -> list[int]:
    """The leaf and the certificate that issued it.

    The leaf's key changes at renewal with most ACME clients; the issuer's
    when the CA rotates its intermediates: pinning both survives either
    change alone.
    """
    return [0, 1] if n > 1 else [0]


def parse_positions(text: str, n: int) -> list[int] | None:
    """``0,1`` / ``0 2`` / ``all`` -> positions in a chain of ``n``; None if not that."""
    text = text.strip().lower()
    if text == "all":
        return list(range(n))
    try:
        chosen = [int(p) for p in text.replace(" ", ",").split(",") if p]
    except ValueError:
        return None
    if not chosen or any(not 0 <= p < n for p in chosen):
        return None
    return list(dict.fromkeys(chosen))


ADVICE = (
    "Pin the key of the issuing intermediate or of the leaf, and keep a backup pin: "
    "RFC 7469 section 4.3 asks for at least one pin of a key that is not in the current "
    "chain (a spare key kept offline for the next certificate, or another CA's "
    "intermediate), so that losing or replacing one key does not lock every client out. "
    "The leaf's key changes at each renewal for most ACME clients; an intermediate's "
    "when the CA rotates it. The suggestion pins both, so either change alone keeps the "
    "host reachable; add a backup with 'ssa-admin pin add HOST sha256/...'."
)
