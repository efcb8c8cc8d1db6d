"""The per-socket state machine (ssa_engine/protocol/states.py) and the conversation.

Hypothesis over every (state, request) pair, and over request sequences,
checks that ``check`` and ``next_state`` agree with one table; that table is
written out here from the spec and also parsed from docs/protocol.md, so the
code, this file and the doc must all say the same thing.

The last part talks to a real engine with raw frames and checks the
conversation rules of docs/protocol.md sections 6, 7, 9, 11 and 15: every
CONNECT ends in CONNECTED or CONNECT_FAILED, refusals keep the state, replies
come in order, engine -> app frame types are protocol errors, BIND answers
BOUND, LISTEN takes its descriptor and a certificate, and a connection is
accepted through raw frames (notification byte, ACCEPTED and its two
descriptors, the accepted socket's own control connection).
"""

from __future__ import annotations

import array
import errno
import os
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssa_engine.protocol import (
    Accepted,
    Bind,
    Bound,
    Closed,
    Connect,
    Connected,
    ConnectFailed,
    Decoder,
    Error,
    GetSockOpt,
    Hello,
    HelloOk,
    Listen,
    Message,
    MessageType,
    Ok,
    SetSockOpt,
    SocketRequest,
    StatusReply,
    StatusRequest,
    encode,
)
from ssa_engine.protocol.errors import ERRNO_MEANINGS
from ssa_engine.protocol.messages import REQUEST_TYPES
from ssa_engine.protocol.states import TRANSITIONS, Request, SocketState, check, next_state

from .conftest import REPO, free_port, server_context, wait_for

S, R = SocketState, Request
DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
STATE_TESTS = settings(max_examples=300, deadline=None)

#: The spec's table (docs/protocol.md section 11), written independently of
#: states.py: a state means "legal, go there", an int means "refused, errno".
SPEC: dict[SocketState, dict[Request, SocketState | int]] = {
    S.CREATED: {
        R.SET_TLS_OPTION: S.CREATED, R.SET_TCP_OPTION: S.CREATED,
        R.GET_CONFIG_OPTION: S.CREATED, R.GET_CONNECTION_OPTION: errno.EOPNOTSUPP,
        R.GET_ERROR: S.CREATED, R.CONNECT: S.CONNECTING,
        R.BIND: S.CREATED, R.LISTEN: S.LISTENING, R.UPGRADE: S.CONNECTING,
    },
    S.CONNECTING: {
        R.SET_TLS_OPTION: errno.EALREADY, R.SET_TCP_OPTION: S.CONNECTING,
        R.GET_CONFIG_OPTION: S.CONNECTING, R.GET_CONNECTION_OPTION: errno.EOPNOTSUPP,
        R.GET_ERROR: S.CONNECTING, R.CONNECT: errno.EALREADY,
        R.BIND: errno.EINVAL, R.LISTEN: errno.EOPNOTSUPP, R.UPGRADE: errno.EALREADY,
    },
    S.CONNECTED: {
        R.SET_TLS_OPTION: errno.EISCONN, R.SET_TCP_OPTION: S.CONNECTED,
        R.GET_CONFIG_OPTION: S.CONNECTED, R.GET_CONNECTION_OPTION: S.CONNECTED,
        R.GET_ERROR: S.CONNECTED, R.CONNECT: errno.EISCONN,
        R.BIND: errno.EINVAL, R.LISTEN: errno.EOPNOTSUPP, R.UPGRADE: errno.EISCONN,
    },
    S.CLOSED: {
        R.SET_TLS_OPTION: errno.EISCONN, R.SET_TCP_OPTION: S.CLOSED,
        R.GET_CONFIG_OPTION: S.CLOSED, R.GET_CONNECTION_OPTION: S.CLOSED,
        R.GET_ERROR: S.CLOSED, R.CONNECT: errno.EISCONN,
        R.BIND: errno.EINVAL, R.LISTEN: errno.EOPNOTSUPP, R.UPGRADE: errno.EISCONN,
    },
    S.LISTENING: {
        R.SET_TLS_OPTION: errno.EOPNOTSUPP, R.SET_TCP_OPTION: S.LISTENING,
        R.GET_CONFIG_OPTION: S.LISTENING, R.GET_CONNECTION_OPTION: errno.EOPNOTSUPP,
        R.GET_ERROR: S.LISTENING, R.CONNECT: errno.EOPNOTSUPP,
        R.BIND: errno.EINVAL, R.LISTEN: S.LISTENING, R.UPGRADE: errno.EOPNOTSUPP,
    },
    S.BROKEN: {
        R.SET_TLS_OPTION: errno.EBADFD, R.SET_TCP_OPTION: errno.EBADFD,
        R.GET_CONFIG_OPTION: errno.EBADFD, R.GET_CONNECTION_OPTION: errno.EBADFD,
        R.GET_ERROR: S.BROKEN, R.CONNECT: errno.EBADFD,
        R.BIND: errno.EBADFD, R.LISTEN: errno.EBADFD, R.UPGRADE: errno.EBADFD,
    },
}

STATES = st.sampled_from(list(SocketState))
REQUESTS = st.sampled_from(list(Request))


def doc_state_table() -> dict[SocketState, dict[Request, SocketState | int]]:
    text = DOC.read_text(encoding="utf-8")
    lines = text.split("<!-- table: states -->", 1)[1].splitlines()[1:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("`") for c in line.strip().strip("|").split("|")])
    header, _rule, *body = rows
    requests = [Request[name] for name in header[1:]]
    table: dict[SocketState, dict[Request, SocketState | int]] = {}
    for state_name, *cells in body:
        row: dict[Request, SocketState | int] = {}
        for request, cell in zip(requests, cells, strict=True):
            if cell.startswith("→"):
                row[request] = SocketState[cell[1:].strip()]
            else:
                row[request] = getattr(errno, cell)
        table[SocketState[state_name]] = row
    return table


# -- the table as a whole ---------------------------------------------------------------


def test_table_is_total() -> None:
    assert set(TRANSITIONS) == set(SocketState)
    for state, row in TRANSITIONS.items():
        assert set(row) == set(Request), state
        for request, (target, err) in row.items():
            # exactly one of "next state" and "errno"
            assert (target is None) != (err is None), (state, request)


def test_code_matches_the_spec_table() -> None:
    for state in SocketState:
        for request in Request:
            target, err = TRANSITIONS[state][request]
            assert SPEC[state][request] == (target if target is not None else err), (state, request)


def test_doc_matches_the_spec_table() -> None:
    assert doc_state_table() == SPEC


def test_every_refusal_errno_is_documented() -> None:
    for row in TRANSITIONS.values():
        for _target, err in row.values():
            if err is not None:
                assert err in ERRNO_MEANINGS


# -- every (state, request) pair ------------------------------------------------------------


