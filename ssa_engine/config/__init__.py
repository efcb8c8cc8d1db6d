"""Configuration files -> policies: ``ssa.yaml`` and ``profiles.d/*.yaml``.

Used by the engine (to load and reload) and by ``ssa-admin`` (to validate,
explain and edit). :mod:`.yamlio` is the only module that touches YAML.
"""

from __future__ import annotations

from ..policy.schema import ConfigError, ConfigErrors
from .loader import Config, Profile, Selection, load_config, read_document, signature

__all__ = ["Config", "ConfigError", "ConfigErrors", "Profile", "Selection", "load_config",
           "read_document", "signature"]
