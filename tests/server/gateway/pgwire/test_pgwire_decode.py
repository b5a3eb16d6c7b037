"""Strict decoding: bodies that disagree with themselves are refused, never guessed at."""

from __future__ import annotations

import pytest

from server.gateway.pgwire import (
    PasswordMessage,
    ProtocolViolation,
    RawMessage,
    SASLInitialResponse,
    decode_backend,
    decode_frontend,
)

I16_1 = b"\x00\x01"
I16_2 = b"\x00\x02"
NULL = b"\xff\xff\xff\xff"

# (case, type byte, body, what the error says)
MALFORMED_FRONTEND: list[tuple[str, bytes, bytes, str]] = [
    ("startup without terminator", b"\x00", b"\x00\x03\x00\x00user\x00bob\x00", "unterminated"),
    ("startup without any list", b"\x00", b"\x00\x03\x00\x00", "unterminated"),
    ("startup name without value", b"\x00", b"\x00\x03\x00\x00user\x00\x00", "unterminated"),
    (
        "startup trailing garbage",
        b"\x00",
        b"\x00\x03\x00\x00user\x00bob\x00\x00junk",
        "4 bytes of trailing data",
    ),
    (
        "startup repeated name",
        b"\x00",
        b"\x00\x03\x00\x00user\x00a\x00user\x00b\x00\x00",
        "duplicate startup parameter 'user'",
    ),
    ("startup bad UTF-8", b"\x00", b"\x00\x03\x00\x00user\x00\xff\x00\x00", "invalid UTF-8"),
    ("startup unknown code", b"\x00", b"\x00\x02\x00\x00\x00", "unsupported frontend protocol 2.0"),
    ("startup too short", b"\x00", b"\x00\x03", "insufficient data"),
    ("SSLRequest with data", b"\x00", b"\x04\xd2\x16\x2f\x00", "1 bytes of trailing data"),
    ("cancel too short", b"\x00", b"\x04\xd2\x16\x2e\x00\x00\x00\x01", "insufficient data"),
    ("Query without NUL", b"Q", b"select 1", "unterminated"),
    ("Query trailing garbage", b"Q", b"select 1\x00x", "1 bytes of trailing data"),
    ("Query bad UTF-8", b"Q", b"select '\xc3'\x00", "invalid UTF-8"),
    ("Parse missing OID", b"P", b"\x00select $1\x00" + I16_2 + b"\x00\x00\x00\x17", "insufficient"),
    ("Parse no count", b"P", b"\x00select 1\x00", "insufficient data"),
    (
        "Bind declares 2 params, carries 1",
        b"B",
        b"\x00\x00" + b"\x00\x00" + I16_2 + b"\x00\x00\x00\x011" + b"\x00\x00",
        "insufficient data",
    ),
    (
        "Bind value longer than message",
        b"B",
        b"\x00\x00" + b"\x00\x00" + I16_1 + b"\x00\x00\x00\x09abc",
        "insufficient data",
    ),
    (
        "Bind negative value length",
        b"B",
        b"\x00\x00" + b"\x00\x00" + I16_1 + b"\xff\xff\xff\xfe" + b"\x00\x00",
        "invalid value length -2",
    ),
    (
        "Bind 2 formats for 3 params",
        b"B",
        b"\x00\x00" + I16_2 + b"\x00\x00\x00\x00" + b"\x00\x03" + NULL * 3 + b"\x00\x00",
        "2 parameter formats but 3 parameters",
    ),
    (
        "Bind format code 2",
        b"B",
        b"\x00\x00" + I16_1 + b"\x00\x02" + I16_1 + NULL + b"\x00\x00",
        "invalid format code 2",
    ),
    (
        "Bind result format -1",
        b"B",
        b"\x00\x00" + b"\x00\x00" + b"\x00\x00" + I16_1 + b"\xff\xff",
        "invalid format code -1",
    ),
    ("Bind trailing garbage", b"B", b"\x00\x00" + b"\x00\x00" * 3 + b"!", "trailing data"),
    ("Bind missing result formats", b"B", b"\x00\x00" + b"\x00\x00" * 2, "insufficient data"),
    ("Describe kind X", b"D", b"Xs1\x00", "invalid subtype 'X'"),
    ("Describe empty", b"D", b"", "insufficient data"),
    ("Close kind 0", b"C", b"\x00s1\x00", "invalid subtype 0x00"),
    ("Close no name", b"C", b"S", "unterminated"),
    ("Execute short", b"E", b"\x00\x00\x00", "insufficient data"),
    ("Execute trailing", b"E", b"\x00\x00\x00\x00\x00\x00", "trailing data"),
    ("Sync with a body", b"S", b"\x00", "malformed Sync message"),
    ("Flush with a body", b"H", b"x", "malformed Flush message"),
    ("Terminate with a body", b"X", b"x", "malformed Terminate message"),
    ("CopyDone with a body", b"c", b"x", "malformed CopyDone message"),
    ("CopyFail unterminated", b"f", b"oops", "unterminated"),
    (
        "FunctionCall 2 formats for 1 arg",
        b"F",
        b"\x00\x00\x00\xb1" + I16_2 + b"\x00\x00\x00\x00" + I16_1 + NULL + b"\x00\x00",
        "2 argument formats but 1 arguments",
    ),
    (
        "FunctionCall no result format",
        b"F",
        b"\x00\x00\x00\xb1" + b"\x00\x00" + b"\x00\x00",
        "insufficient data",
    ),
    ("unknown type", b"z", b"", "unknown message type 'z' from client"),
    ("backend-only type", b"T", b"\x00\x00", "unknown message type 'T' from client"),
]


