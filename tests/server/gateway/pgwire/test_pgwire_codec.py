"""Byte-exact encoding and decoding of every protocol 3.0 message.

The expected bytes are written out by hand from the message layouts in the
PostgreSQL documentation ("Message Formats"), lengths counted by hand, so the
encoder is checked against the protocol and not against itself.  Each row is
checked three ways: encode gives the bytes, framing the bytes gives one raw
message whose ``wire`` is the bytes again, and decoding that gives the message.
"""

from __future__ import annotations

import pytest

from server.gateway.pgwire import (
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
    GSSENCRequest,
    GSSResponse,
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
    Query,
    RawMessage,
    ReadyForQuery,
    RowDescription,
    SASLInitialResponse,
    SASLResponse,
    SSLRequest,
    StartupMessage,
    Sync,
    Terminate,
    decode_backend,
    decode_frontend,
    encode,
)

# A startup packet never follows another in one read (an SSLRequest must be
# answered first), so each startup row is framed by a fresh parser; tagged rows
# are framed after a minimal StartupMessage.
MINIMAL_STARTUP = b"\x00\x00\x00\x09\x00\x03\x00\x00\x00"

FRONTEND_STARTUP: list[tuple[FrontendMessage, bytes]] = [
    (
        StartupMessage({"user": "alice", "database": "db"}),
        b"\x00\x00\x00\x20"  # length 32
        b"\x00\x03\x00\x00"  # protocol 3.0
        b"user\x00alice\x00database\x00db\x00"
        b"\x00",
    ),
    (StartupMessage({}), MINIMAL_STARTUP),
    (
        StartupMessage({"user": "u"}, protocol=0x00030002),  # 3.2: framed, negotiated later
        b"\x00\x00\x00\x10\x00\x03\x00\x02user\x00u\x00\x00",
    ),
    (SSLRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),  # 1234, 5679
    (GSSENCRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x30"),  # 1234, 5680
    (
        CancelRequest(pid=12345, secret=0xDEADBEEF),
        b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39\xde\xad\xbe\xef",  # 1234, 5678
    ),
]

FRONTEND_TAGGED: list[tuple[FrontendMessage, bytes]] = [
    (PasswordMessage(b"secret\x00"), b"p\x00\x00\x00\x0bsecret\x00"),
    (PasswordMessage.from_password("secret"), b"p\x00\x00\x00\x0bsecret\x00"),
    (
        SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc"),
        b"p\x00\x00\x00\x21SCRAM-SHA-256\x00\x00\x00\x00\x0bn,,n=,r=abc",
    ),
    (SASLInitialResponse("X", None), b"p\x00\x00\x00\x0aX\x00\xff\xff\xff\xff"),
    (SASLResponse(b"c=biws"), b"p\x00\x00\x00\x0ac=biws"),
    (GSSResponse(b"\x01\x02"), b"p\x00\x00\x00\x06\x01\x02"),
    (Query("select 1"), b"Q\x00\x00\x00\x0dselect 1\x00"),
    (Query(""), b"Q\x00\x00\x00\x05\x00"),
    (
        Parse("s1", "select $1", [23]),
        b"P\x00\x00\x00\x17s1\x00select $1\x00\x00\x01\x00\x00\x00\x17",
    ),
    (Parse("", "select 1"), b"P\x00\x00\x00\x10\x00select 1\x00\x00\x00"),
    (
        Bind("p", "s1", [1], [b"\x00\x00\x00\x2a", None], [0, 1]),
        b"B\x00\x00\x00\x21"
        b"p\x00s1\x00"
        b"\x00\x01\x00\x01"  # one format code: binary, for all parameters
        b"\x00\x02\x00\x00\x00\x04\x00\x00\x00\x2a\xff\xff\xff\xff"  # 42, NULL
        b"\x00\x02\x00\x00\x00\x01",  # result formats: text, binary
    ),
    (Bind("", ""), b"B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00"),
    (Describe("S", "s1"), b"D\x00\x00\x00\x08Ss1\x00"),
    (Describe("P", ""), b"D\x00\x00\x00\x06P\x00"),
    (Execute("", 0), b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"),
    (Execute("p", 100), b"E\x00\x00\x00\x0ap\x00\x00\x00\x00\x64"),
    (Close("P", "p"), b"C\x00\x00\x00\x07Pp\x00"),
    (Close("S", "s1"), b"C\x00\x00\x00\x08Ss1\x00"),
    (Sync(), b"S\x00\x00\x00\x04"),
    (Flush(), b"H\x00\x00\x00\x04"),
    (Terminate(), b"X\x00\x00\x00\x04"),
    (CopyData(b"1\t2\n"), b"d\x00\x00\x00\x081\t2\n"),
    (CopyDone(), b"c\x00\x00\x00\x04"),
    (CopyFail("oops"), b"f\x00\x00\x00\x09oops\x00"),
    (
        FunctionCall(177, [1], [b"\x00\x00\x00\x02", b"\x00\x00\x00\x03"], 1),
        b"F\x00\x00\x00\x20"
        b"\x00\x00\x00\xb1"  # function OID 177
        b"\x00\x01\x00\x01"
        b"\x00\x02\x00\x00\x00\x04\x00\x00\x00\x02\x00\x00\x00\x04\x00\x00\x00\x03"
        b"\x00\x01",
    ),
]

BACKEND: list[tuple[BackendMessage, bytes]] = [
    (AuthenticationOk(), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
    (AuthenticationKerberosV5(), b"R\x00\x00\x00\x08\x00\x00\x00\x02"),
    (AuthenticationCleartextPassword(), b"R\x00\x00\x00\x08\x00\x00\x00\x03"),
    (
        AuthenticationMD5Password(b"\x01\x02\x03\x04"),
        b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04",
    ),
    (AuthenticationSCMCredential(), b"R\x00\x00\x00\x08\x00\x00\x00\x06"),
    (AuthenticationGSS(), b"R\x00\x00\x00\x08\x00\x00\x00\x07"),
    (AuthenticationGSSContinue(b"tok"), b"R\x00\x00\x00\x0b\x00\x00\x00\x08tok"),
    (AuthenticationSSPI(), b"R\x00\x00\x00\x08\x00\x00\x00\x09"),
    (
        AuthenticationSASL(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]),
        b"R\x00\x00\x00\x2a\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00",
    ),
    (
        AuthenticationSASLContinue(b"r=abc,s=xyz,i=4096"),
        b"R\x00\x00\x00\x1a\x00\x00\x00\x0br=abc,s=xyz,i=4096",
    ),
    (AuthenticationSASLFinal(b"v=sig"), b"R\x00\x00\x00\x0d\x00\x00\x00\x0cv=sig"),
    (BackendKeyData(12345, 0xDEADBEEF), b"K\x00\x00\x00\x0c\x00\x00\x30\x39\xde\xad\xbe\xef"),
    (BindComplete(), b"2\x00\x00\x00\x04"),
    (CloseComplete(), b"3\x00\x00\x00\x04"),
    (CommandComplete("SELECT 1"), b"C\x00\x00\x00\x0dSELECT 1\x00"),
    (CopyInResponse(0, [0, 0]), b"G\x00\x00\x00\x0b\x00\x00\x02\x00\x00\x00\x00"),
    (CopyOutResponse(1, [1]), b"H\x00\x00\x00\x09\x01\x00\x01\x00\x01"),
    (CopyBothResponse(0, []), b"W\x00\x00\x00\x07\x00\x00\x00"),
    (CopyData(b"x"), b"d\x00\x00\x00\x05x"),
    (CopyDone(), b"c\x00\x00\x00\x04"),
    (
        DataRow([b"1", None, b""]),
        b"D\x00\x00\x00\x13\x00\x03\x00\x00\x00\x011\xff\xff\xff\xff\x00\x00\x00\x00",
    ),
    (DataRow([]), b"D\x00\x00\x00\x06\x00\x00"),
    (EmptyQueryResponse(), b"I\x00\x00\x00\x04"),
    (
        ErrorResponse({"S": "ERROR", "V": "ERROR", "C": "22012", "M": "division by zero"}),
        b"E\x00\x00\x00\x2cSERROR\x00VERROR\x00C22012\x00Mdivision by zero\x00\x00",
    ),
    (NoticeResponse({"S": "NOTICE", "M": "hi"}), b"N\x00\x00\x00\x11SNOTICE\x00Mhi\x00\x00"),
    (
        FunctionCallResponse(b"\x00\x00\x00\x05"),
        b"V\x00\x00\x00\x0c\x00\x00\x00\x04\x00\x00\x00\x05",
    ),
    (FunctionCallResponse(None), b"V\x00\x00\x00\x08\xff\xff\xff\xff"),
    (
        NegotiateProtocolVersion(196608, ["_pq_.x"]),
        b"v\x00\x00\x00\x13\x00\x03\x00\x00\x00\x00\x00\x01_pq_.x\x00",
    ),
    (NoData(), b"n\x00\x00\x00\x04"),
    (NotificationResponse(42, "ch", "hi"), b"A\x00\x00\x00\x0e\x00\x00\x00\x2ach\x00hi\x00"),
    (
        ParameterDescription([23, 25]),
        b"t\x00\x00\x00\x0e\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19",
    ),
    (
        ParameterStatus("client_encoding", "UTF8"),
        b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00",
    ),
    (ParseComplete(), b"1\x00\x00\x00\x04"),
    (PortalSuspended(), b"s\x00\x00\x00\x04"),
    (ReadyForQuery("I"), b"Z\x00\x00\x00\x05I"),
    (ReadyForQuery("T"), b"Z\x00\x00\x00\x05T"),
    (ReadyForQuery("E"), b"Z\x00\x00\x00\x05E"),
    (
        RowDescription([Field("a", 16384, 1, 23, 4, -1, 0)]),
        b"T\x00\x00\x00\x1a\x00\x01a\x00"
        b"\x00\x00\x40\x00"  # table OID 16384
        b"\x00\x01"  # attnum 1
        b"\x00\x00\x00\x17"  # int4
        b"\x00\x04"  # typlen 4
        b"\xff\xff\xff\xff"  # typmod -1
        b"\x00\x00",  # text
    ),
    (RowDescription([]), b"T\x00\x00\x00\x06\x00\x00"),
]


def _one(parser: FrontendParser | BackendParser, wire: bytes) -> RawMessage:
    parser.feed(wire)
    raws = parser.drain_raw()
    assert len(raws) == 1
    assert parser.pending_bytes == 0
    return raws[0]


@pytest.mark.parametrize(("msg", "wire"), FRONTEND_STARTUP, ids=lambda v: type(v).__name__)
def test_frontend_startup_packets(msg: FrontendMessage, wire: bytes) -> None:
    assert encode(msg) == wire
    raw = _one(FrontendParser(), wire)
    assert raw.type == 0
    assert raw.wire == wire
    assert decode_frontend(raw) == msg


@pytest.mark.parametrize(("msg", "wire"), FRONTEND_TAGGED, ids=lambda v: type(v).__name__)
def test_frontend_tagged_messages(msg: FrontendMessage, wire: bytes) -> None:
    assert msg.encode() == wire
    parser = FrontendParser()
    parser.feed(MINIMAL_STARTUP)
    assert parser.next_raw() == RawMessage(0, MINIMAL_STARTUP[4:])
    raw = _one(parser, wire)
    assert raw.type == wire[0]
    assert raw.body == wire[5:]
    assert raw.wire == wire
    decoded = decode_frontend(raw)
    if isinstance(msg, SASLInitialResponse | SASLResponse | GSSResponse):
        # 'p' carries several things: the body stays generic until read as one of them.
        assert decoded == PasswordMessage(wire[5:])
        reread = {
            SASLInitialResponse: decoded.as_sasl_initial_response,
            SASLResponse: decoded.as_sasl_response,
            GSSResponse: decoded.as_gss_response,
        }[type(msg)]()
        assert reread == msg
    else:
        assert decoded == msg


@pytest.mark.parametrize(("msg", "wire"), BACKEND, ids=lambda v: type(v).__name__)
def test_backend_messages(msg: BackendMessage, wire: bytes) -> None:
    assert encode(msg) == wire
    raw = _one(BackendParser(), wire)
    assert raw.wire == wire
    assert decode_backend(raw) == msg


def test_every_protocol_message_has_a_row() -> None:
    import server.gateway.pgwire.messages as messages

    covered = {type(m) for m, _ in FRONTEND_STARTUP + FRONTEND_TAGGED + BACKEND}
    defined = {
        cls
        for name, cls in vars(messages).items()
        if isinstance(cls, type)
        and issubclass(cls, messages.Message)
        and not name.startswith("_")
        and cls is not messages.Message
    }
    assert defined - covered == set()


def test_a_password_reads_as_text() -> None:
    assert PasswordMessage(b"s3cret \xc3\xa9\x00").as_password() == "s3cret é"


def test_report_accessors() -> None:
    err = ErrorResponse({"S": "FEHLER", "V": "ERROR", "C": "42501", "M": "nein"})
    assert (err.severity, err.sqlstate, err.message) == ("ERROR", "42501", "nein")
    assert NoticeResponse({}).sqlstate is None


# Values the encoder must refuse rather than turn into bytes that frame differently.
REFUSED_ENCODINGS: list[tuple[FrontendMessage | BackendMessage, str]] = [
    (Query("select 1\x00; drop table t"), "NUL"),
    (StartupMessage({"": "x"}), "must not be empty"),
    (StartupMessage({"user": "a\x00b"}), "NUL"),
    (SASLInitialResponse("", b""), "must not be empty"),
    (AuthenticationSASL(["SCRAM-SHA-256", ""]), "must not be empty"),
    (Bind("", "", [0, 0], [b"1"]), "2 parameter formats but 1 parameters"),
    (Bind("", "", [2], [b"1"]), "format code must be 0 or 1"),
    (Bind("", "", [], [], [7]), "format code must be 0 or 1"),
    (FunctionCall(1, [], [], 2), "format code must be 0 or 1"),
    (Describe("X", ""), "kind must be 'S' or 'P'"),
    (Close("", ""), "kind must be 'S' or 'P'"),
    (ReadyForQuery("X"), "transaction status"),
    (ErrorResponse({"SV": "ERROR"}), "one non-NUL byte"),
    (ErrorResponse({"\x00": "ERROR"}), "one non-NUL byte"),
    (AuthenticationMD5Password(b"abc"), "4 bytes"),
    (CopyOutResponse(0, [1]), "only text columns"),
    (CopyInResponse(2, []), "copy format"),
    (RowDescription([Field("a", 0, 0, 23, 4, -1, 3)]), "format must be 0 or 1"),
    (CancelRequest(-1, 0), "cannot encode CancelRequest"),
    (BackendKeyData(1, 1 << 32), "cannot encode BackendKeyData"),
    (Execute("", 1 << 31), "cannot encode Execute"),
    (Parse("", "", [1 << 32]), "cannot encode Parse"),
    (Query("\ud800"), "surrogate"),
]


@pytest.mark.parametrize(("msg", "why"), REFUSED_ENCODINGS, ids=lambda v: type(v).__name__)
def test_encoder_refuses_values_that_would_change_the_framing(
    msg: FrontendMessage | BackendMessage, why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        msg.encode()