@STATE_TESTS
@given(STATES, REQUESTS)
def test_check_and_next_state_agree_with_the_table(state: SocketState, request: Request) -> None:
    expected = SPEC[state][request]
    if isinstance(expected, SocketState):
        assert check(state, request) is None
        assert next_state(state, request) is expected
    else:
        assert check(state, request) == expected
        with pytest.raises(ValueError, match=f"errno {expected}"):
            next_state(state, request)


@STATE_TESTS
@given(STATES, REQUESTS)
def test_only_connect_and_listen_change_the_state(state: SocketState, request: Request) -> None:
    if check(state, request) is not None:
        return
    after = next_state(state, request)
    if request in (R.CONNECT, R.UPGRADE):  # UPGRADE: a CONNECT on the app's TCP socket
        assert (state, after) == (S.CREATED, S.CONNECTING)
    elif request is R.LISTEN:
        assert after is S.LISTENING
        assert state in (S.CREATED, S.LISTENING)
    else:
        assert after is state


@STATE_TESTS
@given(REQUESTS)
def test_broken_refuses_everything_but_get_error(request: Request) -> None:
    if request is R.GET_ERROR:
        assert check(S.BROKEN, request) is None
        assert next_state(S.BROKEN, request) is S.BROKEN
    else:
        assert check(S.BROKEN, request) == errno.EBADFD
        with pytest.raises(ValueError):
            next_state(S.BROKEN, request)


@STATE_TESTS
@given(STATES)
def test_get_error_is_legal_everywhere(state: SocketState) -> None:
    assert check(state, R.GET_ERROR) is None
    assert next_state(state, R.GET_ERROR) is state


@STATE_TESTS
@given(STATES)
def test_connect_from_each_state(state: SocketState) -> None:
    expected = {
        S.CREATED: None,
        S.CONNECTING: errno.EALREADY,
        S.CONNECTED: errno.EISCONN,
        S.CLOSED: errno.EISCONN,
        S.LISTENING: errno.EOPNOTSUPP,
        S.BROKEN: errno.EBADFD,
    }[state]
    assert check(state, R.CONNECT) == expected


@STATE_TESTS
@given(STATES)
def test_bind_and_listen_from_each_state(state: SocketState) -> None:
    bind = {S.CREATED: None, S.CONNECTING: errno.EINVAL, S.CONNECTED: errno.EINVAL,
            S.CLOSED: errno.EINVAL, S.LISTENING: errno.EINVAL, S.BROKEN: errno.EBADFD}[state]
    listen = {S.CREATED: None, S.CONNECTING: errno.EOPNOTSUPP, S.CONNECTED: errno.EOPNOTSUPP,
              S.CLOSED: errno.EOPNOTSUPP, S.LISTENING: None, S.BROKEN: errno.EBADFD}[state]
    assert check(state, R.BIND) == bind
    assert check(state, R.LISTEN) == listen
    if bind is None:
        assert next_state(state, R.BIND) is S.CREATED  # BIND alone does not listen
    if listen is None:
        assert next_state(state, R.LISTEN) is S.LISTENING


def test_listening_named_cases() -> None:
    # a listener's TLS settings are frozen; it cannot connect nor bind again;
    # it has no connection information; settings, TCP options and TLS_ERROR stay
    assert next_state(S.CREATED, R.LISTEN) is S.LISTENING
    assert check(S.LISTENING, R.SET_TLS_OPTION) == errno.EOPNOTSUPP
    assert check(S.LISTENING, R.CONNECT) == errno.EOPNOTSUPP
    assert check(S.LISTENING, R.BIND) == errno.EINVAL
    assert check(S.LISTENING, R.GET_CONNECTION_OPTION) == errno.EOPNOTSUPP
    for request in (R.SET_TCP_OPTION, R.GET_CONFIG_OPTION, R.GET_ERROR, R.LISTEN):
        assert next_state(S.LISTENING, request) is S.LISTENING
    # a connected socket cannot listen, a bound one can still connect (section 17)
    assert check(S.CONNECTED, R.LISTEN) == errno.EOPNOTSUPP
    assert next_state(next_state(S.CREATED, R.BIND), R.CONNECT) is S.CONNECTING


def test_connect_named_cases() -> None:
    assert check(S.CONNECTED, R.CONNECT) == errno.EISCONN
    assert check(S.CONNECTING, R.CONNECT) == errno.EALREADY
    assert next_state(S.CREATED, R.CONNECT) is S.CONNECTING


def test_connection_information_only_once_connected() -> None:
    for state in (S.CREATED, S.CONNECTING, S.LISTENING):
        assert check(state, R.GET_CONNECTION_OPTION) == errno.EOPNOTSUPP
    for state in (S.CONNECTED, S.CLOSED):
        assert check(state, R.GET_CONNECTION_OPTION) is None


def test_tls_options_only_before_connect() -> None:
    assert check(S.CREATED, R.SET_TLS_OPTION) is None
    assert check(S.CONNECTING, R.SET_TLS_OPTION) == errno.EALREADY
    assert check(S.CONNECTED, R.SET_TLS_OPTION) == errno.EISCONN
    assert check(S.CLOSED, R.SET_TLS_OPTION) == errno.EISCONN
    assert check(S.LISTENING, R.SET_TLS_OPTION) == errno.EOPNOTSUPP


# -- request sequences -------------------------------------------------------------------------


@STATE_TESTS
@given(st.lists(REQUESTS, max_size=30))
def test_request_sequences_from_created(requests: list[Request]) -> None:
    """Replaying requests keeps to the table: one CONNECT or LISTEN path, never back."""
    state = S.CREATED
    connects = listens = 0
    for request in requests:
        err = check(state, request)
        if err is None:
            new = next_state(state, request)
            connects += request in (R.CONNECT, R.UPGRADE)
            listens += request is R.LISTEN and state is S.CREATED
            assert new is not S.CREATED or state is S.CREATED
            state = new
        else:
            assert err in ERRNO_MEANINGS
            with pytest.raises(ValueError):  # a refused request has no next state
                next_state(state, request)
    assert connects + listens <= 1  # a socket either connects (or upgrades) or listens, once
    # requests alone never finish a connect, and a listener stays a listener
    assert state in (S.CREATED, S.CONNECTING, S.LISTENING)
    assert connects == (state is S.CONNECTING)
    assert listens == (state is S.LISTENING)


# -- the doc's other state tables ------------------------------------------------------------


