"""The application-facing socket API (the paper's kernel component)."""

from __future__ import annotations

from .aio import TLSStreamWriter, open_connection
from .constants import *  # noqa: F403
from .constants import __all__ as _constants
from .helpers import create_connection, socket
from .install import install, uninstall
from .tlssocket import TLSSocket

__all__ = [
    "TLSSocket", "TLSStreamWriter", "create_connection", "install", "open_connection",
    "socket", "uninstall", *_constants,
]
