"""Property tests for the control-channel codec and the option table.

(a) every valid message survives encode -> any chunking -> decode;
(b) the decoder, fed anything in any chunking, yields messages or raises a
    documented ProtocolError, never anything else;
(c) the sending side: any values given to a message class are refused
    (ValueError) or produce a frame that decodes to an equal message;
(d) the option table agrees with the numbers pinned in ARCHITECTURE.md
    section 4 and with docs/protocol.md;
(e) descriptors: the client library matches the descriptors that travel
    with engine frames to those frames by FD_COUNT, in order, however the
    frames are split across sendmsg calls (docs/protocol.md section 7).
"""

from __future__ import annotations

import array
import dataclasses
import os
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssa_engine.protocol import (
    HEADER_SIZE,
    MAX_STRING,
    Accepted,
    Closed,
    Connect,
    Decoder,
    Hello,
    Message,
    MessageType,
    Ok,
    SetSockOpt,
    decode_payload,
    encode,
)
from ssa_engine.protocol import options as opt
from ssa_engine.protocol.errors import (
    ERRNO_MEANINGS,
    FrameError,
    ProtocolError,
    UnknownMessage,
)
from ssa_engine.protocol.messages import FIELD_KINDS, MESSAGE_TYPES, FieldKind, FieldTag
from ssa_engine.protocol.options import OPTIONS, Access, Kind, TLSOption

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
#: for the tests that build whole message streams per example (slower)
FUZZ_STREAMS = settings(FUZZ, max_examples=100)
DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

# -- strategies -----------------------------------------------------------------------

# text that the wire can carry: no surrogates (not encodable), no NUL (refused)
_TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                max_size=40)
_KIND_VALUES: dict[FieldKind, st.SearchStrategy[Any]] = {
    FieldKind.U16: st.integers(0, (1 << 16) - 1),
    FieldKind.U32: st.integers(0, (1 << 32) - 1),
    FieldKind.U64: st.integers(0, (1 << 64) - 1),
    FieldKind.I64: st.integers(-(1 << 63), (1 << 63) - 1),
    FieldKind.STR: _TEXT,
    FieldKind.BYTES: st.binary(max_size=64),
}


def _fix_cross_field_rules(cls: type[Message], kw: dict[str, Any]) -> dict[str, Any]:
    """Bend generated values to the rules that span fields, instead of filtering."""
    if cls is Hello:
        kw["version_min"], kw["version_max"] = sorted((kw["version_min"], kw["version_max"]))
    elif cls is SetSockOpt and (kw["value"] is None) == (kw["int_value"] is None):
        if kw["value"] is None:
            kw["int_value"] = 0
        else:
            kw["int_value"] = None
    elif cls is Connect and not kw["host"]:
        kw["host"] = "h"
    return kw


