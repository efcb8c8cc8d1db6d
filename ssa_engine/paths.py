"""Default locations of the configuration, the state and the control socket.

ARCHITECTURE.md section 3 pins these. A leaf module (standard library only)
so that both the application-side library and the engine can use it.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_CONFIG_DIR = "SSA_CONFIG_DIR"
ENV_STATE_DIR = "SSA_STATE_DIR"
ENV_ENGINE_SOCKET = "SSA_ENGINE_SOCKET"
ENV_PROFILES_DIR = "SSA_PROFILES_DIR"

#: the default policy, inside the configuration directory
CONFIG_FILE = "ssa.yaml"
#: one applied profile per file, inside the configuration directory
PROFILES_SUBDIR = "profiles.d"


def _is_root() -> bool:
    return os.geteuid() == 0


def config_dir() -> Path:
    if value := os.environ.get(ENV_CONFIG_DIR):
        return Path(value)
    if _is_root():
        return Path("/etc/ssa")
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ssa"


def profiles_dir(config: Path | None = None) -> Path:
    """Where applied profiles live: ``CONFIG/profiles.d``."""
    return (config if config is not None else config_dir()) / PROFILES_SUBDIR


def bundled_profiles_dir() -> Path:
    """The profiles shipped with ssa (``profiles/`` of the source tree or the
    installed ``share/ssa/profiles``); ``SSA_PROFILES_DIR`` overrides."""
    if value := os.environ.get(ENV_PROFILES_DIR):
        return Path(value)
    source_tree = Path(__file__).resolve().parent.parent / "profiles"
    if source_tree.is_dir():
        return source_tree
    import sys

    return Path(sys.prefix) / "share" / "ssa" / "profiles"


def state_dir() -> Path:
    if value := os.environ.get(ENV_STATE_DIR):
        return Path(value)
    if _is_root():
        return Path("/var/lib/ssa")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ssa"


def engine_socket() -> Path:
    if value := os.environ.get(ENV_ENGINE_SOCKET):
        return Path(value)
    if _is_root():
        return Path("/run/ssa/engine.sock")
    if runtime := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(runtime) / "ssa" / "engine.sock"
    return Path(f"/tmp/ssa-{os.getuid()}") / "engine.sock"


SYSTEM_ENGINE_SOCKET = Path("/run/ssa/engine.sock")


def client_socket() -> Path:
    """The engine an application talks to.

    Like :func:`engine_socket`, except that a non-root program with no engine
    of its own uses the system engine (``/run/ssa/engine.sock``) when one runs.
    """
    path = engine_socket()
    if os.environ.get(ENV_ENGINE_SOCKET) or _is_root() or path.exists():
        return path
    return SYSTEM_ENGINE_SOCKET if SYSTEM_ENGINE_SOCKET.exists() else path
