"""The control-channel codec against docs/protocol.md, byte for byte.

The spec's tables and worked examples are parsed out of docs/protocol.md and
compared with the code, so that neither can drift from the other. A second,
independent encoder written from the spec's rules (struct only) checks the
real encoder on every message type.
"""

from __future__ import annotations

import dataclasses
import errno
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from ssa_engine.protocol import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    MAX_STRING,
    REQUEST_TYPES,
    Accepted,
    AcmeChallenge,
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
    ReloadRequest,
    SetSockOpt,
    SocketRequest,
    StatusReply,
    StatusRequest,
    Upgrade,
    decode_payload,
    encode,
)
from ssa_engine.protocol import codec as codec_module
from ssa_engine.protocol import messages as messages_module
from ssa_engine.protocol.codec import MAX_BUFFER
from ssa_engine.protocol.errors import (
    ERRNO_MEANINGS,
    FrameError,
    FrameTooLarge,
    MalformedField,
    ProtocolError,
    UnknownMessage,
    VersionMismatch,
)
from ssa_engine.protocol.messages import FIELD_KINDS, MESSAGE_TYPES, FieldKind, FieldTag

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

# One instance of every message type, with every optional field present.
SAMPLES: list[Message] = [
    Hello(version_min=1, version_max=3),
    SocketRequest(family=2, socktype=1, proto=205),
    SetSockOpt(level=205, optname=85, value=b"www.example.com"),
    SetSockOpt(level=205, optname=111, int_value=-(2**63)),
    GetSockOpt(level=6, optname=1, buflen=4),
    Connect(host="www.example.com", port=443, filler=2068160),
    Bind(host="::1", port=8443),
    Listen(backlog=4096),
    Upgrade(host="mail.example.com"),
    StatusRequest(),
    ReloadRequest(),
    AcmeChallenge(host="example.com", port=443, value=b"PEM"),
    HelloOk(version=1, software="ssa-engine 0.1.0"),
    Ok(value=b"\x00\xff", int_value=2**63 - 1, socket_id=2**64 - 1),
    Error(errno=errno.EPROTO, message="certificate verify failed: ünïcode ✓"),
    Connected(local_host="::1", local_port=50312, peer_host="203.0.113.5", peer_port=443),
    ConnectFailed(errno=errno.ECONNREFUSED, message="cannot connect to exämple.org port 443"),
    Bound(local_host="::", local_port=65535),
    Accepted(socket_id=2**64 - 1, local_host="192.0.2.10", local_port=8443,
             peer_host="2001:db8::7", peer_port=50312),
    Closed(errno=0, message=""),
    StatusReply(document='{"engine": "ssa-engine 0.1.0"}'),
]

# The same types with every optional field absent.
MINIMAL: list[Message] = [
    SetSockOpt(level=1, optname=9, int_value=1),
    GetSockOpt(level=205, optname=96),
    Connect(host="h", port=1),
    Bind(host="", port=0),
    Listen(backlog=0),
    Upgrade(host=""),  # the server role
    Bound(local_host="0.0.0.0", local_port=1),
    Accepted(socket_id=0, local_host="", local_port=0, peer_host="", peer_port=0),
    HelloOk(version=1),
    Ok(),
    Error(errno=errno.EINVAL),
    ConnectFailed(errno=errno.EHOSTUNREACH),
    Closed(errno=errno.ECONNRESET),
]

EXAMPLES: dict[str, Message] = {
    "hello": Hello(version_min=1, version_max=1),
    "setsockopt-remote-hostname": SetSockOpt(level=205, optname=85, value=b"www.example.com"),
    "setsockopt-version-min": SetSockOpt(level=205, optname=111, int_value=0x0304),
    "ok-empty": Ok(),
    "connect": Connect(host="www.example.com", port=443),
    "connect-failed": ConnectFailed(errno=errno.ECONNREFUSED, message="connection refused"),
    "bind": Bind(host="", port=8443),
    "bound": Bound(local_host="0.0.0.0", local_port=8443),
    "listen": Listen(backlog=128),
    "accepted": Accepted(socket_id=9, local_host="192.0.2.10", local_port=8443,
                         peer_host="198.51.100.7", peer_port=50312),
}


# -- helpers ---------------------------------------------------------------------


def frame(msg_type: int, payload: bytes = b"", reserved: int = 0, length: int | None = None) -> bytes:
    """A frame built by hand from the spec's header layout."""
    size = len(payload) if length is None else length
    return struct.pack("!IHH", size, msg_type, reserved) + payload


def field(tag: int, raw: bytes, vlen: int | None = None) -> bytes:
    return struct.pack("!HI", tag, len(raw) if vlen is None else vlen) + raw


_SPEC_INT = {"u16": "!H", "u32": "!I", "u64": "!Q", "i64": "!q"}


def spec_encode(message: Message) -> bytes:
    """An independent encoder written from docs/protocol.md sections 3-5."""
    kinds = doc_field_tags()
    fields_doc = doc_message_fields()[type(message).TYPE.name]
    payload = b""
    for tag, name, _kind, _required, _default in sorted(fields_doc):
        value = getattr(message, _attr_for(message, name))
        if value is None:
            continue
        kind = kinds[tag][1]
        if kind in _SPEC_INT:
            raw = struct.pack(_SPEC_INT[kind], value)
        elif kind == "str":
            raw = value.encode("utf-8")
        else:
            raw = value
        payload += field(tag, raw)
    return frame(int(type(message).TYPE), payload)


def _attr_for(message: Message, tag_name: str) -> str:
    for f in dataclasses.fields(message):  # type: ignore[arg-type]
        if f.metadata["tag"].name == tag_name:
            return f.name
    raise AssertionError(f"{type(message).__name__} has no field for {tag_name}")


def decode_all(data: bytes, chunk: int | None = None) -> list[Message]:
    decoder = Decoder()
    out: list[Message] = []
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        decoder.receive_data(data[i : i + step])
        out.extend(decoder.messages())
    assert decoder.buffered == 0
    return out


def decode_one(data: bytes) -> Message:
    (message,) = decode_all(data)
    return message


# -- parsing docs/protocol.md ------------------------------------------------------


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def doc_table(marker: str) -> list[list[str]]:
    """Rows (cells stripped) of the markdown table after ``<!-- marker -->``."""
    text = _doc()
    start = text.index(f"<!-- {marker} -->")
    rows: list[list[str]] = []
    lines = text[start:].splitlines()[1:]
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append(cells)
    assert len(rows) >= 2, f"no table after {marker}"
    header, rule, *body = rows
    assert all(set(c) <= set("-:") for c in rule)
    return body


def _name(cell: str) -> str:
    return cell.strip("`")


def doc_field_tags() -> dict[int, tuple[str, str]]:
    return {int(r[0]): (_name(r[1]), r[2]) for r in doc_table("table: field-tags")}


def doc_message_fields() -> dict[str, list[tuple[int, str, str, bool, str | None]]]:
    """message name -> [(tag, tag name, kind, required, default text)]."""
    out = {}
    for name in MessageType.__members__:
        rows = []
        for r in doc_table(f"fields: {name}"):
            presence = r[3]
            m = re.fullmatch(r"optional \((.*)\)", presence)
            assert presence == "required" or m, presence
            rows.append((int(r[0]), _name(r[1]), r[2], presence == "required", m and m.group(1)))
        out[name] = rows
    return out


