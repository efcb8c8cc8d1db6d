"""ssa-admin: the administrator's tool for profiles, policy, pins and certificates."""

from __future__ import annotations

__version__ = "0.1.0"
