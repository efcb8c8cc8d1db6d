"""STARTTLS (``TCP_UPGRADE_TLS``): plain TCP sockets upgraded in place, against real peers.

The SMTP peers are real: Python's ``smtplib`` client and ``openssl s_client
-starttls smtp`` against an SMTP server written here on SSA sockets, and an
SSA-upgraded client against an SMTP server written here on the stdlib ``ssl``
module (OpenSSL, not the engine). A plaintext dialogue, the upgrade, then a
whole mail transaction inside TLS: the message must arrive intact.
"""

from __future__ import annotations

import errno
import os
import select
import smtplib
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from typing import Any

import pytest

import ssa_engine
from ssa_engine import IPPROTO_TCP, IPPROTO_TLS, TCP_UPGRADE_TLS
from ssa_engine.api.control import ControlChannel
from ssa_engine.protocol import Connected, ConnectFailed, SetSockOpt, SocketRequest, Upgrade

from .conftest import EngineProcess, SSLServer, server_context
from .pki import PKI

pytestmark = pytest.mark.usefixtures("engine")

CRLF = b"\r\n"


class Lines:
    """An unbuffered line reader: never reads past the line it returns.

    That is what an application must do before an upgrade: bytes read ahead
    would be TLS bytes that the engine never sees.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = b""

    def line(self) -> bytes:
        while CRLF not in self.pending:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise EOFError(f"end of stream after {self.pending!r}")
            self.pending += chunk
        line, _, self.pending = self.pending.partition(CRLF)
        return line

    def data(self) -> bytes:
        """An SMTP DATA body up to the lone dot (RFC 5321 section 4.1.1.4)."""
        body = []
        while (line := self.line()) != b".":
            body.append(line[1:] if line.startswith(b"..") else line)
        return CRLF.join(body) + CRLF


# -- an SMTP server on SSA sockets, upgraded with TCP_UPGRADE_TLS ----------------------------


class SSASMTPServer:
    """A small ESMTP server whose connections are plain ``ssa_engine`` TCP sockets.

    After ``STARTTLS`` it answers ``220`` and upgrades the connection in
    place (server role) with ``setsockopt(IPPROTO_TCP, TCP_UPGRADE_TLS, b"")``.
    """

    def __init__(self, pair: Any) -> None:
        self.pair = pair
        self.listener = ssa_engine.socket(socket.AF_INET, socket.SOCK_STREAM, 0)  # protocol 0: plain TCP
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.sessions: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: ssa_engine.TLSSocket) -> None:
        info: dict[str, Any] = {"messages": [], "tls": False}
        self.sessions.append(info)
        try:
            with conn:
                conn.settimeout(20)
                info["plain_type"] = type(conn)
                self._dialogue(conn, info)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.errors.append(exc)

    def _dialogue(self, conn: ssa_engine.TLSSocket, info: dict[str, Any]) -> None:
        reader = Lines(conn)
        conn.sendall(b"220 ssa.test ESMTP ready" + CRLF)
        while True:
            line = reader.line()
            verb = line.split(b" ", 1)[0].upper()
            if verb in (b"EHLO", b"HELO"):
                extensions = [b"ssa.test", b"8BITMIME"] + ([] if info["tls"] else [b"STARTTLS"])
                reply = b"".join(b"250-" + e + CRLF for e in extensions[:-1])
                conn.sendall(reply + b"250 " + extensions[-1] + CRLF)
            elif verb == b"STARTTLS" and not info["tls"]:
                # certificates first (they wait in the engine), then the go-ahead
                conn.setsockopt(IPPROTO_TLS, ssa_engine.TLS_CERTIFICATE_CHAIN, self.pair.chain)
                conn.setsockopt(IPPROTO_TLS, ssa_engine.TLS_PRIVATE_KEY, self.pair.key)
                conn.sendall(b"220 Ready to start TLS" + CRLF)
                assert reader.pending == b"", "the client sent bytes before its ClientHello"
                info["fileno_before"] = conn.fileno()
                info["peer_before"] = conn.getpeername()
                conn.setsockopt(IPPROTO_TCP, TCP_UPGRADE_TLS, b"")
                info["fileno_after"] = conn.fileno()
                info["peer_after"] = conn.getpeername()
                info["tls"] = True
                info["version"] = conn.getsockopt(IPPROTO_TLS, ssa_engine.TLS_VERSION_CONN)
                info["cipher"] = conn.getsockopt(IPPROTO_TLS, ssa_engine.TLS_CHOSEN_CIPHER)
                info["sni"] = conn.getsockopt(IPPROTO_TLS, ssa_engine.TLS_HOSTNAME)
            elif verb == b"MAIL":
                info["from"] = line
                conn.sendall(b"250 OK" + CRLF)
            elif verb == b"RCPT":
                info["to"] = line
                conn.sendall(b"250 OK" + CRLF)
            elif verb == b"DATA":
                conn.sendall(b"354 End data with <CR><LF>.<CR><LF>" + CRLF)
                info["messages"].append((info["tls"], reader.data()))
                conn.sendall(b"250 OK queued" + CRLF)
            elif verb == b"QUIT":
                conn.sendall(b"221 Bye" + CRLF)
                return
            else:
                conn.sendall(b"502 Command not implemented" + CRLF)

    def close(self) -> None:
        self.listener.close()
        for t in self._threads:
            t.join(10)


@pytest.fixture
def ssa_smtp(pki: PKI) -> Iterator[SSASMTPServer]:
    srv = SSASMTPServer(pki.server)
    yield srv
    srv.close()


def _message(text: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@client.test"
    msg["To"] = "bob@ssa.test"
    msg["Subject"] = "STARTTLS through the engine"
    msg.set_content(text)
    return msg


def test_smtplib_starttls_to_an_ssa_upgraded_server(pki: PKI, ssa_smtp: SSASMTPServer) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
    body = "Hello over STARTTLS.\n.leading dot, ünïcode, and a long line " + "x" * 3000 + "\n"
    with smtplib.SMTP("127.0.0.1", ssa_smtp.port, local_hostname="client.test",
                      timeout=20) as client:
        client.ehlo()
        assert client.has_extn("starttls")
        code, _ = client.starttls(context=ctx)  # verifies the server's certificate
        assert code == 220
        client.ehlo()
        assert not client.has_extn("starttls")  # inside TLS now
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        client.send_message(_message(body))
    ssa_smtp.close()
    assert not ssa_smtp.errors, ssa_smtp.errors
    (info,) = ssa_smtp.sessions
    assert info["plain_type"] is ssa_engine.TLSSocket  # accept() on a plain socket
    # the same socket object, the same descriptor number, now TLS
    assert info["fileno_after"] == info["fileno_before"]
    assert info["peer_after"] == info["peer_before"]
    assert info["version"] in (0x0303, 0x0304) and info["cipher"]
    assert info["sni"] == b""  # smtplib sends no SNI for an IP address
    ((tls, data),) = info["messages"]
    assert tls is True
    assert b"alice@client.test" in info["from"] and b"bob@ssa.test" in info["to"]
    assert _message_text(data).replace("\r\n", "\n") == body  # SMTP lines end in CRLF


def _message_text(data: bytes) -> str:
    from email import message_from_bytes, policy

    msg = message_from_bytes(data, policy=policy.default)
    assert msg["Subject"] == "STARTTLS through the engine"
    return str(msg.get_content())  # type: ignore[attr-defined]


def test_openssl_s_client_starttls_smtp_to_an_ssa_upgraded_server(
        pki: PKI, ssa_smtp: SSASMTPServer) -> None:
    commands = (b"EHLO openssl.test\nMAIL FROM:<carol@openssl.test>\nRCPT TO:<bob@ssa.test>\n"
                b"DATA\nSubject: from s_client\n\nsent by openssl s_client\n.\nQUIT\n")
    res = subprocess.run(
        ["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{ssa_smtp.port}",
         "-servername", "localhost", "-CAfile", str(pki.ca.pem), "-verify_return_error",
         "-verify_hostname", "localhost", "-crlf", "-ign_eof"],
        input=commands, capture_output=True, timeout=60,
    )
    out = res.stdout.decode(errors="replace") + res.stderr.decode(errors="replace")
    assert res.returncode == 0, out
    assert "Verification: OK" in out or "Verify return code: 0 (ok)" in out, out
    assert "250 OK queued" in out and "221 Bye" in out, out
    ssa_smtp.close()
    assert not ssa_smtp.errors, ssa_smtp.errors
    (info,) = ssa_smtp.sessions
    assert info["sni"] == b"localhost"  # an upgraded server reads the SNI as an accepted one
    ((tls, data),) = info["messages"]
    assert tls and data == b"Subject: from s_client\r\n\r\nsent by openssl s_client\r\n"


# -- an SSA-upgraded client against an SMTP server on the stdlib ssl module ---------------------


class SSLSMTPServer:
    """An ESMTP server on stdlib sockets that switches to ``ssl`` after STARTTLS."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.snis: list[str | None] = []
        ctx.sni_callback = self._on_sni
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.messages: list[bytes] = []
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _on_sni(self, _sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.snis.append(name)

    def _run(self) -> None:
        try:
            raw, _ = self.sock.accept()
        except OSError:
            return
        conn: socket.socket = raw
        try:
            conn.settimeout(20)
            reader = Lines(conn)
            conn.sendall(b"220 stdlib.test ESMTP" + CRLF)
            tls = False
            while True:
                verb = reader.line().split(b" ", 1)[0].upper()
                if verb == b"EHLO":
                    last = b"250 SIZE 1000000" if tls else b"250-SIZE 1000000" + CRLF + b"250 STARTTLS"
                    conn.sendall(b"250-stdlib.test" + CRLF + last + CRLF)
                elif verb == b"STARTTLS":
                    conn.sendall(b"220 Ready to start TLS" + CRLF)
                    conn = self.ctx.wrap_socket(conn, server_side=True)
                    reader = Lines(conn)
                    tls = True
                elif verb in (b"MAIL", b"RCPT"):
                    conn.sendall(b"250 OK" + CRLF)
                elif verb == b"DATA":
                    conn.sendall(b"354 go ahead" + CRLF)
                    self.messages.append(reader.data() if tls else b"(in plaintext!)")
                    conn.sendall(b"250 OK queued" + CRLF)
                elif verb == b"QUIT":
                    conn.sendall(b"221 Bye" + CRLF)
                    return
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.errors.append(exc)
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()
        self._thread.join(10)


def _smtp_reply(reader: Lines) -> list[bytes]:
    lines = [reader.line()]
    while lines[-1][3:4] == b"-":
        lines.append(reader.line())
    return lines


def _command(sock: socket.socket, reader: Lines, command: bytes, code: bytes) -> list[bytes]:
    sock.sendall(command + CRLF)
    reply = _smtp_reply(reader)
    assert reply[-1].startswith(code), (command, reply)
    return reply


def test_ssa_upgraded_client_against_a_stdlib_ssl_starttls_server(pki: PKI) -> None:
    srv = SSLSMTPServer(server_context(pki.server))
    try:
        sock = ssa_engine.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_TCP)
        with sock:
            sock.settimeout(20)
            sock.connect(("127.0.0.1", srv.port))
            sock.setsockopt(IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a plain TCP socket: the kernel's
            assert sock.getsockopt(IPPROTO_TCP, socket.TCP_NODELAY) == 1
            reader = Lines(sock)
            assert _smtp_reply(reader)[0].startswith(b"220")
            assert b"250 STARTTLS" in _command(sock, reader, b"EHLO ssa.client", b"250")
            _command(sock, reader, b"STARTTLS", b"220")
            assert reader.pending == b""
            # the test CA, then the upgrade as a client, verifying "localhost"
            sock.setsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, pki.ca.pem)
            fileno, peer = sock.fileno(), sock.getpeername()
            sock.setsockopt(IPPROTO_TCP, TCP_UPGRADE_TLS, b"localhost")
            assert sock.fileno() == fileno and sock.getpeername() == peer
            assert sock.proto == IPPROTO_TLS
            identity = sock.getsockopt(IPPROTO_TLS, ssa_engine.TLS_PEER_IDENTITY)
            assert identity.startswith(b"/C=US/O=Example")
            assert sock.getsockopt(IPPROTO_TLS, ssa_engine.TLS_VERSION_CONN) in (0x0303, 0x0304)
            reader = Lines(sock)
            assert b"STARTTLS" not in b"".join(_command(sock, reader, b"EHLO ssa.client", b"250"))
            _command(sock, reader, b"MAIL FROM:<alice@ssa.client>", b"250")
            _command(sock, reader, b"RCPT TO:<bob@stdlib.test>", b"250")
            _command(sock, reader, b"DATA", b"354")
            body = b"Subject: upgraded\r\n\r\n" + b"".join(
                b"line %d of the message\r\n" % i for i in range(2000))
            _command(sock, reader, body + b".", b"250")
            _command(sock, reader, b"QUIT", b"221")
        srv.close()
        assert not srv.errors, srv.errors
        assert srv.snis == ["localhost"]
        assert srv.messages == [body]
    finally:
        srv.close()


