"""Talking to the running engine: status and reload (no YAML, no cryptography).

Light on purpose: ``cert issue`` and ``pin add`` reload the engine at the end,
and should not pay for the configuration modules to do it.
"""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssa_engine import paths


@dataclass(frozen=True, slots=True)
class ReloadResult:
    running: bool
    reloaded: bool = False
    errors: tuple[str, ...] = ()
    message: str = ""
    #: the profiles in force after a successful reload
    profiles: tuple[str, ...] = ()


#: connect() errors that mean "no engine listens there"
_NOT_RUNNING = (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR)


def _request(path: Path, request: Any) -> dict[str, Any]:
    """One administrative request; the engine's JSON reply. Raises OSError."""
    from ssa_engine.api.control import ControlChannel
    from ssa_engine.protocol import StatusReply

    ctl = ControlChannel(path)
    try:
        reply = ctl.open(request)
    finally:
        ctl.close()
    if not isinstance(reply, StatusReply):
        raise OSError(errno.EPROTO, f"unexpected answer from the engine: {reply!r}")
    doc: dict[str, Any] = json.loads(reply.document)
    return doc


def engine_status(socket: Path | None = None) -> dict[str, Any]:
    """The running engine's STATUS document; OSError when there is none."""
    from ssa_engine.protocol import StatusRequest

    return _request(socket or paths.engine_socket(), StatusRequest())


def reload_engine(socket: Path | None = None) -> ReloadResult:
    """Ask the running engine to reload; report what happened (never raises)."""
    from ssa_engine.protocol import ReloadRequest

    path = socket or paths.engine_socket()
    try:
        doc = _request(path, ReloadRequest())
    except OSError as exc:
        if exc.errno in _NOT_RUNNING:
            return ReloadResult(False, message=f"no engine is running at {path}")
        return ReloadResult(True, message=f"the engine at {path} did not reload: "
                            f"{exc.strerror or exc}")
    errors = tuple(doc.get("errors") or ())
    ok = bool(doc.get("reloaded"))
    return ReloadResult(True, ok, errors,
                        "engine reloaded" if ok else "the engine kept its old configuration",
                        tuple(doc.get("profiles") or ()))