def doc_examples() -> dict[str, bytes]:
    text = _doc()
    found = {}
    pattern = r"<!-- wire-example: ([\w-]+) -->\s*```text\n(.*?)```"
    for name, block in re.findall(pattern, text, flags=re.S):
        hex_part = "".join(line.split("|", 1)[0] for line in block.splitlines())
        found[name] = bytes.fromhex(hex_part)
    return found


# -- round trips ---------------------------------------------------------------------


def test_samples_cover_every_message_type() -> None:
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES.values())
    assert {m.TYPE for m in SAMPLES} == set(MessageType)


@pytest.mark.parametrize("message", SAMPLES + MINIMAL, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    data = encode(message)
    length, msg_type, reserved = struct.unpack_from("!IHH", data)
    assert (length, msg_type, reserved) == (len(data) - HEADER_SIZE, message.TYPE, 0)
    assert decode_payload(msg_type, data[HEADER_SIZE:]) == message
    assert decode_payload(msg_type, memoryview(data)[HEADER_SIZE:]) == message
    assert decode_one(data) == message


@pytest.mark.parametrize("message", SAMPLES + MINIMAL, ids=lambda m: type(m).__name__)
def test_real_encoder_matches_the_spec_encoder(message: Message) -> None:
    assert encode(message) == spec_encode(message)


def test_fields_in_any_order_are_accepted() -> None:
    payload = field(FieldTag.PORT, struct.pack("!H", 443)) + field(FieldTag.HOST, b"example.org")
    assert decode_one(frame(MessageType.CONNECT, payload)) == Connect(host="example.org", port=443)


@pytest.mark.parametrize(
    ("msg_type", "payload", "expected"),
    [
        (MessageType.GETSOCKOPT,
         field(7, struct.pack("!I", 205)) + field(8, struct.pack("!I", 96)),
         GetSockOpt(level=205, optname=96, buflen=0)),
        (MessageType.CONNECT,
         field(12, b"h") + field(13, struct.pack("!H", 1)),
         Connect(host="h", port=1, filler=0)),
        (MessageType.HELLO_OK, field(3, struct.pack("!H", 1)), HelloOk(version=1, software="")),
        (MessageType.ERROR, field(15, struct.pack("!I", 22)), Error(errno=22, message="")),
        (MessageType.CONNECT_FAILED, field(15, struct.pack("!I", 111)),
         ConnectFailed(errno=111, message="")),
        (MessageType.CLOSED, field(15, struct.pack("!I", 0)), Closed(errno=0, message="")),
        (MessageType.OK, b"", Ok(value=None, int_value=None, socket_id=None)),
        # an empty HOST is valid in BIND (every address), unlike in CONNECT
        (MessageType.BIND, field(12, b"") + field(13, struct.pack("!H", 0)),
         Bind(host="", port=0)),
        (MessageType.LISTEN, field(24, struct.pack("!I", 0)), Listen(backlog=0)),
    ],
)
def test_absent_optional_fields_take_their_defaults(msg_type: int, payload: bytes,
                                                    expected: Message) -> None:
    assert decode_one(frame(msg_type, payload)) == expected


def test_empty_value_is_present_and_distinct_from_absent() -> None:
    with_empty = decode_one(frame(MessageType.OK, field(FieldTag.VALUE, b"")))
    assert with_empty == Ok(value=b"")
    assert with_empty != Ok()
    assert encode(Ok(value=b"")) == frame(MessageType.OK, field(FieldTag.VALUE, b""))


def test_bytes_values_may_contain_nul() -> None:
    m = SetSockOpt(level=1, optname=13, value=b"\x01\x00\x00\x00\x05\x00\x00\x00")
    assert decode_one(encode(m)) == m


def test_decoder_one_byte_at_a_time() -> None:
    stream = b"".join(encode(m) for m in SAMPLES)
    decoder = Decoder()
    out: list[Message] = []
    for i in range(len(stream)):
        decoder.receive_data(stream[i : i + 1])
        got = list(decoder.messages())
        out.extend(got)
        if got:  # a frame completes on its last byte, leaving nothing behind
            assert decoder.buffered == 0
    assert out == SAMPLES
    assert decoder.buffered == 0
    assert decoder.next_message() is None


def test_message_completes_exactly_on_its_last_byte() -> None:
    data = encode(SAMPLES[0])
    decoder = Decoder()
    decoder.receive_data(data[:-1])
    assert decoder.next_message() is None
    assert decoder.buffered == len(data) - 1
    decoder.receive_data(data[-1:])
    assert decoder.next_message() == SAMPLES[0]
    assert decoder.buffered == 0


def test_many_frames_in_one_chunk() -> None:
    stream = b"".join(encode(m) for m in SAMPLES + MINIMAL)
    assert decode_all(stream) == SAMPLES + MINIMAL


def test_frames_split_across_chunks_with_a_partial_tail() -> None:
    first, second = encode(SAMPLES[1]), encode(SAMPLES[2])
    decoder = Decoder()
    decoder.receive_data(first + second[:5])
    assert decoder.next_message() == SAMPLES[1]
    assert decoder.next_message() is None
    assert decoder.buffered == 5
    decoder.receive_data(memoryview(second)[5:])
    assert list(decoder.messages()) == [SAMPLES[2]]


def test_decoder_accepts_bytearray_and_memoryview() -> None:
    data = encode(SAMPLES[5])
    for chunk in (bytearray(data), memoryview(data)):
        decoder = Decoder()
        decoder.receive_data(chunk)
        assert decoder.next_message() == SAMPLES[5]


# -- the worked examples in docs/protocol.md ----------------------------------------------


def test_doc_has_exactly_the_tested_examples() -> None:
    assert set(doc_examples()) == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_doc_example_bytes_are_exact(name: str) -> None:
    data = doc_examples()[name]
    assert data == encode(EXAMPLES[name])
    assert decode_one(data) == EXAMPLES[name]


def test_doc_examples_literal() -> None:
    # the same bytes as literals, so that changing the doc and the encoder
    # together still shows up here
    assert encode(EXAMPLES["hello"]) == bytes.fromhex(
        "00000010 0001 0000"
        "0001 00000002 0001"
        "0002 00000002 0001"
    )
    assert encode(EXAMPLES["setsockopt-remote-hostname"]) == bytes.fromhex(
        "00000029 0003 0000"
        "0007 00000004 000000cd"
        "0008 00000004 00000055"
        "0009 0000000f 7777772e6578616d706c652e636f6d"
    )
    assert encode(EXAMPLES["setsockopt-version-min"]) == bytes.fromhex(
        "00000022 0003 0000"
        "0007 00000004 000000cd"
        "0008 00000004 0000006f"
        "000a 00000008 0000000000000304"
    )
    assert encode(EXAMPLES["ok-empty"]) == bytes.fromhex("00000000 0021 0000")
    assert encode(EXAMPLES["connect"]) == bytes.fromhex(
        "00000027 0005 0000"
        "000c 0000000f 7777772e6578616d706c652e636f6d"
        "000d 00000002 01bb"
        "000e 00000004 00000000"
    )
    assert encode(EXAMPLES["connect-failed"]) == bytes.fromhex(
        "00000022 0024 0000"
        "000f 00000004 0000006f"
        "0010 00000012 636f6e6e656374696f6e2072656675736564"
    )
    assert encode(EXAMPLES["bind"]) == bytes.fromhex(
        "0000000e 0006 0000"
        "000c 00000000"
        "000d 00000002 20fb"
    )
    assert encode(EXAMPLES["bound"]) == bytes.fromhex(
        "00000015 0025 0000"
        "0012 00000007 302e302e302e30"
        "0013 00000002 20fb"
    )
    assert encode(EXAMPLES["listen"]) == bytes.fromhex(
        "0000000a 0007 0000"
        "0018 00000004 00000080"
    )
    assert encode(EXAMPLES["accepted"]) == bytes.fromhex(
        "00000040 0026 0000"
        "0011 00000008 0000000000000009"
        "0012 0000000a 3139322e302e322e3130"
        "0013 00000002 20fb"
        "0014 0000000c 3139382e35312e3130302e37"
        "0015 00000002 c488"
    )


# -- the spec's tables against the code ------------------------------------------------------


def test_doc_contents_and_section_references_point_at_real_sections() -> None:
    text = _doc()
    headings = re.findall(r"^## (\d+)\. (.+)$", text, flags=re.M)
    numbers = [int(n) for n, _ in headings]
    assert numbers == list(range(1, len(numbers) + 1))
    # the contents list: one entry per section, with the anchor GitHub makes
    contents = re.findall(r"^(\d+)\. \[(.+)\]\(#([\w-]+)\)$", text, flags=re.M)
    assert [(int(n), title) for n, title, _ in contents] == [(int(n), t) for n, t in headings]
    anchors = set()
    for n, title in headings:
        anchor = re.sub(r"[^\w\- ]", "", f"{n}. {title}".lower()).replace(" ", "-")
        anchors.add(anchor)
    assert {a for _, _, a in contents} == anchors
    assert set(re.findall(r"\]\(#([\w-]+)\)", text)) <= anchors
    # "section N" and "section N.M" (not ARCHITECTURE.md's or an RFC's) exist here
    subsections = set(re.findall(r"^### (\d+\.\d+) ", text, flags=re.M))
    for match in re.finditer(r"(\S+ \S+ )?section (\d+(?:\.\d+)?)", text):
        before, ref = match.group(1) or "", match.group(2)
        if "ARCHITECTURE.md" in before or "RFC" in before:
            continue
        if "." in ref:
            assert ref in subsections, match.group(0)
        else:
            assert int(ref) in numbers, match.group(0)


def test_doc_field_tag_table_matches_the_code() -> None:
    expected = {int(t): (t.name, FIELD_KINDS[t].value) for t in FieldTag}
    assert doc_field_tags() == expected


def test_doc_message_type_table_matches_the_code() -> None:
    rows = doc_table("table: message-types")
    got = {int(r[0]): (_name(r[1]), r[2], int(r[3])) for r in rows}
    expected = {}
    for t in MessageType:
        direction = "app → engine" if t < 32 else "engine → app"
        expected[int(t)] = (t.name, direction, MESSAGE_TYPES[t].FD_COUNT)
    assert got == expected


def test_message_type_ranges() -> None:
    # docs: 1-31 requests, 32-47 replies and results (and ACCEPTED, an event),
    # 48+ events and admin replies
    requests = {MessageType.HELLO, MessageType.SOCKET, MessageType.SETSOCKOPT,
                MessageType.GETSOCKOPT, MessageType.CONNECT, MessageType.BIND,
                MessageType.LISTEN, MessageType.UPGRADE, MessageType.STATUS,
                MessageType.RELOAD, MessageType.ACME_CHALLENGE}
    assert {t for t in MessageType if t < 32} == requests
    assert {t for t in MessageType if 32 <= t < 48} == {
        MessageType.HELLO_OK, MessageType.OK, MessageType.ERROR, MessageType.CONNECTED,
        MessageType.CONNECT_FAILED, MessageType.BOUND, MessageType.ACCEPTED}
    assert {t for t in MessageType if t >= 48} == {MessageType.CLOSED, MessageType.STATUS_REPLY}
    assert int(MessageType.CONNECT_FAILED) == 36
    assert MESSAGE_TYPES[MessageType.CONNECT_FAILED] is ConnectFailed
    numbers = {MessageType.BIND: 6, MessageType.LISTEN: 7, MessageType.UPGRADE: 8,
               MessageType.BOUND: 37, MessageType.ACCEPTED: 38}
    for t, number in numbers.items():
        assert int(t) == number
    assert MESSAGE_TYPES[MessageType.BIND] is Bind
    assert MESSAGE_TYPES[MessageType.LISTEN] is Listen
    assert MESSAGE_TYPES[MessageType.BOUND] is Bound
    assert MESSAGE_TYPES[MessageType.ACCEPTED] is Accepted
    assert MESSAGE_TYPES[MessageType.UPGRADE] is Upgrade


def test_fd_counts() -> None:
    # docs section 7: CONNECT and LISTEN carry 1 descriptor, UPGRADE and ACCEPTED 2,
    # nothing else any
    counts = {t: MESSAGE_TYPES[t].FD_COUNT for t in MessageType}
    assert {t: n for t, n in counts.items() if n} == {
        MessageType.CONNECT: 1, MessageType.LISTEN: 1, MessageType.UPGRADE: 2,
        MessageType.ACCEPTED: 2}
    assert Upgrade.FD_COUNT == 2
    assert Connect.FD_COUNT == Listen.FD_COUNT == 1
    assert Accepted.FD_COUNT == 2
    assert Bind.FD_COUNT == Bound.FD_COUNT == Message.FD_COUNT == 0
    # the app sends descriptors only with requests, the engine only with ACCEPTED
    assert {t for t, n in counts.items() if n and t < 32} <= REQUEST_TYPES
    assert {t for t, n in counts.items() if n and t >= 32} == {MessageType.ACCEPTED}
    # an instance says the same as its class (ClassVar, not a field)
    assert Accepted(socket_id=1, local_host="a", local_port=1, peer_host="b",
                    peer_port=2).FD_COUNT == 2
    assert "FD_COUNT" not in {f.name for f in dataclasses.fields(Accepted)}


def test_doc_fd_passing_table_matches_fd_counts() -> None:
    text = _doc()
    section = text[text.index("## 7. File descriptor passing"):text.index("## 8. ")]
    table = section[section.index("| frame | direction |"):]
    rows = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        count = int(cells[2].split(":", 1)[0])
        rows[MessageType[_name(cells[0])]] = (cells[1], count)
    expected = {}
    for t in MessageType:
        if MESSAGE_TYPES[t].FD_COUNT:
            direction = "app → engine" if t < 32 else "engine → app"
            expected[t] = (direction, MESSAGE_TYPES[t].FD_COUNT)
    assert rows == expected


def test_doc_section_headings_carry_the_fd_counts() -> None:
    # "### 5.n NAME (type), ..., carries N file descriptor(s)" exactly when FD_COUNT > 0
    headings = re.findall(r"^### 5\.\d+ (\w+) \((\d+)\), (.*)$", _doc(), flags=re.M)
    assert {MessageType[name] for name, _, _ in headings} == set(MessageType)
    for name, number, rest in headings:
        t = MessageType[name]
        assert int(number) == int(t)
        m = re.search(r"carries (\d+) file descriptors?", rest)
        assert (int(m.group(1)) if m else 0) == MESSAGE_TYPES[t].FD_COUNT, name
        assert rest.startswith("app → engine" if t < 32 else "engine → app"), name


def test_request_types_are_exactly_the_app_to_engine_types() -> None:
    # the engine refuses every other type as a protocol error (docs section 14)
    assert isinstance(REQUEST_TYPES, frozenset)
    assert REQUEST_TYPES == {t for t in MessageType if t < 32}
    assert REQUEST_TYPES <= set(MESSAGE_TYPES)
    rows = doc_table("table: message-types")
    documented = {MessageType(int(r[0])) for r in rows if r[2] == "app → engine"}
    assert documented == REQUEST_TYPES
    for t in REQUEST_TYPES:
        assert MESSAGE_TYPES[t].TYPE is t


def test_connect_failed_has_the_fields_of_error_and_its_own_type() -> None:
    failed = ConnectFailed(errno=errno.ETIMEDOUT, message="TLS handshake timeout")
    as_error = Error(errno=errno.ETIMEDOUT, message="TLS handshake timeout")
    assert [f.name for f in dataclasses.fields(ConnectFailed)] == ["errno", "message"]
    assert ConnectFailed.WIRE == Error.WIRE
    assert encode(failed)[HEADER_SIZE:] == encode(as_error)[HEADER_SIZE:]
    assert encode(failed)[4:6] == b"\x00\x24" and encode(as_error)[4:6] == b"\x00\x22"
    assert decode_one(encode(failed)) == failed
    assert decode_one(encode(failed)) != as_error
    assert ConnectFailed(errno=1) == ConnectFailed(errno=1, message="")
    with pytest.raises(MalformedField, match="missing"):
        decode_one(frame(MessageType.CONNECT_FAILED, field(16, b"no errno")))
    with pytest.raises(MalformedField, match="not part of"):
        decode_one(frame(MessageType.CONNECT_FAILED,
                         field(15, bytes(4)) + field(FieldTag.DOCUMENT, b"{}")))


def _doc_answers() -> dict[MessageType, set[MessageType]]:
    """request type -> the frame types that may answer it ("answered by" column)."""
    answers = {}
    for row in doc_table("table: message-types"):
        t = MessageType(int(row[0]))
        if t < 32:
            names = set(re.findall(r"`(\w+)`", row[5]))
            answers[t] = {MessageType[n] for n in names if n in MessageType.__members__}
    return answers


def test_every_request_has_documented_answers() -> None:
    answers = _doc_answers()
    assert set(answers) == {t for t in MessageType if t < 32}
    assert set(answers) == REQUEST_TYPES
    for request, replies in answers.items():
        assert replies, request
        assert all(r >= 32 for r in replies)
        assert replies & {MessageType.ERROR, MessageType.CONNECT_FAILED}  # every request can fail
    assert answers[MessageType.CONNECT] == {MessageType.CONNECTED, MessageType.CONNECT_FAILED}
    assert answers[MessageType.UPGRADE] == answers[MessageType.CONNECT]
    assert answers[MessageType.STATUS] >= {MessageType.STATUS_REPLY}
    assert answers[MessageType.BIND] == {MessageType.BOUND, MessageType.ERROR}
    assert answers[MessageType.LISTEN] == {MessageType.BOUND, MessageType.ERROR}


def test_events_never_answer_a_request() -> None:
    # CLOSED and ACCEPTED are set aside whenever they come (docs section 6.2):
    # no request may be answered by them
    answers = _doc_answers()
    replies = set().union(*answers.values())
    assert not replies & {MessageType.CLOSED, MessageType.ACCEPTED}
    rows = {MessageType(int(r[0])): r[4] for r in doc_table("table: message-types")}
    assert rows[MessageType.ACCEPTED].startswith("event")
    assert rows[MessageType.CLOSED].startswith("event")


def test_deferred_connect_reply_is_distinguishable() -> None:
    # Replies to requests sent while CONNECTING may come before or after the
    # CONNECT reply: the frame types that can answer CONNECT must therefore
    # be disjoint from those that answer any other request. UPGRADE shares
    # them: it is a CONNECT on the application's TCP socket, and a socket has
    # at most one of the two outstanding (both only in state CREATED).
    answers = _doc_answers()
    deferred = (MessageType.CONNECT, MessageType.UPGRADE)
    others = set().union(*(v for k, v in answers.items() if k not in deferred))
    assert not answers[MessageType.CONNECT] & others
    assert not answers[MessageType.UPGRADE] & others


def test_doc_message_field_tables_match_the_dataclasses() -> None:
    tags = doc_field_tags()
    for name, rows in doc_message_fields().items():
        cls = MESSAGE_TYPES[MessageType[name]]
        expected = []
        for f in dataclasses.fields(cls):
            tag = f.metadata["tag"]
            required = f.default is dataclasses.MISSING
            if required:
                default = None
            elif f.default is None:
                default = "absent"
            elif f.default == "":
                default = 'default ""'
            else:
                default = f"default {f.default}"
            expected.append((int(tag), tag.name, FIELD_KINDS[tag].value, required, default))
        assert sorted(rows) == sorted(expected), name
        for tag, tag_name, kind, _, _ in rows:
            assert tags[tag] == (tag_name, kind)


def test_doc_limits_table_matches_the_code() -> None:
    from ssa_engine.daemon.listener import MAX_HANDSHAKES
    from ssa_engine.daemon.session import MAX_FDS, MAX_QUEUED_REPLIES

    rows = {_name(r[0]): int(r[1]) for r in doc_table("table: limits")}
    where = {_name(r[0]): _name(r[2]) for r in doc_table("table: limits")}
    assert where["MAX_STRING"] == "protocol/messages.py"
    assert where["MAX_PAYLOAD"] == where["MAX_BUFFER"] == "protocol/codec.py"
    assert where["MAX_FDS"] == where["MAX_QUEUED_REPLIES"] == "daemon/session.py"
    assert where["MAX_HANDSHAKES"] == "daemon/listener.py"
    assert rows == {
        "HEADER_SIZE": HEADER_SIZE,
        "MAX_PAYLOAD": MAX_PAYLOAD,
        "MAX_STRING": MAX_STRING,
        "MAX_BUFFER": MAX_BUFFER,
        "MAX_FDS": MAX_FDS,
        "MAX_QUEUED_REPLIES": MAX_QUEUED_REPLIES,
        "MAX_HANDSHAKES": MAX_HANDSHAKES,
    }
    # every descriptor-carrying frame fits in one engine recvmsg
    assert max(cls.FD_COUNT for cls in MESSAGE_TYPES.values()) <= MAX_FDS
    assert HEADER_SIZE == 8
    assert MAX_BUFFER == MAX_PAYLOAD + HEADER_SIZE


def test_doc_errno_table_matches_errno_meanings() -> None:
    rows = doc_table("table: errno")
    got = {getattr(errno, _name(r[0])): (int(r[1]), r[2]) for r in rows}
    assert got == {code: (code, text) for code, text in ERRNO_MEANINGS.items()}
    assert len(rows) == len(ERRNO_MEANINGS)


# -- errors: framing ---------------------------------------------------------------------------


def test_error_classes_and_errnos() -> None:
    for exc in (FrameTooLarge, UnknownMessage, MalformedField):
        assert issubclass(exc, FrameError)
        assert exc.errno_value in ERRNO_MEANINGS
    assert issubclass(FrameError, ProtocolError)
    assert issubclass(VersionMismatch, ProtocolError)
    assert FrameTooLarge.errno_value == errno.EMSGSIZE
    assert UnknownMessage.errno_value == errno.EBADMSG
    assert MalformedField.errno_value == errno.EBADMSG
    assert VersionMismatch.errno_value == errno.EPROTONOSUPPORT


def test_oversize_frame_is_refused_as_soon_as_the_header_arrives() -> None:
    header = frame(MessageType.SETSOCKOPT, length=MAX_PAYLOAD + 1)
    decoder = Decoder()
    for i in range(HEADER_SIZE - 1):
        decoder.receive_data(header[i : i + 1])
        assert decoder.next_message() is None
    with pytest.raises(FrameTooLarge) as info:
        decoder.receive_data(header[-1:])
    assert info.value.errno_value == errno.EMSGSIZE


def test_oversize_header_refused_by_next_message_too() -> None:
    decoder = Decoder()
    with pytest.raises(FrameTooLarge):
        decoder.receive_data(frame(MessageType.OK, length=0xFFFFFFFF))
    with pytest.raises(FrameTooLarge):
        decoder.next_message()


def test_oversize_header_after_a_complete_frame_in_the_same_chunk() -> None:
    # receive_data looks at the frame at the head of the buffer; the next
    # header is checked when the first frame has been taken out, still before
    # any of the oversize payload is needed
    decoder = Decoder()
    decoder.receive_data(encode(Ok()) + frame(MessageType.OK, length=MAX_PAYLOAD + 1))
    assert decoder.next_message() == Ok()
    with pytest.raises(FrameTooLarge):
        decoder.next_message()


def test_frame_of_exactly_max_payload_is_accepted_by_the_header_check() -> None:
    decoder = Decoder()
    decoder.receive_data(frame(MessageType.SETSOCKOPT, length=MAX_PAYLOAD))
    assert decoder.next_message() is None
    assert decoder.buffered == HEADER_SIZE


def test_encoder_refuses_an_oversize_payload() -> None:
    near = MAX_PAYLOAD - 30  # LEVEL and OPTNAME fields (20) + VALUE header (6)
    assert len(encode(SetSockOpt(level=205, optname=87, value=bytes(near + 4)))) == (
        HEADER_SIZE + MAX_PAYLOAD
    )
    with pytest.raises(FrameTooLarge):
        encode(SetSockOpt(level=205, optname=87, value=bytes(near + 5)))


@pytest.mark.parametrize("msg_type", [MessageType.OK, MessageType.BIND, MessageType.LISTEN,
                                      MessageType.BOUND, MessageType.ACCEPTED])
def test_nonzero_reserved_bits_refused_before_the_payload(msg_type: MessageType) -> None:
    for reserved in (1, 0x8000, 0xFFFF):
        decoder = Decoder()
        decoder.receive_data(frame(msg_type, reserved=reserved, length=100))
        with pytest.raises(MalformedField, match="reserved"):
            decoder.next_message()


@pytest.mark.parametrize("message", [m for m in SAMPLES + MINIMAL if m.TYPE in (
    MessageType.BIND, MessageType.LISTEN, MessageType.BOUND, MessageType.ACCEPTED)],
    ids=lambda m: type(m).__name__)
def test_headers_of_the_server_frames(message: Message) -> None:
    data = encode(message)
    assert data[4:6] == struct.pack("!H", int(message.TYPE))
    assert data[6:8] == b"\x00\x00"
    assert struct.unpack("!I", data[:4])[0] == len(data) - HEADER_SIZE
    # every field is written, in ascending tag order (no optional fields here)
    tags = []
    offset = HEADER_SIZE
    while offset < len(data):
        tag, vlen = struct.unpack_from("!HI", data, offset)
        tags.append(tag)
        offset += 6 + vlen
    assert offset == len(data)
    assert tags == sorted(int(tag) for _, tag, _ in message.WIRE)


def test_max_string_is_one_constant_everywhere() -> None:
    # moved to messages.py; still importable from codec for older code
    from ssa_engine.protocol.codec import MAX_STRING as from_codec  # type: ignore[attr-defined]

    assert MAX_STRING == messages_module.MAX_STRING == from_codec == 64 * 1024
    assert codec_module.MAX_PAYLOAD == MAX_PAYLOAD


def test_unknown_message_type() -> None:
    for msg_type in (0, 9, 15, 19, 31, 39, 47, 50, 0xFFFF):
        with pytest.raises(UnknownMessage):
            decode_one(frame(msg_type))
        with pytest.raises(UnknownMessage):
            decode_payload(msg_type, b"")


@pytest.mark.parametrize("length", [0, 1000, MAX_PAYLOAD])
@pytest.mark.parametrize("msg_type", [0, 9, 39, 999, 0xFFFF])
def test_unknown_type_refused_as_soon_as_the_header_arrives(msg_type: int, length: int) -> None:
    # no payload is buffered (nor waited for) for a type that cannot be decoded
    header = frame(msg_type, length=length)
    decoder = Decoder()
    for i in range(HEADER_SIZE - 1):
        decoder.receive_data(header[i : i + 1])
        assert decoder.next_message() is None
    with pytest.raises(UnknownMessage, match=f"unknown message type {msg_type}"):
        decoder.receive_data(header[-1:])
    assert UnknownMessage.errno_value == errno.EBADMSG


def test_unknown_type_refused_even_with_reserved_bits_set() -> None:
    decoder = Decoder()
    with pytest.raises(UnknownMessage):
        decoder.receive_data(frame(999, reserved=1, length=10))


def test_known_types_with_a_pending_payload_are_not_refused_at_the_header() -> None:
    for msg_type in MESSAGE_TYPES:
        decoder = Decoder()
        decoder.receive_data(frame(msg_type, length=100))
        assert decoder.next_message() is None
        assert decoder.buffered == HEADER_SIZE


def test_unknown_type_at_the_head_after_earlier_frames_were_taken() -> None:
    # the engine takes every complete frame out after each read: the next
    # read then finds the unknown header at the head of the buffer
    decoder = Decoder()
    decoder.receive_data(encode(Ok()) + frame(999, length=1000)[:5])
    assert decoder.next_message() == Ok()
    assert decoder.next_message() is None
    with pytest.raises(UnknownMessage):
        decoder.receive_data(frame(999, length=1000)[5:])


def test_unknown_type_behind_a_complete_frame_is_refused_without_its_payload() -> None:
    decoder = Decoder()
    decoder.receive_data(encode(Ok()) + frame(999, length=1000))
    assert decoder.next_message() == Ok()
    with pytest.raises(UnknownMessage):
        decoder.next_message()


def test_unknown_field_tag() -> None:
    for tag in (0, 26, 0xFFFF):
        with pytest.raises(MalformedField, match="unknown field tag"):
            decode_one(frame(MessageType.OK, field(tag, b"")))


def test_tag_not_part_of_this_message() -> None:
    payload = field(FieldTag.HOST, b"example.org")
    with pytest.raises(MalformedField, match="not part of"):
        decode_one(frame(MessageType.STATUS, payload))
    with pytest.raises(MalformedField, match="not part of"):
        decode_one(frame(MessageType.OK, field(FieldTag.ERRNO, struct.pack("!I", 1))))


@pytest.mark.parametrize(
    ("msg_type", "payload"),
    [
        # BACKLOG belongs to LISTEN only, HOST/PORT to CONNECT and BIND only
        (MessageType.BIND, field(12, b"") + field(13, b"\x00\x00") + field(24, bytes(4))),
        (MessageType.CONNECT, field(12, b"h") + field(13, b"\x00\x01") + field(24, bytes(4))),
        (MessageType.LISTEN, field(24, bytes(4)) + field(13, b"\x00\x01")),
        (MessageType.LISTEN, field(24, bytes(4)) + field(14, bytes(4))),  # no FILLER either
        (MessageType.BOUND, field(18, b"::") + field(19, b"\x00\x01") + field(17, bytes(8))),
        (MessageType.ACCEPTED, field(17, bytes(8)) + field(18, b"a") + field(19, b"\x00\x01")
         + field(20, b"b") + field(21, b"\x00\x02") + field(24, bytes(4))),
    ],
)
def test_new_tags_only_where_they_belong(msg_type: int, payload: bytes) -> None:
    with pytest.raises(MalformedField, match="not part of"):
        decode_one(frame(msg_type, payload))


def test_repeated_field() -> None:
    one = field(FieldTag.ERRNO, struct.pack("!I", 22))
    with pytest.raises(MalformedField, match="repeated"):
        decode_one(frame(MessageType.ERROR, one + one))
    with pytest.raises(MalformedField, match="repeated"):
        decode_one(frame(MessageType.OK, field(9, b"a") + field(10, bytes(8)) + field(9, b"a")))


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00",  # 1 byte of a 6-byte field header
        b"\x00\x0f\x00\x00\x00",  # 5 bytes of a field header
        field(FieldTag.ERRNO, b"\x00\x00", vlen=4),  # value runs past the frame
        field(FieldTag.ERRNO, struct.pack("!I", 1)) + b"\x00\x10",  # trailing bytes
        field(FieldTag.MESSAGE, b"", vlen=0xFFFFFFFF),
    ],
)
def test_truncated_field(payload: bytes) -> None:
    with pytest.raises(MalformedField):
        decode_one(frame(MessageType.ERROR, payload))