def _construct(cls: type[Message], kwargs: dict[str, Any]) -> Message | None:
    try:
        return cls(**_fix_cross_field_rules(cls, kwargs))
    except ValueError:  # a rule not bent above: the filter below drops it
        return None


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    """Valid instances of ``cls``, built from its fields' wire kinds."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        values = _KIND_VALUES[FIELD_KINDS[f.metadata["tag"]]]
        if f.default is None:
            values = st.none() | values
        fields[f.name] = values
    built = st.fixed_dictionaries(fields).map(lambda kw: _construct(cls, kw))
    return built.filter(lambda m: m is not None)  # type: ignore[return-value]


ANY_MESSAGE = st.one_of([message_strategy(cls) for cls in MESSAGE_TYPES.values()])


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def feed(chunks: list[bytes]) -> list[Message]:
    """Decode ``chunks``; only documented exceptions may escape."""
    decoder = Decoder()
    out: list[Message] = []
    for chunk in chunks:
        decoder.receive_data(chunk)
        for message in decoder.messages():
            assert isinstance(message, Message)
            out.append(message)
    return out


def assert_only_documented_errors(chunks: list[bytes]) -> list[Message]:
    try:
        messages = feed(chunks)
    except ProtocolError as exc:
        # the engine answers with exc.errno_value: it must be a documented one
        assert isinstance(exc, FrameError)
        assert exc.errno_value in ERRNO_MEANINGS
        assert str(exc)
        return []
    for message in messages:
        # whatever was accepted is a valid message that survives the wire
        assert decode_payload(message.TYPE, encode(message)[HEADER_SIZE:]) == message
    return messages


# -- (a) round trip -------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(MESSAGE_TYPES.values()), ids=lambda c: c.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_round_trip_every_type(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(message_strategy(cls), label=cls.__name__)
    frame = encode(message)
    assert struct.unpack_from("!IHH", frame) == (len(frame) - HEADER_SIZE, message.TYPE, 0)
    assert decode_payload(message.TYPE, frame[HEADER_SIZE:]) == message
    assert feed([frame]) == [message]


@FUZZ_STREAMS
@given(st.lists(ANY_MESSAGE, min_size=1, max_size=6), st.lists(st.integers(0, 10_000), max_size=12))
def test_round_trip_stream_in_random_chunks(messages: list[Message], cuts: list[int]) -> None:
    stream = b"".join(encode(m) for m in messages)
    assert feed(chunked(stream, cuts)) == messages


@FUZZ_STREAMS
@given(ANY_MESSAGE, st.randoms(use_true_random=False))
def test_field_order_does_not_matter(message: Message, rnd: Any) -> None:
    frame = encode(message)
    payload = frame[HEADER_SIZE:]
    fields = []
    offset = 0
    while offset < len(payload):
        tag, length = struct.unpack_from("!HI", payload, offset)
        fields.append(payload[offset : offset + 6 + length])
        offset += 6 + length
    rnd.shuffle(fields)
    assert decode_payload(message.TYPE, b"".join(fields)) == message


# -- (b) decoder fuzz ------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=512), st.lists(st.integers(0, 600), max_size=10))
def test_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    assert_only_documented_errors(chunked(data, cuts))


_KNOWN_TYPES = st.sampled_from(sorted(MESSAGE_TYPES))


@FUZZ
@given(st.one_of(_KNOWN_TYPES, st.integers(0, 0xFFFF)), st.binary(max_size=256),
       st.lists(st.integers(0, 300), max_size=8))
def test_valid_header_random_payload(msg_type: int, payload: bytes, cuts: list[int]) -> None:
    frame = struct.pack("!IHH", len(payload), msg_type, 0) + payload
    assert_only_documented_errors(chunked(frame, cuts))


_RAW_FIELD = st.builds(
    lambda tag, value: struct.pack("!HI", tag, len(value)) + value,
    st.one_of(st.sampled_from(sorted(FieldTag)), st.integers(0, 0xFFFF)),
    st.one_of(st.binary(max_size=12), st.sampled_from([b"", b"\x00", bytes(2), bytes(4), bytes(8)]),
              st.text(max_size=12).map(str.encode)),
)


@FUZZ
@given(_KNOWN_TYPES, st.lists(_RAW_FIELD, max_size=6), st.lists(st.integers(0, 300), max_size=6))
def test_well_formed_fields_random_tags_and_values(msg_type: int, fields: list[bytes],
                                                   cuts: list[int]) -> None:
    payload = b"".join(fields)
    frame = struct.pack("!IHH", len(payload), msg_type, 0) + payload
    assert_only_documented_errors(chunked(frame, cuts))


@FUZZ_STREAMS
@given(st.lists(ANY_MESSAGE, min_size=1, max_size=4), st.data())
def test_mutated_valid_frames(messages: list[Message], data: st.DataObject) -> None:
    stream = bytearray(b"".join(encode(m) for m in messages))
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        where = data.draw(st.integers(0, max(len(stream) - 1, 0)), label="where")
        how = data.draw(st.sampled_from(["flip", "insert", "delete", "byte"]), label="how")
        if how == "flip":
            stream[where] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif how == "insert":
            stream[where:where] = data.draw(st.binary(min_size=1, max_size=8), label="ins")
        elif how == "delete" and stream:
            del stream[where]
        elif stream:
            stream[where] = data.draw(st.integers(0, 255), label="byte")
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6), label="cuts")
    assert_only_documented_errors(chunked(bytes(stream), cuts))


@FUZZ
@given(st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
       st.binary(max_size=32))
def test_any_header(length: int, msg_type: int, reserved: int, tail: bytes) -> None:
    frame = struct.pack("!IHH", length, msg_type, reserved) + tail
    messages = assert_only_documented_errors([frame])
    if messages:  # accepted only if the header was entirely valid
        assert reserved == 0 and length <= len(tail) and msg_type in MESSAGE_TYPES


_UNKNOWN_TYPES = st.integers(0, 0xFFFF).filter(lambda t: t not in MESSAGE_TYPES)


@FUZZ
@given(_UNKNOWN_TYPES, st.integers(0, 0xFFFFFFFF), st.integers(0, 0xFFFF),
       st.lists(st.integers(1, 7), max_size=4))
def test_unknown_type_never_waits_for_its_payload(msg_type: int, length: int, reserved: int,
                                                  cuts: list[int]) -> None:
    """The 8 header bytes alone, in any chunking, are enough to refuse the frame."""
    header = struct.pack("!IHH", length, msg_type, reserved)
    decoder = Decoder()
    with pytest.raises(FrameError) as info:
        for chunk in chunked(header, cuts):
            decoder.receive_data(chunk)
            assert decoder.next_message() is None
    # an oversize length is reported first; otherwise the type
    assert isinstance(info.value, UnknownMessage) or length > decoder.max_payload


def _with_field(cls: type[Message], tag: FieldTag, raw: bytes) -> bytes:
    """A frame of ``cls`` whose ``tag`` field carries ``raw``, built without the encoder."""
    payload = b""
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        ftag = f.metadata["tag"]
        if ftag == tag:
            value = raw
        elif f.default is not dataclasses.MISSING:
            continue
        elif FIELD_KINDS[ftag] in (FieldKind.STR, FieldKind.BYTES):
            value = b"x"
        else:
            size = {FieldKind.U16: 2, FieldKind.U32: 4, FieldKind.U64: 8}[FIELD_KINDS[ftag]]
            value = (1).to_bytes(size, "big")
        payload += struct.pack("!HI", ftag, len(value)) + value
    return struct.pack("!IHH", len(payload), cls.TYPE, 0) + payload


#: every (message, str field) pair: BIND's HOST, BOUND's and ACCEPTED's hosts included
_STR_FIELDS = [(cls, tag) for cls in MESSAGE_TYPES.values() for tag in cls.FIELDS_BY_TAG
               if FIELD_KINDS[tag] is FieldKind.STR]


def test_str_fields_cover_the_server_messages() -> None:
    names = {(cls.TYPE, tag) for cls, tag in _STR_FIELDS}
    assert (MessageType.BIND, FieldTag.HOST) in names
    assert (MessageType.BOUND, FieldTag.LOCAL_HOST) in names
    assert (MessageType.ACCEPTED, FieldTag.PEER_HOST) in names


@FUZZ
@given(st.sampled_from(_STR_FIELDS),
       st.integers(MAX_STRING - 2, MAX_STRING + 2), st.sampled_from(["y", "é", "\u20ac"]))
def test_string_limit_boundary(where: tuple[type[Message], FieldTag], size: int,
                               char: str) -> None:
    """Both sides draw the line at MAX_STRING bytes of UTF-8, wherever the field is."""
    cls, tag = where
    name = cls.FIELDS_BY_TAG[tag].name
    unit = len(char.encode())
    text = char * (size // unit) + "y" * (size % unit)  # exactly ``size`` bytes
    assert len(text.encode()) == size
    messages = assert_only_documented_errors([_with_field(cls, tag, text.encode())])
    assert bool(messages) == (size <= MAX_STRING)
    (short,) = feed([_with_field(cls, tag, b"x")])
    if messages:
        assert getattr(messages[0], name) == text
        assert messages[0] == dataclasses.replace(short, **{name: text})  # type: ignore[type-var]
    else:
        with pytest.raises(ValueError, match="longer than"):
            dataclasses.replace(short, **{name: text})  # type: ignore[type-var]


# -- (c) the sending side ---------------------------------------------------------------

# anything a caller might pass: right and wrong types, out-of-range numbers,
# NUL, lone surrogates, strings around MAX_STRING, None
_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 70), 1 << 70),
    st.sampled_from([0, 1, -1, (1 << 16) - 1, 1 << 16, (1 << 32) - 1, 1 << 32, (1 << 63) - 1,
                     1 << 63, -(1 << 63), -(1 << 63) - 1, (1 << 64) - 1, 1 << 64]),
    st.floats(allow_nan=False),
    st.text(max_size=20),  # any code point: NUL and surrogates included
    st.sampled_from(["", "\x00", "a\x00b", "\ud800", "x" * MAX_STRING, "x" * (MAX_STRING + 1),
                     "é" * (MAX_STRING // 2), "é" * (MAX_STRING // 2 + 1)]),
    st.binary(max_size=20),
    st.builds(bytearray, st.binary(max_size=4)),
)


@settings(FUZZ, max_examples=300)
@given(st.sampled_from(list(MESSAGE_TYPES.values())), st.data())
def test_whatever_is_built_and_encoded_decodes_equal(cls: type[Message], data: st.DataObject) -> None:
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        valid = _KIND_VALUES[FIELD_KINDS[f.metadata["tag"]]]
        kwargs[f.name] = data.draw(st.one_of(valid, _ANY_VALUE), label=f.name)
    try:
        message = cls(**kwargs)
    except ValueError:
        return  # refused when built
    try:
        frame = encode(message)
    except ValueError:  # a lone surrogate: UnicodeEncodeError
        assert any(isinstance(v, str) and _has_surrogate(v) for v in kwargs.values())
        return
    except ProtocolError:  # FrameTooLarge
        return
    assert feed([frame]) == [message]


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


# -- (d) option table ------------------------------------------------------------------

#: ARCHITECTURE.md section 4, pinned: "numbered as the SSA reference
#: implementation numbers them". Do not derive this from the code.
PINNED = {
    "IPPROTO_TLS": 205, "AF_HOSTNAME": 43, "TCP_UPGRADE_TLS": 33,
    "TLS_REMOTE_HOSTNAME": 85, "TLS_HOSTNAME": 86, "TLS_TRUSTED_PEER_CERTIFICATES": 87,
    "TLS_CERTIFICATE_CHAIN": 88, "TLS_PRIVATE_KEY": 89, "TLS_ALPN": 90, "TLS_SESSION_TTL": 91,
    "TLS_DISABLE_CIPHER": 92, "TLS_PEER_IDENTITY": 93, "TLS_REQUEST_PEER_AUTH": 94,
    "TLS_PEER_CERTIFICATE_CHAIN": 95, "TLS_ID": 96, "TLS_TRUSTED_CIPHERS": 97,
    "TLS_CHOSEN_CIPHER": 98, "TLS_ERROR": 100, "TLS_REVOCATION_CHECKS": 102,
    "TLS_OCSP_STAPLED_CHECKS": 103, "TLS_OCSP_CHECKS": 104, "TLS_CRL_CHECKS": 105,
    "TLS_CACHED_REV_CHECKS": 106, "TLS_CONTEXT": 107, "TLS_SESSION_REUSE": 108,
    "TLS_RESUMED_SESSION": 109, "TLS_ENABLE_CIPHER": 110, "TLS_VERSION_MIN": 111,
    "TLS_VERSION_MAX": 112, "TLS_VERSION_CONN": 113, "TLS_SERVER_OCSP_STAPLING": 122,
    "TLS_0RTT": 123, "TLS_1_2": 0x0303, "TLS_1_3": 0x0304,
}
_NOT_OPTIONS = {"IPPROTO_TLS", "AF_HOSTNAME", "TCP_UPGRADE_TLS", "TLS_1_2", "TLS_1_3"}


def public_name(option: TLSOption) -> str:
    return "TLS_0RTT" if option is TLSOption.ZERO_RTT else f"TLS_{option.name}"


def test_option_numbers_match_the_pinned_list() -> None:
    pinned_options = {k: v for k, v in PINNED.items() if k not in _NOT_OPTIONS}
    assert {public_name(o): int(o) for o in TLSOption} == pinned_options
    assert opt.IPPROTO_TLS == PINNED["IPPROTO_TLS"]
    assert opt.AF_HOSTNAME == PINNED["AF_HOSTNAME"]
    assert opt.TCP_UPGRADE_TLS == PINNED["TCP_UPGRADE_TLS"]
    assert opt.TLS_1_2 == PINNED["TLS_1_2"]
    assert opt.TLS_1_3 == PINNED["TLS_1_3"]


def test_public_constants_match_the_pinned_list() -> None:
    from ssa_engine.api import constants

    for name, number in PINNED.items():
        assert getattr(constants, name) == number, name
        assert name in constants.__all__


def test_every_option_has_a_spec() -> None:
    assert set(OPTIONS) == set(TLSOption)
    for option, spec in OPTIONS.items():
        assert isinstance(spec.kind, Kind)
        assert spec.access in (Access.SET, Access.GET, Access.BOTH), option
        # the engine's hot path reads these plain booleans: they must agree
        assert spec.settable is (Access.SET in spec.access), option
        assert spec.gettable is (Access.GET in spec.access), option
        assert spec.is_int is (spec.kind is Kind.INT), option
    # read-only information is never settable
    for option in (TLSOption.PEER_IDENTITY, TLSOption.PEER_CERTIFICATE_CHAIN, TLSOption.ID,
                   TLSOption.TRUSTED_CIPHERS, TLSOption.CHOSEN_CIPHER, TLSOption.ERROR,
                   TLSOption.RESUMED_SESSION, TLSOption.VERSION_CONN):
        assert OPTIONS[option].access is Access.GET, option
    # keys and certificates are never readable back
    for option in (TLSOption.PRIVATE_KEY, TLSOption.CERTIFICATE_CHAIN,
                   TLSOption.TRUSTED_PEER_CERTIFICATES):
        assert OPTIONS[option].access is Access.SET, option
        assert OPTIONS[option].kind is Kind.BYTES


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.sampled_from(sorted(TLSOption)), st.integers(-(1 << 40), 1 << 40)))
def test_lookup_agrees_with_the_table(number: int) -> None:
    found = opt.lookup(number)
    if number in {int(o) for o in TLSOption}:
        assert found == (TLSOption(number), OPTIONS[TLSOption(number)])
    else:
        assert found is None


def test_doc_option_table_matches_the_code() -> None:
    rows = _doc_table("table: options")
    got = {int(r[0]): (r[1].strip("`"), r[2], r[3], r[4]) for r in rows}
    access = {Access.SET: "set", Access.GET: "get", Access.BOTH: "set, get"}
    expected = {
        int(o): (public_name(o), s.kind.value, access[s.access], "yes" if s.implemented else "no")
        for o, s in OPTIONS.items()
    }
    assert got == expected


def test_forwarded_options_are_linux_numbers_and_documented() -> None:
    assert opt.SOL_SOCKET == socket.SOL_SOCKET
    assert opt.IPPROTO_TCP == socket.IPPROTO_TCP
    linux = {name: getattr(socket, name) for name in (
        "SO_REUSEADDR", "SO_KEEPALIVE", "SO_SNDBUF", "SO_RCVBUF", "SO_LINGER", "SO_REUSEPORT",
        "TCP_NODELAY", "TCP_MAXSEG", "TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT",
        "TCP_QUICKACK", "TCP_USER_TIMEOUT")}
    for name, number in linux.items():
        assert getattr(opt, name) == number, name
    levels = {"`SOL_SOCKET` (1)": opt.SOL_SOCKET, "`IPPROTO_TCP` (6)": opt.IPPROTO_TCP}
    rows = _doc_table("table: forwarded")
    documented = set()
    for level, name, number, _value in rows:
        assert linux[name.strip("`")] == int(number)
        documented.add((levels[level], int(number)))
    assert documented == set(opt.FORWARDED_OPTIONS)


def _doc_table(marker: str) -> list[list[str]]:
    lines = DOC.read_text(encoding="utf-8").split(f"<!-- {marker} -->", 1)[1].splitlines()[1:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows[2:]


# -- (e) descriptors travel with their frames ----------------------------------------------


def _marked_pair(marker: bytes) -> tuple[int, int]:
    """A socketpair whose first end will read ``marker``: (end to pass, end to close)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.sendall(marker)
    b.shutdown(socket.SHUT_WR)
    return a.detach(), b.detach()


