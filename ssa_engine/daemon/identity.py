"""Who is on the other end of a control connection.

The kernel tells us: ``SO_PEERCRED`` gives the pid, uid and gid at connect
time, and on Linux 6.5+ ``SO_PEERPIDFD`` a pidfd that keeps naming that very
process even if the pid is recycled. The executable comes from
``/proc/PID/exe``; we read it once at connect and check through the pidfd
that the process is still the same one (see :meth:`PeerIdentity.still_alive`).
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
_UCRED = struct.Struct("3i")


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    pid: int
    uid: int
    gid: int
    exe: str | None  # resolved executable path, None if unreadable
    comm: str | None  # program name the kernel reports
    pidfd: int | None

    @property
    def program(self) -> str:
        if self.exe:
            return os.path.basename(self.exe)
        return self.comm or f"pid {self.pid}"

    def close(self) -> None:
        if self.pidfd is not None:
            try:
                os.close(self.pidfd)
            except OSError:
                pass


def _read_proc(pid: int) -> tuple[str | None, str | None]:
    exe = comm = None
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            comm = f.read().strip() or None
    except OSError:
        pass
    return exe, comm


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
    exe, comm = _read_proc(pid)
    if pidfd is not None:
        # the pid may have been recycled between connect and our /proc read:
        # a pidfd that is already signalled means the original process died.
        try:
            import select

            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            if poller.poll(0):
                exe, comm = None, None
        except OSError:
            pass
    return PeerIdentity(pid, uid, gid, exe, comm, pidfd)