@pytest.mark.parametrize(
    ("msg_type", "tag", "size"),
    [
        (MessageType.HELLO_OK, FieldTag.VERSION, 0),
        (MessageType.HELLO_OK, FieldTag.VERSION, 1),
        (MessageType.HELLO_OK, FieldTag.VERSION, 4),
        (MessageType.ERROR, FieldTag.ERRNO, 2),
        (MessageType.ERROR, FieldTag.ERRNO, 8),
        (MessageType.OK, FieldTag.SOCKET_ID, 4),
        (MessageType.OK, FieldTag.INT_VALUE, 4),
        (MessageType.OK, FieldTag.INT_VALUE, 9),
        (MessageType.LISTEN, FieldTag.BACKLOG, 2),
        (MessageType.LISTEN, FieldTag.BACKLOG, 8),
        (MessageType.BIND, FieldTag.PORT, 4),
        (MessageType.BOUND, FieldTag.LOCAL_PORT, 4),
        (MessageType.ACCEPTED, FieldTag.SOCKET_ID, 4),
        (MessageType.ACCEPTED, FieldTag.PEER_PORT, 1),
    ],
)
def test_wrong_int_size(msg_type: int, tag: FieldTag, size: int) -> None:
    with pytest.raises(MalformedField, match="expected"):
        decode_one(frame(msg_type, field(tag, bytes(size))))


