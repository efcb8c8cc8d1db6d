"""Describe a process or an executable the way profile matching sees it.

The engine identifies the program behind a control connection from
``SO_PEERCRED`` and ``/proc``; ``ssa-admin profile explain`` does the same for
a pid or a path. Both read /proc through these functions.
"""

from __future__ import annotations

import os
import pwd

from ..policy.match import Program


def user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def read_exe_comm(pid: int) -> tuple[str | None, str | None]:
    """``/proc/PID/exe`` (resolved) and ``/proc/PID/comm``; None where unreadable."""
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


def read_unit(pid: int) -> str | None:
    """The systemd unit of ``pid``: the deepest ``.service`` or ``.scope`` in its cgroup.

    ``0::/system.slice/nginx.service`` -> ``nginx.service``; a user service
    (``.../user@1000.service/app.slice/foo.service``) gives its own unit.
    """
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    # cgroup v2 ("0::/path"), else the v1 systemd hierarchy ("N:name=systemd:/path")
    paths = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
    paths += [line.split(":", 2)[2] for line in lines if ":name=systemd:" in line]
    for path in paths:
        units = [p for p in path.split("/") if p.endswith((".service", ".scope"))]
        if units:
            return units[-1]
    return None


def program_for_pid(pid: int) -> Program:
    """Describe a running process; ProcessLookupError if there is none."""
    try:
        uid = os.stat(f"/proc/{pid}").st_uid
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    exe, comm = read_exe_comm(pid)
    return Program(pid=pid, exe=exe, comm=comm, uid=uid, user=user_name(uid),
                   unit=read_unit(pid))


def program_for_path(path: str, uid: int | None = None, unit: str | None = None) -> Program:
    """Describe what running ``path`` would look like (as ``uid``, in ``unit``)."""
    exe = os.path.realpath(path)
    uid = os.getuid() if uid is None else uid
    # the kernel's comm is the executable's base name, cut to 15 bytes
    return Program(exe=exe, comm=os.path.basename(path)[:15], uid=uid, user=user_name(uid),
                   unit=unit)