def _doc_rows(marker: str) -> list[list[str]]:
    text = DOC.read_text(encoding="utf-8")
    lines = text.split(f"<!-- {marker} -->", 1)[1].splitlines()[1:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[2:]


def test_doc_event_table() -> None:
    """Section 10: the frames sent on each event-driven transition."""
    rows = {(r[0].strip("`"), r[2].strip("`")): r[3] for r in _doc_rows("table: events")}
    assert rows[("CONNECTING", "CONNECTED")] == "`CONNECTED`"
    assert rows[("CONNECTING", "BROKEN")] == "`CONNECT_FAILED(errno)`"
    assert rows[("CONNECTED", "CLOSED")] in ("`CLOSED(0)`", "—")
    assert rows[("CONNECTED", "BROKEN")] == "`CLOSED(errno ≠ 0)`"
    # an accepted socket is born CONNECTED, announced on the listener's connection
    assert rows[("(none)", "CONNECTED")].startswith("`ACCEPTED`")
    # no event moves a socket into or out of LISTENING
    assert not any("LISTENING" in key for key in rows)
    # no transition is announced with a plain ERROR any more
    assert not any("ERROR" in frame for frame in rows.values())
    for (source, target), _frame in rows.items():
        if source != "(none)":
            assert SocketState[source] is not SocketState[target]


def test_the_connect_result_only_leaves_connecting() -> None:
    # CONNECTED / CONNECT_FAILED are events of the CONNECTING state; a CONNECT
    # refused by the table (CONNECT_FAILED at once) leaves the state alone
    for state in SocketState:
        if check(state, R.CONNECT) is not None:
            with pytest.raises(ValueError):
                next_state(state, R.CONNECT)
    assert [s for s in SocketState if check(s, R.CONNECT) is None] == [S.CREATED]


def test_request_groups_are_made_of_request_frames() -> None:
    """Section 10's "which frames" table names only app -> engine types."""
    text = DOC.read_text(encoding="utf-8")
    table = text.split("| request | which frames |", 1)[1].split("\n\n", 1)[0]
    seen = set()
    for line in table.splitlines()[2:]:
        group, frames = (c.strip() for c in line.strip().strip("|").split("|"))
        seen.add(Request[group.strip("`")])
        first = frames.split("`")[1]
        assert MessageType[first] in REQUEST_TYPES, line
    assert seen == set(Request)


# -- the conversation against a real engine (raw frames) -----------------------------------------

IPPROTO_TLS, TLS_REMOTE_HOSTNAME, TLS_TRUSTED_PEER_CERTIFICATES = 205, 85, 87
TLS_PEER_IDENTITY, TLS_ID, TLS_CHOSEN_CIPHER, TLS_ERROR, TLS_VERSION_CONN = 93, 96, 98, 100, 113


class Raw:
    """A control connection driven by hand, one frame at a time.

    Descriptors that arrive (with ACCEPTED) are queued in ``fds``, in order.
    """

    def __init__(self, path: Path | None = None, sock: socket.socket | None = None) -> None:
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.settimeout(10)
            sock.connect(str(path))
        self.sock = sock
        self.sock.settimeout(10)
        self.decoder = Decoder()
        self.pending: list[Message] = []
        self.fds: list[int] = []

    def _recv(self) -> bytes:
        data, anc, flags, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(8 * 4),
                                                socket.MSG_CMSG_CLOEXEC)
        assert not flags & socket.MSG_CTRUNC
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self.fds.extend(fds)
        return data

    def send(self, *messages: Message, fds: tuple[int, ...] = ()) -> None:
        data = b"".join(encode(m) for m in messages)
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            sent = self.sock.sendmsg([data], anc)
            if sent < len(data):
                self.sock.sendall(data[sent:])
        else:
            self.sock.sendall(data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, count: int = 1) -> list[Message]:
        while len(self.pending) < count:
            self.pending.extend(self.decoder.messages())
            if len(self.pending) >= count:
                break
            data = self._recv()
            assert data, f"end of file after {self.pending}"
            self.decoder.receive_data(data)
        out, self.pending = self.pending[:count], self.pending[count:]
        return out

    def one(self) -> Message:
        return self.read(1)[0]

    def read_to_eof(self) -> list[Message]:
        out, self.pending = [*self.pending, *self.decoder.messages()], []
        while data := self._recv():
            self.decoder.receive_data(data)
            out.extend(self.decoder.messages())
        return out

    def take_fds(self, count: int) -> list[socket.socket]:
        taken, self.fds = self.fds[:count], self.fds[count:]
        assert len(taken) == count, f"{len(taken)} descriptors queued, {count} expected"
        return [socket.socket(fileno=fd) for fd in taken]

    def close(self) -> None:
        self.sock.close()
        for fd in self.fds:
            os.close(fd)
        self.fds = []


@pytest.fixture
def raw(engine) -> Iterator[Callable[[], Raw]]:  # type: ignore[no-untyped-def]
    opened: list[Raw] = []

    def connect() -> Raw:
        conn = Raw(engine.socket)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


@pytest.fixture
def pairs() -> Iterator[Callable[[], tuple[socket.socket, socket.socket]]]:
    made: list[socket.socket] = []

    def pair() -> tuple[socket.socket, socket.socket]:
        app, engine_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        app.settimeout(10)
        made.extend((app, engine_end))
        return app, engine_end

    yield pair
    for s in made:
        s.close()


def _socket_ready(conn: Raw, trust: bytes | None = None) -> None:
    conn.send(Hello(1, 1), SocketRequest(family=2, socktype=1, proto=IPPROTO_TLS))
    hello, ok = conn.read(2)
    assert isinstance(hello, HelloOk) and hello.version == 1
    assert isinstance(ok, Ok) and ok.socket_id
    if trust is not None:
        conn.send(SetSockOpt(level=IPPROTO_TLS, optname=TLS_TRUSTED_PEER_CERTIFICATES, value=trust))
        assert conn.one() == Ok()


def _connect(conn: Raw, engine_end: socket.socket, host: str, port: int,
             *more: Message, extra_fds: tuple[int, ...] = ()) -> None:
    """CONNECT (and ``more`` frames) in one write, then close the engine's end."""
    conn.send(Connect(host=host, port=port), *more, fds=(engine_end.fileno(), *extra_fds))
    engine_end.close()


def _eof(app: socket.socket) -> bytes:
    return app.recv(10)


def test_engine_answers_pipelined_requests_in_order(raw) -> None:  # type: ignore[no-untyped-def]
    conn = raw()
    conn.send(Hello(1, 1), GetSockOpt(level=IPPROTO_TLS, optname=TLS_ID), StatusRequest(),
              SocketRequest(family=2, socktype=1, proto=IPPROTO_TLS),
              GetSockOpt(level=IPPROTO_TLS, optname=TLS_ID),
              SocketRequest(family=2, socktype=1, proto=IPPROTO_TLS))
    hello, early, status, ok, ident, again = conn.read(6)
    assert isinstance(hello, HelloOk)
    assert early == Error(errno=errno.EBADFD, message="SOCKET must come first")
    assert isinstance(status, StatusReply)
    assert isinstance(ok, Ok) and ok.socket_id
    assert ident == Ok(int_value=ok.socket_id)
    assert isinstance(again, Error) and again.errno == errno.EISCONN