@pytest.mark.parametrize("raw", [b"\xff", b"\xc3", b"abc\xed\xa0\x80", b"\xc0\x80"])
def test_non_utf8_string(raw: bytes) -> None:
    payload = field(FieldTag.ERRNO, struct.pack("!I", 1)) + field(FieldTag.MESSAGE, raw)
    with pytest.raises(MalformedField, match="UTF-8"):
        decode_one(frame(MessageType.ERROR, payload))


def test_nul_in_string() -> None:
    payload = field(FieldTag.HOST, b"exa\x00mple.org") + field(FieldTag.PORT, b"\x01\xbb")
    with pytest.raises(MalformedField, match="NUL"):
        decode_one(frame(MessageType.CONNECT, payload))


def test_string_length_limit() -> None:
    ok = field(FieldTag.DOCUMENT, b"a" * MAX_STRING)
    assert decode_one(frame(MessageType.STATUS_REPLY, ok)) == StatusReply(document="a" * MAX_STRING)
    too_long = field(FieldTag.DOCUMENT, b"a" * (MAX_STRING + 1))
    with pytest.raises(MalformedField, match="longer"):
        decode_one(frame(MessageType.STATUS_REPLY, too_long))


def test_bytes_are_not_limited_by_max_string() -> None:
    m = SetSockOpt(level=205, optname=87, value=b"-" * (MAX_STRING * 2))
    assert decode_one(encode(m)) == m


