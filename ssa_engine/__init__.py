"""ssa: the Secure Socket API, TLS as an operating-system service.

Applications import this package and create TLS sockets::

    import ssa_engine
    s = ssa_engine.socket(ssa_engine.AF_INET, ssa_engine.SOCK_STREAM, ssa_engine.IPPROTO_TLS)
    s.connect(("example.com", 443))

The engine (``ssa-engine serve``) does the handshake, verification and
everything else under the administrator's policy.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import *  # noqa: E402,F403
from .api import __all__ as _api_all  # noqa: E402

__all__ = list(_api_all)