@pytest.mark.parametrize(
    ("case", "type_", "body", "error"), MALFORMED_FRONTEND, ids=[c[0] for c in MALFORMED_FRONTEND]
)
def test_malformed_frontend_bodies(case: str, type_: bytes, body: bytes, error: str) -> None:
    with pytest.raises(ProtocolViolation, match=error):
        decode_frontend(RawMessage(type_[0], body))


MALFORMED_BACKEND: list[tuple[str, bytes, bytes, str]] = [
    ("auth code 99", b"R", b"\x00\x00\x00\x63", "unknown authentication request code 99"),
    ("auth no code", b"R", b"\x00\x00", "insufficient data"),
    ("AuthenticationOk with data", b"R", b"\x00\x00\x00\x00x", "trailing data"),
    ("MD5 salt of 3 bytes", b"R", b"\x00\x00\x00\x05abc", "insufficient data"),
    ("MD5 salt of 5 bytes", b"R", b"\x00\x00\x00\x05abcde", "trailing data"),
    ("SASL list unterminated", b"R", b"\x00\x00\x00\x0aSCRAM-SHA-256\x00", "unterminated"),
    ("SASL trailing", b"R", b"\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00x", "trailing data"),
    ("BackendKeyData short", b"K", b"\x00\x00\x00\x01\x00\x00", "insufficient data"),
    ("BackendKeyData long key", b"K", b"\x00\x00\x00\x01" + b"k" * 32, "trailing data"),
    ("BindComplete with a body", b"2", b"\x00", "malformed BindComplete message"),
    ("CommandComplete unterminated", b"C", b"SELECT 1", "unterminated"),
    ("CommandComplete bad UTF-8", b"C", b"\xffSELECT\x00", "invalid UTF-8"),
    ("Copy overall format 2", b"H", b"\x02\x00\x00", "invalid overall format 2"),
    ("Copy text with binary column", b"G", b"\x00\x00\x01\x00\x01", "binary column in a text COPY"),
    ("Copy column format 5", b"W", b"\x01\x00\x01\x00\x05", "invalid format code 5"),
    ("Copy column count too high", b"H", b"\x00\x00\x02\x00\x00", "insufficient data"),
    ("DataRow empty", b"D", b"", "insufficient data"),
    ("DataRow count too high", b"D", I16_2 + b"\x00\x00\x00\x011", "insufficient data"),
    ("DataRow value too long", b"D", I16_1 + b"\x00\x00\x00\x05abc", "invalid value length 5"),
    ("DataRow negative length", b"D", I16_1 + b"\xff\xff\xff\xfb", "invalid value length -5"),
    ("DataRow trailing", b"D", I16_1 + NULL + b"x", "1 bytes of trailing data"),
    ("DataRow count too low", b"D", b"\x00\x00" + NULL, "4 bytes of trailing data"),
    ("ErrorResponse unterminated list", b"E", b"SERROR\x00", "insufficient data"),
    ("ErrorResponse unterminated field", b"E", b"SERROR", "unterminated"),
    ("ErrorResponse repeated field", b"E", b"Mone\x00Mtwo\x00\x00", "duplicate field 'M'"),
    ("ErrorResponse trailing", b"E", b"Mone\x00\x00M", "trailing data"),
    ("NoticeResponse empty", b"N", b"", "insufficient data"),
    ("FunctionCallResponse short", b"V", b"\x00\x00\x00\x04ab", "insufficient data"),
    ("FunctionCallResponse -2", b"V", b"\xff\xff\xff\xfe", "invalid value length -2"),
    ("Negotiate count -1", b"v", b"\x00\x03\x00\x00\xff\xff\xff\xff", "invalid option count -1"),
    ("Negotiate missing name", b"v", b"\x00\x03\x00\x00\x00\x00\x00\x01", "unterminated"),
    ("Notification no payload", b"A", b"\x00\x00\x00\x01ch\x00", "unterminated"),
    ("ParameterDescription short", b"t", I16_2 + b"\x00\x00\x00\x17", "insufficient data"),
    ("ParameterStatus one string", b"S", b"client_encoding\x00", "unterminated"),
    ("ReadyForQuery X", b"Z", b"X", "invalid status"),
    ("ReadyForQuery empty", b"Z", b"", "invalid status"),
    ("ReadyForQuery two bytes", b"Z", b"II", "invalid status"),
    ("RowDescription truncated", b"T", I16_1 + b"a\x00" + b"\x00" * 17, "insufficient data"),
    (
        "RowDescription format 2",
        b"T",
        I16_1 + b"a\x00" + b"\x00" * 16 + b"\x00\x02",
        "invalid format code 2",
    ),
    ("RowDescription trailing", b"T", b"\x00\x00x", "trailing data"),
    ("unknown type", b"x", b"", "unknown message type 'x' from server"),
    ("frontend-only type", b"Q", b"select 1\x00", "unknown message type 'Q' from server"),
    ("startup type", b"\x00", b"\x00\x03\x00\x00\x00", "unknown message type 0x00 from server"),
]


