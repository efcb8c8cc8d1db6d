"""Validate one configuration document (``ssa.yaml`` or a profile).

Input is the plain tree a YAML loader produced (dicts, lists, str, int,
float, bool, None) plus a *locator* that turns a key path into a line and
column; this module never sees YAML. Every problem in the document is
collected (not just the first), each naming file, line, column and key path::

    profiles.d/wget.yaml:12:5: tls -> min_version: must be one of "1.2", "1.3"
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .levels import (
    KNOWN_CIPHERS,
    KNOWN_GROUPS,
    KNOWN_SUITES,
    LEVELS,
    VERSIONS_BY_NAME,
    normalize_cipher,
)
from .match import KINDS, Match
from .model import (
    CLIENT_AUTH,
    OVERRIDES,
    REVOCATION_MODES,
    REVOCATION_SCOPES,
    Layer,
    normalize_host,
)

Key = str | int
#: key path -> (line, column), both 1-based; ``key=True`` asks for the key's
#: own position rather than its value's
Locator = Callable[[tuple[Key, ...], bool], tuple[int, int] | None]

#: Security parameter: bounds on numbers an administrator may set.
MAX_HANDSHAKE_TIMEOUT = 300.0
MAX_VERIFY_DEPTH = 100
#: a ticket key older than 7 days would outlive every ticket (RFC 8446 section 4.6.1)
MAX_TICKET_ROTATION = 7 * 24 * 3600.0
_PIN = re.compile(r"^sha256/([A-Za-z0-9+/]{43}=)$")
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_SIZE = re.compile(r"^(\d+)\s*([kKmMgG]?)i?[bB]?$")

_TOP = {
    "match": "which programs this profile governs (profiles only)",
    "description": "what the profile is for (free text)",
    "level": "named security level: " + ", ".join(LEVELS),
    "tls": "min_version, max_version, ciphers, ciphersuites, groups",
    "verify": "trust_store, verify_depth, allow_app_trust, allow_ip_names",
    "pins": "host -> list of sha256/BASE64 SPKI pins",
    "revocation": "checks, mode, scope, ocsp_stapling, ocsp, crl, cache",
    "server": "certificates, client_auth, client_ca, ocsp_stapling, early_data, ticket_rotation",
    "app_overrides": "settings the application may relax: " + ", ".join(OVERRIDES),
    "handshake_timeout": "seconds a TLS handshake may take",
    "audit": "log this program's connections (true/false; ssa.yaml: also path, max_size, backups)",
}
_TLS = ("min_version", "max_version", "ciphers", "ciphersuites", "groups")
_VERIFY = ("trust_store", "verify_depth", "allow_app_trust", "allow_ip_names")
_REVOCATION = ("checks", "mode", "scope", "ocsp_stapling", "ocsp", "crl", "cache")
_SERVER = ("certificates", "client_auth", "client_ca", "ocsp_stapling", "early_data",
           "ticket_rotation")
_AUDIT_GLOBAL = ("enabled", "path", "max_size", "backups")


@dataclass(frozen=True, slots=True)
class ConfigError:
    file: str
    line: int | None
    column: int | None
    keys: tuple[Key, ...]
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        path = " -> ".join(str(k) for k in self.keys)
        return f"{where}: {path}: {self.message}" if path else f"{where}: {self.message}"


class ConfigErrors(Exception):
    """One or more configuration documents are invalid."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class AuditLogSettings:
    """``audit:`` in ssa.yaml: where the engine writes its audit log."""

    path: str | None = None  # None: no audit log
    max_bytes: int = 10 * 1024 * 1024
    backups: int = 5


@dataclass(frozen=True, slots=True)
class Document:
    """One validated file."""

    layer: Layer
    match: Match | None
    description: str | None
    audit_log: AuditLogSettings | None  # ssa.yaml only


