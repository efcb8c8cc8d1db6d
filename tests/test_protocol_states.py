"""The per-socket state machine (ssa_engine/protocol/states.py).

Hypothesis over every (state, request) pair, and over request sequences,
checks that ``check`` and ``next_state`` agree with one table; that table is
written out here from the spec and also parsed from docs/protocol.md, so the
code, this file and the doc must all say the same thing.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssa_engine.protocol.errors import ERRNO_MEANINGS
from ssa_engine.protocol.states import TRANSITIONS, Request, SocketState, check, next_state

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