@pytest.mark.parametrize(
    ("msg_type", "payload"),
    [
        (MessageType.HELLO, field(1, b"\x00\x01")),
        (MessageType.HELLO, b""),
        (MessageType.SOCKET, field(4, struct.pack("!I", 2)) + field(5, struct.pack("!I", 1))),
        (MessageType.CONNECT, field(13, b"\x01\xbb")),
        (MessageType.ERROR, field(16, b"no errno")),
        (MessageType.STATUS_REPLY, b""),
        (MessageType.CONNECTED, field(18, b"::1") + field(19, b"\x00\x01") + field(20, b"::1")),
        (MessageType.BIND, field(12, b"")),
        (MessageType.BIND, field(13, b"\x00\x00")),
        (MessageType.LISTEN, b""),
        (MessageType.BOUND, field(18, b"0.0.0.0")),
        (MessageType.ACCEPTED, field(18, b"a") + field(19, b"\x00\x01") + field(20, b"b")
         + field(21, b"\x00\x02")),  # no SOCKET_ID
    ],
)
def test_missing_required_field(msg_type: int, payload: bytes) -> None:
    with pytest.raises(MalformedField, match="missing"):
        decode_one(frame(msg_type, payload))


@pytest.mark.parametrize(
    ("msg_type", "payload"),
    [
        # VERSION_MIN above VERSION_MAX
        (MessageType.HELLO, field(1, b"\x00\x02") + field(2, b"\x00\x01")),
        # SETSOCKOPT with neither value, and with both
        (MessageType.SETSOCKOPT, field(7, bytes(4)) + field(8, bytes(4))),
        (MessageType.SETSOCKOPT, field(7, bytes(4)) + field(8, bytes(4)) + field(9, b"x")
         + field(10, bytes(8))),
        # empty HOST
        (MessageType.CONNECT, field(12, b"") + field(13, b"\x01\xbb")),
    ],
)
def test_value_rules_broken_on_the_wire(msg_type: int, payload: bytes) -> None:
    with pytest.raises(MalformedField):
        decode_one(frame(msg_type, payload))