# -- failures ---------------------------------------------------------------------------------------


@pytest.fixture
def tls_peer(ssl_server: Callable[..., SSLServer], pki: PKI) -> Callable[[], SSLServer]:
    """A server that starts TLS at once (a STARTTLS peer after its go-ahead), echoing."""
    return lambda: ssl_server(server_context(pki.server))


def test_verification_failure_on_upgrade_is_eproto_with_the_reason(
        pki: PKI, tls_peer: Callable[[], SSLServer]) -> None:
    srv = tls_peer()
    sock = ssa_engine.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    with sock:
        sock.connect(("127.0.0.1", srv.port))
        sock.setsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, pki.ca.pem)
        fileno = sock.fileno()
        with pytest.raises(OSError) as info:
            sock.setsockopt(IPPROTO_TCP, TCP_UPGRADE_TLS, "wrong.example")
        assert info.value.errno == errno.EPROTO
        assert "certificate verification failed" in str(info.value)
        assert "wrong.example" in str(info.value)
        assert sock.fileno() == fileno
        reason = sock.getsockopt(IPPROTO_TLS, ssa_engine.TLS_ERROR)
        assert b"certificate verification failed" in reason
        with pytest.raises(OSError) as used:  # broken, as after a failed connect
            sock.send(b"x")
        assert used.value.errno == errno.EBADFD
    with pytest.raises(OSError) as again:  # and the untrusted CA without the option
        ssa_engine.upgrade(socket.create_connection(("127.0.0.1", srv.port)),
                           hostname="localhost")
    assert again.value.errno == errno.EPROTO


