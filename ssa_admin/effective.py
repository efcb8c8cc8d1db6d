"""The configuration in force, read-only: effective settings and their origin,
validation, the profile list, and why a profile applies to a program."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssa_engine import paths
from ssa_engine.config import ConfigError, ConfigErrors, read_document
from ssa_engine.config.loader import Config, check_files, check_policy
from ssa_engine.policy.levels import VERSION_NAMES
from ssa_engine.policy.match import KINDS, Program, Score, score
from ssa_engine.policy.model import DEFAULT_POLICY, Layer, Policy, overlay
from ssa_engine.policy.schema import AuditLogSettings

from .profiles import (
    BUILT_IN,
    MAIN_LABEL,
    Source,
    applied_profiles,
    bundled_profiles,
    find_profile,
    was_edited,
)


# -- the settings in force, and where each comes from -------------------------------------
def default_layer(config_dir: Path) -> tuple[Layer, AuditLogSettings, Path | None]:
    """What ``ssa.yaml`` sets (nothing when it is absent); raises ConfigErrors."""
    main = config_dir / paths.CONFIG_FILE
    if not main.exists():
        return Layer(), AuditLogSettings(), None
    doc, tree = read_document(main, profile=False)
    errors = check_policy(overlay(DEFAULT_POLICY, doc.layer, source=str(main)), tree, str(main))
    errors += check_files(doc.layer, str(main), tree)
    if errors:
        raise ConfigErrors(errors)
    return doc.layer, doc.audit_log or AuditLogSettings(), main


_TLS = ("min_version", "max_version", "ciphers", "ciphersuites", "groups")
#: settings outside ``tls``: key path in the file -> Layer attribute
_OTHER = {
    "verify.trust_store": "trust_store", "verify.verify_depth": "verify_depth",
    "verify.allow_app_trust": "allow_app_trust", "verify.allow_ip_names": "allow_ip_names",
    "server.certificates": "server_certificates", "server.client_auth": "client_auth",
    "server.client_ca": "client_ca", "server.ocsp_stapling": "server_ocsp_stapling",
    **{f"revocation.{k}": f"revocation_{k}"
       for k in ("checks", "mode", "scope", "ocsp_stapling", "ocsp", "crl", "cache")},
    "app_overrides": "app_overrides",
    "handshake_timeout": "handshake_timeout", "audit": "audit",
}


def settings(policy: Policy) -> dict[str, Any]:
    """A policy in the keys of the profile format (plus what its level implies)."""
    lv, v, r = policy.level, policy.verify, policy.revocation
    return {
        "level": lv.name,
        "tls": {
            "min_version": VERSION_NAMES[policy.effective_min_version],
            "max_version": VERSION_NAMES[policy.effective_max_version],
            "ciphers": list(policy.effective_ciphers),
            "ciphersuites": list(policy.effective_ciphersuites),
            "groups": list(policy.effective_groups),
            "sigalgs": list(lv.sigalgs),
            "min_rsa_bits": lv.min_rsa_bits,
            "min_ec_bits": lv.min_ec_bits,
        },
        "verify": {"trust_store": v.trust_store, "verify_depth": v.verify_depth,
                   "allow_app_trust": v.allow_app_trust, "allow_ip_names": v.allow_ip_names},
        "pins": {host: sorted(pins) for host, pins in policy.pins},
        "revocation": {"checks": r.checks, "mode": r.mode, "scope": r.scope,
                       "ocsp_stapling": r.ocsp_stapling,
                       "ocsp": r.ocsp, "crl": r.crl, "cache": r.cache},
        "server": {"certificates": list(policy.server_certificates),
                   "client_auth": policy.client_auth, "client_ca": policy.client_ca,
                   "ocsp_stapling": policy.server_ocsp_stapling},
        "app_overrides": sorted(policy.app_overrides),
        "handshake_timeout": policy.handshake_timeout,
        "audit": policy.audit,
    }


def origins(layers: Sequence[tuple[str, Layer]]) -> dict[str, str]:
    """Which layer decided each setting: ``{"tls.min_version": "ssa.yaml (level modern)"}``.

    ``layers`` are (label, layer), weakest first, on top of the built-in policy.
    A layer naming a level restarts the TLS settings from it (model.overlay).
    """
    out: dict[str, str] = {"level": BUILT_IN}
    level_name = DEFAULT_POLICY.level.name
    for label, layer in layers:
        if layer.level is not None:
            out["level"], level_name = label, layer.level.name
    for key in _TLS:
        out[f"tls.{key}"] = f"{BUILT_IN} (level {DEFAULT_POLICY.level.name})"
        for label, layer in reversed(layers):
            if getattr(layer, key) is not None:
                out[f"tls.{key}"] = label
                break
            if layer.level is not None:
                out[f"tls.{key}"] = f"{label} (level {layer.level.name})"
                break
    for key in ("sigalgs", "min_rsa_bits", "min_ec_bits"):
        out[f"tls.{key}"] = f"{out['level']} (level {level_name})"
    for key, attr in _OTHER.items():
        out[key] = next((label for label, layer in reversed(layers)
                         if getattr(layer, attr) is not None), BUILT_IN)
    for label, layer in layers:
        for host in layer.pins or {}:
            out[f"pins.{host}"] = label
    return out


@dataclass(frozen=True, slots=True)
class Effective:
    """A policy as the engine would build it, and where each setting comes from."""

    policy: Policy
    origins: dict[str, str]
    audit_log: AuditLogSettings
    source: Source | None = None  # None: the default policy
    match: dict[str, list[str]] | None = None
    description: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        if self.source is not None:
            doc.update({"name": self.source.name,
                        "state": "bundled" if self.source.bundled else "applied",
                        "file": str(self.source.path), "description": self.description,
                        "match": self.match})
        else:
            doc["audit_log"] = {"path": self.audit_log.path,
                                "max_size": self.audit_log.max_bytes,
                                "backups": self.audit_log.backups}
        doc["settings"] = settings(self.policy)
        doc["origins"] = self.origins
        return doc


def effective_default(config_dir: Path) -> Effective:
    layer, audit_log, main = default_layer(config_dir)
    policy = overlay(DEFAULT_POLICY, layer, source=f"default policy ({main})") if main else \
        DEFAULT_POLICY
    return Effective(policy, origins([(MAIN_LABEL, layer)]), audit_log)


def effective_profile(config_dir: Path, name: str, *, bundled: bool = False) -> Effective:
    """Default policy + profile ``name`` (applied, else bundled); raises ConfigErrors."""
    source = find_profile(config_dir, name, bundled=bundled)
    layer, audit_log, main = default_layer(config_dir)
    default = overlay(DEFAULT_POLICY, layer, source=f"default policy ({main})") if main else \
        DEFAULT_POLICY
    doc, tree = read_document(source.path, profile=True)
    policy = overlay(default, doc.layer, source=f"profile {name} ({source.path})", profile=name)
    errors = check_policy(policy, tree, str(source.path)) + check_files(
        doc.layer, str(source.path), tree)
    if errors:
        raise ConfigErrors(errors)
    assert doc.match is not None
    match = {k: list(doc.match.values(k)) for k in KINDS if doc.match.values(k)}
    label = f"profile {name}"
    return Effective(policy, origins([(MAIN_LABEL, layer), (label, doc.layer)]), audit_log,
                     source, match, doc.description)


# -- validate ------------------------------------------------------------------------------
def validate_files(config_dir: Path, files: Sequence[Path]) -> list[ConfigError]:
    """Every error in ``files``, each checked alone (``ssa.yaml`` as the default policy,
    any other name as a profile merged with ``CONFIG/ssa.yaml``)."""
    try:
        layer, _, main = default_layer(config_dir)
        default = overlay(DEFAULT_POLICY, layer, source=str(main)) if main else DEFAULT_POLICY
    except ConfigErrors:
        default = DEFAULT_POLICY  # that file's own errors show when it is validated
    errors: list[ConfigError] = []
    for path in files:
        is_main = path.name == paths.CONFIG_FILE
        try:
            doc, tree = read_document(path, profile=not is_main)
        except ConfigErrors as exc:
            errors.extend(exc.errors)
            continue
        policy = overlay(DEFAULT_POLICY if is_main else default, doc.layer, source=str(path))
        errors.extend(check_policy(policy, tree, str(path)))
        errors.extend(check_files(doc.layer, str(path), tree))
    return errors


# -- list ----------------------------------------------------------------------------------
def profile_list(config_dir: Path) -> list[dict[str, Any]]:
    """Bundled and applied profiles: match, level, description, state."""
    applied, bundled = applied_profiles(config_dir), bundled_profiles()
    rows = []
    for name in sorted(set(applied) | set(bundled)):
        path = applied.get(name) or bundled[name]
        row: dict[str, Any] = {
            "name": name, "state": None, "applied": str(applied[name]) if name in applied else None,
            "bundled": str(bundled[name]) if name in bundled else None,
            "match": {}, "level": None, "description": None, "error": None,
        }
        if name not in applied:
            row["state"] = "bundled only"
        elif name not in bundled:
            row["state"] = "applied (local)"
        else:
            current = applied[name].read_text(encoding="utf-8", errors="replace")
            edited = was_edited(current, applied[name], bundled[name])
            row["state"] = "applied, differs from bundled" if edited else "applied"
        try:
            doc, _ = read_document(path, profile=True)
        except ConfigErrors as exc:
            row["error"] = str(exc.errors[0])
        else:
            if doc.match is not None:
                row["match"] = {k: list(doc.match.values(k)) for k in KINDS
                                if doc.match.values(k)}
            row["level"] = doc.layer.level.name if doc.layer.level else None
            row["description"] = doc.description
        rows.append(row)
    return rows


# -- explain -------------------------------------------------------------------------------
def _kind_of(s: Score) -> str:
    return KINDS[len(KINDS) - s.rank]


def _why_lost(s: Score, top: Score, winner: str) -> str:
    if s.rank != top.rank:
        return f"a {_kind_of(top)} match is more specific than a {_kind_of(s)} match"
    if s.exact != top.exact:
        return "an exact value beats a pattern"
    if s.literal != top.literal:
        return "the winner's pattern is longer (more specific)"
    if s.kinds != top.kinds:
        return f"the winner matches on more criteria ({top.kinds} to {s.kinds})"
    return f"tie: equally specific, {winner} sorts first by name"


def explain(config: Config, program: Program) -> dict[str, Any]:
    """Which profile governs ``program``, why, and which other profiles matched."""
    selection = config.select(program)
    scored = []
    for p in config.profiles:
        result = score(p.match, program)
        if result is not None:
            scored.append((result[0], p, result[1]))
    winner = selection.profile.name if selection.profile else None
    top = max((s for s, _, _ in scored), default=None)
    candidates = []
    # most specific first; equally specific ones in name order (the tie rule)
    by_name = sorted(scored, key=lambda c: c[1].name)
    for s, p, why in sorted(by_name, key=lambda c: c[0], reverse=True):
        if p.name == winner:
            outcome, lost = "selected", None
        else:
            assert top is not None and winner is not None
            outcome = "tied" if s == top else "lost"
            lost = _why_lost(s, top, winner)
        candidates.append({"name": p.name, "file": str(p.file), "matched_by": why,
                           "result": outcome, "why_lost": lost})
    matched = {c["name"] for c in candidates}
    return {
        "program": {"pid": program.pid, "exe": program.exe, "comm": program.comm,
                    "uid": program.uid, "user": program.user, "unit": program.unit},
        "config_dir": str(config.directory),
        "profile": winner,
        "file": str(selection.profile.file) if selection.profile else None,
        "reason": selection.reason,
        "tied": list(selection.tied),
        "level": selection.policy.level.name,
        "candidates": candidates,
        "not_matching": [p.name for p in config.profiles if p.name not in matched],
    }


