"""Typed decoding of framed messages, on demand and strict.

``decode_frontend`` reads what a client sends, ``decode_backend`` what a
server sends (several type bytes mean different things in each direction:
'D' is Describe one way and DataRow the other).  Each is a table lookup by
type byte followed by one small reader for that message's body.

Strictness is the point: a body must be exactly what its counts and
terminators say, with no bytes missing and none left over; C strings must be
NUL-terminated and valid UTF-8; format codes must be 0 or 1; a Bind must have
0, 1 or one-per-parameter format codes, as PostgreSQL requires; startup
parameters, error fields and such keyed lists must not repeat a key, since
two readers of the same bytes could otherwise see different values.  Anything
else, and any type byte not in the table, raises :class:`ProtocolViolation`:
the gateway refuses what it cannot read rather than passing it on.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, NoReturn, TypeVar

from server.gateway.pgwire.errors import ProtocolViolation
from server.gateway.pgwire.framing import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    SSL_REQUEST_CODE,
    RawMessage,
    describe_type,
)
from server.gateway.pgwire.messages import (
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
    FunctionCall,
    FunctionCallResponse,
    GSSENCRequest,
    Message,
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
    ReadyForQuery,
    RowDescription,
    SSLRequest,
    StartupMessage,
    Sync,
    Terminate,
)

_INT16 = struct.Struct("!h")
_UINT16 = struct.Struct("!H")
_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")
_FIELD = struct.Struct("!IhIhih")
_M = TypeVar("_M", bound=Message)


class _Reader:
    """A cursor over one body; every read checks that the bytes are there."""

    __slots__ = ("body", "pos", "what")

    def __init__(self, body: bytes, what: str) -> None:
        self.body = body
        self.pos = 0
        self.what = what

    def fail(self, detail: str) -> NoReturn:
        raise ProtocolViolation(f"malformed {self.what} message: {detail}")

    def claim(self, size: int) -> int:
        """Reserve ``size`` bytes at the cursor and return where they start."""
        pos = self.pos
        if len(self.body) - pos < size:
            self.fail("insufficient data left in message")
        self.pos = pos + size
        return pos

    def byte(self) -> int:
        return self.body[self.claim(1)]

    def int16(self) -> int:
        return int(_INT16.unpack_from(self.body, self.claim(2))[0])

    def uint16(self) -> int:
        return int(_UINT16.unpack_from(self.body, self.claim(2))[0])

    def int32(self) -> int:
        return int(_INT32.unpack_from(self.body, self.claim(4))[0])

    def uint32(self) -> int:
        return int(_UINT32.unpack_from(self.body, self.claim(4))[0])

    def take(self, size: int) -> bytes:
        pos = self.claim(size)
        return self.body[pos : pos + size]

    def cstring(self) -> str:
        end = self.body.find(b"\x00", self.pos)
        if end < 0:
            self.fail("unterminated string")
        raw = self.body[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail("invalid UTF-8 in string")

    def kind(self) -> str:
        code = self.byte()
        if code not in b"SP":
            self.fail(f"invalid subtype {describe_type(code)} (expected 'S' or 'P')")
        return chr(code)

    def format_code(self) -> int:
        code = self.int16()
        if code not in (0, 1):
            self.fail(f"invalid format code {code}")
        return code

    def format_codes(self) -> list[int]:
        return [self.format_code() for _ in range(self.uint16())]

    def value(self) -> bytes | None:
        length = self.int32()
        if length == -1:
            return None
        if length < 0:
            self.fail(f"invalid value length {length}")
        return self.take(length)

    def values(self) -> list[bytes | None]:
        return [self.value() for _ in range(self.uint16())]

    def rest(self) -> bytes:
        pos = self.pos
        self.pos = len(self.body)
        return self.body[pos:] if pos else self.body

    def end(self) -> None:
        left = len(self.body) - self.pos
        if left:
            self.fail(f"{left} bytes of trailing data")


def _empty(cls: type[_M]) -> Callable[[bytes], _M]:
    """A decoder for a message without a body; its one immutable instance is shared."""
    instance = cls()
    what = cls.__name__

    def decode(body: bytes) -> _M:
        if body:
            raise ProtocolViolation(f"malformed {what} message: {len(body)} bytes of trailing data")
        return instance

    return decode


# --------------------------------------------------------------------------
# Frontend


def _startup(body: bytes) -> FrontendMessage:
    r = _Reader(body, "startup")
    code = r.uint32()
    if code == SSL_REQUEST_CODE:
        r.end()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        r.end()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        pid = r.uint32()
        secret = r.uint32()
        r.end()
        return CancelRequest(pid, secret)
    if code >> 16 != 3:
        raise ProtocolViolation(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")
    params: dict[str, str] = {}
    while name := r.cstring():
        if name in params:
            r.fail(f"duplicate startup parameter {name!r}")
        params[name] = r.cstring()
    r.end()
    return StartupMessage(params, code)


def _password(body: bytes) -> FrontendMessage:
    return PasswordMessage(body)


def _query(body: bytes) -> FrontendMessage:
    r = _Reader(body, "Query")
    query = r.cstring()
    r.end()
    return Query(query)


def _parse(body: bytes) -> FrontendMessage:
    r = _Reader(body, "Parse")
    name = r.cstring()
    query = r.cstring()
    oids = [r.uint32() for _ in range(r.uint16())]
    r.end()
    return Parse(name, query, oids)


def _bind(body: bytes) -> FrontendMessage:
    r = _Reader(body, "Bind")
    portal = r.cstring()
    statement = r.cstring()
    param_formats = r.format_codes()
    params = r.values()
    if len(param_formats) not in (0, 1, len(params)):
        r.fail(f"{len(param_formats)} parameter formats but {len(params)} parameters")
    result_formats = r.format_codes()
    r.end()
    return Bind(portal, statement, param_formats, params, result_formats)


def _describe(body: bytes) -> FrontendMessage:
    r = _Reader(body, "Describe")
    kind = r.kind()
    name = r.cstring()
    r.end()
    return Describe(kind, name)


def _execute(body: bytes) -> FrontendMessage:
    r = _Reader(body, "Execute")
    portal = r.cstring()
    max_rows = r.int32()
    r.end()
    return Execute(portal, max_rows)


def _close(body: bytes) -> FrontendMessage:
    r = _Reader(body, "Close")
    kind = r.kind()
    name = r.cstring()
    r.end()
    return Close(kind, name)


def _copy_data(body: bytes) -> CopyData:
    return CopyData(body)


def _copy_fail(body: bytes) -> FrontendMessage:
    r = _Reader(body, "CopyFail")
    message = r.cstring()
    r.end()
    return CopyFail(message)


def _function_call(body: bytes) -> FrontendMessage:
    r = _Reader(body, "FunctionCall")
    oid = r.uint32()
    arg_formats = r.format_codes()
    args = r.values()
    if len(arg_formats) not in (0, 1, len(args)):
        r.fail(f"{len(arg_formats)} argument formats but {len(args)} arguments")
    result_format = r.format_code()
    r.end()
    return FunctionCall(oid, arg_formats, args, result_format)


_FRONTEND: Final[dict[int, Callable[[bytes], FrontendMessage]]] = {
    0: _startup,
    ord("p"): _password,
    ord("Q"): _query,
    ord("P"): _parse,
    ord("B"): _bind,
    ord("D"): _describe,
    ord("E"): _execute,
    ord("C"): _close,
    ord("S"): _empty(Sync),
    ord("H"): _empty(Flush),
    ord("X"): _empty(Terminate),
    ord("d"): _copy_data,
    ord("c"): _empty(CopyDone),
    ord("f"): _copy_fail,
    ord("F"): _function_call,
}


# The relay hands the same message to the guard and then to masking, and both
# decode it: the last result is kept, tied to the very message object (the
# reference held here keeps its identity from being reused).  Messages are frozen.
_last_frontend: tuple[RawMessage, FrontendMessage] | None = None


def decode_frontend(raw: RawMessage) -> FrontendMessage:
    """The typed form of a message a client sent; type 0 is a startup packet."""
    global _last_frontend
    last = _last_frontend
    if last is not None and last[0] is raw:
        return last[1]
    decoder = _FRONTEND.get(raw.type)
    if decoder is None:
        raise ProtocolViolation(f"unknown message type {describe_type(raw.type)} from client")
    msg = decoder(raw.body)
    _last_frontend = (raw, msg)
    return msg


# --------------------------------------------------------------------------
# Backend

_AUTH_WITHOUT_DATA: Final[dict[int, Callable[[], BackendMessage]]] = {
    0: AuthenticationOk,
    2: AuthenticationKerberosV5,
    3: AuthenticationCleartextPassword,
    6: AuthenticationSCMCredential,
    7: AuthenticationGSS,
    9: AuthenticationSSPI,
}
_AUTH_WITH_DATA: Final[dict[int, Callable[[bytes], BackendMessage]]] = {
    8: AuthenticationGSSContinue,
    11: AuthenticationSASLContinue,
    12: AuthenticationSASLFinal,
}


def _authentication(body: bytes) -> BackendMessage:
    r = _Reader(body, "Authentication")
    code = r.int32()
    simple = _AUTH_WITHOUT_DATA.get(code)
    if simple is not None:
        r.end()
        return simple()
    with_data = _AUTH_WITH_DATA.get(code)
    if with_data is not None:
        return with_data(r.rest())
    if code == 5:
        salt = r.take(4)
        r.end()
        return AuthenticationMD5Password(salt)
    if code == 10:
        mechanisms = []
        while name := r.cstring():
            mechanisms.append(name)
        r.end()
        return AuthenticationSASL(mechanisms)
    raise ProtocolViolation(f"unknown authentication request code {code}")


def _backend_key_data(body: bytes) -> BackendMessage:
    r = _Reader(body, "BackendKeyData")
    pid = r.uint32()
    secret = r.uint32()
    r.end()
    return BackendKeyData(pid, secret)


def _command_complete(body: bytes) -> BackendMessage:
    r = _Reader(body, "CommandComplete")
    tag = r.cstring()
    r.end()
    return CommandComplete(tag)


def _copy_response(
    cls: type[CopyInResponse] | type[CopyOutResponse] | type[CopyBothResponse],
) -> Callable[[bytes], BackendMessage]:
    what = cls.__name__

    def decode(body: bytes) -> BackendMessage:
        r = _Reader(body, what)
        overall = r.byte()
        if overall not in (0, 1):
            r.fail(f"invalid overall format {overall}")
        formats = r.format_codes()
        r.end()
        if overall == 0 and any(formats):
            r.fail("binary column in a text COPY")
        return cls(overall, formats)

    return decode


def _data_row(body: bytes) -> BackendMessage:
    # The hottest decoder when masking: a tight loop instead of _Reader calls.
    size = len(body)
    if size < 2:
        raise ProtocolViolation("malformed DataRow message: insufficient data left in message")
    (count,) = _UINT16.unpack_from(body, 0)
    values: list[bytes | None] = []
    append = values.append
    unpack = _INT32.unpack_from
    pos = 2
    for _ in range(count):
        if size - pos < 4:
            raise ProtocolViolation("malformed DataRow message: insufficient data left in message")
        (length,) = unpack(body, pos)
        pos += 4
        if length == -1:
            append(None)
        elif 0 <= length <= size - pos:
            append(body[pos : pos + length])
            pos += length
        else:
            raise ProtocolViolation(f"malformed DataRow message: invalid value length {length}")
    if pos != size:
        raise ProtocolViolation(f"malformed DataRow message: {size - pos} bytes of trailing data")
    return DataRow(values)


def _fields(body: bytes, what: str) -> dict[str, str]:
    r = _Reader(body, what)
    fields: dict[str, str] = {}
    while code := r.byte():
        key = chr(code)
        if key in fields:
            r.fail(f"duplicate field {describe_type(code)}")
        fields[key] = r.cstring()
    r.end()
    return fields


def _error_response(body: bytes) -> BackendMessage:
    return ErrorResponse(_fields(body, "ErrorResponse"))


def _notice_response(body: bytes) -> BackendMessage:
    return NoticeResponse(_fields(body, "NoticeResponse"))


def _function_call_response(body: bytes) -> BackendMessage:
    r = _Reader(body, "FunctionCallResponse")
    result = r.value()
    r.end()
    return FunctionCallResponse(result)


def _negotiate_protocol_version(body: bytes) -> BackendMessage:
    r = _Reader(body, "NegotiateProtocolVersion")
    newest_version = r.int32()
    count = r.int32()
    if count < 0:
        r.fail(f"invalid option count {count}")
    names = []
    for _ in range(count):
        names.append(r.cstring())
    r.end()
    return NegotiateProtocolVersion(newest_version, names)


def _notification_response(body: bytes) -> BackendMessage:
    r = _Reader(body, "NotificationResponse")
    pid = r.uint32()
    channel = r.cstring()
    payload = r.cstring()
    r.end()
    return NotificationResponse(pid, channel, payload)


def _parameter_description(body: bytes) -> BackendMessage:
    r = _Reader(body, "ParameterDescription")
    oids = [r.uint32() for _ in range(r.uint16())]
    r.end()
    return ParameterDescription(oids)


def _parameter_status(body: bytes) -> BackendMessage:
    r = _Reader(body, "ParameterStatus")
    name = r.cstring()
    value = r.cstring()
    r.end()
    return ParameterStatus(name, value)


def _ready_for_query(body: bytes) -> BackendMessage:
    if body not in (b"I", b"T", b"E"):
        raise ProtocolViolation(f"malformed ReadyForQuery message: invalid status {body!r}")
    return ReadyForQuery(body.decode("ascii"))


def _row_description(body: bytes) -> BackendMessage:
    r = _Reader(body, "RowDescription")
    fields = []
    for _ in range(r.uint16()):
        name = r.cstring()
        pos = r.claim(_FIELD.size)
        table_oid, attnum, type_oid, type_size, type_modifier, fmt = _FIELD.unpack_from(body, pos)
        if fmt not in (0, 1):
            r.fail(f"invalid format code {fmt}")
        fields.append(Field(name, table_oid, attnum, type_oid, type_size, type_modifier, fmt))
    r.end()
    return RowDescription(fields)


_BACKEND: Final[dict[int, Callable[[bytes], BackendMessage]]] = {
    ord("R"): _authentication,
    ord("K"): _backend_key_data,
    ord("2"): _empty(BindComplete),
    ord("3"): _empty(CloseComplete),
    ord("C"): _command_complete,
    ord("G"): _copy_response(CopyInResponse),
    ord("H"): _copy_response(CopyOutResponse),
    ord("W"): _copy_response(CopyBothResponse),
    ord("d"): _copy_data,
    ord("c"): _empty(CopyDone),
    ord("D"): _data_row,
    ord("I"): _empty(EmptyQueryResponse),
    ord("E"): _error_response,
    ord("N"): _notice_response,
    ord("V"): _function_call_response,
    ord("v"): _negotiate_protocol_version,
    ord("n"): _empty(NoData),
    ord("A"): _notification_response,
    ord("t"): _parameter_description,
    ord("S"): _parameter_status,
    ord("1"): _empty(ParseComplete),
    ord("s"): _empty(PortalSuspended),
    ord("Z"): _ready_for_query,
    ord("T"): _row_description,
}


def decode_backend(raw: RawMessage) -> BackendMessage:
    """The typed form of a message a server sent."""
    decoder = _BACKEND.get(raw.type)
    if decoder is None:
        raise ProtocolViolation(f"unknown message type {describe_type(raw.type)} from server")
    return decoder(raw.body)
