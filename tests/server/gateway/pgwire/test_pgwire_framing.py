"""Framing: where messages start and end, what is refused, and the startup modes."""

from __future__ import annotations

import struct

import pytest

from server.gateway.pgwire import (
    BackendParser,
    FrontendParser,
    ProtocolViolation,
    RawMessage,
    decode_backend,
    decode_frontend,
    encode_raw,
    split_frames,
)

STARTUP = b"\x00\x00\x00\x12\x00\x03\x00\x00user\x00bob\x00\x00"
SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
GSSENC_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x30"
CANCEL = b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x00\x07\x00\x00\x00\x09"
QUERY = b"Q\x00\x00\x00\x0dselect 1\x00"
SYNC = b"S\x00\x00\x00\x04"
READY = b"Z\x00\x00\x00\x05I"
DATA_ROW = b"D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x01x"
CLIENT_STREAM = STARTUP + QUERY + b"P\x00\x00\x00\x10\x00select 1\x00\x00\x00" + SYNC
SERVER_STREAM = b"R\x00\x00\x00\x08\x00\x00\x00\x00" + DATA_ROW * 3 + READY


def frontend_after_startup(**limits: int) -> FrontendParser:
    parser = FrontendParser(**limits)
    parser.feed(STARTUP)
    assert parser.next_raw() is not None
    assert not parser.in_startup
    return parser


def tagged(type_: bytes, length: int, body: bytes = b"") -> bytes:
    return type_ + struct.pack("!I", length) + body


# --------------------------------------------------------------------------
# Splitting


@pytest.mark.parametrize(
    ("make", "stream"),
    [(FrontendParser, CLIENT_STREAM), (BackendParser, SERVER_STREAM)],
    ids=["frontend", "backend"],
)
def test_any_split_gives_the_same_messages(
    make: type[FrontendParser] | type[BackendParser], stream: bytes
) -> None:
    whole = make()
    whole.feed(stream)
    expected = list(whole.messages())
    assert b"".join(m.wire for m in expected) == stream
    one_by_one = make()
    got = []
    for i in range(len(stream)):
        one_by_one.feed(stream[i : i + 1])
        got.extend(one_by_one.messages())
    assert got == expected
    for cut in range(len(stream) + 1):
        parser = make()
        parser.feed(stream[:cut])
        first = parser.drain_raw()
        parser.feed(stream[cut:])
        assert first + parser.drain_raw() == expected
        assert parser.pending_bytes == 0


def test_pending_bytes_counts_what_is_not_yet_a_message() -> None:
    parser = BackendParser()
    parser.feed(READY + DATA_ROW[:7])
    assert parser.pending_bytes == len(READY) + 7
    assert parser.next_raw() == RawMessage(ord("Z"), b"I")
    assert parser.next_raw() is None
    assert parser.pending_bytes == 7
    parser.feed(DATA_ROW[7:])
    assert parser.pending_bytes == len(DATA_ROW)
    assert parser.next_raw() == RawMessage(ord("D"), DATA_ROW[5:])
    assert parser.pending_bytes == 0


def test_a_large_message_in_many_pieces() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    wire = encode_raw(ord("d"), body)
    parser = BackendParser()
    for i in range(0, len(wire), 1000):
        parser.feed(wire[i : i + 1000])
        if i + 1000 < len(wire):
            assert parser.next_raw() is None
    assert parser.next_raw() == RawMessage(ord("d"), body)
    assert parser.pending_bytes == 0


def test_fed_buffers_are_copied_when_the_caller_may_reuse_them() -> None:
    parser = BackendParser()
    buffer = bytearray(READY)
    parser.feed(buffer)
    buffer[5:6] = b"E"
    parser.feed(memoryview(READY))
    assert [m.body for m in parser.messages()] == [b"I", b"I"]


def test_drain_frames_hands_back_the_bytes_fed() -> None:
    parser = BackendParser()
    parser.feed(SERVER_STREAM)
    raws, wire = parser.drain_frames()
    assert len(raws) == 5
    assert wire is SERVER_STREAM  # forwarded as is, no copy
    parser.feed(READY + DATA_ROW[:3])
    raws, wire = parser.drain_frames()
    assert (raws, wire) == ([RawMessage(ord("Z"), b"I")], READY)
    parser.feed(DATA_ROW[3:])
    raws, wire = parser.drain_frames()
    assert wire == DATA_ROW
    assert parser.drain_frames() == ([], b"")


