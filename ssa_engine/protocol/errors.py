"""Errors of the control channel, and the errno table of the socket API.

One root exception, :class:`ProtocolError`; a peer that breaks the framing
rules raises a :class:`FrameError` subclass, which closes that one control
connection and nothing else.
"""

from __future__ import annotations

import errno


class ProtocolError(Exception):
    """Root of every control-channel error."""


class FrameError(ProtocolError):
    """The byte stream is not a valid sequence of frames; the connection is closed."""

    #: errno sent to the peer in the ERROR frame before closing
    errno_value = errno.EPROTO


class FrameTooLarge(FrameError):
    """A frame's declared length exceeds :data:`~.codec.MAX_PAYLOAD`."""

    errno_value = errno.EMSGSIZE


class UnknownMessage(FrameError):
    """A frame type that this protocol version does not define."""

    errno_value = errno.EBADMSG


class MalformedField(FrameError):
    """A field is truncated, unknown, repeated, of the wrong size or missing."""

    errno_value = errno.EBADMSG


class VersionMismatch(ProtocolError):
    """The two sides share no protocol version."""

    errno_value = errno.EPROTONOSUPPORT


#: errno values the engine may report in an ERROR or CLOSED frame, and what
#: each one means in the socket API (ARCHITECTURE.md section 4). A client
#: library raises ``OSError(value, message)`` with them unchanged.
ERRNO_MEANINGS: dict[int, str] = {
    errno.EPROTO: "handshake, validation, revocation or policy refusal",
    errno.EINVAL: "bad argument",
    errno.ENOPROTOOPT: "unknown option, or option used in the wrong direction",
    errno.EOPNOTSUPP: "option or call not valid in this state",
    errno.EISCONN: "already connected",
    errno.EALREADY: "a connect is already in progress",
    errno.EINPROGRESS: "non-blocking connect started",
    errno.ECONNREFUSED: "the remote end refused the connection",
    errno.EHOSTUNREACH: "name resolution failed or no route to host",
    errno.ETIMEDOUT: "connect or handshake timed out",
    errno.ECONNRESET: "peer reset, or stream cut without TLS close_notify",
    errno.EBADFD: "socket unusable after an earlier fatal error",
    errno.EPROTONOSUPPORT: "unsupported socket type or protocol",
    errno.EAFNOSUPPORT: "unsupported address family",
    errno.EACCES: "not permitted for this caller",
    errno.EMSGSIZE: "control frame too large",
    errno.EBADMSG: "malformed control frame",
    errno.ENETUNREACH: "network unreachable",
    errno.EADDRINUSE: "address in use",
    errno.EADDRNOTAVAIL: "address not available",
    errno.ENOMEM: "engine out of resources",
    errno.EMFILE: "engine out of file descriptors, or the per-user socket limit reached",
}
