"""Who is on the other end of a control connection.

The kernel tells us: ``SO_PEERCRED`` gives the pid, uid and gid at connect
time, and on Linux 6.5+ ``SO_PEERPIDFD`` a pidfd that keeps naming that very
process even if the pid is recycled. The executable comes from
``/proc/PID/exe``; we read it once at connect and check through the pidfd
that the process is still the same one (see :meth:`PeerIdentity.still_alive`).
"""

from __future__ import annotations

import os
import select
import socket
import struct

from ..config.program import read_exe_comm, read_unit, user_name
from ..policy.match import Program

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
_UCRED = struct.Struct("3i")


class PeerIdentity:
    """The process behind one control connection.

    ``exe`` and ``comm`` are read from /proc on first use (not every socket
    needs them); the pidfd check then guarantees they describe the process
    that connected, not a later one that got the same pid.
    """

    __slots__ = ("pid", "uid", "gid", "pidfd", "_proc", "_shared")

    def __init__(self, pid: int, uid: int, gid: int, pidfd: int | None) -> None:
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.pidfd = pidfd
        self._proc: tuple[str | None, str | None] | None = None
        self._shared = [1]  # holders of this pidfd (see dup)

    def _load(self) -> tuple[str | None, str | None]:
        if self._proc is None:
            exe, comm = read_exe_comm(self.pid)
            if self.pidfd is not None and _exited(self.pidfd):
                exe = comm = None  # the pid may belong to another process now
            self._proc = (exe, comm)
        return self._proc

    @property
    def exe(self) -> str | None:
        """Resolved executable path, None if unreadable."""
        return self._load()[0]

    @property
    def comm(self) -> str | None:
        """Program name the kernel reports."""
        return self._load()[1]

    @property
    def program(self) -> str:
        exe, comm = self._load()
        if exe:
            return os.path.basename(exe)
        return comm or f"pid {self.pid}"

    def program_info(self) -> Program:
        """Everything profile matching looks at (reads /proc once more for the unit)."""
        exe, comm = self._load()
        unit = None if exe is None and comm is None else read_unit(self.pid)
        return Program(pid=self.pid, exe=exe, comm=comm, uid=self.uid,
                       user=user_name(self.uid), unit=unit)

    def dup(self) -> PeerIdentity:
        """The same identity for an accepted socket: the pidfd is shared, not copied.

        One descriptor per program instead of one per connection; the pidfd is
        closed when the last holder closes.
        """
        other = PeerIdentity(self.pid, self.uid, self.gid, None)
        other.pidfd = self.pidfd
        other._proc = self._load() if self.pidfd is not None else self._proc
        other._shared = self._shared
        self._shared[0] += 1
        return other

    def close(self) -> None:
        if self.pidfd is None:
            return
        self._shared[0] -= 1
        if self._shared[0] <= 0:
            try:
                os.close(self.pidfd)
            except OSError:
                pass
        self.pidfd = None


def _exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:
        return False


def peer_identity(sock: socket.socket) -> PeerIdentity:
    """Identify the process connected to ``sock`` (a Unix stream socket)."""
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    pidfd: int | None
    try:
        pidfd = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError:
        pidfd = None
    return PeerIdentity(pid, uid, gid, pidfd)