def test_drain_wire_gives_types_and_bytes_without_bodies() -> None:
    parser = FrontendParser()
    parser.feed(CLIENT_STREAM + QUERY[:6])
    types, wire = parser.drain_wire()
    assert types == b"\x00QPS"
    assert wire == CLIENT_STREAM
    assert parser.pending_bytes == 6
    parser.feed(QUERY[6:])
    assert parser.drain_wire() == (b"Q", QUERY)
    # What a relay checks: is every type one it knows?
    assert not types[1:].translate(None, b"QPS")
    parser.feed(tagged(b"z", 4))
    assert parser.drain_wire()[0].translate(None, b"QPS") == b"z"


def test_drain_wire_stops_in_a_partial_startup_packet() -> None:
    parser = FrontendParser()
    parser.feed(STARTUP[:10])
    assert parser.drain_wire() == (b"", b"")
    assert parser.in_startup
    parser.feed(STARTUP[10:] + SYNC)
    assert parser.drain_wire() == (b"\x00S", STARTUP + SYNC)


def test_drain_returns_good_messages_before_a_bad_frame_then_raises() -> None:
    parser = BackendParser()
    parser.feed(READY + tagged(b"D", 2))
    assert parser.drain_raw() == [RawMessage(ord("Z"), b"I")]
    with pytest.raises(ProtocolViolation, match="invalid message length 2"):
        parser.drain_raw()
    parser = BackendParser()
    parser.feed(READY + tagged(b"D", 2))
    assert parser.drain_wire() == (b"Z", READY)
    with pytest.raises(ProtocolViolation, match="invalid message length 2"):
        parser.drain_wire()
    parser = FrontendParser()
    parser.feed(STARTUP + tagged(b"Q", 0))
    assert parser.drain_frames() == ([RawMessage(0, STARTUP[4:])], STARTUP)
    with pytest.raises(ProtocolViolation, match="invalid message length 0"):
        parser.drain_frames()


def test_split_frames() -> None:
    msgs, end = split_frames(SERVER_STREAM + DATA_ROW[:4])
    assert [m.type for m in msgs] == [ord(c) for c in "RDDDZ"]
    assert end == len(SERVER_STREAM)
    msgs, end = split_frames(bytearray(b"xx" + READY), 2)
    assert (msgs, end) == ([RawMessage(ord("Z"), b"I")], 2 + len(READY))
    msgs, end = split_frames(READY + tagged(b"D", 1))
    assert end == len(READY)  # stops before the bad frame ...
    with pytest.raises(ProtocolViolation):
        split_frames(READY + tagged(b"D", 1), end)  # ... which raises when it comes first
    with pytest.raises(ProtocolViolation, match="limit of 100"):
        split_frames(tagged(b"d", 101), max_message_size=100)


def test_raw_message_wire() -> None:
    assert RawMessage(ord("Z"), b"I").wire == READY
    assert RawMessage(0, STARTUP[4:]).wire == STARTUP
    with pytest.raises(ValueError, match="must be a byte"):
        encode_raw(256, b"")


# --------------------------------------------------------------------------
# Framing violations


FRONTEND_VIOLATIONS: list[tuple[str, dict[str, int], bytes, str]] = [
    ("length 0", {}, tagged(b"Q", 0), "invalid message length 0 for message type 'Q'"),
    ("length 3", {}, tagged(b"Q", 3), "invalid message length 3"),
    ("over max", {"max_message_size": 100}, tagged(b"Q", 101), "limit of 100"),
    ("max + huge", {}, tagged(b"Q", 0xFFFFFFFF), "limit of 1073741824"),
    ("Sync is small", {}, tagged(b"S", 10_001), "limit of 10000"),
    ("Execute is small", {}, tagged(b"E", 10_001), "limit of 10000"),
    ("Terminate is small", {}, tagged(b"X", 10_001), "limit of 10000"),
    ("auth is small", {}, tagged(b"p", 65_536), "limit of 65535"),
    ("type 0 tagged", {}, tagged(b"\x00", 8, b"\x00\x03\x00\x00"), "message type 0x00"),
]


@pytest.mark.parametrize(
    ("case", "limits", "data", "error"),
    FRONTEND_VIOLATIONS,
    ids=[v[0] for v in FRONTEND_VIOLATIONS],
)
def test_frontend_framing_violations(
    case: str, limits: dict[str, int], data: bytes, error: str
) -> None:
    parser = frontend_after_startup(**limits)
    # Only the header has arrived: the length word alone is enough to refuse.
    parser.feed(data[:5])
    with pytest.raises(ProtocolViolation, match=error) as exc:
        parser.next_raw()
    assert exc.value.sqlstate == "08P01"


@pytest.mark.parametrize("limit", [10_000, 65_535])
def test_limits_are_inclusive(limit: int) -> None:
    type_ = b"S" if limit == 10_000 else b"p"
    parser = frontend_after_startup()
    parser.feed(tagged(type_, limit, bytes(limit - 4)))
    raw = parser.next_raw()
    assert raw is not None and len(raw.body) == limit - 4


