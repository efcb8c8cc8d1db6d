"""Per-socket state machine shared by the engine and the client library.

The table below is the whole machine: for each state, the requests that are
legal and the state they lead to, or the errno with which they are refused.
docs/protocol.md renders the same table.
"""

from __future__ import annotations

import enum
import errno


class SocketState(enum.Enum):
    CREATED = "created"  #: SOCKET done, options may be set
    CONNECTING = "connecting"  #: CONNECT sent, TCP connect + handshake running
    CONNECTED = "connected"  #: verified, data flows
    CLOSED = "closed"  #: the TLS stream ended cleanly
    LISTENING = "listening"  #: LISTEN done: handshakes run, connections are offered
    BROKEN = "broken"  #: a fatal error happened; only TLS_ERROR may be read


class Request(enum.Enum):
    SET_TLS_OPTION = "setsockopt(IPPROTO_TLS)"
    SET_TCP_OPTION = "setsockopt(SOL_SOCKET/IPPROTO_TCP)"
    GET_CONFIG_OPTION = "getsockopt of a setting"
    GET_CONNECTION_OPTION = "getsockopt of connection information"
    GET_ERROR = "getsockopt(TLS_ERROR)"
    CONNECT = "connect"
    BIND = "bind"
    LISTEN = "listen"
    UPGRADE = "setsockopt(TCP_UPGRADE_TLS)"


S, R = SocketState, Request

#: state -> request -> (next state, None) when legal, (None, errno) when refused.
TRANSITIONS: dict[SocketState, dict[Request, tuple[SocketState | None, int | None]]] = {
    S.CREATED: {
        R.SET_TLS_OPTION: (S.CREATED, None),
        R.SET_TCP_OPTION: (S.CREATED, None),
        R.GET_CONFIG_OPTION: (S.CREATED, None),
        R.GET_CONNECTION_OPTION: (None, errno.EOPNOTSUPP),
        R.GET_ERROR: (S.CREATED, None),
        R.CONNECT: (S.CONNECTING, None),
        R.BIND: (S.CREATED, None),
        R.LISTEN: (S.LISTENING, None),
        R.UPGRADE: (S.CONNECTING, None),
    },
    S.CONNECTING: {
        R.SET_TLS_OPTION: (None, errno.EALREADY),
        R.SET_TCP_OPTION: (S.CONNECTING, None),
        R.GET_CONFIG_OPTION: (S.CONNECTING, None),
        R.GET_CONNECTION_OPTION: (None, errno.EOPNOTSUPP),
        R.GET_ERROR: (S.CONNECTING, None),
        R.CONNECT: (None, errno.EALREADY),
        R.BIND: (None, errno.EINVAL),
        R.LISTEN: (None, errno.EOPNOTSUPP),
        R.UPGRADE: (None, errno.EALREADY),
    },
    S.CONNECTED: {
        R.SET_TLS_OPTION: (None, errno.EISCONN),
        R.SET_TCP_OPTION: (S.CONNECTED, None),
        R.GET_CONFIG_OPTION: (S.CONNECTED, None),
        R.GET_CONNECTION_OPTION: (S.CONNECTED, None),
        R.GET_ERROR: (S.CONNECTED, None),
        R.CONNECT: (None, errno.EISCONN),
        R.BIND: (None, errno.EINVAL),
        R.LISTEN: (None, errno.EOPNOTSUPP),
        R.UPGRADE: (None, errno.EISCONN),
    },
    S.CLOSED: {
        R.SET_TLS_OPTION: (None, errno.EISCONN),
        R.SET_TCP_OPTION: (S.CLOSED, None),
        R.GET_CONFIG_OPTION: (S.CLOSED, None),
        R.GET_CONNECTION_OPTION: (S.CLOSED, None),
        R.GET_ERROR: (S.CLOSED, None),
        R.CONNECT: (None, errno.EISCONN),
        R.BIND: (None, errno.EINVAL),
        R.LISTEN: (None, errno.EOPNOTSUPP),
        R.UPGRADE: (None, errno.EISCONN),
    },
    S.LISTENING: {
        R.SET_TLS_OPTION: (None, errno.EOPNOTSUPP),
        R.SET_TCP_OPTION: (S.LISTENING, None),
        R.GET_CONFIG_OPTION: (S.LISTENING, None),
        R.GET_CONNECTION_OPTION: (None, errno.EOPNOTSUPP),
        R.GET_ERROR: (S.LISTENING, None),
        R.CONNECT: (None, errno.EOPNOTSUPP),
        R.BIND: (None, errno.EINVAL),
        R.LISTEN: (S.LISTENING, None),
        R.UPGRADE: (None, errno.EOPNOTSUPP),
    },
    S.BROKEN: {
        R.SET_TLS_OPTION: (None, errno.EBADFD),
        R.SET_TCP_OPTION: (None, errno.EBADFD),
        R.GET_CONFIG_OPTION: (None, errno.EBADFD),
        R.GET_CONNECTION_OPTION: (None, errno.EBADFD),
        R.GET_ERROR: (S.BROKEN, None),
        R.CONNECT: (None, errno.EBADFD),
        R.BIND: (None, errno.EBADFD),
        R.LISTEN: (None, errno.EBADFD),
        R.UPGRADE: (None, errno.EBADFD),
    },
}


def check(state: SocketState, request: Request) -> int | None:
    """Return None when ``request`` is legal in ``state``, else the errno."""
    return TRANSITIONS[state][request][1]


def next_state(state: SocketState, request: Request) -> SocketState:
    """Return the state after a legal ``request``; ValueError if it is refused."""
    target, err = TRANSITIONS[state][request]
    if target is None:
        raise ValueError(f"{request.value} refused in state {state.value} (errno {err})")
    return target
