"""The certificate store: every version of every certificate, and which is current.

Layout (docs/store.md has the full description)::

    ROOT/                          the state directory
      certs/                       0700
        .locks/NAME.lock           flock target of NAME, 0600, never deleted
        NAME/                      0700, one folder per certificate name
          current -> versions/0002 the version in use (a relative symlink)
          versions/
            0001/ 0002/            0700, never changed once renamed into place
              cert.pem chain.pem fullchain.pem   0644
              privkey.pem          0600
              meta.json            0644

Writing a version: the files go into ``versions/.new-PID-RAND/`` (each
created with O_EXCL and its final mode, fsynced), the folder is fsynced and
renamed to the next number, then ``current`` is switched. A process killed at
any point leaves either the old ``current`` or the new one, never a
half-written file under a version number; leftovers of a killed writer start
with a dot and are removed by the next writer of that name.

The ``current`` pointer is a symlink swapped by rename(2), not a pointer
file, because (1) it gives other programs stable paths,
``certs/NAME/current/fullchain.pem`` and ``.../privkey.pem`` (like certbot's
``live/``), with no store format to learn; (2) symlink(2) writes the target
in one call, so unlike a pointer file there is no partial content to guard
against, and the swap is the same atomic rename. Readers resolve the link
once and then read every file from that version folder, so they never pair
the chain of one version with the key of another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import fsutil
from .errors import CorruptEntry, NotFound, StoreError
from .material import Material
from .meta import AcmeMeta, Meta
from .names import validate_name

CERTS = "certs"
LOCKS = ".locks"
VERSIONS = "versions"
CURRENT = "current"
CERT, CHAIN, FULLCHAIN, KEY, META = ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem",
                                     "meta.json")
#: seconds a writer waits for another writer of the same name
DEFAULT_LOCK_TIMEOUT = 10.0
_NUMBER = re.compile(r"[0-9]{4,}")
_NEW = ".new-"
_DELETED = ".deleted-"


@dataclass(frozen=True, slots=True)
class Version:
    """One stored version of a certificate (its description, not its PEM)."""

    name: str
    number: int
    path: Path  # the version's folder
    meta: Meta
    current: bool

    @property
    def domains(self) -> tuple[str, ...]:
        return self.meta.domains

    @property
    def cert_path(self) -> Path:
        return self.path / CERT

    @property
    def chain_path(self) -> Path:
        return self.path / CHAIN

    @property
    def fullchain_path(self) -> Path:
        return self.path / FULLCHAIN

    @property
    def key_path(self) -> Path:
        return self.path / KEY


@dataclass(frozen=True, slots=True)
class Entry:
    """The current version of a certificate with its PEM, as the engine serves it."""

    version: Version
    cert_pem: bytes
    chain_pem: bytes  # issuers only; empty for a self-signed certificate
    fullchain_pem: bytes  # leaf then issuers: what a server sends
    key_pem: bytes  # PKCS#8

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def domains(self) -> tuple[str, ...]:
        return self.version.meta.domains

    @property
    def meta(self) -> Meta:
        return self.version.meta


class SNIIndex(Mapping[str, tuple[str, ...]]):
    """Host name (or ``*.wildcard``) -> the store names whose current version covers it."""

    def __init__(self, table: Mapping[str, tuple[str, ...]],
                 errors: tuple[StoreError, ...] = ()) -> None:
        self._table = dict(table)
        #: entries left out because they could not be read (each names its file)
        self.errors = errors

    def __getitem__(self, key: str) -> tuple[str, ...]:
        return self._table[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def match(self, sni: str) -> tuple[str, ...]:
        """Store names for a client's SNI: exact matches first, then wildcards.

        A wildcard covers exactly one label (RFC 6125 section 6.4.3):
        ``*.example.com`` matches ``www.example.com`` but neither
        ``example.com`` nor ``a.b.example.com``.
        """
        host = sni.lower().rstrip(".")
        found = list(self._table.get(host, ()))
        if "." in host:
            for name in self._table.get("*." + host.split(".", 1)[1], ()):
                if name not in found:
                    found.append(name)
        return tuple(found)


class Store:
    """The certificate store under ``root`` (the state directory).

    Reading needs no lock: versions never change once published and the
    ``current`` switch is atomic. Writing takes the name's lock; pass a held
    :meth:`lock` as ``lock=`` to keep it across several steps (an ACME issue
    locks before ordering and writes at the end).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.certs = self.root / CERTS

    # -- reading ------------------------------------------------------------------
    def folder(self, name: str) -> Path:
        """The certificate's folder (``certs/NAME``); validates the name."""
        return self.certs / validate_name(name)

    def names(self) -> list[str]:
        """Names that have a current version, sorted."""
        try:
            entries = list(os.scandir(self.certs))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"{self.certs}: cannot list the store: {exc.strerror}") from None
        found = []
        for e in entries:
            if e.name.startswith(".") or not e.is_dir(follow_symlinks=False):
                continue
            try:
                ok = validate_name(e.name) == e.name
            except StoreError:
                ok = False
            if ok and os.path.lexists(os.path.join(e.path, CURRENT)):
                found.append(e.name)
        return sorted(found)

    def _current_number(self, name: str) -> int:
        folder = self.folder(name)
        link = folder / CURRENT
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            if folder.is_dir():
                raise NotFound(f"{folder}: certificate {name!r} has no current version") from None
            raise NotFound(f"no certificate named {name!r} in {self.certs}") from None
        except OSError as exc:
            raise CorruptEntry(f"{link}: not a symlink to a version ({exc.strerror})") from None
        head, _, number = target.partition("/")
        if head != VERSIONS or not _NUMBER.fullmatch(number):
            raise CorruptEntry(f"{link}: points at {target!r}, not at {VERSIONS}/NNNN")
        return int(number)

    def _version(self, name: str, number: int, current: bool) -> Version:
        path = self.folder(name) / VERSIONS / f"{number:04d}"
        meta_path = path / META
        try:
            data = meta_path.read_bytes()
        except FileNotFoundError:
            if not path.is_dir():
                raise CorruptEntry(f"{path}: version {number} of {name!r} is missing") from None
            raise CorruptEntry(f"{meta_path}: missing") from None
        except OSError as exc:
            raise CorruptEntry(f"{meta_path}: cannot read: {exc.strerror}") from None
        return Version(name, number, path, Meta.loads(data, str(meta_path)), current)

    def _numbers(self, name: str) -> list[int]:
        try:
            return sorted(int(e) for e in os.listdir(self.folder(name) / VERSIONS)
                          if _NUMBER.fullmatch(e))
        except FileNotFoundError:
            return []

    def versions(self, name: str) -> list[Version]:
        """Every published version, oldest first; ``current`` marks the one in use."""
        name = validate_name(name)
        numbers = self._numbers(name)
        if not numbers:
            raise NotFound(f"no certificate named {name!r} in {self.certs}")
        try:
            cur: int | None = self._current_number(name)
        except NotFound:
            cur = None
        return [self._version(name, n, n == cur) for n in numbers]

    def current_version(self, name: str) -> Version:
        """The version in use, without reading its PEM files (no key access needed)."""
        name = validate_name(name)
        return self._version(name, self._current_number(name), True)

    def current(self, name: str) -> Entry:
        """The version in use with its certificate chain and key, read consistently."""
        v = self.current_version(name)
        pem = {}
        for fname in (CERT, CHAIN, FULLCHAIN, KEY):
            path = v.path / fname
            try:
                pem[fname] = path.read_bytes()
            except FileNotFoundError:
                raise CorruptEntry(f"{path}: missing") from None
            except PermissionError:
                raise StoreError(f"{path}: permission denied (the store is readable only by "
                                 "its owner; run as that user or root)") from None
            except OSError as exc:
                raise CorruptEntry(f"{path}: cannot read: {exc.strerror}") from None
        return Entry(v, pem[CERT], pem[CHAIN], pem[FULLCHAIN], pem[KEY])

    def index(self) -> SNIIndex:
        """Which store names cover which host names, from the current versions.

        An unreadable entry does not hide the others: it is left out and
        reported in ``errors``.
        """
        table: dict[str, list[str]] = {}
        errors: list[StoreError] = []
        for name in self.names():
            try:
                v = self.current_version(name)
            except StoreError as exc:
                errors.append(exc)
                continue
            for host in v.domains:
                table.setdefault(host, []).append(name)
        return SNIIndex({h: tuple(n) for h, n in table.items()}, tuple(errors))

    # -- writing ------------------------------------------------------------------
    def lock(self, name: str, timeout: float | None = None) -> fsutil.FileLock:
        """The name's writer lock (a context manager); waits ``timeout`` seconds at most."""
        name = validate_name(name)
        fsutil.ensure_dir(self.certs / LOCKS)
        return fsutil.FileLock(self.certs / LOCKS / f"{name}.lock", f"certificate {name!r}",
                               DEFAULT_LOCK_TIMEOUT if timeout is None else timeout)

    @contextlib.contextmanager
    def _locked(self, name: str, lock: fsutil.FileLock | None) -> Iterator[None]:
        if lock is not None:
            if not lock.held or lock.path != self.certs / LOCKS / f"{name}.lock":
                raise ValueError(f"the lock passed is not a held lock of {name!r} in this store")
            yield
            return
        with self.lock(name):
            yield

    def add(self, name: str, material: Material, *, source: str = "import",
            acme: AcmeMeta | None = None, lock: fsutil.FileLock | None = None,
            now: dt.datetime | None = None) -> Version:
        """Store ``material`` as the next version of ``name`` and make it current."""
        name = validate_name(name)
        meta = Meta.describe(material, source=source, acme=acme,
                             created=now or dt.datetime.now(dt.UTC))
        with self._locked(name, lock):
            folder = self.certs / name
            versions = folder / VERSIONS
            fsutil.ensure_dir(versions)
            self._clean_leftovers(folder)
            number = max(self._numbers(name), default=0) + 1
            final = versions / f"{number:04d}"
            tmp = versions / fsutil.temp_name(_NEW)
            try:
                os.mkdir(tmp, fsutil.DIR_MODE)
                fsutil.write_new(tmp / KEY, material.key_pem, fsutil.KEY_MODE)
                fsutil.write_new(tmp / CERT, material.cert_pem, fsutil.PUBLIC_MODE)
                fsutil.write_new(tmp / CHAIN, material.chain_pem, fsutil.PUBLIC_MODE)
                fsutil.write_new(tmp / FULLCHAIN, material.fullchain_pem, fsutil.PUBLIC_MODE)
                fsutil.write_new(tmp / META, meta.dumps(), fsutil.PUBLIC_MODE)
                fsutil.fsync_dir(tmp)
                os.rename(tmp, final)
            except BaseException as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                if isinstance(exc, OSError):
                    raise StoreError(f"{final}: cannot write the new version: "
                                     f"{exc.strerror or exc}") from None
                raise
            fsutil.fsync_dir(versions)
            try:
                self._switch(folder, number)
            except StoreError:
                # never current, so nobody uses it: take it away again
                shutil.rmtree(final, ignore_errors=True)
                raise
        return Version(name, number, final, meta, True)

    def _switch(self, folder: Path, number: int) -> None:
        try:
            fsutil.replace_symlink(f"{VERSIONS}/{number:04d}", folder / CURRENT)
        except OSError as exc:
            raise StoreError(f"{folder / CURRENT}: cannot switch to version {number}: "
                             f"{exc.strerror or exc}") from None

    def _clean_leftovers(self, folder: Path) -> None:
        """Remove what a killed writer left (we hold the lock: no one else is writing)."""
        for parent, prefix in ((folder / VERSIONS, _NEW), (folder, f".{CURRENT}.tmp-")):
            for entry in os.listdir(parent):
                if entry.startswith(prefix):
                    path = parent / entry
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            path.unlink()

    def activate(self, name: str, number: int, *, lock: fsutil.FileLock | None = None) -> Version:
        """Make an existing version current again (a rollback)."""
        name = validate_name(name)
        with self._locked(name, lock):
            version = self._version(name, number, True)
            self._switch(self.certs / name, number)
        return version

    def update_acme(self, name: str, acme: AcmeMeta | None, *,
                    lock: fsutil.FileLock | None = None) -> Version:
        """Replace the ACME settings recorded with the current version (e.g. new hooks).

        The only change ever made inside a published version: ``meta.json`` is
        replaced whole, by rename, so a reader sees the old file or the new one.
        """
        name = validate_name(name)
        with self._locked(name, lock):
            old = self.current_version(name)
            meta = dataclasses.replace(old.meta, acme=acme)
            for entry in os.listdir(old.path):  # left by a writer killed here before
                if entry.startswith(f".{META}.tmp-"):
                    with contextlib.suppress(OSError):
                        (old.path / entry).unlink()
            try:
                fsutil.replace_file(old.path / META, meta.dumps(), fsutil.PUBLIC_MODE)
            except OSError as exc:
                raise StoreError(f"{old.path / META}: cannot write: {exc.strerror}") from None
        return Version(name, old.number, old.path, meta, True)

    def delete(self, name: str, *, lock: fsutil.FileLock | None = None) -> None:
        """Remove a certificate and all its versions.

        The folder first disappears by one rename (to ``certs/.deleted-NAME-...``),
        so a reader sees the whole certificate or none; then it is removed. (``+``
        cannot occur in a name, so ``.deleted-a+`` never matches a leftover of ``a-b``.)
        """
        name = validate_name(name)
        with self._locked(name, lock):
            folder = self.certs / name
            if not folder.is_dir():
                raise NotFound(f"no certificate named {name!r} in {self.certs}")
            gone = self.certs / fsutil.temp_name(f"{_DELETED}{name}+")
            try:
                os.rename(folder, gone)
                fsutil.fsync_dir(self.certs)
            except OSError as exc:
                raise StoreError(f"{folder}: cannot delete: {exc.strerror}") from None
            for entry in os.listdir(self.certs):
                if entry.startswith(f"{_DELETED}{name}+"):
                    shutil.rmtree(self.certs / entry, ignore_errors=True)
