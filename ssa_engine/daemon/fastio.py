"""The data-path calls into OpenSSL that pyOpenSSL does not expose cheaply.

pyOpenSSL's ``Connection.recv_into`` allocates and copies a temporary buffer
on every call; the relay instead calls ``SSL_read``/``SSL_write`` from the
bindings that ``cryptography`` ships, on preallocated buffers (ARCHITECTURE.md
section 7). Everything that reaches below pyOpenSSL's public API lives here,
behind :func:`check_capabilities`.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL, crypto
from OpenSSL._util import ffi, lib  # the bindings cryptography ships

_REQUIRED = (
    "SSL_read",
    "SSL_write",
    "SSL_get_error",
    "SSL_get0_param",
    "X509_VERIFY_PARAM_set1_host",
    "X509_VERIFY_PARAM_set1_ip",
    "X509_VERIFY_PARAM_set_hostflags",
    "SSL_get_verify_result",
    "X509_verify_cert_error_string",
    "SSL_CTX_set1_curves_list",
    "X509_NAME_oneline",
    "SSL_get_peer_certificate",
    "X509_get_subject_name",
    "OPENSSL_free",
    "X509_digest",
    "EVP_get_digestbyname",
)

WANT_READ = lib.SSL_ERROR_WANT_READ
WANT_WRITE = lib.SSL_ERROR_WANT_WRITE
ZERO_RETURN = lib.SSL_ERROR_ZERO_RETURN


class MissingCapability(RuntimeError):
    """The OpenSSL bindings lack a function the engine needs."""


def check_capabilities() -> None:
    missing = [name for name in _REQUIRED if not hasattr(lib, name)]
    if missing:
        raise MissingCapability(
            "the OpenSSL bindings of the installed cryptography package lack "
            + ", ".join(missing)
            + "; install a cryptography/pyOpenSSL pair from the supported range"
        )


class Buffer:
    """A preallocated byte buffer with a C pointer for SSL_read/SSL_write."""

    __slots__ = ("data", "view", "ptr", "size")

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.view = memoryview(self.data)
        self.ptr = ffi.from_buffer(self.data)
        self.size = size


def ssl_read(conn: SSL.Connection, buf: Buffer, offset: int) -> int:
    """SSL_read into ``buf`` at ``offset``.

    Returns the byte count (> 0), or ``-WANT_READ`` / ``-WANT_WRITE``. Raises
    ``SSL.ZeroReturnError`` on close_notify and the pyOpenSSL exception for
    any other failure.
    """
    ssl = conn._ssl  # noqa: SLF001
    n = lib.SSL_read(ssl, buf.ptr + offset, buf.size - offset)
    if n > 0:
        return int(n)
    return _failed(conn, ssl, n)


def ssl_write(conn: SSL.Connection, buf: Buffer, start: int, end: int) -> int:
    """SSL_write ``buf[start:end]``; same returns as :func:`ssl_read`."""
    ssl = conn._ssl  # noqa: SLF001
    n = lib.SSL_write(ssl, buf.ptr + start, end - start)
    if n > 0:
        return int(n)
    return _failed(conn, ssl, n)


def _failed(conn: SSL.Connection, ssl: Any, result: int) -> int:
    err = lib.SSL_get_error(ssl, result)
    if err == WANT_READ or err == WANT_WRITE:
        return -int(err)
    conn._raise_ssl_error(ssl, result)  # noqa: SLF001 - raises the right subclass
    raise SSL.Error("SSL call failed")  # not reached


def set_verify_host(conn: SSL.Connection, host: str, ip: bytes | None) -> None:
    """Make OpenSSL check the peer certificate against ``host`` (RFC 6125)."""
    param = lib.SSL_get0_param(conn._ssl)  # noqa: SLF001
    if ip is not None:
        ok = lib.X509_VERIFY_PARAM_set1_ip(param, ip, len(ip))
    else:
        name = host.encode("idna") if not host.isascii() else host.encode("ascii")
        lib.X509_VERIFY_PARAM_set_hostflags(param, lib.X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS)
        ok = lib.X509_VERIFY_PARAM_set1_host(param, name, len(name))
    if ok != 1:
        raise ValueError(f"cannot verify against host {host!r}")


def verify_result(conn: SSL.Connection) -> tuple[int, str]:
    code = int(lib.SSL_get_verify_result(conn._ssl))  # noqa: SLF001
    text = ffi.string(lib.X509_verify_cert_error_string(code)).decode("ascii", "replace")
    return code, text


def set_groups(ctx: SSL.Context, groups: tuple[str, ...]) -> tuple[str, ...]:
    """Set the key-exchange groups; drop those this OpenSSL lacks. Returns the set."""
    kept = list(groups)
    while kept:
        rc = lib.SSL_CTX_set1_curves_list(ctx._context, ":".join(kept).encode())  # noqa: SLF001
        if rc == 1:
            lib.ERR_clear_error()
            return tuple(kept)
        lib.ERR_clear_error()
        # find one the library refuses on its own and drop it
        for g in kept:
            if lib.SSL_CTX_set1_curves_list(ctx._context, g.encode()) != 1:  # noqa: SLF001
                kept.remove(g)
                lib.ERR_clear_error()
                break
        else:
            break
    raise ValueError(f"none of the groups {':'.join(groups)} is available")


def oneline(name: Any) -> str:
    """OpenSSL's one-line form of an X509_NAME (``/C=US/O=Example/CN=...``)."""
    buf = lib.X509_NAME_oneline(name, ffi.NULL, 0)
    try:
        return ffi.string(buf).decode("utf-8", "replace")
    finally:
        lib.OPENSSL_free(buf)