def test_engine_connect_before_socket_is_connect_failed(raw, pairs) -> None:  # type: ignore[no-untyped-def]
    conn = raw()
    conn.send(Hello(1, 1))
    assert isinstance(conn.one(), HelloOk)
    app, engine_end = pairs()
    _connect(conn, engine_end, "localhost", 443, StatusRequest())
    failed, status = conn.read(2)
    assert isinstance(failed, ConnectFailed) and failed.errno == errno.EBADFD
    assert isinstance(status, StatusReply)  # the connection stays open
    assert _eof(app) == b""  # the descriptor was taken and closed
    conn.send(SocketRequest(family=2, socktype=1, proto=IPPROTO_TLS))
    assert isinstance(conn.one(), Ok)  # and the conversation goes on


def test_engine_immediate_connect_refusals_keep_the_state(raw) -> None:  # type: ignore[no-untyped-def]
    conn = raw()
    _socket_ready(conn)
    with open(os.devnull, "rb") as devnull, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        conn.send(Connect(host="localhost", port=443), fds=(devnull.fileno(),))
        not_a_socket = conn.one()
        conn.send(Connect(host="localhost", port=443), fds=(udp.fileno(),))
        wrong_kind = conn.one()
    assert isinstance(not_a_socket, ConnectFailed) and not_a_socket.errno == errno.EINVAL
    assert isinstance(wrong_kind, ConnectFailed) and wrong_kind.errno == errno.EINVAL
    # still CREATED: TLS options may be set, connection information is not there yet
    conn.send(SetSockOpt(level=IPPROTO_TLS, optname=TLS_REMOTE_HOSTNAME, value=b"localhost"),
              GetSockOpt(level=IPPROTO_TLS, optname=TLS_PEER_IDENTITY))
    set_ok, info = conn.read(2)
    assert set_ok == Ok()
    assert isinstance(info, Error) and info.errno == errno.EOPNOTSUPP


def test_engine_connect_result_is_told_apart_from_replies(  # type: ignore[no-untyped-def]
        raw, pairs, pki, ssl_server) -> None:
    srv = ssl_server(server_context(pki.server))
    conn = raw()
    _socket_ready(conn, trust=pki.ca.pem.read_bytes())
    app, engine_end = pairs()
    app2, engine_end2 = pairs()
    # CONNECT, two requests and a second CONNECT in one write: all four are
    # handled while the socket is CONNECTING
    _connect(conn, engine_end, "localhost", srv.port,
             GetSockOpt(level=IPPROTO_TLS, optname=TLS_ID),
             SetSockOpt(level=socket.IPPROTO_TCP, optname=socket.TCP_NODELAY, int_value=1),
             Connect(host="localhost", port=srv.port), extra_fds=(engine_end2.fileno(),))
    engine_end2.close()
    ident, nodelay, second, result = conn.read(4)
    assert isinstance(ident, Ok) and ident.int_value
    assert nodelay == Ok()
    assert isinstance(second, ConnectFailed) and second.errno == errno.EALREADY
    assert _eof(app2) == b""
    assert isinstance(result, Connected) and result.peer_port == srv.port
    # once connected: a CONNECT is refused, in order, with CONNECT_FAILED
    app3, engine_end3 = pairs()
    _connect(conn, engine_end3, "localhost", srv.port,
             GetSockOpt(level=socket.IPPROTO_TCP, optname=socket.TCP_NODELAY))
    third, nodelay_now = conn.read(2)
    assert isinstance(third, ConnectFailed) and third.errno == errno.EISCONN
    assert isinstance(nodelay_now, Ok) and nodelay_now.int_value  # applied to the TCP socket
    # data flows, then a clean end
    app.sendall(b"ping")
    assert app.recv(10) == b"ping"
    app.shutdown(socket.SHUT_WR)
    assert conn.one() == Closed(errno=0)
    assert app.recv(10) == b""
    # connection information stays readable after the clean close
    conn.send(GetSockOpt(level=IPPROTO_TLS, optname=TLS_PEER_IDENTITY),
              GetSockOpt(level=IPPROTO_TLS, optname=TLS_CHOSEN_CIPHER),
              GetSockOpt(level=IPPROTO_TLS, optname=TLS_VERSION_CONN),
              SetSockOpt(level=IPPROTO_TLS, optname=TLS_REMOTE_HOSTNAME, value=b"x"))
    peer, cipher, version, late = conn.read(4)
    assert isinstance(peer, Ok) and peer.value and b"CN=localhost" in peer.value
    assert isinstance(cipher, Ok) and cipher.value
    assert isinstance(version, Ok) and version.int_value in (0x0303, 0x0304)
    assert isinstance(late, Error) and late.errno == errno.EISCONN


def test_engine_failed_connect_is_connect_failed_then_broken(raw, pairs) -> None:  # type: ignore[no-untyped-def]
    conn = raw()
    _socket_ready(conn)
    app, engine_end = pairs()
    _connect(conn, engine_end, "localhost", free_port())  # nothing listens there
    failed = conn.one()
    assert isinstance(failed, ConnectFailed) and failed.errno == errno.ECONNREFUSED
    assert failed.message
    assert _eof(app) == b""
    conn.send(GetSockOpt(level=IPPROTO_TLS, optname=TLS_ERROR),
              GetSockOpt(level=IPPROTO_TLS, optname=TLS_ID))
    text, ident = conn.read(2)
    assert text == Ok(value=failed.message.encode())
    assert isinstance(ident, Error) and ident.errno == errno.EBADFD
    app2, engine_end2 = pairs()
    _connect(conn, engine_end2, "localhost", 443)
    again = conn.one()
    assert isinstance(again, ConnectFailed) and again.errno == errno.EBADFD
    assert _eof(app2) == b""


def test_engine_ip_literal_needs_a_host_name_by_default(  # type: ignore[no-untyped-def]
        raw, pairs, pki, ssl_server) -> None:
    srv = ssl_server(server_context(pki.server))
    trust = pki.ca.pem.read_bytes()
    conn = raw()
    _socket_ready(conn, trust=trust)
    app, engine_end = pairs()
    _connect(conn, engine_end, "127.0.0.1", srv.port)
    failed = conn.one()
    assert isinstance(failed, ConnectFailed) and failed.errno == errno.EPROTO
    assert "TLS_REMOTE_HOSTNAME" in failed.message
    # with the host name set, the same address connects
    conn2 = raw()
    _socket_ready(conn2, trust=trust)
    conn2.send(SetSockOpt(level=IPPROTO_TLS, optname=TLS_REMOTE_HOSTNAME, value=b"localhost"))
    assert conn2.one() == Ok()
    app2, engine_end2 = pairs()
    _connect(conn2, engine_end2, "127.0.0.1", srv.port)
    assert isinstance(conn2.one(), Connected)


