"""Typed PostgreSQL v3 messages and their byte-exact encoding.

Every protocol 3.0 message is a frozen, slotted dataclass whose ``encode()``
returns the complete wire form (type byte, length word, body; startup packets
have no type byte).  Decoding lives in :mod:`server.gateway.pgwire.decode`,
so that ``decode_*(raw).encode() == raw.wire`` for every well-formed message.

Encoding refuses values that would change the framing rather than quietly
producing different bytes: a NUL inside a string that goes on the wire as a
C string, an empty startup parameter name or SASL mechanism (either would
end its list early), format codes other than 0/1, integers out of range.
Those are programming errors on our side, so they raise :class:`ValueError`,
never :class:`ProtocolViolation` (which is reserved for what the peer sent).

Text is UTF-8 both ways: the gateway pins client_encoding to UTF8, so anything
else is refused when decoding and cannot be produced when encoding.

Messages that several tags share ('p' carries passwords, SASL and GSSAPI
responses) decode to :class:`PasswordMessage`, which keeps the body as bytes;
its ``as_*`` methods read it the way the current authentication exchange says
it must be read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar, Final

from server.gateway.pgwire.errors import ProtocolViolation
from server.gateway.pgwire.framing import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    PROTOCOL_3_0,
    SSL_REQUEST_CODE,
    encode_raw,
)

_INT16 = struct.Struct("!h")
_UINT16 = struct.Struct("!H")
_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")
_NULL_VALUE: Final = b"\xff\xff\xff\xff"

TEXT: Final = 0
BINARY: Final = 1


def _cstr(text: str, what: str) -> bytes:
    data = text.encode("utf-8")
    if b"\x00" in data:
        raise ValueError(f"{what} must not contain a NUL character")
    return data + b"\x00"


def _name(text: str, what: str) -> bytes:
    """A C string that starts a list entry: empty would read as the list's end."""
    if not text:
        raise ValueError(f"{what} must not be empty")
    return _cstr(text, what)


def _count(count: int, what: str) -> bytes:
    if count > 0xFFFF:
        raise ValueError(f"too many {what}: {count} (at most 65535)")
    return _UINT16.pack(count)


def _formats(formats: list[int], what: str) -> bytes:
    for code in formats:
        if code not in (TEXT, BINARY):
            raise ValueError(f"{what}: format code must be 0 or 1, not {code}")
    return _count(len(formats), what) + b"".join(_INT16.pack(code) for code in formats)


def _values(values: list[bytes | None], what: str) -> bytes:
    parts = [_count(len(values), what)]
    for value in values:
        if value is None:
            parts.append(_NULL_VALUE)
        else:
            parts.append(_INT32.pack(len(value)))
            parts.append(value)
    return b"".join(parts)


def _kind(kind: str, what: str) -> bytes:
    if kind not in ("S", "P"):
        raise ValueError(f"{what} kind must be 'S' or 'P', not {kind!r}")
    return kind.encode("ascii")


def _fields(fields: dict[str, str]) -> bytes:
    parts = []
    for code, value in fields.items():
        if len(code) != 1 or not 0 < ord(code) < 256:
            raise ValueError(f"error field code must be one non-NUL byte, not {code!r}")
        parts.append(code.encode("latin-1"))
        parts.append(_cstr(value, f"error field {code!r}"))
    parts.append(b"\x00")
    return b"".join(parts)


class Message:
    """Base of every typed message: a type byte and a body encoder."""

    __slots__ = ()
    TYPE: ClassVar[int]

    def encode(self) -> bytes:
        """The complete message as it goes on the wire."""
        try:
            body = self._body()
        except struct.error as exc:
            raise ValueError(f"cannot encode {type(self).__name__}: {exc}") from None
        return encode_raw(self.TYPE, body)

    def _body(self) -> bytes:
        return b""


# --------------------------------------------------------------------------
# Messages sent by both sides


