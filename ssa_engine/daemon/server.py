"""The engine process: control socket, sessions, signals, status."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import resource
import signal
import socket
import stat
import time
from pathlib import Path

from .. import __version__, paths
from ..config import Config, ConfigErrors, Selection
from ..policy import DEFAULT_POLICY, Policy
from ..store import Store
from . import fastio
from .audit import AuditLog
from .identity import PeerIdentity, peer_identity
from .reload import Configuration
from .revocation import Revocation
from .session import Session
from .sessions import ContextRegistry, SessionCache
from .tlsctx import ContextCache

log = logging.getLogger("ssa.engine")

#: Security parameter: pending control connections the kernel may queue.
LISTEN_BACKLOG = 4096
#: Security parameter: TLS sockets one user may hold in the engine at once, so
#: that one local user cannot use up the engine's descriptors for everyone.
MAX_SOCKETS_PER_USER = 16384


class EngineError(Exception):
    """The engine cannot start; the message says why and what to do."""


class Engine:
    def __init__(self, socket_path: Path, policy: Policy = DEFAULT_POLICY,
                 state_dir: Path | None = None,
                 max_per_user: int = MAX_SOCKETS_PER_USER,
                 config_dir: Path | None = None) -> None:
        self.socket_path = socket_path
        state = state_dir if state_dir is not None else paths.state_dir()
        try:
            self.config = Configuration(config_dir or paths.config_dir(), policy, state)
        except ConfigErrors as exc:
            raise EngineError("the configuration is invalid; fix it and start again:\n"
                              + "\n".join(f"  {e}" for e in exc.errors)) from None
        self.store = Store(state)
        self.audit_log: AuditLog | None = None
        #: ACME tls-alpn-01 challenges answered by listeners: port -> identifier -> (ctx, expiry)
        self.acme_challenges: dict[int, dict[str, tuple[object, float]]] = {}
        self._configure_audit(self.config.current)
        self.config.on_config.append(self._configure_audit)
        self.config.on_store.append(self._store_changed)
        self._ties: set[object] = set()
        #: revocation caches and OCSP stapling, shared by all sockets
        self.revocation = Revocation()
        self.contexts = ContextCache()
        self.client_sessions = SessionCache()
        self.tls_contexts = ContextRegistry()
        self.sessions: set[Session] = set()
        self.sockets = 0
        self.connected = 0
        self.max_per_user = max_per_user
        self.per_user: dict[int, int] = {}
        self.bytes_relayed = 0
        self.started = time.time()
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._listener: socket.socket | None = None
        self._lock_fd: int | None = None
        self._stopped: asyncio.Event | None = None

    def _configure_audit(self, config: Config) -> None:
        wanted = config.audit_log
        current = self.audit_log
        if current is not None and wanted.path is not None and (
                str(current.path), current.max_bytes, current.backups) == (
                wanted.path, wanted.max_bytes, wanted.backups):
            return
        if current is not None:
            current.close()
        self.audit_log = (AuditLog(Path(wanted.path), wanted.max_bytes, wanted.backups)
                          if wanted.path else None)
        if self.audit_log is not None:
            log.info("audit log: %s", wanted.path)

    def _store_changed(self) -> None:
        for session in list(self.sessions):
            if session.listener is not None:
                session.refresh_certificates()

    def audit(self, policy: Policy, record: dict[str, object]) -> None:
        if self.audit_log is not None and policy.audit:
            self.audit_log.write(record)

    @property
    def policy(self) -> Policy:
        """The default policy in force."""
        return self.config.current.default

    def policy_for(self, peer: PeerIdentity) -> Selection:
        """The policy that governs this program's sockets, and why."""
        config = self.config.current
        if not config.profiles:  # no need to look at /proc
            return Selection(config.default, None, "no profile is applied")
        selection = config.select(peer.program_info())
        if selection.tied and (tie := (selection.profile, selection.tied)) not in self._ties:
            self._ties.add(tie)  # once per configuration and tie, not per socket
            log.warning("profiles %s match %s equally; %s wins by name order",
                        ", ".join((selection.profile.name,) + selection.tied),  # type: ignore[union-attr]
                        peer.program, selection.profile.name)  # type: ignore[union-attr]
        return selection

    def status(self) -> dict[str, object]:
        live = [s for s in self.sessions if s.state is not None]
        return {
            "engine": f"ssa-engine {__version__}",
            "pid": os.getpid(),
            "uptime_seconds": round(time.time() - self.started, 1),
            "socket": str(self.socket_path),
            **self.config.status(),
            "listeners": sum(1 for s in live if s.listener is not None),
            "listening_ports": sorted({s.listener.port for s in live if s.listener is not None}),
            "sockets": len(live),
            "connected": sum(1 for s in live if s.relay is not None and not s.relay.finished),
            "sockets_created_total": self.sockets,
            "connections_total": self.connected,
            "bytes_relayed_total": self.bytes_relayed,
            "revocation": self.revocation.status(),
            "cached_contexts": len(self.contexts),
            "cached_client_sessions": len(self.client_sessions),
            "programs": self._programs(live),
        }

    def _programs(self, live: list[Session], limit: int = 100) -> list[dict[str, object]]:
        """Live sockets per process, busiest first (at most ``limit`` processes)."""
        table: dict[int, dict[str, object]] = {}
        for s in live:
            row = table.setdefault(s.peer.pid, {
                "program": s.peer.program, "pid": s.peer.pid, "uid": s.peer.uid,
                "profile": (s.options.policy.profile if s.options else None) or "default",
                "sockets": 0, "connected": 0, "listeners": 0})
            row["sockets"] += 1  # type: ignore[operator]
            if s.relay is not None and not s.relay.finished:
                row["connected"] += 1  # type: ignore[operator]
            if s.listener is not None:
                row["listeners"] += 1  # type: ignore[operator]
        rows = sorted(table.values(), key=lambda r: -r["sockets"])  # type: ignore[operator]
        return rows[:limit]

    # -- start ----------------------------------------------------------------
    def _prepare_directory(self) -> None:
        directory = self.socket_path.parent
        shared = os.geteuid() == 0
        # root serves every user: the directory is world-searchable, the socket
        # world-connectable; a user engine serves only its own user.
        mode = 0o755 if shared else 0o700
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=mode)
        except OSError as exc:
            raise EngineError(f"cannot create {directory}: {exc.strerror}") from None
        st = directory.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise EngineError(f"{directory} is not a directory")
        if st.st_uid != os.geteuid():
            raise EngineError(f"{directory} belongs to uid {st.st_uid}, not to us; "
                              "refusing to put the control socket there")
        if st.st_mode & 0o022:
            os.chmod(directory, mode)

    def _take_lock(self) -> None:
        lock_path = self.socket_path.with_name(self.socket_path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise EngineError(f"another ssa engine is already serving {self.socket_path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _bind(self) -> socket.socket:
        path = self.socket_path
        if path.exists() or path.is_symlink():
            # We hold the lock, so no live engine owns it: a stale socket.
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                log.info("removing stale control socket %s", path)
                path.unlink()
            else:
                raise EngineError(f"something is already serving {path}")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o111 if os.geteuid() == 0 else 0o177)
        try:
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            raise EngineError(f"cannot bind {path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        return sock

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        fastio.check_capabilities()
        raise_nofile_limit()
        self.loop = loop
        self._prepare_directory()
        self._take_lock()
        self._listener = self._bind()
        loop.add_reader(self._listener.fileno(), self._on_accept)
        self.config.start(loop)
        log.info("ssa-engine %s serving %s (policy: %s, level %s)", __version__,
                 self.socket_path, self.policy.source, self.policy.level.name)

    def _on_accept(self) -> None:
        assert self._listener is not None
        for _ in range(64):
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    log.error("out of file descriptors; refusing new sockets for a moment")
                    self.loop.remove_reader(self._listener.fileno())
                    self.loop.call_later(0.5, self._resume_accept)
                    return
                raise
            conn.setblocking(False)
            try:
                peer = peer_identity(conn)
            except OSError:
                conn.close()
                continue
            self.sessions.add(Session(self, conn, peer))

    def _resume_accept(self) -> None:
        if self._listener is not None:
            self.loop.add_reader(self._listener.fileno(), self._on_accept)

    def claim_socket(self, uid: int) -> None:
        """Count one more socket for ``uid``; OverflowError past the per-user limit."""
        held = self.per_user.get(uid, 0)
        if held >= self.max_per_user:
            raise OverflowError(held)
        self.per_user[uid] = held + 1

    def session_closed(self, session: Session) -> None:
        self.sessions.discard(session)
        if session.state is not None:
            uid = session.peer.uid
            left = self.per_user.get(uid, 1) - 1
            if left > 0:
                self.per_user[uid] = left
            else:
                self.per_user.pop(uid, None)

    # -- run and stop -----------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self.start(loop)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig)
        try:
            await self._stopped.wait()
        finally:
            self.close()

    def stop(self, sig: int | None = None) -> None:
        if sig is not None:
            log.info("received %s, stopping", signal.Signals(sig).name)
        if self._stopped is not None:
            self._stopped.set()

    def close(self) -> None:
        self.config.stop()
        if self.audit_log is not None:
            self.audit_log.close()
        if self._listener is not None:
            self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            try:
                self.socket_path.unlink()
            except OSError:
                pass
        for session in list(self.sessions):
            session.shutdown_engine()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("ssa-engine stopped")


def raise_nofile_limit() -> None:
    """Each TLS socket costs the engine three descriptors: take all we may."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            log.warning("could not raise the open-files limit above %d", soft)


def run(socket_path: Path, policy: Policy = DEFAULT_POLICY, state_dir: Path | None = None,
        max_per_user: int = MAX_SOCKETS_PER_USER, config_dir: Path | None = None) -> None:
    engine = Engine(socket_path, policy, state_dir, max_per_user, config_dir)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        log.warning("uvloop is not installed: the default asyncio loop is slower")
        asyncio.run(engine.run())
    else:
        uvloop.run(engine.run())
