"""Framing of the PostgreSQL v3 protocol: bytes in, raw messages out, no sockets.

A message on the wire is a one-byte type, a four-byte big-endian length that
counts itself and the body, and the body.  The first packets a client sends
(StartupMessage, SSLRequest, GSSENCRequest, CancelRequest) have no type byte:
they are a length followed by a four-byte code.  Framing only cuts the stream
at those boundaries and checks the length words; what a body means is decoded
separately and on demand (see :mod:`server.gateway.pgwire.decode`), so a relay
that forwards most messages untouched pays only for the cut.

How the buffer works: fed data is kept as ``bytes`` with a read offset.  When
the buffer is empty, fed ``bytes`` are adopted as they are (no copy), and a
body is then a single slice of them.  Data arriving while a partial message is
pending is queued in a list of chunks and joined once, only when enough has
arrived to complete the next message, so a large message fed in many small
pieces costs one join instead of a copy per piece.

Three ways to take messages out, from most to least work per message:
``next_raw`` (one at a time), ``drain_raw``/``drain_frames`` (all complete
messages in one tight loop) and ``drain_wire`` (only the type bytes, no body
copied, about three times faster again).  The two ``drain_*`` variants that
relay also return the exact bytes the messages occupied; when that is the
whole buffer it is the very object that was fed, so a relay forwards a whole
read with one write and no copy.

Failure is final: after a :class:`ProtocolViolation` the parser is poisoned and
every later call raises again, because the position of the next message
boundary is no longer known and guessing it would let a client smuggle bytes
past whoever inspects the messages.

Limits follow PostgreSQL: a length word below 4 or above the configured
maximum is refused; startup packets have their own lower maximum (PostgreSQL
uses 10000 bytes after the length word); on the client side the message types
PostgreSQL reads with its small limit (Sync, Flush, Close, Describe, Execute,
Terminate, CopyDone, CopyFail) are held to 10000 bytes and authentication
responses to 65535, so a client cannot make the gateway buffer a gigabyte for
a message that can never be that large.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Final, NamedTuple, NoReturn, TypeVar, cast

from server.gateway.pgwire.errors import ProtocolViolation

PROTOCOL_3_0: Final = 196608  # 3 << 16
CANCEL_REQUEST_CODE: Final = 80877102  # 1234 << 16 | 5678
SSL_REQUEST_CODE: Final = 80877103  # 1234 << 16 | 5679
GSSENC_REQUEST_CODE: Final = 80877104  # 1234 << 16 | 5680

DEFAULT_MAX_MESSAGE_SIZE: Final = 1 << 30
DEFAULT_MAX_STARTUP_SIZE: Final = 10_000
SMALL_MESSAGE_LIMIT: Final = 10_000  # PostgreSQL's PQ_SMALL_MESSAGE_LIMIT
AUTH_MESSAGE_LIMIT: Final = 65_535  # PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH

_HEADER = struct.Struct("!BI")
_UINT32 = struct.Struct("!I")

# The frontend message types of protocol 3.0 after startup: the one table the
# parser, the gateway's startup and its relay read.
FRONTEND_TYPES: Final = frozenset(b"BCdcfDEHFPpQSX")
# Frontend types PostgreSQL reads with PQ_SMALL_MESSAGE_LIMIT.
_SMALL_FRONTEND_TYPES: Final = b"CDEHSXcf"


def frontend_limits(max_message_size: int, *, unknown: int | None = None) -> list[int]:
    """The longest message of each frontend type, by type byte: PostgreSQL's own
    limits for the small and authentication types, ``max_message_size`` for the
    rest of :data:`FRONTEND_TYPES`, and ``unknown`` (default: the same) for bytes
    that are no frontend type."""
    limits = _limit_table(max_message_size)
    if unknown is not None:
        for t in range(256):
            if t not in FRONTEND_TYPES:
                limits[t] = unknown
    for type_ in _SMALL_FRONTEND_TYPES:
        limits[type_] = min(SMALL_MESSAGE_LIMIT, max_message_size)
    limits[ord("p")] = min(AUTH_MESSAGE_LIMIT, max_message_size)
    return limits


class RawMessage(NamedTuple):
    """One framed message: its type byte as an int (0 for untyped startup packets) and body."""

    type: int
    body: bytes

    @property
    def wire(self) -> bytes:
        """The message exactly as it was on the wire (type byte, length word, body)."""
        return encode_raw(self.type, self.body)


# ``tuple.__new__`` skips the Python-level ``__new__`` NamedTuple generates, which
# roughly halves the cost of creating each RawMessage on the framing hot path.
_new_raw = cast(Callable[[type[RawMessage], tuple[int, bytes]], RawMessage], tuple.__new__)


def encode_raw(type_: int, body: bytes) -> bytes:
    """Frame ``body`` as a message of type ``type_`` (0 gives an untyped startup packet)."""
    if not 0 <= type_ <= 255:
        raise ValueError(f"message type must be a byte, not {type_}")
    if len(body) > 0xFFFFFFFF - 4:
        raise ValueError("message body too large for a length word")
    if type_:
        return _HEADER.pack(type_, len(body) + 4) + body
    return _UINT32.pack(len(body) + 4) + body


def describe_type(type_: int) -> str:
    """A message type for humans: ``'Q'`` when printable, ``0x00`` otherwise."""
    if 0x21 <= type_ <= 0x7E:
        return f"'{chr(type_)}'"
    return f"0x{type_:02x}"


def _length_error(type_: int, length: int, limit: int) -> str:
    if type_ == 0:
        # Type 0 means "untyped startup packet" everywhere in this package, so a
        # tagged message with type byte 0 could be mistaken for one downstream.
        return "invalid message type 0x00 after startup"
    if length < 4:
        return f"invalid message length {length} for message type {describe_type(type_)}"
    return (
        f"message of type {describe_type(type_)} is {length} bytes long, "
        f"more than the limit of {limit}"
    )


def _frame_tagged(
    buf: bytes, pos: int, limits: list[int], out: list[RawMessage]
) -> tuple[int, str | None]:
    """Append every complete tagged message of ``buf`` from ``pos`` to ``out``.

    Returns the offset after the last complete message and, when a bad length
    word stopped the loop, why.
    """
    end = len(buf)
    unpack = _HEADER.unpack_from
    append = out.append
    new = _new_raw
    while end - pos >= 5:
        type_, length = unpack(buf, pos)
        if length < 4 or length > limits[type_]:
            return pos, _length_error(type_, length, limits[type_])
        stop = pos + 1 + length
        if stop > end:
            break
        append(new(RawMessage, (type_, buf[pos + 5 : stop])))
        pos = stop
    return pos, None


def _scan_tagged(
    buf: bytes, pos: int, limits: list[int], types: bytearray
) -> tuple[int, str | None]:
    """Like _frame_tagged, but collects only the type bytes: no body is copied."""
    end = len(buf)
    unpack = _HEADER.unpack_from
    append = types.append
    while end - pos >= 5:
        type_, length = unpack(buf, pos)
        if length < 4 or length > limits[type_]:
            return pos, _length_error(type_, length, limits[type_])
        stop = pos + 1 + length
        if stop > end:
            break
        append(type_)
        pos = stop
    return pos, None


_Out = TypeVar("_Out", list[RawMessage], bytearray)


def _limit_table(max_message_size: int) -> list[int]:
    if max_message_size < 4:
        raise ValueError("max_message_size must be at least 4")
    limits = [max_message_size] * 256
    limits[0] = 0  # never valid in tagged mode, see _length_error
    return limits


def split_frames(
    data: bytes | bytearray | memoryview,
    start: int = 0,
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> tuple[list[RawMessage], int]:
    """Frame every complete tagged message in ``data`` from ``start``.

    Returns the messages and the offset just after the last of them; bytes of
    an incomplete trailing message are left for the caller to keep.  A bad
    frame raises :class:`ProtocolViolation` when it is the first one at
    ``start``; after good messages it is left unconsumed, so the next call
    (which starts there) raises.  Pass ``bytes`` for zero-copy framing; other
    buffers are copied once.
    """
    buf = data if type(data) is bytes else bytes(data)
    out: list[RawMessage] = []
    pos, error = _frame_tagged(buf, start, _limit_table(max_message_size), out)
    if error is not None and not out:
        raise ProtocolViolation(error)
    return out, pos


class _Parser:
    """Buffering, poisoning and the tagged-message fast path shared by both parsers.

    ``_in_startup`` (frontend) and ``_answers`` (backend, armed for the one-byte
    encryption answer) live here so that the common case of ``next_raw`` is one
    inline path with no method calls; the rare cases go through ``_next_slow``.
    """

    __slots__ = (
        "_answers",
        "_buf",
        "_chunked",
        "_chunks",
        "_error",
        "_in_startup",
        "_limits",
        "_pos",
    )

    def __init__(self, limits: list[int]) -> None:
        self._buf = b""
        self._pos = 0
        self._chunks: list[bytes] = []
        self._chunked = 0
        self._error: str | None = None
        self._limits = limits
        self._in_startup = False
        self._answers = b""

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the peer."""
        if self._error is not None:
            raise ProtocolViolation(self._error)
        if type(data) is not bytes:
            # The caller may reuse its buffer; keep our own copy.
            data = bytes(data)
        if not data:
            return
        if self._chunks or self._pos < len(self._buf):
            self._chunks.append(data)
            self._chunked += len(data)
        else:
            self._buf = data
            self._pos = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes fed but not yet returned as messages (for backpressure)."""
        return len(self._buf) - self._pos + self._chunked

    def next_raw(self) -> RawMessage | None:
        """The next complete message, or None until more bytes are fed.

        On the frontend side, startup packets come out with type 0 and a body
        that starts with their four-byte code (protocol version or request code).
        """
        if self._error is None and not self._in_startup and not self._answers:
            buf = self._buf
            pos = self._pos
            end = len(buf)
            if end - pos >= 5:
                type_, length = _HEADER.unpack_from(buf, pos)
                stop = pos + 1 + length
                if 4 <= length <= self._limits[type_] and stop <= end:
                    if stop == end:
                        # Drop the reference so a consumed buffer can be freed now.
                        self._buf = b""
                        self._pos = 0
                    else:
                        self._pos = stop
                    return _new_raw(RawMessage, (type_, buf[pos + 5 : stop]))
        return self._next_slow()

    def messages(self) -> Iterator[RawMessage]:
        """Yield complete messages until more bytes are needed."""
        while (msg := self.next_raw()) is not None:
            yield msg

    def drain_raw(self) -> list[RawMessage]:
        """Every complete message buffered now, framed in one tight loop."""
        return self._drain()[0]

    def drain_frames(self) -> tuple[list[RawMessage], bytes]:
        """Every complete message buffered now, plus the exact bytes they occupied.

        A relay that forwards all of them unchanged writes the second item
        once instead of re-framing each message.
        """
        return self._drain()

    def drain_wire(self) -> tuple[bytes, bytes]:
        """The types of every complete message buffered now, and the bytes they occupied.

        The fastest relay path: one type byte per message (0 for a startup
        packet) and no body copied, for a relay that only needs to know which
        messages pass, e.g. ``types.translate(None, allowed)`` is empty.
        """
        types = bytearray()
        wire = self._drain_into(types, _scan_tagged, lambda _raw: types.append(0))
        return bytes(types), wire

    def _drain(self) -> tuple[list[RawMessage], bytes]:
        out: list[RawMessage] = []
        wire = self._drain_into(out, _frame_tagged, out.append)
        return out, wire

    def _drain_into(
        self,
        out: _Out,
        frame: Callable[[bytes, int, list[int], _Out], tuple[int, str | None]],
        add_startup: Callable[[RawMessage], object],
    ) -> bytes:
        """Frame everything buffered into ``out``; returns the bytes that covered.

        A violation after good messages is recorded and raised by the next
        call, so draining never loses a message that next_raw would return.
        """
        if self._error is not None:
            raise ProtocolViolation(self._error)
        if self._answers:
            raise RuntimeError("the encryption response is pending: call read_ssl_response()")
        if self._chunks:
            self._gather(self.pending_bytes)
        buf = self._buf
        start = pos = self._pos
        error = None
        while self._in_startup and len(buf) - pos >= 4:
            try:
                msg, pos = self._take_startup(buf, pos)
            except ProtocolViolation:
                if not len(out):
                    raise
                break
            if msg is None:
                break
            add_startup(msg)
        else:
            if not self._in_startup:
                pos, error = frame(buf, pos, self._limits, out)
        self._consume(buf, pos)
        if error is not None:
            self._error = error
            if not len(out):
                raise ProtocolViolation(error)
        return buf[start:pos]

    def _next_slow(self) -> RawMessage | None:
        """next_raw for everything but a complete tagged message already in the buffer."""
        if self._error is not None:
            raise ProtocolViolation(self._error)
        if self._answers:
            raise RuntimeError("the encryption response is pending: call read_ssl_response()")
        if self._in_startup:
            if not self._gather(4):
                return None
            (length,) = _UINT32.unpack_from(self._buf, self._pos)
            self._check_startup_length(length)
            if not self._gather(length):
                return None
            buf = self._buf
            msg, stop = self._take_startup(buf, self._pos)
            self._consume(buf, stop)
            return msg
        if not self._gather(5):
            return None
        type_, length = _HEADER.unpack_from(self._buf, self._pos)
        if length < 4 or length > self._limits[type_]:
            self._fail(_length_error(type_, length, self._limits[type_]))
        if not self._gather(1 + length):
            return None
        buf = self._buf
        pos = self._pos
        stop = pos + 1 + length
        self._consume(buf, stop)
        return _new_raw(RawMessage, (type_, buf[pos + 5 : stop]))

    def _check_startup_length(self, length: int) -> None:
        raise AssertionError("only the frontend side has startup packets")

    def _take_startup(self, buf: bytes, pos: int) -> tuple[RawMessage | None, int]:
        raise AssertionError("only the frontend side has startup packets")

    def _consume(self, buf: bytes, stop: int) -> None:
        if stop == len(buf):
            self._buf = b""
            self._pos = 0
        else:
            self._pos = stop

    def _gather(self, need: int) -> bool:
        """Make ``need`` bytes from the read offset contiguous, if that many have arrived."""
        have = len(self._buf) - self._pos
        if have >= need:
            return True
        if have + self._chunked < need:
            return False
        rest = self._buf[self._pos :] if self._pos else self._buf
        self._buf = b"".join([rest, *self._chunks])
        self._pos = 0
        self._chunks = []
        self._chunked = 0
        return True

    def _fail(self, message: str) -> NoReturn:
        self._error = message
        raise ProtocolViolation(message)


class FrontendParser(_Parser):
    """Frames what a client sends: startup packets first, then tagged messages.

    ``max_message_size`` bounds the length word of tagged messages (PostgreSQL
    counts the four length bytes in it); ``max_startup_size`` bounds a startup
    packet after its length word, as PostgreSQL's MAX_STARTUP_PACKET_LENGTH does.
    """

    __slots__ = ("_gssenc_requested", "_max_startup_size", "_ssl_requested")

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_startup_size: int = DEFAULT_MAX_STARTUP_SIZE,
    ) -> None:
        super().__init__(frontend_limits(max_message_size))
        if max_startup_size < 4:
            raise ValueError("max_startup_size must be at least 4")
        self._max_startup_size = max_startup_size
        self._in_startup = True
        self._ssl_requested = False
        self._gssenc_requested = False

    @property
    def in_startup(self) -> bool:
        """True until a StartupMessage or CancelRequest has been framed."""
        return self._in_startup

    def _check_startup_length(self, length: int) -> None:
        if length < 8 or length - 4 > self._max_startup_size:
            self._fail(f"invalid length of startup packet: {length}")

    def _take_startup(self, buf: bytes, pos: int) -> tuple[RawMessage | None, int]:
        """Frame one startup packet at ``pos`` (None if incomplete) and move to its mode."""
        (length,) = _UINT32.unpack_from(buf, pos)
        self._check_startup_length(length)
        stop = pos + length
        if stop > len(buf):
            return None, pos
        (code,) = _UINT32.unpack_from(buf, pos + 4)
        if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
            what = "SSL" if code == SSL_REQUEST_CODE else "GSSAPI encryption"
            if length != 8:
                self._fail(f"invalid length of {what} request packet: {length}")
            if code == SSL_REQUEST_CODE:
                if self._ssl_requested:
                    self._fail("duplicate SSL request")
                self._ssl_requested = True
            else:
                if self._gssenc_requested:
                    self._fail("duplicate GSSAPI encryption request")
                self._gssenc_requested = True
            if len(buf) - stop + self._chunked:
                # Bytes sent before the answer would be read as if they came
                # through the encrypted channel (CVE-2021-23214); PostgreSQL
                # refuses them the same way.
                self._fail(f"received unencrypted data after {what} request")
        elif code == CANCEL_REQUEST_CODE:
            if length != 16:
                self._fail(f"invalid length of cancel request packet: {length}")
            self._in_startup = False
        elif code >> 16 == 3:
            self._in_startup = False
        else:
            self._fail(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")
        return _new_raw(RawMessage, (0, buf[pos + 4 : stop])), stop


class BackendParser(_Parser):
    """Frames what a server sends: always tagged messages.

    The one exception is the single byte a server answers an SSLRequest or
    GSSENCRequest with; arm the parser with :meth:`expect_ssl_response` (or
    :meth:`expect_gssenc_response`) and read it with :meth:`read_ssl_response`.
    """

    __slots__ = ()

    def __init__(self, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        super().__init__(_limit_table(max_message_size))

    def expect_ssl_response(self) -> None:
        """The next byte from the server answers an SSLRequest: 'S' or 'N'."""
        self._answers = b"SN"

    def expect_gssenc_response(self) -> None:
        """The next byte from the server answers a GSSENCRequest: 'G' or 'N'."""
        self._answers = b"GN"

    @property
    def expecting_ssl_response(self) -> bool:
        return bool(self._answers)

    def read_ssl_response(self) -> bytes | None:
        """The server's one-byte answer, or None until it arrives.

        Returns b"S"/b"G" (go ahead with the handshake) or b"N" (refused).  An
        old server may answer with an ErrorResponse instead: then b"E" is
        returned without consuming it, and next_raw() returns that message.
        """
        if self._error is not None:
            raise ProtocolViolation(self._error)
        if not self._answers:
            raise RuntimeError("read_ssl_response() without expect_ssl_response()")
        if not self._gather(1):
            return None
        answer = self._buf[self._pos]
        if answer == ord("E"):
            self._answers = b""
            return b"E"
        if answer not in self._answers:
            self._fail(f"invalid response to encryption request: {describe_type(answer)}")
        self._answers = b""
        self._consume(self._buf, self._pos + 1)
        if answer != ord("N") and self.pending_bytes:
            # Anything already buffered was sent in the clear, before the
            # handshake, and may be injected (CVE-2021-23222).
            self._fail("received unencrypted data after SSL response")
        return bytes((answer,))
