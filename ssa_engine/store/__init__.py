"""The on-disk certificate store: written by ``ssa-admin``, read by the engine.

A pure library (standard library and ``cryptography`` only, no YAML, no
engine): ``Store(state_dir)`` reads and writes ``state_dir/certs``. The
caller picks the root (``ssa_engine.paths.state_dir()`` in the programs, a
temporary folder in tests). Layout and guarantees: docs/store.md.

>>> store = Store(root)
>>> store.add("example.com", read_material(cert, key, chain))  # doctest: +SKIP
>>> entry = store.current("example.com")                        # doctest: +SKIP
>>> entry.fullchain_pem, entry.key_pem, entry.domains          # doctest: +SKIP
"""

from __future__ import annotations

from .errors import (
    CertificateExpired,
    ChainError,
    CorruptEntry,
    InvalidMaterial,
    InvalidName,
    KeyMismatch,
    LockTimeout,
    NotFound,
    PEMError,
    StoreError,
    UnreadableFile,
    UnsupportedKeyType,
)
from .fsutil import FileLock
from .material import (
    KEY_TYPES,
    Material,
    ari_cert_id,
    certificate_domains,
    key_type,
    load_material,
    read_material,
    spki_pin,
)
from .meta import SOURCES, AcmeMeta, Meta, iso
from .names import name_for, validate_name
from .store import DEFAULT_LOCK_TIMEOUT, Entry, SNIIndex, Store, Version

__all__ = [
    "CertificateExpired", "ChainError", "CorruptEntry", "InvalidMaterial", "InvalidName",
    "KeyMismatch", "LockTimeout", "NotFound", "PEMError", "StoreError", "UnreadableFile",
    "UnsupportedKeyType", "FileLock", "KEY_TYPES", "Material", "ari_cert_id",
    "certificate_domains", "key_type", "load_material", "read_material", "spki_pin", "SOURCES",
    "AcmeMeta", "Meta", "iso", "name_for", "validate_name", "DEFAULT_LOCK_TIMEOUT", "Entry",
    "SNIIndex", "Store", "Version",
]
