"""Fuzzing: whatever bytes arrive, only ProtocolViolation escapes, and parsing ends.

Three kinds of input.  Arbitrary bytes (mostly bad length words).  Well-framed
messages with arbitrary bodies, which get past framing and test the decoders.
And sequences of valid typed messages, encoded and cut at arbitrary points,
which must come back exactly as they were sent however they are fed.
"""

from __future__ import annotations

import contextlib
import itertools
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.gateway.pgwire import (
    PROTOCOL_3_0,
    AuthenticationCleartextPassword,
    AuthenticationGSS,
    AuthenticationGSSContinue,
    AuthenticationKerberosV5,
    AuthenticationMD5Password,
    AuthenticationOk,
    AuthenticationSASL,
    AuthenticationSASLContinue,
    AuthenticationSASLFinal,
    AuthenticationSCMCredential,
    AuthenticationSSPI,
    BackendKeyData,
    BackendMessage,
    BackendParser,
    Bind,
    BindComplete,
    CancelRequest,
    Close,
    CloseComplete,
    CommandComplete,
    CopyBothResponse,
    CopyData,
    CopyDone,
    CopyFail,
    CopyInResponse,
    CopyOutResponse,
    DataRow,
    Describe,
    EmptyQueryResponse,
    ErrorResponse,
    Execute,
    Field,
    Flush,
    FrontendMessage,
    FrontendParser,
    FunctionCall,
    FunctionCallResponse,
    NegotiateProtocolVersion,
    NoData,
    NoticeResponse,
    NotificationResponse,
    ParameterDescription,
    ParameterStatus,
    Parse,
    ParseComplete,
    PasswordMessage,
    PortalSuspended,
    ProtocolViolation,
    Query,
    RawMessage,
    ReadyForQuery,
    RowDescription,
    StartupMessage,
    Sync,
    Terminate,
    decode_backend,
    decode_frontend,
    encode_raw,
)

FUZZ = settings(
    max_examples=300,
    deadline=timedelta(seconds=1),
    suppress_health_check=[HealthCheck.too_slow],
)

# ---------------------------------------------------------------------------
# Strategies

text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
name = text.filter(bool)
small_bytes = st.binary(max_size=24)
value = st.none() | small_bytes
uint32 = st.integers(0, 2**32 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)
int16 = st.integers(-(2**15), 2**15 - 1)
fmt = st.sampled_from([0, 1])


@st.composite
def bind(draw: st.DrawFn) -> Bind:
    params = draw(st.lists(value, max_size=4))
    formats = draw(
        st.sampled_from([0, 1, len(params)]).flatmap(
            lambda n: st.lists(fmt, min_size=n, max_size=n)
        )
    )
    return Bind(draw(text), draw(text), formats, params, draw(st.lists(fmt, max_size=3)))


@st.composite
def function_call(draw: st.DrawFn) -> FunctionCall:
    args = draw(st.lists(value, max_size=4))
    formats = draw(
        st.sampled_from([0, 1, len(args)]).flatmap(lambda n: st.lists(fmt, min_size=n, max_size=n))
    )
    return FunctionCall(draw(uint32), formats, args, draw(fmt))


@st.composite
def copy_response(draw: st.DrawFn) -> BackendMessage:
    cls = draw(st.sampled_from([CopyInResponse, CopyOutResponse, CopyBothResponse]))
    overall = draw(fmt)
    columns = draw(st.lists(fmt if overall else st.just(0), max_size=4))
    return cls(overall, columns)


field = st.builds(Field, text, uint32, int16, uint32, int16, int32, fmt)
fields = st.dictionaries(st.characters(min_codepoint=1, max_codepoint=255), text, max_size=5)