_ENGINE_TYPES = [
    Ok(), Error(errno=1), HelloOk(version=1), ConnectFailed(errno=1), Closed(errno=0),
    Connected(local_host="a", local_port=1, peer_host="b", peer_port=2), StatusReply(document="{}"),
    Bound(local_host="0.0.0.0", local_port=1),
    Accepted(socket_id=1, local_host="a", local_port=1, peer_host="b", peer_port=2),
]


def test_engine_types_cover_every_non_request() -> None:
    assert {m.TYPE for m in _ENGINE_TYPES} == set(MessageType) - REQUEST_TYPES


@pytest.mark.parametrize("phase", ["before HELLO", "before SOCKET", "after SOCKET"])
@pytest.mark.parametrize("message", _ENGINE_TYPES, ids=lambda m: m.TYPE.name)
def test_engine_refuses_engine_types_at_any_point(raw, phase: str, message: Message) -> None:  # type: ignore[no-untyped-def]
    conn = raw()
    before: list[Message] = []
    if phase != "before HELLO":
        before.append(Hello(1, 1))
    if phase == "after SOCKET":
        before.append(SocketRequest(family=2, socktype=1, proto=IPPROTO_TLS))
    conn.send(*before, message)
    frames = conn.read_to_eof()
    assert len(frames) == len(before) + 1, frames
    last = frames[-1]
    assert isinstance(last, Error) and last.errno == errno.EBADMSG
    assert last.message.startswith("control protocol error:")


@pytest.mark.parametrize("after_socket", [False, True])
def test_engine_refuses_a_second_hello(raw, after_socket: bool) -> None:  # type: ignore[no-untyped-def]
    conn = raw()
    first = [Hello(1, 1)] + ([SocketRequest(family=2, socktype=1, proto=IPPROTO_TLS)]
                            if after_socket else [])
    conn.send(*first, Hello(1, 1))
    frames = conn.read_to_eof()
    assert len(frames) == len(first) + 1
    assert isinstance(frames[-1], Error) and frames[-1].errno == errno.EBADMSG


def test_engine_refuses_an_unknown_type_from_its_header(raw) -> None:  # type: ignore[no-untyped-def]
    conn = raw()
    conn.send(Hello(1, 1))
    assert isinstance(conn.one(), HelloOk)
    conn.send_raw(struct.pack("!IHH", 1000, 39, 0))  # no payload follows
    (error,) = conn.read_to_eof()
    assert isinstance(error, Error) and error.errno == errno.EBADMSG
    assert "unknown message type 39" in error.message


def test_engine_version_mismatch(raw) -> None:  # type: ignore[no-untyped-def]
    conn = raw()
    conn.send(Hello(2, 3), StatusRequest())
    (error,) = conn.read_to_eof()  # the pipelined STATUS is never answered
    assert isinstance(error, Error) and error.errno == errno.EPROTONOSUPPORT


def test_engine_refuses_forwarded_int_out_of_range(raw) -> None:  # type: ignore[no-untyped-def]
    conn = raw()
    _socket_ready(conn)
    conn.send(SetSockOpt(level=socket.IPPROTO_TCP, optname=socket.TCP_NODELAY,
                         int_value=1 << 40))
    reply = conn.one()
    assert isinstance(reply, Error) and reply.errno == errno.EINVAL


# -- server sockets against a real engine (raw frames, docs section 9) -------------------------

TLS_HOSTNAME, TLS_CERTIFICATE_CHAIN, TLS_PRIVATE_KEY, TLS_ALPN = 86, 88, 89, 90
TLS_REQUEST_PEER_AUTH = 94


def _set(conn: Raw, *options: tuple[int, bytes | int]) -> list[Message]:
    """SETSOCKOPTs at level IPPROTO_TLS in one write; their replies."""
    conn.send(*(SetSockOpt(level=IPPROTO_TLS, optname=name, value=value)
                if isinstance(value, bytes) else
                SetSockOpt(level=IPPROTO_TLS, optname=name, int_value=value)
                for name, value in options))
    return conn.read(len(options))


def _certificate(conn: Raw, pair) -> None:  # type: ignore[no-untyped-def]
    assert _set(conn, (TLS_CERTIFICATE_CHAIN, pair.chain.read_bytes()),
                (TLS_PRIVATE_KEY, pair.key.read_bytes())) == [Ok(), Ok()]


def _listen(conn: Raw, pairs, backlog: int = 16) -> tuple[socket.socket, Bound]:  # type: ignore[no-untyped-def]
    """LISTEN with the engine's end of a fresh pair; the app's end and the BOUND."""
    app, engine_end = pairs()
    conn.send(Listen(backlog=backlog), fds=(engine_end.fileno(),))
    engine_end.close()
    reply = conn.one()
    assert isinstance(reply, Bound), reply
    return app, reply


def _readable(sock: socket.socket, timeout: float = 0.0) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def _tls_client(pki, port: int, name: str = "localhost", cert=None,  # type: ignore[no-untyped-def]
                alpn: list[str] | None = None, verify: bool = True,
                timeout: float = 10) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(pki.ca.pem))
    if not verify:  # so that only the engine can refuse the handshake
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert.chain, cert.key)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    raw_sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw_sock, server_hostname=name)
    except BaseException:
        raw_sock.close()
        raise


def _accept(listener: Raw, notify: socket.socket) -> tuple[Accepted, socket.socket, Raw]:
    """What accept() does: one notification byte, then the next ACCEPTED and its fds."""
    assert _readable(notify, 10), "no notification byte"
    assert notify.recv(1) == b"\x01"
    info = listener.one()
    assert isinstance(info, Accepted), info
    data, control = listener.take_fds(Accepted.FD_COUNT)
    return info, data, Raw(sock=control)


def test_engine_bind_to_port_zero_answers_bound_with_a_real_port(raw) -> None:  # type: ignore[no-untyped-def]
    conn = raw()
    _socket_ready(conn)
    conn.send(Bind(host="", port=0))
    bound = conn.one()
    assert isinstance(bound, Bound)
    assert bound.local_host == "0.0.0.0"
    assert 0 < bound.local_port < 65536
    # the engine really holds that port (with SO_REUSEADDR, not yet listening)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        with pytest.raises(OSError) as info:
            probe.bind(("127.0.0.1", bound.local_port))
        assert info.value.errno == errno.EADDRINUSE
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        assert probe.connect_ex(("127.0.0.1", bound.local_port)) == errno.ECONNREFUSED
    # a second BIND is refused; the socket is still CREATED (TLS options may be set)
    conn.send(Bind(host="", port=0), SetSockOpt(level=IPPROTO_TLS, optname=TLS_ALPN, value=b"h2"),
              GetSockOpt(level=IPPROTO_TLS, optname=TLS_PEER_IDENTITY))
    again, alpn, info_reply = conn.read(3)
    assert isinstance(again, Error) and again.errno == errno.EINVAL
    assert alpn == Ok()
    assert isinstance(info_reply, Error) and info_reply.errno == errno.EOPNOTSUPP


