"""Sans-IO control channel between applications and the engine.

Nothing here imports ``socket``, ``asyncio`` or ``os``: the codec turns bytes
into messages and back, and both the client library and the engine drive it
from their own I/O.
"""

from __future__ import annotations

from .codec import HEADER_SIZE, MAX_PAYLOAD, Decoder, decode_payload, encode
from .errors import (
    FrameError,
    FrameTooLarge,
    MalformedField,
    ProtocolError,
    UnknownMessage,
    VersionMismatch,
)
from .messages import (
    MAX_STRING,
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    Accepted,
    AcmeChallenge,
    Bind,
    Bound,
    Closed,
    Connect,
    Connected,
    ConnectFailed,
    Error,
    GetSockOpt,
    Hello,
    HelloOk,
    Listen,
    Message,
    MessageType,
    Ok,
    ReloadRequest,
    SetSockOpt,
    SocketRequest,
    StatusReply,
    StatusRequest,
    Upgrade,
)

__all__ = [
    "Accepted", "Bind", "Bound", "Listen", "Upgrade",
    "MAX_STRING", "REQUEST_TYPES",
    "HEADER_SIZE", "MAX_PAYLOAD", "Decoder", "decode_payload", "encode",
    "FrameError", "FrameTooLarge", "MalformedField", "ProtocolError", "UnknownMessage",
    "VersionMismatch", "MIN_PROTOCOL_VERSION", "PROTOCOL_VERSION", "Closed", "Connect",
    "ConnectFailed", "Connected", "Error", "GetSockOpt", "Hello", "HelloOk", "Message",
    "MessageType", "Ok",
    "SetSockOpt", "SocketRequest", "ReloadRequest", "AcmeChallenge", "StatusReply", "StatusRequest",
]