tagged_frontend: st.SearchStrategy[FrontendMessage] = st.one_of(
    st.builds(PasswordMessage, small_bytes),
    st.builds(Query, text),
    st.builds(Parse, text, text, st.lists(uint32, max_size=4)),
    bind(),
    st.builds(Describe, st.sampled_from("SP"), text),
    st.builds(Execute, text, int32),
    st.builds(Close, st.sampled_from("SP"), text),
    st.just(Sync()),
    st.just(Flush()),
    st.just(Terminate()),
    st.builds(CopyData, small_bytes),
    st.just(CopyDone()),
    st.builds(CopyFail, text),
    function_call(),
)

startup = st.one_of(
    st.builds(
        StartupMessage,
        st.dictionaries(name, text, max_size=4),
        st.integers(0, 0xFFFF).map(lambda minor: PROTOCOL_3_0 | minor),
    ),
    st.builds(CancelRequest, uint32, uint32),
)

backend: st.SearchStrategy[BackendMessage] = st.one_of(
    st.sampled_from(
        [
            AuthenticationOk(),
            AuthenticationKerberosV5(),
            AuthenticationCleartextPassword(),
            AuthenticationSCMCredential(),
            AuthenticationGSS(),
            AuthenticationSSPI(),
            BindComplete(),
            CloseComplete(),
            CopyDone(),
            EmptyQueryResponse(),
            NoData(),
            ParseComplete(),
            PortalSuspended(),
        ]
    ),
    st.builds(AuthenticationMD5Password, st.binary(min_size=4, max_size=4)),
    st.builds(AuthenticationGSSContinue, small_bytes),
    st.builds(AuthenticationSASL, st.lists(name, max_size=3)),
    st.builds(AuthenticationSASLContinue, small_bytes),
    st.builds(AuthenticationSASLFinal, small_bytes),
    st.builds(BackendKeyData, uint32, uint32),
    st.builds(CommandComplete, text),
    copy_response(),
    st.builds(CopyData, small_bytes),
    st.builds(DataRow, st.lists(value, max_size=5)),
    st.builds(ErrorResponse, fields),
    st.builds(NoticeResponse, fields),
    st.builds(FunctionCallResponse, value),
    st.builds(NegotiateProtocolVersion, int32, st.lists(text, max_size=3)),
    st.builds(NotificationResponse, uint32, text, text),
    st.builds(ParameterDescription, st.lists(uint32, max_size=4)),
    st.builds(ParameterStatus, text, text),
    st.builds(ReadyForQuery, st.sampled_from("ITE")),
    st.builds(RowDescription, st.lists(field, max_size=3)),
)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def drive(
    parser: FrontendParser | BackendParser, pieces: list[bytes], bulk: bool
) -> list[RawMessage]:
    """Feed the pieces, collecting raw messages one way or the other; returns them."""
    out: list[RawMessage] = []
    for piece in pieces:
        parser.feed(piece)
        if bulk:
            raws, wire = parser.drain_frames()
            assert wire == b"".join(r.wire for r in raws)
            out.extend(raws)
        else:
            out.extend(parser.messages())
    return out


def skim(parser: FrontendParser | BackendParser, pieces: list[bytes]) -> tuple[bytes, bytes]:
    """Feed the pieces through the types-only relay path; returns all types and bytes."""
    types, wire = b"", b""
    for piece in pieces:
        parser.feed(piece)
        more_types, more_wire = parser.drain_wire()
        types += more_types
        wire += more_wire
    assert parser.pending_bytes == 0
    return types, wire


# ---------------------------------------------------------------------------
# Only ProtocolViolation escapes


def swallow_violations(parser: FrontendParser | BackendParser, pieces: list[bytes]) -> None:
    decode = decode_frontend if isinstance(parser, FrontendParser) else decode_backend
    try:
        for i, piece in enumerate(pieces):
            parser.feed(piece)
            if i % 2:
                parser.drain_wire()
                continue
            for raw in parser.messages():
                with contextlib.suppress(ProtocolViolation):
                    decode(raw)
    except ProtocolViolation:
        # Poisoned for good: every later call says so again.
        try:
            parser.next_raw()
        except ProtocolViolation:
            return
        raise AssertionError("a parser went on after a protocol violation") from None