@pytest.mark.parametrize(
    ("family", "host", "expected"),
    [
        (socket.AF_INET, "localhost", "127.0.0.1"),
        (socket.AF_INET, "127.0.0.1", "127.0.0.1"),
        (socket.AF_INET, "0.0.0.0", "0.0.0.0"),
        (socket.AF_INET6, "localhost", "::1"),
        (socket.AF_INET6, "[::1]", "::1"),
        (socket.AF_INET6, "", "::"),
        (socket.AF_INET, "www.example.com", errno.EINVAL),  # names are not resolved
        (socket.AF_INET, "::1", errno.EINVAL),  # not the socket's family
        (socket.AF_INET6, "127.0.0.1", errno.EINVAL),
        (socket.AF_INET, "256.0.0.1", errno.EINVAL),
    ],
)
def test_engine_bind_addresses(raw, family: int, host: str, expected: str | int) -> None:  # type: ignore[no-untyped-def]
    conn = raw()
    conn.send(Hello(1, 1), SocketRequest(family=family, socktype=1, proto=IPPROTO_TLS))
    conn.read(2)
    conn.send(Bind(host=host, port=0))
    reply = conn.one()
    if isinstance(expected, str):
        assert isinstance(reply, Bound) and reply.local_host == expected and reply.local_port
    else:
        assert isinstance(reply, Error) and reply.errno == expected


def test_engine_bind_errors_from_the_kernel_and_the_state(raw, pairs) -> None:  # type: ignore[no-untyped-def]
    conn = raw()
    conn.send(Hello(1, 1), Bind(host="", port=0), SocketRequest(family=2, socktype=1,
                                                                proto=IPPROTO_TLS))
    hello, early, ok = conn.read(3)
    assert isinstance(hello, HelloOk)
    assert early == Error(errno=errno.EBADFD, message="SOCKET must come first")
    assert isinstance(ok, Ok) and ok.socket_id
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        conn.send(Bind(host="127.0.0.1", port=taken.getsockname()[1]))
        in_use = conn.one()
    assert isinstance(in_use, Error) and in_use.errno == errno.EADDRINUSE
    # a socket whose connect failed is BROKEN: BIND and LISTEN get EBADFD
    app, engine_end = pairs()
    _connect(conn, engine_end, "localhost", free_port())
    assert isinstance(conn.one(), ConnectFailed)
    app2, engine_end2 = pairs()
    conn.send(Bind(host="", port=0))
    conn.send(Listen(backlog=1), fds=(engine_end2.fileno(),))
    engine_end2.close()
    bind, listen = conn.read(2)
    assert isinstance(bind, Error) and bind.errno == errno.EBADFD
    assert isinstance(listen, Error) and listen.errno == errno.EBADFD
    assert _eof(app2) == b""  # the refused LISTEN's descriptor was taken and closed


def test_engine_listen_without_its_descriptor_is_a_protocol_error(raw, pki) -> None:  # type: ignore[no-untyped-def]
    conn = raw()
    _socket_ready(conn)
    _certificate(conn, pki.server)
    conn.send(Listen(backlog=4))
    (error,) = conn.read_to_eof()
    assert isinstance(error, Error) and error.errno == errno.EBADMSG
    assert error.message.startswith("control protocol error:")


def test_engine_listen_without_a_certificate_is_eproto(raw, pairs) -> None:  # type: ignore[no-untyped-def]
    conn = raw()
    _socket_ready(conn)
    app, engine_end = pairs()
    conn.send(Listen(backlog=4), fds=(engine_end.fileno(),))
    engine_end.close()
    refused = conn.one()
    assert isinstance(refused, Error) and refused.errno == errno.EPROTO
    assert "certificate" in refused.message
    assert _eof(app) == b""  # the notification descriptor was taken and closed
    # the state is still CREATED; the refusal is the socket's TLS_ERROR
    conn.send(SetSockOpt(level=IPPROTO_TLS, optname=TLS_ALPN, value=b"h2"),
              GetSockOpt(level=IPPROTO_TLS, optname=TLS_ERROR))
    alpn, text = conn.read(2)
    assert alpn == Ok()
    assert text == Ok(value=refused.message.encode())


def test_engine_listen_refusals(raw, pairs, pki) -> None:  # type: ignore[no-untyped-def]
    chain, key = pki.server.chain.read_bytes(), pki.server.key.read_bytes()
    other_key = pki.server_rsa.key.read_bytes()
    conn = raw()
    _socket_ready(conn)
    _certificate(conn, pki.server)
    # the descriptor must be a Unix stream socket; the connection stays open
    with open(os.devnull, "rb") as devnull, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        conn.send(Listen(backlog=4), fds=(devnull.fileno(),))
        not_a_socket = conn.one()
        conn.send(Listen(backlog=4), fds=(udp.fileno(),))
        wrong_kind = conn.one()
    assert isinstance(not_a_socket, Error) and not_a_socket.errno == errno.EINVAL
    assert isinstance(wrong_kind, Error) and wrong_kind.errno == errno.EINVAL
    # certificate pairs: a key without a chain before it, a chain while the
    # previous one has no key, a key that does not match its chain
    fresh = raw()
    _socket_ready(fresh)
    key_first, chain_ok, chain_again, wrong_key, request_bad = _set(
        fresh, (TLS_PRIVATE_KEY, key), (TLS_CERTIFICATE_CHAIN, chain),
        (TLS_CERTIFICATE_CHAIN, chain), (TLS_PRIVATE_KEY, other_key),
        (TLS_REQUEST_PEER_AUTH, 3))
    assert isinstance(key_first, Error) and key_first.errno == errno.EPROTO
    assert chain_ok == Ok()
    assert isinstance(chain_again, Error) and chain_again.errno == errno.EPROTO
    assert isinstance(wrong_key, Error) and wrong_key.errno == errno.EPROTO
    assert isinstance(request_bad, Error) and request_bad.errno == errno.EINVAL
    # a chain still without its key is refused at LISTEN
    app, engine_end = pairs()
    fresh.send(Listen(backlog=4), fds=(engine_end.fileno(),))
    engine_end.close()
    unpaired = fresh.one()
    assert isinstance(unpaired, Error) and unpaired.errno == errno.EPROTO
    # client certificates requested without a CA to verify them: EPROTO at LISTEN
    mtls = raw()
    _socket_ready(mtls)
    _certificate(mtls, pki.server)
    assert _set(mtls, (TLS_REQUEST_PEER_AUTH, 1)) == [Ok()]
    app2, engine_end2 = pairs()
    mtls.send(Listen(backlog=4), fds=(engine_end2.fileno(),))
    engine_end2.close()
    no_ca = mtls.one()
    assert isinstance(no_ca, Error) and no_ca.errno == errno.EPROTO
    assert "TLS_TRUSTED_PEER_CERTIFICATES" in no_ca.message


