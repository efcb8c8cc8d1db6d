"""The server side of a socket session: bind, listen, offer, post-handshake auth."""

from __future__ import annotations

import _socket
import errno
import logging
import os
import socket
from dataclasses import replace
from typing import TYPE_CHECKING

from OpenSSL import SSL, crypto
from OpenSSL._util import lib

from ..policy import Policy
from ..protocol import (
    Accepted,
    AcmeChallenge,
    Bind,
    Bound,
    Error,
    Listen,
    Ok,
)
from ..protocol.states import Request, SocketState
from ..store import NotFound, StoreError
from .auditing import connection_record
from .listener import Listener
from .options import ApiError, SocketOptions, Unexpected, apply_tcp_option, socket_ids
from .relay import Relay
from .servertls import ACME_TLS_1, ServerConfig, ServerContexts
from .tlsctx import (
    CredentialError,
    Credentials,
    ip_literal,
    make_credentials,
    parse_certificates,
    parse_private_key,
)

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("ssa.session")

_CB_ACCEPT_LOOP = 0x2001  # SSL_CB_ACCEPT_LOOP (ssl.h)
_CB_ACCEPT_EXIT = 0x2002  # SSL_CB_ACCEPT_EXIT
#: bytes of buffer each direction of an accepted socket's plaintext pair gets
_PAIR_BUFFER = 1024 * 1024
#: Security parameter: seconds a tls-alpn-01 challenge is answered if nobody removes it.
ACME_CHALLENGE_LIFETIME = 900.0


def _unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024



