"""The engine's audit log: one JSON object per line for every TLS connection.

Theory of operation: the engine is one asyncio thread, so the log is a plain
file descriptor and each record is ONE ``os.write`` of a complete line on an
``O_APPEND`` descriptor. A small append to a local file lands in the page cache
without waiting for the disk, so it does not stall the event loop, and a reader
(``tail -f``, ``ssa-admin report``) never sees half a record unless the disk
fills mid-line. No fsync: losing the last records in a power cut is accepted,
a disk write per connection is not.

Auditing must never take TLS down with it: :meth:`AuditLog.write` never raises.
A record that cannot be written (full disk, permissions, directory removed) is
dropped and counted, a warning is logged once per errno, and the file is opened
again on the next write. See docs/audit.md.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

log = logging.getLogger("ssa.audit")

#: the keys of a record, in the order the engine writes them (docs/audit.md)
FIELDS = ("time", "event", "program", "exe", "pid", "uid", "user", "profile", "local",
          "remote", "sni", "version", "cipher", "group", "alpn", "resumed", "verify", "error")

_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
#: how often (seconds) to look whether logrotate moved the file away
_STAT_INTERVAL = 1.0


def timestamp(now: float | None = None) -> str:
    """RFC 3339 UTC with milliseconds (``2026-11-30T01:02:03.456Z``): sorts as text."""
    # whole milliseconds first, so that .9996 becomes the next second, not ".1000"
    ms = round((time.time() if now is None else now) * 1000)
    seconds, frac = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:03d}Z"


class AuditLog:
    """Append-only JSON-lines file, size-rotated like ``logging.handlers.RotatingFileHandler``.

    Args:
        path: the log file; its directory is created (0750) when missing.
        max_bytes: rotate before a write would make the file larger than this.
        backups: rotated files kept (``path.1`` newest ... ``path.N``); 0 truncates in place.
        clock: monotonic clock for the external-rotation check (tests pass their own).
    """

    def __init__(self, path: Path, max_bytes: int = 10 * 1024 * 1024, backups: int = 5, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_bytes <= 0 or backups < 0:
            raise ValueError("max_bytes must be > 0 and backups >= 0")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        #: records dropped because they could not be written
        self.dropped = 0
        self._clock = clock
        self._fd: int | None = None
        self._size = 0
        self._checked = 0.0
        # problems already reported since the last good write: one warning each, not one per
        # connection (a full disk would otherwise flood the journal it shares the disk with)
        self._warned: set[int | str] = set()

    def write(self, record: Mapping[str, object]) -> None:
        """Append one record; never raises (a failed record is dropped and counted)."""
        try:
            # default=str: an unexpected value type costs fidelity, not the record
            line = json.dumps(record, separators=(",", ":"), sort_keys=False, default=str)
        except (TypeError, ValueError, RecursionError) as exc:
            self._drop("unserialisable", f"record not serialisable ({exc})")
            return
        try:
            self._append((line + "\n").encode())
        except OSError as exc:
            self._close_fd()  # reopen on the next write: the directory may be back by then
            self._drop(exc.errno or 0, exc.strerror or str(exc))
            return
        if self._warned:
            failed_io = self._warned != {"unserialisable"}
            self._warned.clear()
            if failed_io:
                log.info("audit log %s: writable again (%d records dropped so far)",
                         self.path, self.dropped)

    def close(self) -> None:
        """Close the file; a later :meth:`write` opens it again."""
        self._close_fd()

    # -- internals ------------------------------------------------------------------------
    def _drop(self, key: int | str, reason: str) -> None:
        self.dropped += 1
        if key not in self._warned:
            self._warned.add(key)
            log.warning("audit log %s: %s; dropping records until it can be written",
                        self.path, reason)

    def _append(self, data: bytes) -> None:
        if self._fd is None:
            self._open()
        else:
            self._notice_external_rotation()
        if self._size and self._size + len(data) > self.max_bytes:
            # a record larger than max_bytes still goes, alone, into a fresh file
            self._rotate()
        assert self._fd is not None
        written = os.write(self._fd, data)
        if written != len(data):
            # disk filled mid-line: cut the fragment so the next record starts on a new line
            os.ftruncate(self._fd, self._size)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._size += written

    def _open(self) -> None:
        try:
            fd = os.open(self.path, _FLAGS, 0o640)
        except FileNotFoundError:
            self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            fd = os.open(self.path, _FLAGS, 0o640)
        self._fd = fd
        self._size = os.fstat(fd).st_size
        self._checked = self._clock()

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass  # nothing left to lose: the data went to the kernel already

    def _notice_external_rotation(self) -> None:
        """Reopen when ``path`` is no longer our file (logrotate ``create``, or deleted)."""
        now = self._clock()
        if now - self._checked < _STAT_INTERVAL:
            return
        self._checked = now
        assert self._fd is not None
        held = os.fstat(self._fd)
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None
        except OSError:
            return  # cannot look (EACCES on the directory...): keep the file we hold
        if current is None or (current.st_dev, current.st_ino) != (held.st_dev, held.st_ino):
            self._close_fd()
            self._open()
        else:
            self._size = held.st_size  # logrotate ``copytruncate`` shrinks it under us

    def _rotate(self) -> None:
        self._close_fd()
        if self.backups == 0:
            os.truncate(self.path, 0)
        else:
            for i in range(self.backups - 1, 0, -1):
                try:
                    os.replace(f"{self.path}.{i}", f"{self.path}.{i + 1}")
                except FileNotFoundError:
                    pass
            try:
                os.replace(self.path, f"{self.path}.1")
            except FileNotFoundError:
                pass  # removed under us: the next open starts a new file anyway
        self._open()
