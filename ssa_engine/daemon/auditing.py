"""What one TLS connection looks like in the audit log (docs/audit.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from OpenSSL import SSL

from ..config.program import user_name
from . import fastio
from .audit import timestamp

if TYPE_CHECKING:
    from .identity import PeerIdentity


def address(addr: object) -> str | None:
    """``("::1", 443, 0, 0)`` -> ``"[::1]:443"``; ``("1.2.3.4", 5)`` -> ``"1.2.3.4:5"``."""
    if isinstance(addr, str):
        return addr or None
    if not isinstance(addr, tuple) or len(addr) < 2:
        return None
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def connection_record(event: str, peer: PeerIdentity, profile: str | None, *,
                      conn: SSL.Connection | None, local: object = None, remote: object = None,
                      sni: str | None = None, verify: str = "ok",
                      error: str | None = None) -> dict[str, object]:
    """One audit record; ``conn`` gives version, cipher, group, ALPN when the handshake ran."""
    version = cipher = group = alpn = None
    resumed = False
    if conn is not None and error is None:
        version = conn.get_protocol_version_name()
        cipher = conn.get_cipher_name()
        group = fastio.group_name(conn)
        chosen = conn.get_alpn_proto_negotiated()
        alpn = chosen.decode("ascii", "replace") if chosen else None
        resumed = fastio.session_reused(conn)
    return {
        "time": timestamp(),
        "event": event,
        "program": peer.program,
        "exe": peer.exe,
        "pid": peer.pid,
        "uid": peer.uid,
        "user": user_name(peer.uid),
        "profile": profile or "default",
        "local": address(local),
        "remote": address(remote),
        "sni": sni,
        "version": version,
        "cipher": cipher,
        "group": group,
        "alpn": alpn,
        "resumed": resumed,
        "verify": verify,
        "error": error,
    }