def test_upgrade_refusals() -> None:
    plain = ssa_engine.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    with plain:
        with pytest.raises(OSError) as info:  # not connected: nothing happens
            plain.setsockopt(IPPROTO_TCP, TCP_UPGRADE_TLS, b"mail.example.com")
        assert info.value.errno == errno.EINVAL
        with pytest.raises(OSError) as info:  # never the kernel's TCP_FASTOPEN_KEY
            plain.getsockopt(IPPROTO_TCP, TCP_UPGRADE_TLS)
        assert info.value.errno == errno.ENOPROTOOPT
        with pytest.raises(OSError) as info:
            plain.setsockopt(IPPROTO_TCP, TCP_UPGRADE_TLS, 42)
        assert info.value.errno == errno.EINVAL
        # TLS options of a plain socket are checked by the engine at once
        with pytest.raises(OSError) as info:
            plain.setsockopt(IPPROTO_TLS, ssa_engine.TLS_VERSION_MIN, 0x0101)
        assert info.value.errno == errno.EINVAL
        plain.setsockopt(IPPROTO_TLS, ssa_engine.TLS_VERSION_MIN, ssa_engine.TLS_1_3)
        assert plain.getsockopt(IPPROTO_TLS, ssa_engine.TLS_VERSION_MIN) == ssa_engine.TLS_1_3
    tls = ssa_engine.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_TLS)
    with tls:
        with pytest.raises(OSError) as info:  # a TLS socket already
            tls.setsockopt(IPPROTO_TCP, TCP_UPGRADE_TLS, b"mail.example.com")
        assert info.value.errno == errno.EISCONN
    raw = socket.socket()
    with raw:
        with pytest.raises(ValueError):
            ssa_engine.upgrade(raw, hostname="a.example", server_side=True)
        with pytest.raises(ValueError):
            ssa_engine.upgrade(raw)
        with pytest.raises(ValueError):
            ssa_engine.upgrade(raw, hostname="")
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp, pytest.raises(OSError) as info:
        ssa_engine.upgrade(udp, hostname="a.example")
    assert info.value.errno == errno.EINVAL


