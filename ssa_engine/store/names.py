"""Certificate names: what may be a folder of the store.

A name is a set of DNS-like labels (``example.com``, ``www.example.org``,
``mail-rsa``): each label 1-63 characters from ``a-z 0-9 - _``, joined by
single dots, 253 characters at most. That rules out ``/``, ``..``, a
leading dot (hidden files and the store's own ``.locks``), NUL and every
other character a shell or a path could misread. Names are case-insensitive
like the DNS names they usually are, and are stored in lower case.
"""

from __future__ import annotations

import ipaddress
import re

from .errors import InvalidName

MAX_NAME = 253
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def validate_name(name: str) -> str:
    """Return ``name`` in lower case, or raise :class:`InvalidName` saying why."""
    if not isinstance(name, str) or not name:
        raise InvalidName("certificate name: empty")
    shown = repr(name)
    if "/" in name or "\\" in name or "\0" in name:
        raise InvalidName(f"certificate name {shown}: must not contain a path separator")
    if name in (".", "..") or ".." in name:
        raise InvalidName(f"certificate name {shown}: must not contain '..'")
    if len(name) > MAX_NAME:
        raise InvalidName(f"certificate name {shown}: longer than {MAX_NAME} characters")
    lowered = name.lower()
    for label in lowered.split("."):
        if not _LABEL.fullmatch(label):
            raise InvalidName(
                f"certificate name {shown}: use labels of letters, digits, '-' and '_' "
                "joined by dots (like a DNS name), each 1-63 characters, not starting "
                "or ending with '-'")
    return lowered


def name_for(domain: str) -> str:
    """The default store name for a certificate whose first name is ``domain``.

    ``*.example.com`` becomes ``example.com`` (a name may not hold ``*``) and an
    IPv6 address becomes its full form with dashes (``::1`` ->
    ``0000-0000-0000-0000-0000-0000-0000-0001``).
    """
    name = domain.strip().lower().rstrip(".")
    if name.startswith("*."):
        name = name[2:]
    try:
        address = ipaddress.ip_address(name)
        if address.version == 6:
            name = address.exploded.replace(":", "-")
    except ValueError:
        pass
    return validate_name(name)