def test_backend_framing_violations() -> None:
    for data, error in [
        (tagged(b"Z", 2), "invalid message length 2 for message type 'Z'"),
        (tagged(b"D", 101), "limit of 100"),
        (tagged(b"\x00", 4), "message type 0x00"),
    ]:
        parser = BackendParser(max_message_size=100)
        parser.feed(data)
        with pytest.raises(ProtocolViolation, match=error):
            parser.next_raw()


STARTUP_VIOLATIONS: list[tuple[str, bytes, str]] = [
    ("length 0", b"\x00\x00\x00\x00", "invalid length of startup packet: 0"),
    ("length 7", b"\x00\x00\x00\x07\x00\x03\x00", "invalid length of startup packet: 7"),
    ("too long", b"\x00\x00\x27\x15", "invalid length of startup packet: 10005"),
    ("huge", b"\xff\xff\xff\xff", "invalid length of startup packet"),
    (
        "TLS ClientHello",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        "invalid length of startup packet",
    ),
    ("protocol 2.0", b"\x00\x00\x00\x09\x00\x02\x00\x00\x00", "unsupported frontend protocol 2.0"),
    ("protocol 4.0", b"\x00\x00\x00\x09\x00\x04\x00\x00\x00", "unsupported frontend protocol 4.0"),
    (
        "unknown special code",
        b"\x00\x00\x00\x08\x04\xd2\x16\x31",
        "unsupported frontend protocol 1234.5681",
    ),
    ("long SSLRequest", b"\x00\x00\x00\x0c\x04\xd2\x16\x2f\x00\x00\x00\x00", "SSL request packet"),
    (
        "long GSSENCRequest",
        b"\x00\x00\x00\x09\x04\xd2\x16\x30\x00",
        "GSSAPI encryption request packet",
    ),
    ("short cancel", b"\x00\x00\x00\x0c\x04\xd2\x16\x2e\x00\x00\x00\x07", "cancel request packet"),
    ("long cancel", CANCEL[:3] + b"\x14" + CANCEL[4:] + b"\x00" * 4, "cancel request packet"),
    ("data after SSLRequest", SSL_REQUEST + STARTUP, "unencrypted data after SSL request"),
    ("one byte after", GSSENC_REQUEST + b"Q", "unencrypted data after GSSAPI encryption"),
    ("two SSLRequests", SSL_REQUEST, "duplicate SSL request"),
    ("two GSSENCRequests", GSSENC_REQUEST, "duplicate GSSAPI encryption request"),
]


@pytest.mark.parametrize(
    ("case", "data", "error"), STARTUP_VIOLATIONS, ids=[v[0] for v in STARTUP_VIOLATIONS]
)
def test_startup_violations(case: str, data: bytes, error: str) -> None:
    parser = FrontendParser()
    if case.startswith("two "):
        parser.feed(data)
        assert parser.next_raw() is not None
    parser.feed(data)
    with pytest.raises(ProtocolViolation, match=error):
        parser.next_raw()


def test_startup_size_limit_is_configurable_and_inclusive() -> None:
    params = b"user\x00" + b"x" * 9990 + b"\x00\x00"  # 9997 bytes of parameters
    packet = struct.pack("!II", 4 + 4 + len(params), 196608) + params
    assert len(packet) - 4 == 10_001
    with pytest.raises(ProtocolViolation, match="invalid length of startup packet: 10005"):
        parser = FrontendParser()
        parser.feed(packet)
        parser.next_raw()
    parser = FrontendParser(max_startup_size=10_001)
    parser.feed(packet)
    assert parser.next_raw() is not None


def test_a_violation_poisons_the_parser() -> None:
    parser = frontend_after_startup()
    parser.feed(QUERY + tagged(b"Q", 1) + QUERY)
    assert parser.next_raw() is not None
    for _ in range(2):
        with pytest.raises(ProtocolViolation, match="invalid message length 1"):
            parser.next_raw()
    with pytest.raises(ProtocolViolation):
        parser.feed(QUERY)
    with pytest.raises(ProtocolViolation):
        parser.drain_frames()
    with pytest.raises(ProtocolViolation):
        list(parser.messages())


def test_an_unknown_type_is_framed_but_not_decoded() -> None:
    parser = frontend_after_startup()
    parser.feed(tagged(b"z", 7, b"abc") + SYNC)
    raw = parser.next_raw()
    assert raw == RawMessage(ord("z"), b"abc")
    with pytest.raises(ProtocolViolation, match="unknown message type 'z'"):
        decode_frontend(raw)
    assert parser.next_raw() == RawMessage(ord("S"), b"")  # framing stayed in step
    backend = BackendParser()
    backend.feed(tagged(b"?", 4))
    unknown = backend.next_raw()
    assert unknown is not None
    with pytest.raises(ProtocolViolation, match="unknown message type '\\?'"):
        decode_backend(unknown)