def test_server_upgrade_without_a_certificate_is_eproto() -> None:
    with socket.create_server(("127.0.0.1", 0)) as lst:
        client = socket.create_connection(lst.getsockname())
        conn, _ = lst.accept()
        with client:
            with pytest.raises(OSError) as info:
                ssa_engine.upgrade(conn, server_side=True)
            assert info.value.errno == errno.EPROTO
            assert "needs a certificate" in str(info.value)
            assert conn.fileno() == -1  # taken over (and closed with the failure)
            client.settimeout(10)
            assert client.recv(100) == b""  # the failed upgrade ended the TCP connection


def test_a_second_upgrade_is_eisconn(pki: PKI, tls_peer: Callable[[], SSLServer]) -> None:
    srv = tls_peer()
    raw = socket.create_connection(("127.0.0.1", srv.port))
    sock = ssa_engine.upgrade(raw, hostname="localhost", cafile=pki.ca.pem)
    with sock:
        with pytest.raises(OSError) as info:
            sock.setsockopt(IPPROTO_TCP, TCP_UPGRADE_TLS, b"localhost")
        assert info.value.errno == errno.EISCONN
        sock.sendall(b"still fine")
        assert sock.recv(100) == b"still fine"


# -- upgrade() on stdlib sockets ----------------------------------------------------------------