def test_engine_accepts_through_raw_frames(raw, pairs, pki) -> None:  # type: ignore[no-untyped-def]
    listener = raw()
    _socket_ready(listener)
    _certificate(listener, pki.server)
    listener.send(GetSockOpt(level=IPPROTO_TLS, optname=TLS_ID), Bind(host="127.0.0.1", port=0))
    ident, bound = listener.read(2)
    assert isinstance(ident, Ok) and ident.int_value
    assert isinstance(bound, Bound) and bound.local_host == "127.0.0.1"
    notify, listening = _listen(listener, pairs)
    assert (listening.local_host, listening.local_port) == ("127.0.0.1", bound.local_port)
    assert not _readable(notify)  # nothing to accept yet
    client = _tls_client(pki, bound.local_port)
    try:
        info, data, control = _accept(listener, notify)
    except BaseException:
        client.close()
        raise
    try:
        with data:
            assert not _readable(notify)  # one byte per connection
            assert info.socket_id != ident.int_value
            assert (info.local_host, info.local_port) == ("127.0.0.1", bound.local_port)
            assert (info.peer_host, info.peer_port) == client.getsockname()[:2]
            for fd_sock in (data, control.sock):
                assert fd_sock.family == socket.AF_UNIX and fd_sock.type == socket.SOCK_STREAM
            # the accepted socket's control connection: no HELLO, state CONNECTED
            control.send(GetSockOpt(level=IPPROTO_TLS, optname=TLS_ID),
                         GetSockOpt(level=IPPROTO_TLS, optname=TLS_HOSTNAME),
                         GetSockOpt(level=IPPROTO_TLS, optname=TLS_PEER_IDENTITY),
                         GetSockOpt(level=IPPROTO_TLS, optname=TLS_VERSION_CONN),
                         SetSockOpt(level=IPPROTO_TLS, optname=TLS_ALPN, value=b"h2"),
                         SocketRequest(family=2, socktype=1, proto=IPPROTO_TLS))
            own_id, sni, peer, version, late, second_socket = control.read(6)
            assert own_id == Ok(int_value=info.socket_id)
            assert sni == Ok(value=b"localhost")  # the SNI the client sent
            assert peer == Ok(value=b"")  # no client certificate
            assert isinstance(version, Ok) and version.int_value in (0x0303, 0x0304)
            assert isinstance(late, Error) and late.errno == errno.EISCONN
            assert isinstance(second_socket, Error) and second_socket.errno == errno.EISCONN
            # plaintext both ways, from the first byte
            client.sendall(b"ping")
            data.settimeout(10)
            assert data.recv(10) == b"ping"
            data.sendall(b"pong")
            assert client.recv(10) == b"pong"
            # the listener: frozen TLS settings, no connection information,
            # no CONNECT, no second BIND or LISTEN
            app, engine_end = pairs()
            listener.send(SetSockOpt(level=IPPROTO_TLS, optname=TLS_ALPN, value=b"h2"),
                          GetSockOpt(level=IPPROTO_TLS, optname=TLS_PEER_IDENTITY),
                          GetSockOpt(level=IPPROTO_TLS, optname=TLS_HOSTNAME),
                          GetSockOpt(level=IPPROTO_TLS, optname=TLS_ID),
                          Bind(host="", port=0))
            listener.send(Connect(host="localhost", port=1), fds=(engine_end.fileno(),))
            engine_end.close()
            app2, engine_end2 = pairs()
            listener.send(Listen(backlog=4), fds=(engine_end2.fileno(),))
            engine_end2.close()
            frozen, no_info, name, same_id, rebind, connect, relisten = listener.read(7)
            assert isinstance(frozen, Error) and frozen.errno == errno.EOPNOTSUPP
            assert isinstance(no_info, Error) and no_info.errno == errno.EOPNOTSUPP
            assert name == Ok(value=b"")
            assert same_id == ident
            assert isinstance(rebind, Error) and rebind.errno == errno.EINVAL
            assert isinstance(connect, ConnectFailed) and connect.errno == errno.EOPNOTSUPP
            assert isinstance(relisten, Bound) and relisten.local_port == bound.local_port  # 9.2
            assert _eof(app) == b"" and _eof(app2) == b""
            assert not _readable(notify)
            # closing the listener ends its notification stream; the accepted
            # socket lives on
            listener.close()
            notify.settimeout(10)
            assert notify.recv(1) == b""
            client.sendall(b"still")
            assert data.recv(10) == b"still"
            # a clean end both ways: the application's half-close becomes the
            # engine's close_notify, the client's answer CLOSED(0) on the accepted
            # socket's own connection (never on the listener's)
            data.shutdown(socket.SHUT_WR)
            client.unwrap()
            assert control.one() == Closed(errno=0)
            assert data.recv(10) == b""
            # HELLO on an accepted socket's connection is a second HELLO
            control.send(Hello(1, 1))
            (error,) = control.read_to_eof()
            assert isinstance(error, Error) and error.errno == errno.EBADMSG
    finally:
        client.close()
        control.close()


def test_engine_offers_only_verified_handshakes(raw, pairs, pki) -> None:  # type: ignore[no-untyped-def]
    listener = raw()
    _socket_ready(listener, trust=pki.ca.pem.read_bytes())
    _certificate(listener, pki.server)
    assert _set(listener, (TLS_HOSTNAME, b"localhost"), (TLS_ALPN, b"h2"),
                (TLS_REQUEST_PEER_AUTH, 1)) == [Ok(), Ok(), Ok()]
    notify, bound = _listen(listener, pairs)
    port = bound.local_port
    # garbage instead of a ClientHello
    with socket.create_connection(("127.0.0.1", port), timeout=10) as junk:
        junk.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:  # an alert, end of file or a reset: never a connection
            junk.recv(100)
        except ConnectionResetError:
            pass
    # another name (unrecognized_name), no ALPN in common, no client certificate;
    # the clients do not verify the server, so only the engine can refuse
    refusals = []
    for kwargs in ({"name": "other.example", "cert": pki.client, "alpn": ["h2"]},
                   {"cert": pki.client, "alpn": ["http/1.1"]},
                   {"alpn": ["h2"]}):
        try:
            sock = _tls_client(pki, port, verify=False, **kwargs)
        except ssl.SSLError as exc:  # refused in the handshake
            refusals.append(str(exc).lower())
            continue
        with sock, pytest.raises((ssl.SSLError, OSError)) as info:
            # TLS 1.3: a missing client certificate is refused after the client's
            # side of the handshake is done
            sock.sendall(b"x")
            assert sock.recv(10) != b"", kwargs
        refusals.append(str(info.value).lower())
    assert "unrecognized name" in refusals[0]
    assert "no application protocol" in refusals[1]
    assert len(refusals) == 3  # the third: an alert, or the engine's close after it
    assert not _readable(notify, 0.3)  # nothing was offered
    # a client that passes every check is offered
    with _tls_client(pki, port, cert=pki.client, alpn=["h2"]) as good:
        info, data, control = _accept(listener, notify)
        with data:
            control.send(GetSockOpt(level=IPPROTO_TLS, optname=TLS_PEER_IDENTITY),
                         GetSockOpt(level=IPPROTO_TLS, optname=TLS_ALPN),
                         GetSockOpt(level=IPPROTO_TLS, optname=TLS_HOSTNAME))
            peer, alpn, sni = control.read(3)
            assert isinstance(peer, Ok) and peer.value and b"app-client" in peer.value
            assert alpn == Ok(value=b"h2")
            assert sni == Ok(value=b"localhost")
            assert info.peer_port == good.getsockname()[1]
        control.close()
    assert not _readable(notify, 0.1)