@pytest.mark.parametrize(
    ("case", "type_", "body", "error"), MALFORMED_BACKEND, ids=[c[0] for c in MALFORMED_BACKEND]
)
def test_malformed_backend_bodies(case: str, type_: bytes, body: bytes, error: str) -> None:
    with pytest.raises(ProtocolViolation, match=error) as exc:
        decode_backend(RawMessage(type_[0], body))
    assert exc.value.sqlstate == "08P01"


@pytest.mark.parametrize(
    ("body", "password"),
    [(b"\x00", ""), (b"hunter2\x00", "hunter2"), (b"md5" + b"0" * 32 + b"\x00", "md5" + "0" * 32)],
)
def test_password_reading(body: bytes, password: str) -> None:
    assert PasswordMessage(body).as_password() == password


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "invalid password packet size"),
        (b"hunter2", "invalid password packet size"),
        (b"hun\x00ter2\x00", "invalid password packet size"),
        (b"\xff\x00", "invalid UTF-8"),
    ],
)
def test_malformed_passwords(body: bytes, error: str) -> None:
    with pytest.raises(ProtocolViolation, match=error):
        PasswordMessage(body).as_password()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"SCRAM-SHA-256\x00\x00\x00\x00\x03abc", SASLInitialResponse("SCRAM-SHA-256", b"abc")),
        (b"SCRAM-SHA-256\x00\x00\x00\x00\x00", SASLInitialResponse("SCRAM-SHA-256", b"")),
        (b"SCRAM-SHA-256\x00" + NULL, SASLInitialResponse("SCRAM-SHA-256", None)),
    ],
)
def test_sasl_initial_response_reading(body: bytes, expected: SASLInitialResponse) -> None:
    assert PasswordMessage(body).as_sasl_initial_response() == expected


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"SCRAM-SHA-256\x00\x00\x00\x00\x04abc", "declares 4 bytes of data but carries 3"),
        (b"SCRAM-SHA-256\x00\x00\x00\x00\x02abc", "declares 2 bytes of data but carries 3"),
        (b"SCRAM-SHA-256\x00" + NULL + b"x", "declares -1 bytes"),
        (b"SCRAM-SHA-256\x00\x00\x00", "malformed SASLInitialResponse"),
        (b"SCRAM-SHA-256", "malformed SASLInitialResponse"),
        (b"\x00\x00\x00\x00\x00", "malformed SASLInitialResponse"),
        (b"\xff\x00\x00\x00\x00\x00", "invalid UTF-8"),
    ],
)
def test_malformed_sasl_initial_responses(body: bytes, error: str) -> None:
    with pytest.raises(ProtocolViolation, match=error):
        PasswordMessage(body).as_sasl_initial_response()
