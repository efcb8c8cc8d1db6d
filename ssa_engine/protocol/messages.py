"""Message types of the control channel (docs/protocol.md, section "Messages").

Every message is a frozen dataclass whose fields carry their wire tag in the
field metadata; ``None`` means "absent" for optional fields. Values are
checked in ``__post_init__``, so a decoded message is always well formed.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar

#: Security parameter: largest single string field (host names, messages).
MAX_STRING = 64 * 1024

#: Control protocol versions this code speaks.
PROTOCOL_VERSION = 1
MIN_PROTOCOL_VERSION = 1


class MessageType(enum.IntEnum):
    """Frame type numbers."""

    HELLO = 1  #: app -> engine: first frame, version range
    SOCKET = 2  #: app -> engine: create the engine-side socket
    SETSOCKOPT = 3  #: app -> engine: set an option
    GETSOCKOPT = 4  #: app -> engine: read an option
    CONNECT = 5  #: app -> engine: connect + handshake; carries the data fd
    BIND = 6  #: app -> engine: bind the engine's listening socket
    LISTEN = 7  #: app -> engine: start listening; carries the notification fd
    UPGRADE = 8  #: app -> engine: TLS on a connected TCP socket; carries it and the data fd
    STATUS = 16  #: app -> engine: admin query (root or the engine's user only)
    RELOAD = 17  #: app -> engine: reload the configuration (root or the engine's user only)
    ACME_CHALLENGE = 18  #: app -> engine: answer tls-alpn-01 on a listener (admin only)
    HELLO_OK = 32  #: engine -> app: version chosen
    OK = 33  #: engine -> app: request succeeded, optional value
    ERROR = 34  #: engine -> app: request failed with an errno and a message
    CONNECTED = 35  #: engine -> app: the CONNECT finished, handshake verified
    CONNECT_FAILED = 36  #: engine -> app: the CONNECT failed (errno and reason)
    BOUND = 37  #: engine -> app: BIND done, the address actually bound
    ACCEPTED = 38  #: engine -> app: event, a verified connection; data + control fds
    CLOSED = 48  #: engine -> app: event, the TLS stream ended (clean or not)
    STATUS_REPLY = 49  #: engine -> app: status document (JSON text)


#: Security parameter: the most bytes a CONNECT may carry for 0-RTT (TLS 1.3
#: servers advertise 16384 at most in practice; the rest follows the handshake).
MAX_EARLY_DATA = 65536


class FieldTag(enum.IntEnum):
    """Field tags; each has one fixed kind (see FIELD_KINDS)."""

    VERSION_MIN = 1  #: u16
    VERSION_MAX = 2  #: u16
    VERSION = 3  #: u16
    FAMILY = 4  #: u32, the application's address family
    SOCKTYPE = 5  #: u32
    PROTO = 6  #: u32
    LEVEL = 7  #: u32, option level
    OPTNAME = 8  #: u32, option name
    VALUE = 9  #: bytes, option value (string or binary options)
    INT_VALUE = 10  #: i64, option value (numeric options)
    BUFLEN = 11  #: u32, 0 = no limit
    HOST = 12  #: str, host name or address literal
    PORT = 13  #: u16
    FILLER = 14  #: u32, filler bytes queued on the data fd (see protocol.md)
    ERRNO = 15  #: u32
    MESSAGE = 16  #: str, human readable
    SOCKET_ID = 17  #: u64
    LOCAL_HOST = 18  #: str
    LOCAL_PORT = 19  #: u16
    PEER_HOST = 20  #: str
    PEER_PORT = 21  #: u16
    SOFTWARE = 22  #: str, engine name and version
    DOCUMENT = 23  #: str, JSON document
    BACKLOG = 24  #: u32, completed connections the engine queues for accept()
    EARLY_DATA = 25  #: bytes, the first bytes to send, as TLS 1.3 early data if possible


class FieldKind(enum.Enum):
    U16 = "u16"
    U32 = "u32"
    U64 = "u64"
    I64 = "i64"
    STR = "str"
    BYTES = "bytes"


_U16, _U32, _U64 = FieldKind.U16, FieldKind.U32, FieldKind.U64

FIELD_KINDS: dict[FieldTag, FieldKind] = {
    FieldTag.VERSION_MIN: _U16,
    FieldTag.VERSION_MAX: _U16,
    FieldTag.VERSION: _U16,
    FieldTag.FAMILY: _U32,
    FieldTag.SOCKTYPE: _U32,
    FieldTag.PROTO: _U32,
    FieldTag.LEVEL: _U32,
    FieldTag.OPTNAME: _U32,
    FieldTag.VALUE: FieldKind.BYTES,
    FieldTag.INT_VALUE: FieldKind.I64,
    FieldTag.BUFLEN: _U32,
    FieldTag.HOST: FieldKind.STR,
    FieldTag.PORT: _U16,
    FieldTag.FILLER: _U32,
    FieldTag.ERRNO: _U32,
    FieldTag.MESSAGE: FieldKind.STR,
    FieldTag.SOCKET_ID: _U64,
    FieldTag.LOCAL_HOST: FieldKind.STR,
    FieldTag.LOCAL_PORT: _U16,
    FieldTag.PEER_HOST: FieldKind.STR,
    FieldTag.PEER_PORT: _U16,
    FieldTag.SOFTWARE: FieldKind.STR,
    FieldTag.DOCUMENT: FieldKind.STR,
    FieldTag.BACKLOG: _U32,
    FieldTag.EARLY_DATA: FieldKind.BYTES,
}

_LIMITS = {_U16: 1 << 16, _U32: 1 << 32, _U64: 1 << 64, FieldKind.I64: 1 << 63}


def _f(tag: FieldTag, default: Any = dataclasses.MISSING) -> Any:
    return field(default=default, metadata={"tag": tag})


class Message:
    """Base of all messages."""

    TYPE: ClassVar[MessageType]
    #: file descriptors that travel with this frame (SCM_RIGHTS)
    FD_COUNT: ClassVar[int] = 0
    FIELDS_BY_TAG: ClassVar[dict[FieldTag, dataclasses.Field[Any]]]
    #: (attribute, tag, kind) of every field, in declaration order
    WIRE: ClassVar[tuple[tuple[str, FieldTag, FieldKind], ...]] = ()
    #: tag number -> (attribute, tag, kind)
    WIRE_BY_TAG: ClassVar[dict[int, tuple[str, FieldTag, FieldKind]]] = {}
    #: (attribute, str | bytes | (low, high), may be None): each field's check
    CHECKS: ClassVar[tuple[tuple[str, Any, bool], ...]] = ()

    def __post_init__(self) -> None:
        for name, limits, optional in self.CHECKS:
            value = getattr(self, name)
            if value is None:
                if optional:
                    continue
                raise ValueError(f"{name} is required")
            if limits is str:
                if value.__class__ is not str:
                    raise ValueError(f"{name} must be str")
                if "\x00" in value:
                    raise ValueError(f"{name} contains NUL")
                if len(value) > MAX_STRING // 4 and len(value.encode("utf-8")) > MAX_STRING:
                    raise ValueError(f"{name} is longer than {MAX_STRING} bytes")
                continue
            if limits is bytes:
                if value.__class__ is not bytes:
                    raise ValueError(f"{name} must be bytes")
                continue
            low, high = limits
            if value.__class__ is not int and (
                not isinstance(value, int) or isinstance(value, bool)
            ):
                raise ValueError(f"{name} must be an int")
            if not low <= value < high:
                raise ValueError(f"{name}={value} out of range [{low}, {high})")


MESSAGE_TYPES: dict[int, type[Any]] = {}

#: message types an application may send (the rest are the engine's)
REQUEST_TYPES = frozenset(
    {MessageType.HELLO, MessageType.SOCKET, MessageType.SETSOCKOPT, MessageType.GETSOCKOPT,
     MessageType.CONNECT, MessageType.BIND, MessageType.LISTEN, MessageType.UPGRADE,
     MessageType.STATUS, MessageType.RELOAD, MessageType.ACME_CHALLENGE}
)


def _register(cls: type[Any]) -> type[Any]:
    MESSAGE_TYPES[cls.TYPE] = cls
    fields = dataclasses.fields(cls)
    cls.FIELDS_BY_TAG = {f.metadata["tag"]: f for f in fields}
    cls.WIRE = tuple(
        (f.name, f.metadata["tag"], FIELD_KINDS[f.metadata["tag"]]) for f in fields
    )
    cls.WIRE_BY_TAG = {int(tag): (name, tag, kind) for name, tag, kind in cls.WIRE}
    optional = {f.name for f in fields if f.default is None}
    cls.CHECKS = tuple(
        (name, _check_for(kind), name in optional) for name, _, kind in cls.WIRE
    )
    return cls


def _check_for(kind: FieldKind) -> Any:
    if kind is FieldKind.STR:
        return str
    if kind is FieldKind.BYTES:
        return bytes
    limit = _LIMITS[kind]
    return (-limit if kind is FieldKind.I64 else 0, limit)


@_register
@dataclass(frozen=True, slots=True)
class Hello(Message):
    TYPE = MessageType.HELLO
    version_min: int = _f(FieldTag.VERSION_MIN)
    version_max: int = _f(FieldTag.VERSION_MAX)

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        if self.version_min > self.version_max:
            raise ValueError("version_min > version_max")


@_register
@dataclass(frozen=True, slots=True)
class SocketRequest(Message):
    TYPE = MessageType.SOCKET
    family: int = _f(FieldTag.FAMILY)
    socktype: int = _f(FieldTag.SOCKTYPE)
    proto: int = _f(FieldTag.PROTO)


@_register
@dataclass(frozen=True, slots=True)
class SetSockOpt(Message):
    TYPE = MessageType.SETSOCKOPT
    level: int = _f(FieldTag.LEVEL)
    optname: int = _f(FieldTag.OPTNAME)
    value: bytes | None = _f(FieldTag.VALUE, None)
    int_value: int | None = _f(FieldTag.INT_VALUE, None)

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        if (self.value is None) == (self.int_value is None):
            raise ValueError("exactly one of VALUE and INT_VALUE is required")


@_register
@dataclass(frozen=True, slots=True)
class GetSockOpt(Message):
    TYPE = MessageType.GETSOCKOPT
    level: int = _f(FieldTag.LEVEL)
    optname: int = _f(FieldTag.OPTNAME)
    buflen: int = _f(FieldTag.BUFLEN, 0)


@_register
@dataclass(frozen=True, slots=True)
class Connect(Message):
    TYPE = MessageType.CONNECT
    FD_COUNT = 1
    host: str = _f(FieldTag.HOST)
    port: int = _f(FieldTag.PORT)
    filler: int = _f(FieldTag.FILLER, 0)
    early_data: bytes | None = _f(FieldTag.EARLY_DATA, None)

    def __post_init__(self) -> None:
        Message.__post_init__(self)
        if not self.host:
            raise ValueError("empty host")
        if self.early_data is not None and len(self.early_data) > MAX_EARLY_DATA:
            raise ValueError(f"EARLY_DATA longer than {MAX_EARLY_DATA} bytes")


@_register
@dataclass(frozen=True, slots=True)
class Bind(Message):
    TYPE = MessageType.BIND
    host: str = _f(FieldTag.HOST)  # "" = every address of the family
    port: int = _f(FieldTag.PORT)  # 0 = an ephemeral port


@_register
@dataclass(frozen=True, slots=True)
class Listen(Message):
    TYPE = MessageType.LISTEN
    FD_COUNT = 1
    backlog: int = _f(FieldTag.BACKLOG)


@_register
@dataclass(frozen=True, slots=True)
class Upgrade(Message):
    TYPE = MessageType.UPGRADE
    FD_COUNT = 2  # the application's connected TCP socket, then the engine's end of the data pair
    host: str = _f(FieldTag.HOST)  # client role: the server's name; "" = the server role


@_register
@dataclass(frozen=True, slots=True)
class StatusRequest(Message):
    TYPE = MessageType.STATUS


@_register
@dataclass(frozen=True, slots=True)
class ReloadRequest(Message):
    TYPE = MessageType.RELOAD


@_register
@dataclass(frozen=True, slots=True)
class AcmeChallenge(Message):
    TYPE = MessageType.ACME_CHALLENGE
    value: bytes = _f(FieldTag.VALUE)  # certificate + key PEM; empty = stop answering
    host: str = _f(FieldTag.HOST)
    port: int = _f(FieldTag.PORT)


@_register
@dataclass(frozen=True, slots=True)
class HelloOk(Message):
    TYPE = MessageType.HELLO_OK
    version: int = _f(FieldTag.VERSION)
    software: str = _f(FieldTag.SOFTWARE, "")


@_register
@dataclass(frozen=True, slots=True)
class Ok(Message):
    TYPE = MessageType.OK
    value: bytes | None = _f(FieldTag.VALUE, None)
    int_value: int | None = _f(FieldTag.INT_VALUE, None)
    socket_id: int | None = _f(FieldTag.SOCKET_ID, None)


@_register
@dataclass(frozen=True, slots=True)
class Error(Message):
    TYPE = MessageType.ERROR
    errno: int = _f(FieldTag.ERRNO)
    message: str = _f(FieldTag.MESSAGE, "")


@_register
@dataclass(frozen=True, slots=True)
class Connected(Message):
    TYPE = MessageType.CONNECTED
    local_host: str = _f(FieldTag.LOCAL_HOST)
    local_port: int = _f(FieldTag.LOCAL_PORT)
    peer_host: str = _f(FieldTag.PEER_HOST)
    peer_port: int = _f(FieldTag.PEER_PORT)


@_register
@dataclass(frozen=True, slots=True)
class ConnectFailed(Message):
    TYPE = MessageType.CONNECT_FAILED
    errno: int = _f(FieldTag.ERRNO)
    message: str = _f(FieldTag.MESSAGE, "")


@_register
@dataclass(frozen=True, slots=True)
class Bound(Message):
    TYPE = MessageType.BOUND
    local_host: str = _f(FieldTag.LOCAL_HOST)
    local_port: int = _f(FieldTag.LOCAL_PORT)


@_register
@dataclass(frozen=True, slots=True)
class Accepted(Message):
    TYPE = MessageType.ACCEPTED
    FD_COUNT = 2  # the plaintext stream, then the accepted socket's control connection
    socket_id: int = _f(FieldTag.SOCKET_ID)
    local_host: str = _f(FieldTag.LOCAL_HOST)
    local_port: int = _f(FieldTag.LOCAL_PORT)
    peer_host: str = _f(FieldTag.PEER_HOST)
    peer_port: int = _f(FieldTag.PEER_PORT)


@_register
@dataclass(frozen=True, slots=True)
class Closed(Message):
    TYPE = MessageType.CLOSED
    errno: int = _f(FieldTag.ERRNO)  # 0: clean end (close_notify received)
    message: str = _f(FieldTag.MESSAGE, "")


@_register
@dataclass(frozen=True, slots=True)
class StatusReply(Message):
    TYPE = MessageType.STATUS_REPLY
    document: str = _f(FieldTag.DOCUMENT)
