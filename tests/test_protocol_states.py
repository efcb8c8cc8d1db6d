"""The per-socket state machine (ssa_engine/protocol/states.py) and the conversation.

Hypothesis over every (state, request) pair, and over request sequences,
checks that ``check`` and ``next_state`` agree with one table; that table is
written out here from the spec and also parsed from docs/protocol.md, so the
code, this file and the doc must all say the same thing.

The last part talks to a real engine with raw frames and checks the
conversation rules of docs/protocol.md sections 6, 7, 10 and 14: every
CONNECT ends in CONNECTED or CONNECT_FAILED, refusals keep the state, replies
come in order, engine -> app frame types are protocol errors.
"""

from __future__ import annotations

import array
import errno
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssa_engine.protocol import (
    Closed,
    Connect,
    Connected,
    ConnectFailed,
    Decoder,
    Error,
    GetSockOpt,
    Hello,
    HelloOk,
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

from .conftest import free_port, server_context

S, R = SocketState, Request
DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
STATE_TESTS = settings(max_examples=300, deadline=None)

#: The spec's table (docs/protocol.md section 10), written independently of
#: states.py: a state means "legal, go there", an int means "refused, errno".
SPEC: dict[SocketState, dict[Request, SocketState | int]] = {
    S.CREATED: {
        R.SET_TLS_OPTION: S.CREATED, R.SET_TCP_OPTION: S.CREATED,
        R.GET_CONFIG_OPTION: S.CREATED, R.GET_CONNECTION_OPTION: errno.EOPNOTSUPP,
        R.GET_ERROR: S.CREATED, R.CONNECT: S.CONNECTING,
    },
    S.CONNECTING: {
        R.SET_TLS_OPTION: errno.EALREADY, R.SET_TCP_OPTION: S.CONNECTING,
        R.GET_CONFIG_OPTION: S.CONNECTING, R.GET_CONNECTION_OPTION: errno.EOPNOTSUPP,
        R.GET_ERROR: S.CONNECTING, R.CONNECT: errno.EALREADY,
    },
    S.CONNECTED: {
        R.SET_TLS_OPTION: errno.EISCONN, R.SET_TCP_OPTION: S.CONNECTED,
        R.GET_CONFIG_OPTION: S.CONNECTED, R.GET_CONNECTION_OPTION: S.CONNECTED,
        R.GET_ERROR: S.CONNECTED, R.CONNECT: errno.EISCONN,
    },
    S.CLOSED: {
        R.SET_TLS_OPTION: errno.EISCONN, R.SET_TCP_OPTION: S.CLOSED,
        R.GET_CONFIG_OPTION: S.CLOSED, R.GET_CONNECTION_OPTION: S.CLOSED,
        R.GET_ERROR: S.CLOSED, R.CONNECT: errno.EISCONN,
    },
    S.BROKEN: {
        R.SET_TLS_OPTION: errno.EBADFD, R.SET_TCP_OPTION: errno.EBADFD,
        R.GET_CONFIG_OPTION: errno.EBADFD, R.GET_CONNECTION_OPTION: errno.EBADFD,
        R.GET_ERROR: S.BROKEN, R.CONNECT: errno.EBADFD,
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
def test_only_connect_changes_the_state(state: SocketState, request: Request) -> None:
    if check(state, request) is not None:
        return
    after = next_state(state, request)
    if request is R.CONNECT:
        assert (state, after) == (S.CREATED, S.CONNECTING)
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
        S.BROKEN: errno.EBADFD,
    }[state]
    assert check(state, R.CONNECT) == expected


def test_connect_named_cases() -> None:
    assert check(S.CONNECTED, R.CONNECT) == errno.EISCONN
    assert check(S.CONNECTING, R.CONNECT) == errno.EALREADY
    assert next_state(S.CREATED, R.CONNECT) is S.CONNECTING


def test_connection_information_only_once_connected() -> None:
    for state in (S.CREATED, S.CONNECTING):
        assert check(state, R.GET_CONNECTION_OPTION) == errno.EOPNOTSUPP
    for state in (S.CONNECTED, S.CLOSED):
        assert check(state, R.GET_CONNECTION_OPTION) is None


def test_tls_options_only_before_connect() -> None:
    assert check(S.CREATED, R.SET_TLS_OPTION) is None
    assert check(S.CONNECTING, R.SET_TLS_OPTION) == errno.EALREADY
    assert check(S.CONNECTED, R.SET_TLS_OPTION) == errno.EISCONN
    assert check(S.CLOSED, R.SET_TLS_OPTION) == errno.EISCONN


# -- request sequences -------------------------------------------------------------------------


@STATE_TESTS
@given(st.lists(REQUESTS, max_size=30))
def test_request_sequences_from_created(requests: list[Request]) -> None:
    """Replaying requests keeps to the table: one CONNECT, never back to CREATED."""
    state = S.CREATED
    connects = 0
    for request in requests:
        err = check(state, request)
        if err is None:
            new = next_state(state, request)
            connects += request is R.CONNECT
            assert new is not S.CREATED or state is S.CREATED
            state = new
        else:
            assert err in ERRNO_MEANINGS
            with pytest.raises(ValueError):  # a refused request has no next state
                next_state(state, request)
    assert connects <= 1
    assert state in (S.CREATED, S.CONNECTING)  # requests alone never finish a connect
    assert connects == (state is S.CONNECTING)


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
    """A control connection driven by hand, one frame at a time."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.decoder = Decoder()
        self.pending: list[Message] = []

    def send(self, *messages: Message, fds: tuple[int, ...] = ()) -> None:
        data = b"".join(encode(m) for m in messages)
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            sent = self.sock.sendmsg([data], anc)
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
            data = self.sock.recv(65536)
            assert data, f"end of file after {self.pending}"
            self.decoder.receive_data(data)
        out, self.pending = self.pending[:count], self.pending[count:]
        return out

    def one(self) -> Message:
        return self.read(1)[0]

    def read_to_eof(self) -> list[Message]:
        out, self.pending = [*self.pending, *self.decoder.messages()], []
        while data := self.sock.recv(65536):
            self.decoder.receive_data(data)
            out.extend(self.decoder.messages())
        return out

    def close(self) -> None:
        self.sock.close()


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
    conn.send_raw(struct.pack("!IHH", 1000, 37, 0))  # no payload follows
    (error,) = conn.read_to_eof()
    assert isinstance(error, Error) and error.errno == errno.EBADMSG
    assert "unknown message type 37" in error.message


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