# --------------------------------------------------------------------------
# Startup mode


@pytest.mark.parametrize(
    ("packets", "still_in_startup"),
    [
        ([SSL_REQUEST], True),
        ([GSSENC_REQUEST], True),
        ([GSSENC_REQUEST, SSL_REQUEST], True),
        ([SSL_REQUEST, STARTUP], False),
        ([GSSENC_REQUEST, SSL_REQUEST, STARTUP], False),
        ([STARTUP], False),
        ([CANCEL], False),
        ([b"\x00\x00\x00\x09\x00\x03\x00\x05\x00"], False),  # 3.5: framed, negotiated later
    ],
)
def test_startup_mode_transitions(packets: list[bytes], still_in_startup: bool) -> None:
    parser = FrontendParser()
    assert parser.in_startup
    for packet in packets:
        parser.feed(packet)
        raw = parser.next_raw()
        assert raw == RawMessage(0, packet[4:])
    assert parser.in_startup is still_in_startup


def test_after_startup_the_stream_is_tagged() -> None:
    parser = FrontendParser()
    parser.feed(STARTUP + QUERY)
    raws = parser.drain_raw()
    assert [r.type for r in raws] == [0, ord("Q")]
    # A second startup packet is now read as a tagged message of type 0x00: refused.
    parser.feed(STARTUP)
    with pytest.raises(ProtocolViolation):
        parser.next_raw()


# --------------------------------------------------------------------------
# The one-byte answer to SSLRequest / GSSENCRequest


@pytest.mark.parametrize(
    ("expect", "data", "answer", "then"),
    [
        ("ssl", b"N", b"N", None),
        ("ssl", b"N" + READY, b"N", RawMessage(ord("Z"), b"I")),
        ("ssl", b"S", b"S", None),
        ("gss", b"G", b"G", None),
        ("gss", b"N", b"N", None),
        # An old server answers with an error; it is left for next_raw.
        ("ssl", b"E\x00\x00\x00\x05\x00", b"E", RawMessage(ord("E"), b"\x00")),
        ("gss", b"E\x00\x00\x00\x05\x00", b"E", RawMessage(ord("E"), b"\x00")),
    ],
)
def test_encryption_answers(
    expect: str, data: bytes, answer: bytes, then: RawMessage | None
) -> None:
    parser = BackendParser()
    if expect == "ssl":
        parser.expect_ssl_response()
    else:
        parser.expect_gssenc_response()
    assert parser.expecting_ssl_response
    assert parser.read_ssl_response() is None
    parser.feed(data)
    assert parser.read_ssl_response() == answer
    assert not parser.expecting_ssl_response
    assert parser.next_raw() == then


@pytest.mark.parametrize(
    ("expect", "data", "error"),
    [
        ("ssl", b"S\x16\x03\x01", "unencrypted data after SSL response"),
        ("gss", b"G\x00", "unencrypted data after SSL response"),
        ("ssl", b"G", "invalid response to encryption request: 'G'"),
        ("gss", b"S", "invalid response to encryption request: 'S'"),
        ("ssl", b"\x00", "invalid response to encryption request: 0x00"),
    ],
)
def test_bad_encryption_answers(expect: str, data: bytes, error: str) -> None:
    parser = BackendParser()
    if expect == "ssl":
        parser.expect_ssl_response()
    else:
        parser.expect_gssenc_response()
    parser.feed(data)
    with pytest.raises(ProtocolViolation, match=error):
        parser.read_ssl_response()
    with pytest.raises(ProtocolViolation):
        parser.next_raw()


def test_encryption_answer_is_not_a_message() -> None:
    parser = BackendParser()
    with pytest.raises(RuntimeError, match="without expect_ssl_response"):
        parser.read_ssl_response()
    parser.expect_ssl_response()
    parser.feed(b"N")
    with pytest.raises(RuntimeError, match="call read_ssl_response"):
        parser.next_raw()
    with pytest.raises(RuntimeError, match="call read_ssl_response"):
        parser.drain_raw()
    with pytest.raises(RuntimeError, match="call read_ssl_response"):
        parser.drain_wire()
    assert parser.read_ssl_response() == b"N"


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_message_size"):
        FrontendParser(max_message_size=3)
    with pytest.raises(ValueError, match="max_startup_size"):
        FrontendParser(max_startup_size=0)
    with pytest.raises(ValueError, match="max_message_size"):
        BackendParser(max_message_size=-1)