def peer_subject_oneline(conn: SSL.Connection) -> str:
    cert = conn.get_peer_certificate()
    if cert is None:
        return ""
    return oneline(lib.X509_get_subject_name(cert._x509))  # noqa: SLF001


def group_name(conn: SSL.Connection) -> str | None:
    """The key-exchange group of the handshake (OpenSSL 3.2+), None if unknown."""
    if not getattr(lib, "Cryptography_HAS_SSL_GET0_GROUP_NAME", 0):
        return None
    name = lib.SSL_get0_group_name(conn._ssl)  # noqa: SLF001
    return None if name == ffi.NULL else ffi.string(name).decode("ascii", "replace")


_SHA256 = lib.EVP_get_digestbyname(b"sha256")


def cert_sha256(cert: crypto.X509) -> bytes:
    """The certificate's SHA-256 fingerprint, raw (``X509.digest`` formats it
    as hex with colons, one Python call per byte)."""
    out = ffi.new("unsigned char[]", 32)
    size = ffi.new("unsigned int *")
    if lib.X509_digest(cert._x509, _SHA256, out, size) != 1:  # noqa: SLF001
        lib.ERR_clear_error()
        raise ValueError("X509_digest failed")
    return bytes(ffi.buffer(out, size[0]))


def session_reused(conn: SSL.Connection) -> bool:
    return bool(lib.SSL_session_reused(conn._ssl))  # noqa: SLF001


def set_sigalgs(ctx: SSL.Context, sigalgs: tuple[str, ...]) -> None:
    """Limit the signature algorithms offered and accepted (the level's list)."""
    if not sigalgs:
        return
    if lib.SSL_CTX_set1_sigalgs_list(ctx._context, ":".join(sigalgs).encode()) != 1:  # noqa: SLF001
        lib.ERR_clear_error()
        raise ValueError(f"OpenSSL refuses the signature algorithms {':'.join(sigalgs)}")


def weak_key(certs: list[Any], min_rsa_bits: int, min_ec_bits: int) -> str | None:
    """Describe the first certificate whose key is below the level's minimum, else None.

    OpenSSL's security level bounds key sizes too, but more loosely than the
    levels promise (level 1 allows RSA-1024, level 2 allows P-224).
    """
    for cert in certs:
        pkey = lib.X509_get_pubkey(cert._x509)  # noqa: SLF001
        if pkey == ffi.NULL:
            continue
        try:
            kind, bits = lib.EVP_PKEY_id(pkey), lib.EVP_PKEY_bits(pkey)
        finally:
            lib.EVP_PKEY_free(pkey)
        if kind == lib.EVP_PKEY_RSA and bits < min_rsa_bits:
            return f"RSA-{bits} key in {oneline(lib.X509_get_subject_name(cert._x509))} " \
                   f"(the policy needs {min_rsa_bits} bits)"  # noqa: SLF001
        if kind == lib.EVP_PKEY_EC and bits < min_ec_bits:
            return f"{bits}-bit EC key in {oneline(lib.X509_get_subject_name(cert._x509))} " \
                   f"(the policy needs {min_ec_bits} bits)"  # noqa: SLF001
    return None