def test_engine_refuses_engine_frames_with_descriptors_and_closes_them(raw, pairs) -> None:  # type: ignore[no-untyped-def]
    conn = raw()
    _socket_ready(conn)
    app1, end1 = pairs()
    app2, end2 = pairs()
    conn.send(Accepted(socket_id=1, local_host="a", local_port=1, peer_host="b", peer_port=2),
              fds=(end1.fileno(), end2.fileno()))
    end1.close()
    end2.close()
    (error,) = conn.read_to_eof()
    assert isinstance(error, Error) and error.errno == errno.EBADMSG
    assert _eof(app1) == b"" and _eof(app2) == b""  # the engine kept no copy


def test_engine_listen_before_socket_keeps_the_connection(raw, pairs) -> None:  # type: ignore[no-untyped-def]
    conn = raw()
    app, engine_end = pairs()
    conn.send(Hello(1, 1), Listen(backlog=4), fds=(engine_end.fileno(),))
    engine_end.close()
    hello, early = conn.read(2)
    assert early == Error(errno=errno.EBADFD, message="SOCKET must come first")
    conn.send(SocketRequest(family=2, socktype=1, proto=IPPROTO_TLS))
    assert isinstance(conn.one(), Ok)  # as after a CONNECT before SOCKET


def test_engine_holds_backlog_connections_for_accept(raw, pairs, pki) -> None:  # type: ignore[no-untyped-def]
    import fcntl
    import termios

    def waiting() -> int:
        buf = fcntl.ioctl(notify.fileno(), termios.FIONREAD, b"\0\0\0\0")
        return int(struct.unpack("i", buf)[0])

    listener = raw()
    _socket_ready(listener)
    _certificate(listener, pki.server)
    notify, bound = _listen(listener, pairs, backlog=2)
    clients: list[socket.socket] = []
    try:
        for expected in (1, 2):  # nobody accepts: up to BACKLOG connections wait
            try:
                clients.append(_tls_client(pki, bound.local_port, timeout=3))
                wait_for(lambda n=expected: waiting() >= n, 3, f"{expected} offered")
            except (TimeoutError, OSError):
                pytest.fail(f"connection {expected} of a backlog of 2 was not offered")
        assert waiting() == 2
        # the next one is held back (the engine stops accepting), not offered
        with pytest.raises((TimeoutError, OSError)):
            clients.append(_tls_client(pki, bound.local_port, timeout=1.5))
        assert waiting() == 2
    finally:
        for c in clients:
            c.close()


def _unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024


def _as_user(uid: int, path: Path, messages: list[Message], replies: int) -> list[Message]:
    """Send ``messages`` from a forked process running as ``uid``; its ``replies``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no cleanup, no pytest, only this conversation
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(b"".join(encode(m) for m in messages))
            decoder, got = Decoder(), 0
            out = b""
            while got < replies:
                data = sock.recv(65536)
                if not data:
                    break
                out += data
                decoder.receive_data(data)
                got += len(list(decoder.messages()))
            os.write(write_end, out)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    data = b""
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    decoder = Decoder()
    decoder.receive_data(data)
    return list(decoder.messages())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a root engine and a client of another uid")
def test_engine_refuses_a_privileged_port_to_an_unprivileged_program() -> None:
    start = _unprivileged_port_start()
    if start <= 1:
        pytest.skip("no privileged ports on this host")
    directory = Path(tempfile.mkdtemp(prefix="ssa-proto-", dir="/tmp"))
    os.chmod(directory, 0o755)  # the unprivileged client must reach the socket
    path = directory / "engine.sock"
    log = open(directory / "engine.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "ssa_engine", "serve", "--socket", str(path)],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def up() -> bool:
        assert proc.poll() is None, (directory / "engine.log").read_text()
        with socket.socket(socket.AF_UNIX) as probe:
            return probe.connect_ex(str(path)) == 0

    try:
        wait_for(up, 15, "the engine")
        privileged = start - 1
        hello = [Hello(1, 1), SocketRequest(family=2, socktype=1, proto=IPPROTO_TLS)]
        nobody = _as_user(65534, path, [*hello, Bind(host="127.0.0.1", port=privileged),
                                        Bind(host="127.0.0.1", port=0)], 4)
        assert isinstance(nobody[0], HelloOk) and isinstance(nobody[1], Ok)
        assert isinstance(nobody[2], Error) and nobody[2].errno == errno.EACCES
        assert "privileged" in nobody[2].message
        assert isinstance(nobody[3], Bound) and nobody[3].local_port >= start
        # root may: pick a privileged port that is free now
        for port in range(privileged, max(privileged - 200, 0), -1):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    continue
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue
            break
        root = Raw(path)
        try:
            root.send(*hello, Bind(host="127.0.0.1", port=port))
            _, _, reply = root.read(3)
            assert reply == Bound(local_host="127.0.0.1", local_port=port) or (
                isinstance(reply, Error) and reply.errno == errno.EADDRINUSE)
        finally:
            root.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(directory, ignore_errors=True)


# -- the reference client against a misbehaving engine --------------------------------------------


@pytest.mark.parametrize("bad", [struct.pack("!IHH", 4, 99, 0) + b"xxxx",
                                 struct.pack("!IHH", 0xFFFFFFFF, 33, 0)],
                         ids=["unknown-type", "oversize"])
def test_client_reports_an_undecodable_frame_as_eproto(tmp_path: Path, bad: bytes) -> None:
    from ssa_engine.api.control import ControlChannel

    path = tmp_path / "fake.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    def fake_engine() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(1000)  # HELLO + STATUS
            conn.sendall(encode(HelloOk(version=1)))
            time.sleep(0.2)  # the client has taken HELLO_OK out: ``bad`` starts a read
            conn.sendall(bad)
            conn.settimeout(5)
            try:
                conn.recv(1000)
            except OSError:
                pass

    thread = threading.Thread(target=fake_engine, daemon=True)
    thread.start()
    try:
        channel = ControlChannel(path)
        with pytest.raises(OSError) as info:
            channel.open(StatusRequest())
        assert info.value.errno == errno.EPROTO
    finally:
        thread.join(10)
        listener.close()