@FUZZ
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=8))
def test_arbitrary_bytes_into_the_frontend_parser(data: bytes, cuts: list[int]) -> None:
    swallow_violations(
        FrontendParser(max_message_size=512, max_startup_size=256), chunks(data, cuts)
    )


@FUZZ
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=8))
def test_arbitrary_bytes_after_startup(data: bytes, cuts: list[int]) -> None:
    parser = FrontendParser(max_message_size=512)
    parser.feed(StartupMessage({"user": "u"}).encode())
    assert parser.next_raw() is not None
    swallow_violations(parser, chunks(data, cuts))


@FUZZ
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=8), st.booleans())
def test_arbitrary_bytes_into_the_backend_parser(data: bytes, cuts: list[int], ssl: bool) -> None:
    parser = BackendParser(max_message_size=512)
    pieces = chunks(data, cuts)
    if ssl and data:
        parser.expect_ssl_response()
        parser.feed(pieces[0])
        try:
            answer = parser.read_ssl_response()
        except ProtocolViolation:
            return
        if answer is None:
            return
        pieces = pieces[1:]
    swallow_violations(parser, pieces)


framed = st.tuples(st.integers(0, 255), st.binary(max_size=48))


@FUZZ
@given(st.lists(framed, max_size=6))
def test_well_framed_garbage_into_the_decoders(frames: list[tuple[int, bytes]]) -> None:
    for type_, body in frames:
        for decode in (decode_frontend, decode_backend):
            try:
                msg = decode(RawMessage(type_, body))
            except ProtocolViolation:
                continue
            # What decodes must encode back to the very same bytes.
            assert msg.encode() == encode_raw(type_, body)
        password = PasswordMessage(body)
        for read in (password.as_password, password.as_sasl_initial_response):
            with contextlib.suppress(ProtocolViolation):
                read()


@FUZZ
@given(st.lists(framed, max_size=6), st.lists(st.integers(0, 400), max_size=8))
def test_well_framed_garbage_through_the_parsers(
    frames: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(encode_raw(t or 1, body) for t, body in frames)
    after_startup = FrontendParser()
    after_startup.feed(StartupMessage({}).encode())
    assert after_startup.next_raw() is not None
    swallow_violations(after_startup, chunks(stream, cuts))
    swallow_violations(BackendParser(), chunks(stream, cuts))


# ---------------------------------------------------------------------------
# Valid traffic comes back exactly, however it is cut


@FUZZ
@given(
    startup,
    st.lists(tagged_frontend, max_size=8),
    st.lists(st.integers(0, 2000), max_size=10),
    st.booleans(),
)
def test_valid_client_traffic_round_trips(
    first: FrontendMessage, msgs: list[FrontendMessage], cuts: list[int], bulk: bool
) -> None:
    sent = [first, *msgs]
    stream = b"".join(m.encode() for m in sent)
    parser = FrontendParser()
    raws = drive(parser, chunks(stream, cuts), bulk)
    assert parser.pending_bytes == 0
    assert not parser.in_startup
    assert [decode_frontend(r) for r in raws] == sent
    assert b"".join(r.wire for r in raws) == stream
    assert skim(FrontendParser(), chunks(stream, cuts)) == (bytes(r.type for r in raws), stream)


@FUZZ
@given(
    st.lists(backend, max_size=10),
    st.lists(st.integers(0, 2000), max_size=10),
    st.booleans(),
)
def test_valid_server_traffic_round_trips(
    msgs: list[BackendMessage], cuts: list[int], bulk: bool
) -> None:
    stream = b"".join(m.encode() for m in msgs)
    parser = BackendParser()
    raws = drive(parser, chunks(stream, cuts), bulk)
    assert parser.pending_bytes == 0
    assert [decode_backend(r) for r in raws] == msgs
    assert b"".join(r.wire for r in raws) == stream
    assert skim(BackendParser(), chunks(stream, cuts)) == (bytes(r.type for r in raws), stream)
