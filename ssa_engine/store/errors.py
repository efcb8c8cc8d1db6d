"""The store's exceptions: one root, one subclass per kind of problem.

Every message names the file (or the certificate name) and says what is
wrong, so that ``ssa-admin`` can print ``str(exc)`` and nothing else.
"""

from __future__ import annotations


class StoreError(Exception):
    """Root of every error the certificate store raises."""


class InvalidName(StoreError):
    """A certificate name that cannot be a store folder (``../x``, ``a/b``, ...)."""


class NotFound(StoreError):
    """No such certificate, or no such version of it."""


class CorruptEntry(StoreError):
    """A stored version is missing a file, or its metadata or pointer is unreadable."""


class LockTimeout(StoreError):
    """Another process holds the certificate's lock for longer than we waited."""


class InvalidMaterial(StoreError):
    """A certificate, chain or key given to the store is not acceptable."""


class UnreadableFile(InvalidMaterial):
    """An input file is missing or cannot be read."""


class PEMError(InvalidMaterial):
    """An input is not PEM of the expected kind (certificate, unencrypted private key)."""


class UnsupportedKeyType(InvalidMaterial):
    """A key that is not one of ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096."""


class KeyMismatch(InvalidMaterial):
    """The private key is not the key of the leaf certificate."""


class ChainError(InvalidMaterial):
    """A chain certificate does not issue the one before it."""


class CertificateExpired(InvalidMaterial):
    """The leaf certificate's notAfter is in the past."""
