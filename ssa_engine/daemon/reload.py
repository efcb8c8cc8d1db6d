"""The configuration in force, and how it changes while the engine runs.

Reload triggers: a change of any configuration file (checked every
``interval`` seconds with a few ``stat`` calls: no inotify dependency, and
it sees edits made by any tool, including ``mv`` into place), ``SIGHUP``, and
the RELOAD control request (``ssa-admin reload``). A new configuration is
validated completely before it replaces the old one; a broken edit is
logged and reported in the status, and the last good configuration stays in
force. Sockets keep the policy they were created with; new sockets get the
new one. The certificate store is watched the same way, and listeners that
serve store certificates pick up renewed ones for their next handshakes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from ..config import Config, ConfigErrors, load_config, signature
from ..policy import Policy

log = logging.getLogger("ssa.engine")

#: seconds between two looks at the configuration files and the store
WATCH_INTERVAL = 1.0


def store_signature(state_dir: Path) -> tuple[tuple[str, str], ...]:
    """Which version each stored certificate's ``current`` link points to."""
    certs = state_dir / "certs"
    found = []
    try:
        names = sorted(os.listdir(certs))
    except OSError:
        return ()
    for name in names:
        try:
            found.append((name, os.readlink(certs / name / "current")))
        except OSError:
            continue
    return tuple(found)


class Configuration:
    """Owns the engine's :class:`~ssa_engine.config.Config` and reloads it."""

    def __init__(self, directory: Path, base: Policy, state_dir: Path,
                 interval: float = WATCH_INTERVAL) -> None:
        self.directory = directory
        self.base = base
        self.state_dir = state_dir
        self.interval = interval
        self._signature = signature(directory)
        #: raises ConfigErrors: the engine refuses to start on a broken configuration
        self.current: Config = load_config(directory, base)
        self._store_signature = store_signature(state_dir)
        self.errors: list[str] = []
        self.failed_at: float | None = None
        self.reloads = 0
        self.on_config: list[Callable[[Config], None]] = []
        self.on_store: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGHUP, self.reload, "SIGHUP")
        self._task = loop.create_task(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the watcher must outlive any surprise
                log.exception("configuration watcher")

    def poll(self) -> None:
        if signature(self.directory) != self._signature:
            self.reload("a configuration file changed")
        store = store_signature(self.state_dir)
        if store != self._store_signature:
            self._store_signature = store
            log.info("certificate store changed: listeners reload their certificates")
            for callback in self.on_store:
                callback()

    def reload(self, why: str = "requested") -> dict[str, object]:
        """Load the files again; keep the old configuration if they are broken."""
        self._signature = signature(self.directory)  # before reading: never miss a later edit
        try:
            config = load_config(self.directory, self.base)
        except ConfigErrors as exc:
            self.errors = [str(e) for e in exc.errors]
            self.failed_at = time.time()
            for line in self.errors:
                log.error("configuration not reloaded (%s): %s", why, line)
            log.error("the configuration loaded at %s stays in force",
                      time.strftime("%H:%M:%S", time.localtime(self.current.loaded_at)))
            return {"reloaded": False, "errors": self.errors}
        self.current = config
        self.errors = []
        self.failed_at = None
        self.reloads += 1
        log.info("configuration reloaded (%s): default level %s, %d profile(s)%s", why,
                 config.default.level.name, len(config.profiles),
                 ": " + ", ".join(p.name for p in config.profiles) if config.profiles else "")
        for callback in self.on_config:
            callback(config)
        return {"reloaded": True, "errors": [], "profiles": [p.name for p in config.profiles]}

    def status(self) -> dict[str, object]:
        c = self.current
        return {
            "config_dir": str(c.directory),
            "config_loaded_at": _iso(c.loaded_at),
            "config_files": [str(f) for f in c.files],
            "default_policy": c.default.source,
            "level": c.default.level.name,
            "server_certificates": list(c.default.server_certificates),
            "profiles": [
                {"name": p.name, "file": str(p.file), "level": p.policy.level.name,
                 "match": {k: list(p.match.values(k)) for k in ("path", "unit", "name", "user")
                           if p.match.values(k)}}
                for p in c.profiles
            ],
            "reloads": self.reloads,
            "last_reload_errors": self.errors,
            "last_reload_failed_at": _iso(self.failed_at) if self.failed_at else None,
        }


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
