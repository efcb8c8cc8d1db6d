"""Control-channel framing: sans-IO encoder and decoder.

Theory of operation: a control connection carries frames in both directions.
Each frame is an 8-byte header (payload length ``u32``, message type ``u16``,
reserved ``u16`` that must be zero) followed by ``length`` bytes of fields;
each field is ``tag u16``, ``length u32`` and the value. All integers are
big-endian. ``docs/protocol.md`` is the normative description.

The :class:`Decoder` takes bytes in (:meth:`Decoder.receive_data`) and hands
complete messages out (:meth:`Decoder.next_message`); it never touches a
socket. File descriptors travel beside the bytes (``SCM_RIGHTS``) and are
matched to frames by the I/O layer, using :attr:`Message.FD_COUNT`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any, ClassVar

from .errors import FrameTooLarge, MalformedField, UnknownMessage
from .messages import MAX_STRING, MESSAGE_TYPES, FieldKind, FieldTag, Message

#: Security parameter: largest payload accepted in one frame. A trust bundle
#: sent with TLS_TRUSTED_PEER_CERTIFICATES is the largest legitimate value.
MAX_PAYLOAD = 4 * 1024 * 1024
#: Security parameter: most bytes the decoder buffers before a frame completes.
MAX_BUFFER = MAX_PAYLOAD + 8

_HEADER = struct.Struct("!IHH")
_FIELD = struct.Struct("!HI")
HEADER_SIZE = _HEADER.size

_INT_FORMATS = {
    FieldKind.U16: struct.Struct("!H"),
    FieldKind.U32: struct.Struct("!I"),
    FieldKind.U64: struct.Struct("!Q"),
    FieldKind.I64: struct.Struct("!q"),
}


_TAG_VALUES = frozenset(int(t) for t in FieldTag)


# Enum members hash in Python code: look formats up by the kind's value.
_FORMAT_BY_NAME = {kind.value: fmt for kind, fmt in _INT_FORMATS.items()}
_BYTES, _STR = FieldKind.BYTES, FieldKind.STR


def _encode_value(kind: FieldKind, value: Any) -> bytes:
    if kind is _BYTES:
        return bytes(value)
    if kind is _STR:
        return str(value).encode("utf-8")
    return _FORMAT_BY_NAME[kind.value].pack(value)


def _decode_value(tag: FieldTag, kind: FieldKind, raw: bytes) -> Any:
    if kind is _BYTES:
        return raw
    if kind is _STR:
        if len(raw) > MAX_STRING:
            raise MalformedField(f"field {tag.name}: string longer than {MAX_STRING} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedField(f"field {tag.name}: not valid UTF-8") from None
        if "\x00" in text:
            raise MalformedField(f"field {tag.name}: NUL inside a string")
        return text
    fmt = _FORMAT_BY_NAME[kind.value]
    if len(raw) != fmt.size:
        raise MalformedField(f"field {tag.name}: {len(raw)} bytes, expected {fmt.size}")
    return fmt.unpack(raw)[0]


def encode(message: Message) -> bytes:
    """Serialize one message to a complete frame."""
    parts: list[bytes] = []
    for name, tag, kind in message.WIRE:
        value = getattr(message, name)
        if value is None:
            continue
        raw = _encode_value(kind, value)
        parts.append(_FIELD.pack(tag, len(raw)))
        parts.append(raw)
    payload = b"".join(parts)
    if len(payload) > MAX_PAYLOAD:
        raise FrameTooLarge(f"{type(message).__name__} payload of {len(payload)} bytes")
    return _HEADER.pack(len(payload), message.TYPE, 0) + payload


def decode_payload(msg_type: int, payload: bytes | memoryview) -> Message:
    """Build the message of type ``msg_type`` from a frame payload."""
    cls = MESSAGE_TYPES.get(msg_type)
    if cls is None:
        raise UnknownMessage(f"unknown message type {msg_type}")
    by_tag = cls.WIRE_BY_TAG
    values: dict[str, Any] = {}
    data = bytes(payload)
    offset = 0
    end = len(data)
    while offset < end:
        if end - offset < _FIELD.size:
            raise MalformedField("truncated field header")
        tag_value, length = _FIELD.unpack_from(data, offset)
        offset += _FIELD.size
        if length > end - offset:
            raise MalformedField(f"field {tag_value}: length {length} runs past the frame")
        spec = by_tag.get(tag_value)
        if spec is None:
            if tag_value not in _TAG_VALUES:
                raise MalformedField(f"unknown field tag {tag_value}")
            raise MalformedField(f"field {FieldTag(tag_value).name} is not part of {cls.__name__}")
        name, tag, kind = spec
        if name in values:
            raise MalformedField(f"field {tag.name} repeated")
        values[name] = _decode_value(tag, kind, data[offset : offset + length])
        offset += length
    try:
        return cls(**values)  # type: ignore[no-any-return]
    except TypeError:
        missing = [tag.name for name, tag, _ in cls.WIRE if name not in values]
        raise MalformedField(f"{cls.__name__}: missing field(s) {', '.join(missing)}") from None
    except ValueError as exc:
        raise MalformedField(f"{cls.__name__}: {exc}") from None


class Decoder:
    """Incremental frame decoder: bytes in, messages out."""

    max_payload: ClassVar[int] = MAX_PAYLOAD

    def __init__(self) -> None:
        self._buffer = bytearray()

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes read from the connection."""
        self._buffer += data
        if len(self._buffer) >= HEADER_SIZE:
            length, msg_type, _ = _HEADER.unpack_from(self._buffer)
            if length > self.max_payload:
                raise FrameTooLarge(f"frame of {length} bytes exceeds {self.max_payload}")
            if msg_type not in MESSAGE_TYPES:  # refuse before buffering its payload
                raise UnknownMessage(f"unknown message type {msg_type}")

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned message."""
        return len(self._buffer)

    def next_message(self) -> Message | None:
        """Return the next complete message, or None if more bytes are needed."""
        if len(self._buffer) < HEADER_SIZE:
            return None
        length, msg_type, reserved = _HEADER.unpack_from(self._buffer)
        if length > self.max_payload:
            raise FrameTooLarge(f"frame of {length} bytes exceeds {self.max_payload}")
        if reserved != 0:
            raise MalformedField("reserved header bits are not zero")
        if msg_type not in MESSAGE_TYPES:  # before waiting for its payload
            raise UnknownMessage(f"unknown message type {msg_type}")
        end = HEADER_SIZE + length
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[HEADER_SIZE:end])
        del self._buffer[:end]
        return decode_payload(msg_type, payload)

    def messages(self) -> Iterator[Message]:
        """Yield every complete message buffered so far."""
        while (msg := self.next_message()) is not None:
            yield msg
