"""Administrator policy: security levels, the policy model, enforcement. Pure."""

from __future__ import annotations

from .enforce import (
    AppRequests,
    InvalidSetting,
    PolicyError,
    PolicyViolation,
    TLSSettings,
    check_cipher,
    check_version,
    effective,
)
from .levels import LEVELS, TLS_1_2, TLS_1_3, Level
from .model import DEFAULT_POLICY, Policy, VerifyPolicy

__all__ = [
    "AppRequests", "InvalidSetting", "PolicyError", "PolicyViolation", "TLSSettings",
    "check_cipher", "check_version", "effective", "LEVELS", "TLS_1_2", "TLS_1_3", "Level",
    "DEFAULT_POLICY", "Policy", "VerifyPolicy",
]