def _read_marker(fd: int) -> bytes:
    with socket.socket(fileno=fd) as s:
        s.settimeout(5)
        out = b""
        while chunk := s.recv(64):
            out += chunk
        return out


_EVENT = st.one_of(
    st.builds(lambda n: ("accepted", n), st.integers(1, 1 << 40)),
    st.just(("closed", 0)),
    st.just(("ok", 0)),
)


@settings(FUZZ, max_examples=60)
@given(st.lists(_EVENT, min_size=1, max_size=8), st.lists(st.integers(1, 200), max_size=8),
       st.booleans())
def test_client_matches_descriptors_to_accepted_frames(events: list[tuple[str, int]],
                                                       cuts: list[int], glue: bool) -> None:
    """Each ACCEPTED gets its own two descriptors, data first, whatever the splitting,
    also when it arrives while the client waits for the reply to a request."""
    from ssa_engine.api.control import ControlChannel

    engine_end, app_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = ControlChannel.adopt(app_end)
    to_close: list[int] = []
    expected: list[int] = []
    try:
        # one write per frame (as the engine does), each frame cut at ``cuts``;
        # a frame's descriptors go with the sendmsg holding its first byte. With
        # ``glue``, frames without descriptors are sent together with the
        # following frame's first piece.
        pending = b""
        for kind, number in events:
            if kind == "accepted":
                message: Message = Accepted(socket_id=number, local_host="127.0.0.1",
                                            local_port=8443, peer_host="::1", peer_port=1)
                data_fd, data_other = _marked_pair(b"data-%d" % number)
                ctl_fd, ctl_other = _marked_pair(b"ctl-%d" % number)
                to_close += [data_fd, data_other, ctl_fd, ctl_other]
                fds = [data_fd, ctl_fd]
                expected.append(number)
            else:
                message = Closed(errno=0) if kind == "closed" else Ok()
                fds = []
            first = len(pending)  # where this frame starts in what is sent next
            frame = pending + encode(message)
            pending = b""
            if not fds and glue:
                pending = frame
                continue
            span = max(len(frame) - first, 1)
            points = sorted({first + 1 + c % span for c in cuts} | {len(frame)})
            start = 0
            for end in points:
                piece = frame[start:end]
                if start == 0 and fds:
                    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                    assert engine_end.sendmsg([piece], anc) == len(piece)
                else:
                    engine_end.sendall(piece)
                start = end
        if pending:
            engine_end.sendall(pending)
        # the OKs are replies to requests the client waits for: ACCEPTED and
        # CLOSED frames that come before them are set aside (section 6.2)
        for kind, _ in events:
            if kind == "ok":
                assert channel.reply(timeout=5) == Ok()
        got = []
        for number in expected:
            info, data_fd, ctl_fd = channel.wait_accepted(timeout=5)
            got.append(info.socket_id)
            assert _read_marker(data_fd) == b"data-%d" % number
            assert _read_marker(ctl_fd) == b"ctl-%d" % number
        assert got == expected
        channel.poll()  # a CLOSED behind the last frame waited for
        assert not channel.accepted
        assert (channel.closed_event is not None) == any(k == "closed" for k, _ in events)
    finally:
        channel.close()
        engine_end.close()
        for fd in to_close:
            try:
                os.close(fd)
            except OSError:
                pass
