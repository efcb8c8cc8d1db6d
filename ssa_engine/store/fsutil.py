"""Crash-safe file operations: new files with their final mode, fsync, renames, locks.

The rules (certbot ``util.safe_open``, and POSIX rename(2) being atomic):
- a secret is created with ``O_CREAT | O_EXCL`` and mode 0600 in the same
  call, so it is never readable by others, not even for an instant, and
  never follows a planted symlink (``O_NOFOLLOW``);
- data is fsynced before the rename that publishes it, and the directory
  after it, so that after a power cut the new name points at whole data;
- whatever a reader can see appears by one rename: it is either the old
  thing or the new one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import time
from pathlib import Path
from types import TracebackType

from .errors import LockTimeout, StoreError

DIR_MODE = 0o700
KEY_MODE = 0o600
PUBLIC_MODE = 0o644
_LOCK_POLL = 0.05  # seconds between attempts while another process holds a lock


def temp_name(prefix: str) -> str:
    """A name for a temporary entry, unique across processes (pid) and calls."""
    return f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"


def ensure_dir(path: Path) -> None:
    """Create ``path`` and any missing parents with mode 0700 (existing ones are left alone)."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            pass  # another process made it first
        except OSError as exc:
            raise StoreError(f"{d}: cannot create the directory: {exc.strerror}") from None
    if not path.is_dir():
        raise StoreError(f"{path}: exists and is not a directory")


def write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (it must not exist) with ``mode``, write ``data``, fsync."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, data: bytes, mode: int) -> None:
    """Atomically replace (or create) ``path``: temp file, fsync, rename, fsync the folder."""
    tmp = path.with_name(temp_name(f".{path.name}.tmp-"))
    try:
        write_new(tmp, data, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def replace_symlink(target: str, link: Path) -> None:
    """Atomically point the symlink ``link`` at ``target`` (created if absent).

    symlink(2) writes the whole target in one call, so the temporary link is
    never partial; rename(2) then swaps it in, replacing the old link.
    """
    tmp = link.with_name(temp_name(f".{link.name}.tmp-"))
    try:
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(link.parent)


class FileLock:
    """An exclusive ``flock(2)`` on a lock file, waiting at most ``timeout`` seconds.

    flock locks belong to the open file description: they vanish when the
    process dies (no stale locks after a crash), and two opens of the file,
    even in one process, exclude each other. The holder writes its pid into the
    file so that a waiter can say who is in the way. Lock files are never
    deleted: unlinking a lock file while another process waits on it would let
    a third process lock a new file of the same name.
    """

    def __init__(self, path: Path, what: str, timeout: float) -> None:
        self.path = path
        self.what = what
        self.timeout = timeout
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: already held")
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, KEY_MODE)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open the lock file: {exc.strerror}") from None
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pass
                except OSError as exc:
                    if exc.errno != errno.EINTR:
                        raise StoreError(f"{self.path}: cannot lock: {exc.strerror}") from None
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                    who = f" (process {holder})" if holder.isdigit() else ""
                    raise LockTimeout(
                        f"{self.path}: {self.what} is being changed by another process{who}; "
                        f"gave up after {self.timeout:g} s. Try again when it has finished.")
                time.sleep(_LOCK_POLL)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