@dataclass(frozen=True, slots=True)
class CopyData(Message):
    TYPE: ClassVar[int] = ord("d")
    data: bytes

    def _body(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class CopyDone(Message):
    TYPE: ClassVar[int] = ord("c")


# --------------------------------------------------------------------------
# Frontend: startup packets (no type byte)


@dataclass(frozen=True, slots=True)
class StartupMessage(Message):
    TYPE: ClassVar[int] = 0
    params: dict[str, str]
    protocol: int = PROTOCOL_3_0

    def _body(self) -> bytes:
        parts = [_UINT32.pack(self.protocol)]
        for name, value in self.params.items():
            parts.append(_name(name, "startup parameter name"))
            parts.append(_cstr(value, f"startup parameter {name!r}"))
        parts.append(b"\x00")
        return b"".join(parts)


@dataclass(frozen=True, slots=True)
class SSLRequest(Message):
    TYPE: ClassVar[int] = 0

    def _body(self) -> bytes:
        return _UINT32.pack(SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest(Message):
    TYPE: ClassVar[int] = 0

    def _body(self) -> bytes:
        return _UINT32.pack(GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest(Message):
    TYPE: ClassVar[int] = 0
    pid: int
    secret: int

    def _body(self) -> bytes:
        return (
            _UINT32.pack(CANCEL_REQUEST_CODE) + _UINT32.pack(self.pid) + _UINT32.pack(self.secret)
        )


# --------------------------------------------------------------------------
# Frontend: authentication responses (all type 'p')


@dataclass(frozen=True, slots=True)
class SASLInitialResponse(Message):
    TYPE: ClassVar[int] = ord("p")
    mechanism: str
    data: bytes | None

    def _body(self) -> bytes:
        head = _name(self.mechanism, "SASL mechanism")
        if self.data is None:
            return head + _NULL_VALUE
        return head + _INT32.pack(len(self.data)) + self.data


@dataclass(frozen=True, slots=True)
class SASLResponse(Message):
    TYPE: ClassVar[int] = ord("p")
    data: bytes

    def _body(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class GSSResponse(Message):
    TYPE: ClassVar[int] = ord("p")
    data: bytes

    def _body(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class PasswordMessage(Message):
    """A 'p' message as received: what it holds depends on the authentication exchange."""

    TYPE: ClassVar[int] = ord("p")
    data: bytes

    @classmethod
    def from_password(cls, password: str) -> PasswordMessage:
        """A cleartext (or MD5-hashed, already as text) password response."""
        return cls(_cstr(password, "password"))

    def _body(self) -> bytes:
        return self.data

    def as_password(self) -> str:
        """Read the body as a password: one C string filling the whole message."""
        data = self.data
        if not data or data.find(b"\x00") != len(data) - 1:
            raise ProtocolViolation("invalid password packet size")
        try:
            return data[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation("invalid UTF-8 in password message") from None

    def as_sasl_initial_response(self) -> SASLInitialResponse:
        """Read the body as SASLInitialResponse: mechanism name, then length-prefixed data."""
        data = self.data
        end = data.find(b"\x00")
        if end <= 0 or len(data) - end - 1 < 4:
            raise ProtocolViolation("malformed SASLInitialResponse message")
        try:
            mechanism = data[:end].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolViolation("invalid UTF-8 in SASLInitialResponse message") from None
        (length,) = _INT32.unpack_from(data, end + 1)
        rest = data[end + 5 :]
        if length == -1 and not rest:
            return SASLInitialResponse(mechanism, None)
        if length != len(rest):
            raise ProtocolViolation(
                f"malformed SASLInitialResponse message: declares {length} bytes of "
                f"data but carries {len(rest)}"
            )
        return SASLInitialResponse(mechanism, rest)

    def as_sasl_response(self) -> SASLResponse:
        return SASLResponse(self.data)

    def as_gss_response(self) -> GSSResponse:
        return GSSResponse(self.data)


# --------------------------------------------------------------------------
# Frontend: tagged messages


@dataclass(frozen=True, slots=True)
class Query(Message):
    TYPE: ClassVar[int] = ord("Q")
    query: str

    def _body(self) -> bytes:
        return _cstr(self.query, "query")


@dataclass(frozen=True, slots=True)
class Parse(Message):
    TYPE: ClassVar[int] = ord("P")
    name: str
    query: str
    param_oids: list[int] = field(default_factory=list)

    def _body(self) -> bytes:
        oids = b"".join(_UINT32.pack(oid) for oid in self.param_oids)
        return (
            _cstr(self.name, "statement name")
            + _cstr(self.query, "query")
            + _count(len(self.param_oids), "parameter types")
            + oids
        )


@dataclass(frozen=True, slots=True)
class Bind(Message):
    TYPE: ClassVar[int] = ord("B")
    portal: str
    statement: str
    param_formats: list[int] = field(default_factory=list)
    params: list[bytes | None] = field(default_factory=list)
    result_formats: list[int] = field(default_factory=list)

    def _body(self) -> bytes:
        if len(self.param_formats) not in (0, 1, len(self.params)):
            raise ValueError(
                f"Bind has {len(self.param_formats)} parameter formats "
                f"but {len(self.params)} parameters"
            )
        return (
            _cstr(self.portal, "portal name")
            + _cstr(self.statement, "statement name")
            + _formats(self.param_formats, "parameter formats")
            + _values(self.params, "parameters")
            + _formats(self.result_formats, "result formats")
        )


@dataclass(frozen=True, slots=True)
class Describe(Message):
    TYPE: ClassVar[int] = ord("D")
    kind: str  # 'S' statement or 'P' portal
    name: str

    def _body(self) -> bytes:
        return _kind(self.kind, "Describe") + _cstr(self.name, "name")


@dataclass(frozen=True, slots=True)
class Execute(Message):
    TYPE: ClassVar[int] = ord("E")
    portal: str
    max_rows: int = 0  # 0: no limit

    def _body(self) -> bytes:
        return _cstr(self.portal, "portal name") + _INT32.pack(self.max_rows)


@dataclass(frozen=True, slots=True)
class Close(Message):
    TYPE: ClassVar[int] = ord("C")
    kind: str  # 'S' statement or 'P' portal
    name: str

    def _body(self) -> bytes:
        return _kind(self.kind, "Close") + _cstr(self.name, "name")


@dataclass(frozen=True, slots=True)
class Sync(Message):
    TYPE: ClassVar[int] = ord("S")


@dataclass(frozen=True, slots=True)
class Flush(Message):
    TYPE: ClassVar[int] = ord("H")


@dataclass(frozen=True, slots=True)
class Terminate(Message):
    TYPE: ClassVar[int] = ord("X")


@dataclass(frozen=True, slots=True)
class CopyFail(Message):
    TYPE: ClassVar[int] = ord("f")
    message: str

    def _body(self) -> bytes:
        return _cstr(self.message, "CopyFail message")


@dataclass(frozen=True, slots=True)
class FunctionCall(Message):
    TYPE: ClassVar[int] = ord("F")
    function_oid: int
    arg_formats: list[int] = field(default_factory=list)
    args: list[bytes | None] = field(default_factory=list)
    result_format: int = TEXT

    def _body(self) -> bytes:
        if len(self.arg_formats) not in (0, 1, len(self.args)):
            raise ValueError(
                f"FunctionCall has {len(self.arg_formats)} argument formats "
                f"but {len(self.args)} arguments"
            )
        if self.result_format not in (TEXT, BINARY):
            raise ValueError(f"result format code must be 0 or 1, not {self.result_format}")
        return (
            _UINT32.pack(self.function_oid)
            + _formats(self.arg_formats, "argument formats")
            + _values(self.args, "arguments")
            + _INT16.pack(self.result_format)
        )


# --------------------------------------------------------------------------
# Backend: authentication requests (all type 'R', told apart by a code)


@dataclass(frozen=True, slots=True)
class _Authentication(Message):
    TYPE: ClassVar[int] = ord("R")
    CODE: ClassVar[int]

    def _body(self) -> bytes:
        return _INT32.pack(self.CODE) + self._payload()

    def _payload(self) -> bytes:
        return b""


@dataclass(frozen=True, slots=True)
class AuthenticationOk(_Authentication):
    CODE: ClassVar[int] = 0


@dataclass(frozen=True, slots=True)
class AuthenticationKerberosV5(_Authentication):
    CODE: ClassVar[int] = 2


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword(_Authentication):
    CODE: ClassVar[int] = 3


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password(_Authentication):
    CODE: ClassVar[int] = 5
    salt: bytes

    def _payload(self) -> bytes:
        if len(self.salt) != 4:
            raise ValueError(f"MD5 salt must be 4 bytes, not {len(self.salt)}")
        return self.salt


@dataclass(frozen=True, slots=True)
class AuthenticationSCMCredential(_Authentication):
    CODE: ClassVar[int] = 6


@dataclass(frozen=True, slots=True)
class AuthenticationGSS(_Authentication):
    CODE: ClassVar[int] = 7


@dataclass(frozen=True, slots=True)
class AuthenticationGSSContinue(_Authentication):
    CODE: ClassVar[int] = 8
    data: bytes

    def _payload(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class AuthenticationSSPI(_Authentication):
    CODE: ClassVar[int] = 9


@dataclass(frozen=True, slots=True)
class AuthenticationSASL(_Authentication):
    CODE: ClassVar[int] = 10
    mechanisms: list[str]

    def _payload(self) -> bytes:
        names = b"".join(_name(name, "SASL mechanism") for name in self.mechanisms)
        return names + b"\x00"


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue(_Authentication):
    CODE: ClassVar[int] = 11
    data: bytes

    def _payload(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal(_Authentication):
    CODE: ClassVar[int] = 12
    data: bytes

    def _payload(self) -> bytes:
        return self.data


# --------------------------------------------------------------------------
# Backend: everything else


@dataclass(frozen=True, slots=True)
class BackendKeyData(Message):
    TYPE: ClassVar[int] = ord("K")
    pid: int
    secret: int

    def _body(self) -> bytes:
        return _UINT32.pack(self.pid) + _UINT32.pack(self.secret)


@dataclass(frozen=True, slots=True)
class BindComplete(Message):
    TYPE: ClassVar[int] = ord("2")


@dataclass(frozen=True, slots=True)
class CloseComplete(Message):
    TYPE: ClassVar[int] = ord("3")


@dataclass(frozen=True, slots=True)
class CommandComplete(Message):
    TYPE: ClassVar[int] = ord("C")
    tag: str

    def _body(self) -> bytes:
        return _cstr(self.tag, "command tag")


@dataclass(frozen=True, slots=True)
class _CopyResponse(Message):
    format: int  # overall: 0 text, 1 binary
    column_formats: list[int]

    def _body(self) -> bytes:
        if self.format not in (TEXT, BINARY):
            raise ValueError(f"copy format must be 0 or 1, not {self.format}")
        if self.format == TEXT and any(self.column_formats):
            raise ValueError("a text COPY must have only text columns")
        return bytes((self.format,)) + _formats(self.column_formats, "column formats")


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    TYPE: ClassVar[int] = ord("G")


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    TYPE: ClassVar[int] = ord("H")


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    TYPE: ClassVar[int] = ord("W")


@dataclass(frozen=True, slots=True)
class DataRow(Message):
    TYPE: ClassVar[int] = ord("D")
    values: list[bytes | None]

    def _body(self) -> bytes:
        return _values(self.values, "columns")


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(Message):
    TYPE: ClassVar[int] = ord("I")


@dataclass(frozen=True, slots=True)
class _Report(Message):
    """ErrorResponse and NoticeResponse: fields keyed by their one-character code."""

    fields: dict[str, str]

    def _body(self) -> bytes:
        return _fields(self.fields)

    @property
    def severity(self) -> str | None:
        return self.fields.get("V", self.fields.get("S"))

    @property
    def sqlstate(self) -> str | None:
        return self.fields.get("C")

    @property
    def message(self) -> str | None:
        return self.fields.get("M")


@dataclass(frozen=True, slots=True)
class ErrorResponse(_Report):
    TYPE: ClassVar[int] = ord("E")


@dataclass(frozen=True, slots=True)
class NoticeResponse(_Report):
    TYPE: ClassVar[int] = ord("N")


@dataclass(frozen=True, slots=True)
class FunctionCallResponse(Message):
    TYPE: ClassVar[int] = ord("V")
    result: bytes | None

    def _body(self) -> bytes:
        if self.result is None:
            return _NULL_VALUE
        return _INT32.pack(len(self.result)) + self.result


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion(Message):
    """The server's answer to a newer 3.x or to unknown ``_pq_.`` startup options.

    ``newest_version`` is a whole protocol version code, as PostgreSQL sends it
    and libpq reads it (196608 for 3.0), not a bare minor number.
    """

    TYPE: ClassVar[int] = ord("v")
    newest_version: int
    unrecognized: list[str] = field(default_factory=list)

    def _body(self) -> bytes:
        names = b"".join(_cstr(name, "protocol option") for name in self.unrecognized)
        return _INT32.pack(self.newest_version) + _INT32.pack(len(self.unrecognized)) + names


@dataclass(frozen=True, slots=True)
class NoData(Message):
    TYPE: ClassVar[int] = ord("n")


@dataclass(frozen=True, slots=True)
class NotificationResponse(Message):
    TYPE: ClassVar[int] = ord("A")
    pid: int
    channel: str
    payload: str

    def _body(self) -> bytes:
        return (
            _UINT32.pack(self.pid)
            + _cstr(self.channel, "channel")
            + _cstr(self.payload, "notification payload")
        )


@dataclass(frozen=True, slots=True)
class ParameterDescription(Message):
    TYPE: ClassVar[int] = ord("t")
    oids: list[int]

    def _body(self) -> bytes:
        return _count(len(self.oids), "parameter types") + b"".join(
            _UINT32.pack(oid) for oid in self.oids
        )


@dataclass(frozen=True, slots=True)
class ParameterStatus(Message):
    TYPE: ClassVar[int] = ord("S")
    name: str
    value: str

    def _body(self) -> bytes:
        return _cstr(self.name, "parameter name") + _cstr(self.value, "parameter value")


@dataclass(frozen=True, slots=True)
class ParseComplete(Message):
    TYPE: ClassVar[int] = ord("1")


@dataclass(frozen=True, slots=True)
class PortalSuspended(Message):
    TYPE: ClassVar[int] = ord("s")


@dataclass(frozen=True, slots=True)
class ReadyForQuery(Message):
    TYPE: ClassVar[int] = ord("Z")
    status: str  # 'I' idle, 'T' in a transaction, 'E' in a failed transaction

    def _body(self) -> bytes:
        if self.status not in ("I", "T", "E"):
            raise ValueError(f"transaction status must be 'I', 'T' or 'E', not {self.status!r}")
        return self.status.encode("ascii")


@dataclass(frozen=True, slots=True)
class Field:
    """One column of a RowDescription; table_oid/column_attnum are 0 when not a plain column."""

    name: str
    table_oid: int
    column_attnum: int
    type_oid: int
    type_size: int
    type_modifier: int
    format: int


_FIELD = struct.Struct("!IhIhih")


@dataclass(frozen=True, slots=True)
class RowDescription(Message):
    TYPE: ClassVar[int] = ord("T")
    fields: list[Field]

    def _body(self) -> bytes:
        parts = [_count(len(self.fields), "columns")]
        for col in self.fields:
            if col.format not in (TEXT, BINARY):
                raise ValueError(f"column format must be 0 or 1, not {col.format}")
            parts.append(_cstr(col.name, "column name"))
            parts.append(
                _FIELD.pack(
                    col.table_oid,
                    col.column_attnum,
                    col.type_oid,
                    col.type_size,
                    col.type_modifier,
                    col.format,
                )
            )
        return b"".join(parts)


FrontendMessage = (
    StartupMessage
    | SSLRequest
    | GSSENCRequest
    | CancelRequest
    | PasswordMessage
    | SASLInitialResponse
    | SASLResponse
    | GSSResponse
    | Query
    | Parse
    | Bind
    | Describe
    | Execute
    | Close
    | Sync
    | Flush
    | Terminate
    | CopyData
    | CopyDone
    | CopyFail
    | FunctionCall
)

BackendMessage = (
    AuthenticationOk
    | AuthenticationKerberosV5
    | AuthenticationCleartextPassword
    | AuthenticationMD5Password
    | AuthenticationSCMCredential
    | AuthenticationGSS
    | AuthenticationGSSContinue
    | AuthenticationSSPI
    | AuthenticationSASL
    | AuthenticationSASLContinue
    | AuthenticationSASLFinal
    | BackendKeyData
    | BindComplete
    | CloseComplete
    | CommandComplete
    | CopyInResponse
    | CopyOutResponse
    | CopyBothResponse
    | CopyData
    | CopyDone
    | DataRow
    | EmptyQueryResponse
    | ErrorResponse
    | NoticeResponse
    | FunctionCallResponse
    | NegotiateProtocolVersion
    | NoData
    | NotificationResponse
    | ParameterDescription
    | ParameterStatus
    | ParseComplete
    | PortalSuspended
    | ReadyForQuery
    | RowDescription
)


def encode(msg: FrontendMessage | BackendMessage) -> bytes:
    """The wire form of a typed message (same as ``msg.encode()``)."""
    return msg.encode()