def test_upgrade_of_a_stdlib_client_socket(pki: PKI, tls_peer: Callable[[], SSLServer]) -> None:
    srv = tls_peer()
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    fileno, local = raw.fileno(), raw.getsockname()
    sock = ssa_engine.upgrade(raw, hostname="localhost", cafile=pki.ca.pem)
    with sock:
        assert isinstance(sock, ssa_engine.TLSSocket)
        assert raw.fileno() == -1  # taken over
        assert sock.fileno() == fileno and sock.getsockname() == local
        assert sock.gettimeout() == 20
        payload = bytes(range(256)) * 1024
        sock.sendall(payload)
        got = b""
        while len(got) < len(payload):
            got += sock.recv(65536)
        assert got == payload
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(10) == b""  # the server's close_notify: a clean end


def test_upgrade_of_a_stdlib_server_socket(pki: PKI) -> None:
    ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
    result: dict[str, Any] = {}

    def client(port: int) -> None:
        try:
            with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=20),
                                 server_hostname="localhost") as s:
                s.sendall(b"ping")
                result["reply"] = s.recv(100)
                result["version"] = s.version()
        except BaseException as exc:  # noqa: BLE001
            result["error"] = exc

    with socket.create_server(("127.0.0.1", 0)) as lst:
        t = threading.Thread(target=client, args=(lst.getsockname()[1],), daemon=True)
        t.start()
        conn, _ = lst.accept()
        fileno = conn.fileno()
        sock = ssa_engine.upgrade(conn, server_side=True, certfile=pki.server.chain,
                                  keyfile=pki.server.key)
        with sock:
            assert sock.fileno() == fileno
            assert sock.recv(100) == b"ping"
            assert sock.getsockopt(IPPROTO_TLS, ssa_engine.TLS_HOSTNAME) == b"localhost"
            sock.sendall(b"pong")
            t.join(20)
    assert "error" not in result, result
    assert result["reply"] == b"pong"