# -- errors: the dataclasses refuse out-of-range values ------------------------------------------


_BAD_VALUES: list[tuple[str, type[Message], dict[str, Any]]] = [
    ("u16-negative", Hello, {"version_min": -1, "version_max": 1}),
    ("u16-too-big", Hello, {"version_min": 1, "version_max": 1 << 16}),
    ("hello-min-above-max", Hello, {"version_min": 2, "version_max": 1}),
    ("u32-too-big", SocketRequest, {"family": 1 << 32, "socktype": 1, "proto": 205}),
    ("u32-negative", SocketRequest, {"family": 2, "socktype": -1, "proto": 205}),
    ("setsockopt-no-value", SetSockOpt, {"level": 205, "optname": 85}),
    ("setsockopt-two-values", SetSockOpt,
     {"level": 205, "optname": 85, "value": b"x", "int_value": 1}),
    ("i64-too-big", SetSockOpt, {"level": 205, "optname": 111, "int_value": 1 << 63}),
    ("i64-too-small", SetSockOpt, {"level": 205, "optname": 111, "int_value": -(1 << 63) - 1}),
    ("int-is-bool", SetSockOpt, {"level": 205, "optname": 111, "int_value": True}),
    ("bytes-is-str", SetSockOpt, {"level": 205, "optname": 85, "value": "text"}),
    ("bytes-is-bytearray", SetSockOpt, {"level": 205, "optname": 85, "value": bytearray(b"x")}),
    ("u32-negative-buflen", GetSockOpt, {"level": 205, "optname": 85, "buflen": -1}),
    ("int-is-float", GetSockOpt, {"level": 205, "optname": 85.0}),
    ("empty-host", Connect, {"host": "", "port": 443}),
    ("port-too-big", Connect, {"host": "h", "port": 65536}),
    ("filler-too-big", Connect, {"host": "h", "port": 443, "filler": 1 << 32}),
    ("str-is-bytes", Connect, {"host": b"h", "port": 443}),
    ("str-is-int", HelloOk, {"version": 1, "software": 1}),
    ("u64-too-big", Ok, {"socket_id": 1 << 64}),
    ("u64-negative", Ok, {"socket_id": -1}),
    ("errno-negative", Error, {"errno": -1}),
    ("message-is-bytes", Error, {"errno": 1, "message": b"bytes"}),
    ("port-negative", Connected,
     {"local_host": "a", "local_port": -1, "peer_host": "b", "peer_port": 1}),
    ("errno-is-str", Closed, {"errno": "0"}),
    ("document-is-int", StatusReply, {"document": 1}),
    ("connect-failed-errno-negative", ConnectFailed, {"errno": -1}),
    ("connect-failed-errno-too-big", ConnectFailed, {"errno": 1 << 32}),
    ("connect-failed-message-is-bytes", ConnectFailed, {"errno": 1, "message": b"x"}),
    ("bind-port-too-big", Bind, {"host": "", "port": 65536}),
    ("bind-port-negative", Bind, {"host": "", "port": -1}),
    ("bind-host-is-bytes", Bind, {"host": b"::1", "port": 1}),
    ("bind-host-none", Bind, {"host": None, "port": 1}),
    ("bind-nul-in-host", Bind, {"host": "127.0.0.1\x00", "port": 1}),
    ("bind-host-too-long", Bind, {"host": "h" * (MAX_STRING + 1), "port": 1}),
    ("listen-backlog-negative", Listen, {"backlog": -1}),
    ("listen-backlog-too-big", Listen, {"backlog": 1 << 32}),
    ("listen-backlog-none", Listen, {"backlog": None}),
    ("listen-backlog-bool", Listen, {"backlog": True}),
    ("bound-port-too-big", Bound, {"local_host": "::", "local_port": 1 << 16}),
    ("bound-host-none", Bound, {"local_host": None, "local_port": 1}),
    ("accepted-id-negative", Accepted,
     {"socket_id": -1, "local_host": "a", "local_port": 1, "peer_host": "b", "peer_port": 2}),
    ("accepted-id-too-big", Accepted,
     {"socket_id": 1 << 64, "local_host": "a", "local_port": 1, "peer_host": "b", "peer_port": 2}),
    ("accepted-peer-port-too-big", Accepted,
     {"socket_id": 1, "local_host": "a", "local_port": 1, "peer_host": "b", "peer_port": 1 << 16}),
    ("accepted-peer-host-bytes", Accepted,
     {"socket_id": 1, "local_host": "a", "local_port": 1, "peer_host": b"b", "peer_port": 2}),
    # str values that the wire cannot carry
    ("nul-in-host", Connect, {"host": "exa\x00mple.org", "port": 443}),
    ("nul-alone", Error, {"errno": 1, "message": "\x00"}),
    ("nul-in-connect-failed", ConnectFailed, {"errno": 1, "message": "a\x00"}),
    ("message-too-long", Error, {"errno": 1, "message": "x" * (MAX_STRING + 1)}),
    ("document-too-long-utf8", StatusReply, {"document": "é" * (MAX_STRING // 2 + 1)}),
    ("host-too-long", Connect, {"host": "h" * (MAX_STRING + 1), "port": 443}),
    # None: only for the fields whose default is None ("absent")
    ("none-required-u32", SocketRequest, {"family": None, "socktype": 1, "proto": 205}),
    ("none-required-str", Connect, {"host": None, "port": 443}),
    ("none-required-u16", Connect, {"host": "h", "port": None}),
    ("none-required-errno", ConnectFailed, {"errno": None}),
    ("none-required-document", StatusReply, {"document": None}),
    ("none-defaulted-str", HelloOk, {"version": 1, "software": None}),
    ("none-defaulted-message", Error, {"errno": 1, "message": None}),
    ("none-defaulted-connect-failed", ConnectFailed, {"errno": 1, "message": None}),
    ("none-defaulted-u32", GetSockOpt, {"level": 205, "optname": 85, "buflen": None}),
    ("none-defaulted-filler", Connect, {"host": "h", "port": 443, "filler": None}),
    # bool is not an int here, in any integer field
    ("bool-u16", HelloOk, {"version": True}),
    ("bool-u32", Error, {"errno": False}),
    ("bool-u64", Ok, {"socket_id": True}),
    ("bool-errno-connect-failed", ConnectFailed, {"errno": True}),
]


@pytest.mark.parametrize(("cls", "kwargs"), [pytest.param(c, k, id=i) for i, c, k in _BAD_VALUES])
def test_dataclasses_reject_bad_values(cls: type[Message], kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_int_subclasses_such_as_socket_constants_are_ints() -> None:
    # the library passes socket.AF_INET / socket.SOCK_STREAM (IntEnum members)
    import socket

    m = SocketRequest(family=socket.AF_INET, socktype=socket.SOCK_STREAM, proto=205)
    assert decode_one(encode(m)) == SocketRequest(family=2, socktype=1, proto=205)
    assert decode_one(encode(Error(errno=errno.EPROTO))) == Error(errno=71)

    class Number(int):
        pass

    for message in (
        Hello(version_min=Number(1), version_max=Number(1)),
        SetSockOpt(level=Number(205), optname=Number(111), int_value=Number(-5)),
        GetSockOpt(level=FieldTag.LEVEL, optname=MessageType.OK, buflen=Number(7)),
        Ok(socket_id=Number((1 << 64) - 1)),
        ConnectFailed(errno=Number(errno.ECONNREFUSED)),
        Connected(local_host="a", local_port=Number(1), peer_host="b", peer_port=Number(2)),
    ):
        decoded = decode_one(encode(message))
        assert decoded == message
        for name, _tag, _kind in decoded.WIRE:  # decoding gives plain ints back
            value = getattr(decoded, name)
            assert value is None or value.__class__ in (int, str, bytes)


def _int_fields() -> list[tuple[type[Message], str]]:
    return [
        (cls, f.name)
        for cls in MESSAGE_TYPES.values()
        for f in dataclasses.fields(cls)
        if FIELD_KINDS[f.metadata["tag"]] in (FieldKind.U16, FieldKind.U32, FieldKind.U64,
                                               FieldKind.I64)
    ]


def _valid_kwargs(cls: type[Message]) -> dict[str, Any]:
    """Valid values for every field of ``cls`` (SETSOCKOPT: the one with INT_VALUE)."""
    sample = [m for m in SAMPLES if type(m) is cls][-1]
    return {f.name: getattr(sample, f.name) for f in dataclasses.fields(cls)}  # type: ignore[arg-type]


@pytest.mark.parametrize(("cls", "name"), _int_fields(),
                         ids=lambda x: x if isinstance(x, str) else x.__name__)
def test_bool_is_refused_in_every_int_field(cls: type[Message], name: str) -> None:
    kwargs = _valid_kwargs(cls)
    cls(**kwargs)  # the sample values are fine
    for flag in (False, True):
        with pytest.raises(ValueError, match="must be an int"):
            cls(**{**kwargs, name: flag})


def test_none_is_accepted_only_where_the_default_is_none() -> None:
    for cls in MESSAGE_TYPES.values():
        base = _valid_kwargs(cls)
        for f in dataclasses.fields(cls):
            kwargs = {**base, f.name: None}
            if cls is SetSockOpt and f.name in ("value", "int_value"):
                continue  # the exactly-one rule, tested elsewhere
            if f.default is None:
                message = cls(**kwargs)
                assert decode_one(encode(message)) == message
            else:
                with pytest.raises(ValueError, match="required"):
                    cls(**kwargs)


def test_string_limit_counts_utf8_bytes_at_construction() -> None:
    assert len(StatusReply(document="a" * MAX_STRING).document) == MAX_STRING
    two_byte = "é" * (MAX_STRING // 2)  # exactly MAX_STRING bytes in UTF-8
    assert len(two_byte.encode()) == MAX_STRING
    m = Error(errno=1, message=two_byte)
    assert decode_one(encode(m)) == m
    with pytest.raises(ValueError, match="longer than"):
        Error(errno=1, message=two_byte + "a")
    with pytest.raises(ValueError, match="longer than"):
        Error(errno=1, message="a" * (MAX_STRING + 1))
    four_byte = "\U0001f512" * (MAX_STRING // 4)  # 16384 characters, 65536 bytes
    assert decode_one(encode(StatusReply(document=four_byte))) == StatusReply(document=four_byte)
    with pytest.raises(ValueError, match="longer than"):
        StatusReply(document=four_byte + "x")


def test_nul_refused_in_every_str_field() -> None:
    for cls in MESSAGE_TYPES.values():
        base = _valid_kwargs(cls)
        for f in dataclasses.fields(cls):
            if FIELD_KINDS[f.metadata["tag"]] is not FieldKind.STR:
                continue
            for bad in ("\x00", "a\x00", "\x00b", "a\x00b"):
                with pytest.raises(ValueError, match="NUL"):
                    cls(**{**base, f.name: bad})


def test_integer_bounds_are_inclusive() -> None:
    assert decode_one(encode(Hello(version_min=0, version_max=0xFFFF))) == Hello(0, 0xFFFF)
    for v in (-(1 << 63), (1 << 63) - 1):
        m = SetSockOpt(level=0xFFFFFFFF, optname=0, int_value=v)
        assert decode_one(encode(m)) == m
    assert decode_one(encode(Ok(socket_id=(1 << 64) - 1))) == Ok(socket_id=(1 << 64) - 1)


def test_messages_are_frozen() -> None:
    m = Error(errno=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.errno = 2  # type: ignore[misc]


def test_every_field_kind_is_used_and_every_tag_belongs_to_a_message() -> None:
    used = {tag for cls in MESSAGE_TYPES.values() for tag in cls.FIELDS_BY_TAG}
    assert used == set(FieldTag)
    assert {FIELD_KINDS[t] for t in FieldTag} == set(FieldKind)


# -- encoder/decoder symmetry: what can be built and encoded decodes back equal ---------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: Connect(host="exa\x00mple.org", port=443),
        lambda: Error(errno=1, message="x" * (MAX_STRING + 1)),
        lambda: StatusReply(document="{" + " " * MAX_STRING + "}"),
        lambda: SocketRequest(family=None, socktype=1, proto=205),  # type: ignore[arg-type]
        lambda: HelloOk(version=1, software=None),  # type: ignore[arg-type]
        lambda: ConnectFailed(errno=None),  # type: ignore[arg-type]
        lambda: Connect(host="\ud800.example", port=443),
        lambda: SetSockOpt(level=205, optname=87, value=bytes(MAX_PAYLOAD)),
    ],
    ids=["nul-in-host", "long-message", "long-document", "none-required", "none-defaulted",
         "none-errno", "lone-surrogate", "oversize-payload"],
)
def test_every_constructible_message_round_trips(build: Any) -> None:
    try:
        message = build()
        data = encode(message)
    except (ValueError, ProtocolError):
        return  # refused on the sending side: fine
    assert decode_one(data) == message


@pytest.mark.parametrize(
    ("build", "where"),
    [
        (lambda: Connect(host="exa\x00mple.org", port=443), "construction"),
        (lambda: Error(errno=1, message="x" * (MAX_STRING + 1)), "construction"),
        (lambda: StatusReply(document="{" + " " * MAX_STRING + "}"), "construction"),
        (lambda: SocketRequest(family=None, socktype=1, proto=205),  # type: ignore[arg-type]
         "construction"),
        (lambda: HelloOk(version=1, software=None), "construction"),  # type: ignore[arg-type]
        (lambda: ConnectFailed(errno=None), "construction"),  # type: ignore[arg-type]
        # a lone surrogate is refused by the UTF-8 encoder, not the constructor
        (lambda: Connect(host="\ud800.example", port=443), "encode"),
    ],
    ids=["nul-in-host", "long-message", "long-document", "none-required", "none-defaulted",
         "none-errno", "lone-surrogate"],
)
def test_values_the_wire_cannot_carry_are_refused_before_the_wire(build: Any, where: str) -> None:
    if where == "construction":
        with pytest.raises(ValueError):
            build()
    else:
        message = build()
        with pytest.raises(ValueError):  # UnicodeEncodeError is a ValueError
            encode(message)