class ServerSide:
    """Session methods for listening sockets and the sockets they accept."""

    # -- server side ----------------------------------------------------------
    def _on_bind(self, m: Bind) -> None:
        self._require(Request.BIND)
        if self.bound is not None:
            raise ApiError(errno.EINVAL, "the socket is already bound")
        self.bound = self._bind(m.host, m.port)
        host, port = self.bound.getsockname()[:2]
        self.send(Bound(local_host=host, local_port=port))

    def _bind(self, host: str, port: int) -> socket.socket:
        fam = socket.AF_INET6 if self.family == socket.AF_INET6 else socket.AF_INET
        if host in ("", "0.0.0.0", "::"):
            host = "::" if fam == socket.AF_INET6 else "0.0.0.0"
        elif host == "localhost":
            host = "::1" if fam == socket.AF_INET6 else "127.0.0.1"
        literal = ip_literal(host)
        if literal is None or (len(literal) == 16) != (fam == socket.AF_INET6):
            raise ApiError(errno.EINVAL, f"bind: {host!r} is not an address of the socket's family")
        if 0 < port < _unprivileged_port_start() and self.peer.uid != 0 and os.geteuid() == 0:
            # the engine has the privilege, the program does not: no confused deputy
            raise ApiError(errno.EACCES, f"bind: port {port} is privileged and the program "
                           "runs as an unprivileged user")
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            assert self.options is not None
            for (level, name), value in self.options.tcp.items():
                apply_tcp_option(sock, level, name, value)
            sock.bind((host.strip("[]"), port))
        except ApiError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            raise ApiError(exc.errno or errno.EINVAL, f"bind {host} port {port}: "
                           f"{exc.strerror}") from None
        sock.setblocking(False)
        return sock

    def _on_listen(self, m: Listen) -> None:
        if not self.fds:
            raise Unexpected("LISTEN without its notification descriptor")
        notify_fd = self.fds.popleft()
        try:
            notify = socket.socket(fileno=notify_fd)
        except OSError:
            os.close(notify_fd)
            raise ApiError(errno.EINVAL, "the passed descriptor is not a socket") from None
        try:
            if notify.family != socket.AF_UNIX or notify.type != socket.SOCK_STREAM:
                raise ApiError(errno.EINVAL, "the notification descriptor must be a Unix stream "
                               "socket")
            self._require(Request.LISTEN)
            if self.listener is None:
                self._start_listening(m.backlog, notify)
            else:
                notify.close()  # listening already: the same answer again
        except BaseException:
            notify.close()
            raise
        assert self.listener is not None
        host, port = self.listener.tcp.getsockname()[:2]
        self.send(Bound(local_host=host, local_port=port))

    def _server_contexts(self) -> ServerContexts:
        """The server TLS contexts of this socket's settings (LISTEN, and UPGRADE as a server)."""
        o = self.options
        assert o is not None
        try:
            cfg = ServerConfig(
                settings=o.settings(),
                credentials=o.all_credentials() or self._store_credentials(o.policy),
                client_auth=o.effective_peer_auth(),
                client_trust=tuple(o.extra_trust),
                client_trust_store=o.policy.client_ca,
                alpn=o.alpn,
                only_name=o.server_name,
                session_reuse=o.session_reuse and o.session_ttl != 0,
                early_data=self._early_data_allowed(o),
            )
            if not cfg.credentials:
                raise ApiError(errno.EPROTO, "a TLS server needs a certificate: set "
                               "TLS_CERTIFICATE_CHAIN and TLS_PRIVATE_KEY before listen() (or "
                               "the TCP_UPGRADE_TLS upgrade), or "
                               f"list certificates for this program in the {o.policy.source}")
            if cfg.client_auth and not cfg.client_trust and not cfg.client_trust_store:
                raise ApiError(errno.EPROTO, "TLS_REQUEST_PEER_AUTH needs the client CA: set "
                               "TLS_TRUSTED_PEER_CERTIFICATES, or server.client_ca in the "
                               f"{o.policy.source}")
            contexts = ServerContexts(cfg)
            self.engine.revocation.stapler.attach(contexts, o.ocsp_stapling())
            self.server_cfg = cfg
            self.certs_from_store = not o.all_credentials()
        except (SSL.Error, ValueError) as exc:
            raise ApiError(errno.EPROTO, f"cannot build the server TLS context: {exc}") from None
        return contexts

    def _start_listening(self, backlog: int, notify: socket.socket) -> None:
        contexts = self._server_contexts()
        o = self.options
        assert o is not None
        if self.bound is None:
            self.bound = self._bind("", 0)
        try:
            self.bound.listen(max(1, min(backlog or 128, 4096)))
        except OSError as exc:
            raise ApiError(exc.errno or errno.EINVAL, f"listen: {exc.strerror}") from None
        notify.setblocking(False)
        self.listener = Listener(self, self.bound, notify, contexts, backlog or 128,
                                 o.policy.handshake_timeout, self._offer)
        self.bound = None  # the listener owns it now
        self.role = "listener"
        self.state = SocketState.LISTENING
        self.listener.start()
        self._schedule_ticket_rotation()
        log.info("%s: listening on %s", self._who(), self.listener.address())

    # -- ACME tls-alpn-01 through a live listener ------------------------------------
    def _on_acme_challenge(self, m: AcmeChallenge) -> None:
        if self.peer.uid not in (0, os.geteuid()):
            raise ApiError(errno.EACCES, "ACME challenges are only for root and the engine's user")
        listeners = [s for s in self.engine.sessions
                     if s.listener is not None and s.listener.port == m.port]
        if not listeners:
            raise ApiError(errno.ENOENT, f"no TLS listener on port {m.port}")
        table = self.engine.acme_challenges.setdefault(m.port, {})
        host = m.host.lower().rstrip(".")
        if not m.value:
            table.pop(host, None)
            self.send(Ok())
            return
        try:
            ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
            ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
            chain = parse_certificates(m.value, "the challenge certificate")
            ctx.use_certificate(crypto.X509.from_cryptography(chain[0]))
            ctx.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM,
                                                      parse_private_key(m.value)))
            ctx.check_privatekey()
        except (CredentialError, SSL.Error, ValueError) as exc:
            raise ApiError(errno.EINVAL, f"ACME challenge certificate: {exc}") from None
        table[host] = (ctx, self.loop.time() + ACME_CHALLENGE_LIFETIME)
        for s in listeners:
            s.apply_acme()
        log.info("%s: answering tls-alpn-01 for %s on port %d", self._who(), host, m.port)
        self.send(Ok())

    def apply_acme(self) -> None:
        assert self.listener is not None
        table = self.engine.acme_challenges.get(self.listener.port)
        if table:
            self.listener.contexts.enable_acme(table, self.loop.time)
            self.listener.alpn_possible = True

    @staticmethod
    def _early_data_allowed(o: SocketOptions) -> bool:
        """TLS_0RTT on a listener takes early data only where the policy allows it."""
        if not o.zero_rtt:
            return False
        if not o.policy.early_data:
            raise ApiError(errno.EPROTO, f"TLS_0RTT: the {o.policy.source} does not allow early "
                           "data on servers (server.early_data: true allows it; early data can "
                           "be replayed, see docs/developer-guide.md)")
        return o.session_reuse and o.session_ttl != 0

    def _schedule_ticket_rotation(self) -> None:
        o = self.options
        if self.listener is None or o is None or not (o.session_reuse and o.session_ttl):
            return
        self.listener.rotation = self.loop.call_later(o.policy.ticket_rotation,
                                                      self.rotate_tickets)

    def rotate_tickets(self) -> None:
        """New contexts, hence new session-ticket keys (OpenSSL makes them per context)."""
        o = self.options
        if self.listener is None or self.listener.closed or o is None:
            return
        assert self.server_cfg is not None
        try:
            self.listener.contexts = ServerContexts(self.server_cfg)
            self.engine.revocation.stapler.attach(self.listener.contexts, o.ocsp_stapling())
            self.apply_acme()
        except (SSL.Error, ValueError) as exc:
            log.error("%s: could not renew the session-ticket keys: %s", self._who(), exc)
        else:
            log.info("%s: new session-ticket keys", self._who())
        self._schedule_ticket_rotation()

    def refresh_certificates(self) -> None:
        """The store changed: serve its current versions from the next handshake on."""
        o = self.options
        if self.listener is None or o is None or not self.certs_from_store:
            return
        assert self.server_cfg is not None
        try:
            cfg = replace(self.server_cfg, credentials=self._store_credentials(o.policy))
            self.listener.contexts = ServerContexts(cfg)
            self.engine.revocation.stapler.attach(self.listener.contexts, o.ocsp_stapling())
            self.apply_acme()
        except (ApiError, SSL.Error, ValueError) as exc:
            log.error("%s: keeping the certificates in use: %s", self._who(),
                      getattr(exc, "message", exc))
            return
        self.server_cfg = cfg
        log.info("%s: serving the store's current certificates", self._who())

    def _store_credentials(self, policy: Policy) -> tuple[Credentials, ...]:
        """The administrator's certificates for this program, from the store.

        A name the store does not have yet (a certificate still to be issued)
        is skipped with a warning as long as another one can be served; the
        store watcher adds it to the listener once it arrives. A damaged
        entry is an error.
        """
        found = []
        missing = []
        for name in policy.server_certificates:
            try:
                entry = self.engine.store.current(name)
                chain = parse_certificates(entry.fullchain_pem, f"store certificate {name}")
                found.append(make_credentials(chain, parse_private_key(entry.key_pem)))
            except NotFound as exc:
                missing.append((name, exc))
            except (StoreError, CredentialError) as exc:
                raise ApiError(errno.EPROTO, f"certificate {name!r} from the store, named in "
                               f"the {policy.source}: {exc}") from None
        if missing and not found:
            name, exc = missing[0]
            raise ApiError(errno.EPROTO, f"certificate {name!r} from the store, named in "
                           f"the {policy.source}: {exc}")
        for name, _ in missing:
            log.warning("%s: certificate %r is not in the store yet; serving the others",
                        self._who(), name)
        return tuple(found)

    def audit_accept(self, conn: SSL.Connection | None, local: object, remote: object,
                     sni: str | None, error: str | None = None) -> None:
        """Record one server-side handshake (verified, or refused with ``error``)."""
        o = self.options
        if self.engine.audit_log is None or o is None:
            return
        if error is not None:
            verify = "failed" if "certificate" in error else "none"
        else:
            verify = "ok" if conn is not None and conn.get_peer_certificate() is not None else "none"
        self.engine.audit(o.policy, connection_record(
            "accept", self.peer, o.policy.profile, conn=conn if error is None else None,
            local=local, remote=remote, sni=sni, verify=verify, error=error))

    def _offer(self, conn: SSL.Connection, tcp: socket.socket, sni: str | None, early: bytes,
               reading: bool) -> None:
        """A verified connection: hand it to the application's accept().

        ``reading``: the handshake left ``tcp`` registered for reading (the
        relay takes the registration over; on every other path it is dropped).
        """
        assert self.listener is not None and self.options is not None
        if self.listener.alpn_possible and conn.get_alpn_proto_negotiated() == ACME_TLS_1:
            # a CA's tls-alpn-01 validation: it only needed the handshake (RFC 8737 section 3)
            log.info("%s: answered an ACME tls-alpn-01 validation", self._who())
            self.loop.remove_reader(tcp.fileno())
            tcp.close()
            return
        try:
            # also tells whether the client is still there: one that reset right
            # after its handshake (openssl s_time does) is dropped here
            peer = tcp.getpeername()
            local = self.listener.local or tcp.getsockname()
        except OSError:
            log.info("%s: a client left right after its handshake", self._who())
            self.loop.remove_reader(tcp.fileno())
            tcp.close()
            return
        self.audit_accept(conn, local, peer, sni)
        # _socket's pairs: the engine needs none of socket.socket's Python layer,
        # and wrapping each end in it costs more than the system call
        data_engine, data_app = _socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            ctl_engine, ctl_app = _socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError:  # out of descriptors: the listener pauses (caller)
            data_engine.close()
            data_app.close()
            raise
        # on a Unix stream socket only the sender's buffer limits what is in flight
        # (SO_RCVBUF changes nothing), so each end gets SO_SNDBUF alone
        data_engine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _PAIR_BUFFER)
        data_app.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _PAIR_BUFFER)
        data_engine.setblocking(False)
        ctl_engine.setblocking(False)
        child = type(self)(self.engine, ctl_engine, self.peer.dup())
        self.engine.sessions.add(child)
        child.adopt_accepted(self, conn, tcp, data_engine, sni, peer, early, reading)
        self.send(Accepted(socket_id=child.socket_id, local_host=local[0], local_port=local[1],
                           peer_host=peer[0], peer_port=peer[1]),
                  fds=[data_app.detach(), ctl_app.detach()])
        self.listener.offered()

    def _post_handshake_auth(self, mode: int | None) -> None:
        """TLS 1.3 post-handshake authentication (RFC 8446 section 4.6.2)."""
        conn = self.conn
        assert conn is not None and self.relay is not None and self.options is not None
        if mode not in (1, 2):
            raise ApiError(errno.EINVAL, "TLS_REQUEST_PEER_AUTH on an accepted socket: 1 "
                           "(require) or 2 (request)")
        if conn.get_protocol_version_name() != "TLSv1.3":
            raise ApiError(errno.EOPNOTSUPP, "post-handshake authentication needs TLS 1.3 "
                           "(TLS 1.2 renegotiation is disabled)")
        if not self.options.extra_trust:
            raise ApiError(errno.EPROTO, "post-handshake authentication needs the client CA: "
                           "set TLS_TRUSTED_PEER_CERTIFICATES on the listener")
        if self.pha_timer is not None:
            raise ApiError(errno.EALREADY, "a client certificate request is already running")
        flags = SSL.VERIFY_PEER | lib.SSL_VERIFY_POST_HANDSHAKE
        if mode == 1:
            flags |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        conn.set_verify(flags)
        if lib.SSL_verify_client_post_handshake(conn._ssl) != 1:  # noqa: SLF001
            lib.ERR_clear_error()
            raise ApiError(errno.EPROTO, "the client does not offer post-handshake "
                           "authentication")
        conn.set_info_callback(self._on_info)
        self.pha_timer = self.loop.call_later(self.options.policy.handshake_timeout,
                                              self._pha_finished, errno.ETIMEDOUT,
                                              "the client did not answer the certificate "
                                              "request in time")
        self.relay.send_handshake()

    def _on_info(self, conn: SSL.Connection, where: int, ret: int) -> None:
        # Called from inside SSL_read: only note progress and schedule the reply.
        # OpenSSL reports no HANDSHAKE_DONE after post-handshake authentication;
        # it is complete when the accept loop exits after reading the client's
        # Finished (which follows its Certificate, empty or not).
        if self.pha_timer is None:
            return
        if where & _CB_ACCEPT_LOOP == _CB_ACCEPT_LOOP and conn.get_state_string() == (
                b"SSLv3/TLS read finished"):
            self.pha_read_finished = True
        elif where & _CB_ACCEPT_EXIT == _CB_ACCEPT_EXIT and self.pha_read_finished:
            self.pha_read_finished = False
            self.loop.call_soon(self._pha_finished, 0, "")

    def _pha_finished(self, code: int, message: str) -> None:
        if self.pha_timer is None:
            return
        self.pha_timer.cancel()
        self.pha_timer = None
        if code:
            self.last_error = message
            self.send(Error(errno=code, message=message))
        else:
            self.send(Ok())

    def adopt_accepted(self, listener: Session, conn: SSL.Connection, tcp: socket.socket,
                       data: socket.socket, sni: str | None, peer: tuple[str, int],
                       early: bytes = b"", reading: bool = False) -> None:
        """Become the engine side of an accepted socket."""
        assert listener.options is not None
        self.hello_done = True
        self.role = "server"
        # the listener checked the per-user limit before accepting
        self.engine.per_user[self.peer.uid] = self.engine.per_user.get(self.peer.uid, 0) + 1
        self.family = listener.family
        self.socket_id = next(socket_ids)
        self.options = SocketOptions(policy=listener.options.policy)
        self.options.alpn = listener.options.alpn
        self.options.server_name = listener.options.server_name
        self.options.extra_trust = list(listener.options.extra_trust)
        self.state = SocketState.CONNECTED
        self.conn = conn
        self.tcp = tcp
        self.sni = sni
        self.remote = f"{peer[0]}:{peer[1]}"
        self.engine.sockets += 1
        self.engine.connected += 1
        if log.isEnabledFor(logging.INFO):
            log.info("%s: accepted %s %s %s sni=%s", self._who(), self.remote,
                     conn.get_protocol_version_name(), conn.get_cipher_name(), sni)
        if early:
            # the client's 0-RTT bytes come first in the stream; the application
            # asks getsockopt(TLS_0RTT) whether they did (they may be a replay)
            self.early_data = True
            data.sendall(early)  # <= 16 KiB into an empty 1 MiB socket buffer
        self.relay = Relay(self.loop, conn, tcp, data, self._on_stream_end,
                           self._on_relay_finished)
        self.relay.start(reader_registered=reading)