class _Checker:
    def __init__(self, file: str, locate: Locator) -> None:
        self.file = file
        self.locate = locate
        self.errors: list[ConfigError] = []

    def error(self, keys: tuple[Key, ...], message: str, *, at_key: bool = False) -> None:
        pos = self.locate(keys, at_key)
        line, col = pos if pos is not None else (None, None)
        self.errors.append(ConfigError(self.file, line, col, keys, message))

    def mapping(self, value: Any, keys: tuple[Key, ...], known: Mapping[str, str] | tuple[str, ...]
                ) -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            self.error(keys, f"must be a mapping of {', '.join(known)} (got {_kind(value)})")
            return None
        good = {}
        for k, v in value.items():
            if not isinstance(k, str) or k not in known:
                close = difflib.get_close_matches(str(k), list(known), n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                self.error(keys + (str(k),), f"unknown key{hint} (known: {', '.join(known)})",
                           at_key=True)
                continue
            good[k] = v
        return good

    def string(self, value: Any, keys: tuple[Key, ...]) -> str | None:
        if isinstance(value, str) and value.strip() and "\0" not in value:
            return value.strip()
        self.error(keys, f"must be a non-empty string (got {_kind(value)})")
        return None

    def strings(self, value: Any, keys: tuple[Key, ...], *, allow_one: bool = True
                ) -> list[str] | None:
        if allow_one and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.error(keys, f"must be a list of strings (got {_kind(value)})")
            return None
        out = []
        for i, item in enumerate(value):
            s = self.string(item, keys + (i,))
            if s is not None:
                out.append(s)
        return out if len(out) == len(value) else None

    def boolean(self, value: Any, keys: tuple[Key, ...]) -> bool | None:
        if isinstance(value, bool):
            return value
        self.error(keys, f"must be true or false (got {_kind(value)})")
        return None

    def number(self, value: Any, keys: tuple[Key, ...], lo: float, hi: float, *,
               integer: bool = False) -> float | None:
        ok_type = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, ok_type):
            what = "an integer" if integer else "a number"
            self.error(keys, f"must be {what} (got {_kind(value)})")
            return None
        if not lo <= value <= hi:
            self.error(keys, f"must be between {lo:g} and {hi:g} (got {value})")
            return None
        return value

    def choice(self, value: Any, keys: tuple[Key, ...], options: tuple[str, ...] | list[str]
               ) -> str | None:
        if isinstance(value, float):  # an unquoted 1.3 in YAML
            value = repr(value)
        if isinstance(value, str) and value in options:
            return value
        shown = ", ".join(f'"{o}"' if "." in o else o for o in options)
        self.error(keys, f"must be one of {shown} (got {_show(value)})")
        return None


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"string {value!r}"
    # by kind, not type name: a YAML loader's subclasses (ScalarFloat) mean nothing to the reader
    if isinstance(value, int):
        return f"integer {int(value)}"
    if isinstance(value, float):
        return f"number {float(value)!r}"
    return f"{type(value).__name__} {value!r}"


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else _kind(value)


def parse_document(tree: Any, file: str, locate: Locator, *, profile: bool) -> Document:
    """Validate one document; raise :class:`ConfigErrors` listing every problem."""
    c = _Checker(file, locate)
    doc = _parse(c, tree, profile)
    if c.errors:
        raise ConfigErrors(c.errors)
    assert doc is not None
    return doc


def _parse(c: _Checker, tree: Any, profile: bool) -> Document | None:
    if tree is None:
        tree = {}
    top = c.mapping(tree, (), _TOP)
    if top is None:
        return None
    layer: dict[str, Any] = {}
    match: Match | None = None
    if profile:
        if "match" not in top:
            c.error((), "a profile needs a match section (path, unit, name or user)")
        else:
            match = _match(c, top["match"])
    elif "match" in top:
        c.error(("match",), "only profiles (profiles.d/*.yaml) have a match section; "
                "ssa.yaml is the default policy for every program", at_key=True)
    description = c.string(top["description"], ("description",)) if "description" in top else None
    if "level" in top:
        name = c.choice(top["level"], ("level",), list(LEVELS))
        if name is not None:
            layer["level"] = LEVELS[name]
    if "tls" in top:
        _tls(c, top["tls"], layer)
    if "verify" in top:
        _verify(c, top["verify"], layer)
    if "pins" in top:
        _pins(c, top["pins"], layer)
    if "revocation" in top:
        _revocation(c, top["revocation"], layer)
    if "server" in top:
        _server(c, top["server"], layer)
    if "app_overrides" in top:
        names = c.strings(top["app_overrides"], ("app_overrides",))
        for i, n in enumerate(names or ()):
            if n not in OVERRIDES:
                c.choice(n, ("app_overrides", i), list(OVERRIDES))
        if names is not None and set(names) <= set(OVERRIDES):
            layer["app_overrides"] = frozenset(names)
    if "handshake_timeout" in top:
        t = c.number(top["handshake_timeout"], ("handshake_timeout",), 0.1, MAX_HANDSHAKE_TIMEOUT)
        if t is not None:
            layer["handshake_timeout"] = float(t)
    audit_log = None
    if "audit" in top:
        audit_log = _audit(c, top["audit"], layer, profile)
    return Document(Layer(**layer), match, description, audit_log)


