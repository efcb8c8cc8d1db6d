"""tls-alpn-01 answered by the running engine on its own listener (no downtime).

When the engine owns a TLS listener on the validation port, nothing else can
bind it; instead ssa-admin hands the engine each challenge certificate
(ACME_CHALLENGE, docs/protocol.md section 5.10). The engine serves it only to
clients that offer ``acme-tls/1`` with the identifier as SNI, and keeps
serving every other client as before.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import josepy as jose

from ssa_engine import paths

from .errors import ChallengeError
from .responders import Responder, key_authorization, tls_alpn_certificate


def _request(socket: Path | None, message: Any) -> Any:
    from ssa_engine.api.control import ControlChannel

    ctl = ControlChannel(socket or paths.engine_socket())
    try:
        return ctl.open(message)
    finally:
        ctl.close()


def engine_listens_on(socket: Path | None, port: int) -> bool:
    """Does a running engine (that we may administer) own a TLS listener on ``port``?"""
    from ssa_engine.protocol import StatusReply, StatusRequest

    try:
        reply = _request(socket, StatusRequest())
    except OSError:
        return False
    if not isinstance(reply, StatusReply):
        return False
    return port in json.loads(reply.document).get("listening_ports", [])


class TlsAlpn01Engine(Responder):
    challenge_type = "tls-alpn-01"

    def __init__(self, socket: Path | None, port: int) -> None:
        self.socket = socket
        self.port = port
        self.added: list[str] = []

    def _send(self, identifier: str, value: bytes) -> None:
        from ssa_engine.protocol import AcmeChallenge, Error

        try:
            reply = _request(self.socket, AcmeChallenge(value=value, host=identifier,
                                                        port=self.port))
        except OSError as exc:
            raise ChallengeError(f"the engine did not take the tls-alpn-01 challenge: "
                                 f"{exc.strerror}") from None
        if isinstance(reply, Error):
            why = "no listener on that port any more" if reply.errno == errno.ENOENT else \
                reply.message
            raise ChallengeError(f"the engine refused the tls-alpn-01 challenge for "
                                 f"{identifier}: {why}")

    def add(self, identifier: str, challb: Any, account_key: jose.JWK) -> None:
        cert_pem, key_pem = tls_alpn_certificate(identifier, key_authorization(challb, account_key))
        self._send(identifier, cert_pem + key_pem)
        self.added.append(identifier)

    def stop(self) -> None:
        for identifier in self.added:
            try:
                self._send(identifier, b"")
            except ChallengeError:
                pass  # the engine drops it after 15 minutes anyway
        self.added.clear()

    def describe(self) -> dict[str, object]:
        return {"tls_port": self.port, "via": "engine"}
