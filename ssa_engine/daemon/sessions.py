"""TLS session resumption and 0-RTT for client sockets.

Theory of operation: the engine keeps one cache of client sessions, keyed by
the program (uid and executable), the server (host name and port) and the
settings the session was made with (the client context's cache key), so a
session is only ever offered on behalf of the program that got it, under the
same policy. TLS 1.2 sessions are complete at the end of the handshake; TLS
1.3 sessions come later, with the server's NewSessionTicket, so the engine
watches the connection's state through OpenSSL's info callback ("read server
session ticket") and stores the session then, and drops the callback once
it has one. The same callback tells whether the server accepted early data:
a client only sends EndOfEarlyData when it did (RFC 8446 section 4.5). The
cffi bindings have neither SSL_get_early_data_status nor a new-session
callback, so this is how OpenSSL tells us.

``TLS_CONTEXT`` gives an 8-byte id for a snapshot of one socket's settings;
another socket of the same program sets it to start from those settings (and
so shares their sessions).
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi, lib

#: default seconds a client session is kept (TLS_SESSION_TTL changes it per socket)
DEFAULT_SESSION_TTL = 3600
#: Security parameter: the longest a session may be kept (RFC 8446 section 4.6.1: 7 days)
MAX_SESSION_TTL = 7 * 24 * 3600
#: Security parameter: client sessions the engine keeps, for all programs together
MAX_SESSIONS = 8192
#: Security parameter: TLS_CONTEXT snapshots kept
MAX_CONTEXTS = 1024

_CB_CONNECT_LOOP = 0x1001  # SSL_CB_CONNECT_LOOP (ssl.h)
_CB_CONNECT_EXIT = 0x1002
_TICKET_STATE = b"SSLv3/TLS read server session ticket"
_END_OF_EARLY_DATA_STATE = b"TLSv1.3 write end of early data"


class SessionCache:
    """Bounded LRU of client sessions with per-entry expiry."""

    def __init__(self, size: int = MAX_SESSIONS, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self._items: OrderedDict[object, tuple[SSL.Session, float]] = OrderedDict()
        self._size = size
        self._clock = clock

    def get(self, key: object) -> SSL.Session | None:
        item = self._items.get(key)
        if item is None:
            return None
        session, expires = item
        if expires <= self._clock():
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return session

    def put(self, key: object, session: SSL.Session, ttl: float) -> None:
        if ttl <= 0:
            return
        self._items[key] = (session, self._clock() + ttl)
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def forget(self, key: object) -> None:
        self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)


class ClientSessionWatch:
    """Per connection: store the session when it becomes resumable; note 0-RTT."""

    __slots__ = ("cache", "key", "ttl", "early_accepted", "_ticket", "_conn")

    def __init__(self, cache: SessionCache | None, key: object, ttl: float) -> None:
        self.cache = cache
        self.key = key
        self.ttl = ttl
        self.early_accepted = False
        self._ticket = False
        self._conn: SSL.Connection | None = None

    def attach(self, conn: SSL.Connection) -> None:
        self._conn = conn
        conn.set_info_callback(self._on_info)

    def _on_info(self, conn: SSL.Connection, where: int, ret: int) -> None:
        if where & _CB_CONNECT_LOOP == _CB_CONNECT_LOOP:
            state = conn.get_state_string()
            if state == _END_OF_EARLY_DATA_STATE:
                self.early_accepted = True
            elif state == _TICKET_STATE:
                self._ticket = True
        elif where & _CB_CONNECT_EXIT == _CB_CONNECT_EXIT and self._ticket:
            self._ticket = False
            self.store(conn)
            self.detach()  # one ticket is enough: no callback on the data path

    def handshake_done(self, conn: SSL.Connection) -> None:
        """TLS 1.2 sessions are complete now; TLS 1.3 ones come with a ticket.

        The callback is attached only now (unless early data needed it during
        the handshake): the ticket comes after the handshake, and a callback
        during it would be a call into Python for every state of it.
        """
        if conn.get_protocol_version_name() != "TLSv1.3":
            self.store(conn)
            self.detach()
        elif self._conn is None:
            self.attach(conn)

    def store(self, conn: SSL.Connection) -> None:
        if self.cache is None:
            return
        session = conn.get_session()
        if session is not None:
            self.cache.put(self.key, session, self.ttl)

    def detach(self) -> None:
        if self._conn is not None:
            lib.SSL_set_info_callback(self._conn._ssl, ffi.NULL)  # noqa: SLF001
            self._conn = None


def max_early_data(session: SSL.Session) -> int:
    """How many bytes of early data the server allows with this session (0: none)."""
    return int(lib.SSL_SESSION_get_max_early_data(session._session))  # noqa: SLF001


def write_early_data(conn: SSL.Connection, data: bytes) -> int:
    """SSL_write_early_data before the handshake; returns the bytes taken (0: none)."""
    if not data:
        return 0
    buf = ffi.from_buffer(data)
    written = ffi.new("size_t *")
    if lib.SSL_write_early_data(conn._ssl, buf, len(data), written) == 1:  # noqa: SLF001
        return int(written[0])
    lib.ERR_clear_error()
    return 0


def read_early_data(conn: SSL.Connection, into: list[bytes], limit: int = 65536) -> str:
    """Server: read the client's early data into ``into``.

    Returns ``"done"`` once it is all read (or there was none), ``"read"`` or
    ``"write"`` when OpenSSL waits for the socket: call again then. Raises
    SSL.Error on failure (including more than ``limit`` bytes, which a server
    advertising 16384 never has to take).
    """
    buf = ffi.new("unsigned char[]", 16384)
    got = ffi.new("size_t *")
    ssl = conn._ssl  # noqa: SLF001
    while sum(map(len, into)) <= limit:
        r = lib.SSL_read_early_data(ssl, buf, 16384, got)
        if r == 1:  # SSL_READ_EARLY_DATA_SUCCESS
            into.append(bytes(ffi.buffer(buf, got[0])))
            continue
        if r == 2:  # SSL_READ_EARLY_DATA_FINISH
            return "done"
        err = lib.SSL_get_error(ssl, r)
        if err == lib.SSL_ERROR_WANT_READ:
            return "read"
        if err == lib.SSL_ERROR_WANT_WRITE:
            return "write"
        conn._raise_ssl_error(ssl, r)  # noqa: SLF001
    raise SSL.Error("more early data than the engine accepts")


def new_context_id() -> bytes:
    return os.urandom(8)


class ContextRegistry:
    """TLS_CONTEXT snapshots: id -> (owner, snapshot), bounded."""

    def __init__(self, size: int = MAX_CONTEXTS) -> None:
        self._items: OrderedDict[bytes, tuple[object, Any]] = OrderedDict()
        self._size = size

    def register(self, owner: object, snapshot: Any) -> bytes:
        ident = new_context_id()
        self._items[ident] = (owner, snapshot)
        while len(self._items) > self._size:
            self._items.popitem(last=False)
        return ident

    def lookup(self, owner: object, ident: bytes) -> Any | None:
        item = self._items.get(ident)
        if item is None or item[0] != owner:  # another program's id is unknown here
            return None
        return item[1]