def _match(c: _Checker, value: Any) -> Match | None:
    errors_before = len(c.errors)
    m = c.mapping(value, ("match",), KINDS)
    if m is None:
        return None
    found: dict[str, tuple[str, ...]] = {}
    for kind in KINDS:
        if kind in m:
            items = c.strings(m[kind], ("match", kind))
            if items is None:
                continue
            if kind == "path":
                for i, p in enumerate(items):
                    if not p.startswith("/"):
                        c.error(("match", kind, i) if isinstance(m[kind], list) else ("match", kind),
                                f"must be an absolute path or glob (got {p!r})")
            found[kind + "s"] = tuple(items)
    result = Match(**found)
    # an empty match whose own entries were wrong is already reported; other
    # errors in the file must not hide this one
    if result.is_empty() and len(c.errors) == errors_before:
        c.error(("match",), "names no criteria: give path, unit, name or user")
    return result


def _tls(c: _Checker, value: Any, layer: dict[str, Any]) -> None:
    t = c.mapping(value, ("tls",), _TLS)
    if t is None:
        return
    for which in ("min_version", "max_version"):
        if which in t:
            v = c.choice(t[which], ("tls", which), list(VERSIONS_BY_NAME))
            if v is not None:
                layer[which] = VERSIONS_BY_NAME[v]
    for key, known, norm in (("ciphers", KNOWN_CIPHERS - KNOWN_SUITES, normalize_cipher),
                             ("ciphersuites", KNOWN_SUITES, str),
                             ("groups", KNOWN_GROUPS, str)):
        if key not in t:
            continue
        items = c.strings(t[key], ("tls", key), allow_one=False)
        if items is None:
            continue
        good = []
        for i, item in enumerate(items):
            name = norm(item)
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                c.error(("tls", key, i), f"unknown {key[:-1]} {item!r}{hint}")
            elif name in good:
                c.error(("tls", key, i), f"{item!r} is listed twice")
            else:
                good.append(name)
        if len(good) == len(items):
            layer[key] = tuple(good)


def _verify(c: _Checker, value: Any, layer: dict[str, Any]) -> None:
    v = c.mapping(value, ("verify",), _VERIFY)
    if v is None:
        return
    if "trust_store" in v:
        path = c.string(v["trust_store"], ("verify", "trust_store"))
        if path is not None and not path.startswith("/"):
            c.error(("verify", "trust_store"), f"must be an absolute path (got {path!r})")
        elif path is not None:
            layer["trust_store"] = path
    if "verify_depth" in v:
        d = c.number(v["verify_depth"], ("verify", "verify_depth"), 1, MAX_VERIFY_DEPTH, integer=True)
        if d is not None:
            layer["verify_depth"] = int(d)
    for key in ("allow_app_trust", "allow_ip_names"):
        if key in v:
            b = c.boolean(v[key], ("verify", key))
            if b is not None:
                layer[key] = b