def test_bytes_the_kernel_holds_are_the_start_of_the_tls_stream(pki: PKI) -> None:
    """A client that sends its ClientHello right behind STARTTLS loses nothing.

    The server reads exactly the command, and upgrades only once the
    ClientHello waits in its kernel buffer: the engine reads it from there.
    """
    ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
    result: dict[str, Any] = {}

    def client(port: int) -> None:
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=20)
            raw.sendall(b"STARTTLS\r\n")  # no go-ahead awaited: the handshake follows at once
            with ctx.wrap_socket(raw, server_side=False, server_hostname="localhost") as s:
                s.sendall(b"inside")
                result["reply"] = s.recv(100)
        except BaseException as exc:  # noqa: BLE001
            result["error"] = exc

    lst = ssa_engine.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_TCP)
    with lst:
        lst.bind(("127.0.0.1", 0))
        lst.listen()
        t = threading.Thread(target=client, args=(lst.getsockname()[1],), daemon=True)
        t.start()
        conn, _ = lst.accept()
        with conn:
            conn.settimeout(20)
            assert conn.recv(10, socket.MSG_WAITALL) == b"STARTTLS\r\n"
            # wait until the ClientHello (a TLS handshake record, 0x16) is queued
            while conn.recv(1, socket.MSG_PEEK) != b"\x16":
                pass
            same = ssa_engine.upgrade(conn, server_side=True, certfile=pki.server.chain,
                                      keyfile=pki.server.key)
            assert same is conn  # a plain ssa_engine socket is upgraded in place
            assert conn.recv(100) == b"inside"
            conn.sendall(b"and back")
            t.join(20)
    assert "error" not in result, result
    assert result["reply"] == b"and back"


def test_non_blocking_mode_survives_the_upgrade(pki: PKI,
                                                tls_peer: Callable[[], SSLServer]) -> None:
    srv = tls_peer()
    sock = ssa_engine.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
    with sock:
        sock.connect(("127.0.0.1", srv.port))
        sock.setsockopt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES, pki.ca.pem)
        sock.setblocking(False)
        sock.setsockopt(IPPROTO_TCP, TCP_UPGRADE_TLS, b"localhost")  # blocks until done
        assert sock.gettimeout() == 0.0
        assert not os.get_blocking(sock.fileno())
        with pytest.raises(BlockingIOError):
            sock.recv(100)
        sock.sendall(b"echo me")
        select.select([sock], [], [], 10)
        assert sock.recv(100) == b"echo me"


# -- the UPGRADE frame against the engine (docs/protocol.md section 6.7) -------------------------


def _control(engine: EngineProcess) -> ControlChannel:
    ctl = ControlChannel(engine.socket)
    ctl.open(SocketRequest(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_TLS))
    return ctl


def test_engine_refuses_an_upgrade_of_a_non_tcp_descriptor(engine: EngineProcess) -> None:
    ctl = _control(engine)
    a, b = socket.socketpair()
    with a, b:
        try:
            ctl.send(Upgrade(host="localhost"), [a.fileno(), b.fileno()])
            result = ctl.wait_connect(10)
            assert isinstance(result, ConnectFailed) and result.errno == errno.EINVAL
            assert "needs a TCP socket" in result.message
            # refused at once: still CREATED, so TLS options may still be set
            ctl.request(SetSockOpt(IPPROTO_TLS, ssa_engine.TLS_VERSION_MIN, int_value=0x0304))
        finally:
            ctl.close()


def test_engine_upgrade_with_one_descriptor_is_a_protocol_error(engine: EngineProcess) -> None:
    ctl = _control(engine)
    a, b = socket.socketpair()
    with a, b:
        try:
            ctl.send(Upgrade(host=""), [a.fileno()])
            with pytest.raises(OSError) as info:
                ctl.reply(10)
            assert info.value.errno == errno.EBADMSG
        finally:
            ctl.close()


def test_engine_upgrade_answers_connected_with_the_tcp_addresses(
        engine: EngineProcess, pki: PKI, tls_peer: Callable[[], SSLServer]) -> None:
    srv = tls_peer()
    ctl = _control(engine)
    tcp = socket.create_connection(("127.0.0.1", srv.port))
    a, b = socket.socketpair()
    with tcp, a, b:
        try:
            ctl.request(SetSockOpt(IPPROTO_TLS, ssa_engine.TLS_TRUSTED_PEER_CERTIFICATES,
                                   value=pki.ca.pem.read_bytes()))
            ctl.send(Upgrade(host="localhost"), [tcp.fileno(), b.fileno()])
            result = ctl.wait_connect(10)
            assert isinstance(result, Connected), result
            assert (result.local_host, result.local_port) == tcp.getsockname()
            assert (result.peer_host, result.peer_port) == tcp.getpeername()
            tcp.close()  # only the engine holds the connection now
            b.close()
            a.sendall(b"raw frames")
            assert a.recv(100) == b"raw frames"
        finally:
            ctl.close()
