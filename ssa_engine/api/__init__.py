"""The application-facing socket API (the paper's kernel component)."""

from __future__ import annotations

from .aio import TLSServer, TLSStreamWriter, open_connection, start_server
from .constants import *  # noqa: F403
from .constants import __all__ as _constants
from .helpers import create_connection, create_server, socket, upgrade
from .install import install, uninstall
from .tlssocket import TLSSocket

__all__ = [
    "TLSServer", "TLSSocket", "TLSStreamWriter", "create_connection", "create_server",
    "install", "open_connection", "socket", "start_server", "uninstall", "upgrade", *_constants,
]