def valid_pin(pin: str) -> bool:
    """``sha256/`` + the base64 of 32 bytes."""
    m = _PIN.match(pin)
    if m is None:
        return False
    try:
        return len(base64.b64decode(m.group(1), validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def pin_host_problem(host: str) -> str | None:
    """Why ``host`` cannot be a pin key, or None (names, ``*.domain``, IPs)."""
    h = host.rstrip(".").lower()
    try:
        ipaddress.ip_address(h.strip("[]"))
        return None
    except ValueError:
        pass
    labels = h.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 2:
            return "a wildcard needs at least two labels after *. (like *.example.com)"
    if not labels or not all(_HOST_LABEL.match(label) for label in labels):
        return "is not a host name, *.domain or IP address"
    return None


def _pins(c: _Checker, value: Any, layer: dict[str, Any]) -> None:
    if not isinstance(value, Mapping):
        c.error(("pins",), f"must map host names to lists of pins (got {_kind(value)})")
        return
    table: dict[str, frozenset[str]] = {}
    ok = True
    for host, pins in value.items():
        keys: tuple[Key, ...] = ("pins", str(host))
        problem = pin_host_problem(host) if isinstance(host, str) else "must be a host name"
        if problem:
            c.error(keys, problem, at_key=True)
            ok = False
            continue
        items = c.strings(pins, keys)
        if items is None:
            ok = False
            continue
        if not items:
            c.error(keys, "lists no pins (remove the host to unpin it)")
            ok = False
        # the key the engine looks the connection's host up by: without this,
        # "[::1]" would never apply and "Example.com" would silently replace
        # "example.com"
        key = normalize_host(host)
        if key in table:
            c.error(keys, f"the same host as an earlier entry ({key})", at_key=True)
            ok = False
        for i, pin in enumerate(items):
            if not valid_pin(pin):
                c.error(keys + (i,) if isinstance(pins, list) else keys,
                        f"{pin!r} is not a pin: expected sha256/ and the base64 of a "
                        "SHA-256 digest (ssa-admin pin add HOST --from HOST:443 computes it)")
                ok = False
        table[key] = frozenset(items)
    if ok:
        layer["pins"] = table


def _revocation(c: _Checker, value: Any, layer: dict[str, Any]) -> None:
    r = c.mapping(value, ("revocation",), _REVOCATION)
    if r is None:
        return
    if "mode" in r:
        mode = c.choice(r["mode"], ("revocation", "mode"), REVOCATION_MODES)
        if mode is not None:
            layer["revocation_mode"] = mode
    if "scope" in r:
        scope = c.choice(r["scope"], ("revocation", "scope"), REVOCATION_SCOPES)
        if scope is not None:
            layer["revocation_scope"] = scope
    for key in ("checks", "ocsp_stapling", "ocsp", "crl", "cache"):
        if key in r:
            b = c.boolean(r[key], ("revocation", key))
            if b is not None:
                layer[f"revocation_{key}"] = b


def _server(c: _Checker, value: Any, layer: dict[str, Any]) -> None:
    s = c.mapping(value, ("server",), _SERVER)
    if s is None:
        return
    if "certificates" in s:
        names = c.strings(s["certificates"], ("server", "certificates"))
        if names is not None:
            if len(set(names)) != len(names):
                c.error(("server", "certificates"), "lists a certificate twice")
            else:
                layer["server_certificates"] = tuple(names)
    if "client_auth" in s:
        v = s["client_auth"]
        if v is False:
            v = "none"
        a = c.choice(v, ("server", "client_auth"), CLIENT_AUTH)
        if a is not None:
            layer["client_auth"] = a
    if "client_ca" in s:
        path = c.string(s["client_ca"], ("server", "client_ca"))
        if path is not None and not path.startswith("/"):
            c.error(("server", "client_ca"), f"must be an absolute path (got {path!r})")
        elif path is not None:
            layer["client_ca"] = path
    if "ocsp_stapling" in s:
        b = c.boolean(s["ocsp_stapling"], ("server", "ocsp_stapling"))
        if b is not None:
            layer["server_ocsp_stapling"] = b
    if "early_data" in s:
        b = c.boolean(s["early_data"], ("server", "early_data"))
        if b is not None:
            layer["early_data"] = b
    if "ticket_rotation" in s:
        t = c.number(s["ticket_rotation"], ("server", "ticket_rotation"), 1, MAX_TICKET_ROTATION)
        if t is not None:
            layer["ticket_rotation"] = float(t)


def parse_size(value: Any) -> int | None:
    """``10485760``, ``"10M"``, ``"512k"``, ``"1G"`` -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (m := _SIZE.match(value.strip())):
        return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]
    return None


def _audit(c: _Checker, value: Any, layer: dict[str, Any], profile: bool) -> AuditLogSettings | None:
    if isinstance(value, bool):
        layer["audit"] = value
        return None
    if profile:
        c.error(("audit",), "must be true or false in a profile (the log's path, size and "
                "backups are set in ssa.yaml)")
        return None
    a = c.mapping(value, ("audit",), _AUDIT_GLOBAL)
    if a is None:
        return None
    settings: dict[str, Any] = {}
    if "enabled" in a:
        b = c.boolean(a["enabled"], ("audit", "enabled"))
        if b is not None:
            layer["audit"] = b
    if "path" in a:
        path = c.string(a["path"], ("audit", "path"))
        if path is not None and not path.startswith("/"):
            c.error(("audit", "path"), f"must be an absolute path (got {path!r})")
        elif path is not None:
            settings["path"] = path
    if "max_size" in a:
        size = parse_size(a["max_size"])
        if size is None or size < 4096:
            c.error(("audit", "max_size"), "must be a size of at least 4k, like 10M or 512k "
                    f"(got {_show(a['max_size'])})")
        else:
            settings["max_bytes"] = size
    if "backups" in a:
        n = c.number(a["backups"], ("audit", "backups"), 0, 1000, integer=True)
        if n is not None:
            settings["backups"] = int(n)
    return AuditLogSettings(**settings)
