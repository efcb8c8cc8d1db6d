"""ssa: the Secure Socket API, TLS as an operating-system service.

Applications import this package and create TLS sockets::

    import ssa_engine
    s = ssa_engine.socket(ssa_engine.AF_INET, ssa_engine.SOCK_STREAM, ssa_engine.IPPROTO_TLS)
    s.connect(("example.com", 443))

The engine (``ssa-engine serve``) does the handshake, verification and
everything else under the administrator's policy.

The socket API (``ssa_engine.api``) is loaded on first use, so that programs
that only need a part of the package (``ssa-admin``, the engine) do not pay
for the rest at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import *  # noqa: F403

#: the package's own subpackages and modules: imported, never looked up in the API
_SUBPACKAGES = frozenset({"api", "cli", "config", "daemon", "paths", "policy", "protocol",
                          "store"})


def __getattr__(name: str) -> Any:
    # (importlib, not "from . import": that asks this module for the name first)
    if (name.startswith("__") and name != "__all__") or name in _SUBPACKAGES:
        raise AttributeError(f"module 'ssa_engine' has no attribute {name!r}")
    api = importlib.import_module("ssa_engine.api")
    if name == "__all__":
        return list(api.__all__)
    try:
        return getattr(api, name)
    except AttributeError:
        raise AttributeError(f"module 'ssa_engine' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    api = importlib.import_module("ssa_engine.api")
    return sorted({*globals(), *api.__all__})
