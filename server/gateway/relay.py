"""The relay phase of a gateway connection, without sockets.

After login, ``Relay`` sits between the client's byte stream and the target's:
``from_client(data)`` and ``from_server(data)`` take what arrived and return
what to send on, each as a pair ``(to_peer, to_sender)``.

How it stays fast: each call walks the message headers of the chunk once
(type byte and length word; no body is copied or decoded), checking each
client type and length against the protocol's frontend types and their size
limits as it goes, and, when no hook is registered for any type it met,
forwards the very bytes object that arrived (or the prefix that holds whole
messages).  The bytes of an incomplete trailing message are kept until the
rest arrives (as a list of chunks joined once, so a large message costs one
copy), so the peer only ever sees whole messages and the gateway can put a
message of its own (an error, a shutdown notice) between two of them.  Only a
chunk that contains a hooked type is cut into messages: each hooked message
goes to its hook, the rest pass as they were.

Hooks are how guardrails, masking and the recorder plug in: register one per
message type with ``on_client`` or ``on_server``.  A hook gets the raw message
and the relay and returns the bytes to forward instead (``b""`` drops the
message) or ``None`` to forward it unchanged.  A hook that answers the client
itself (a refused statement: ErrorResponse and ReadyForQuery) calls
``reply_to_client``; the relay delivers that answer after the responses to
everything forwarded before it, so a pipelining client sees answers in order.

In-flight tracking, for graceful shutdown: every Query, Sync and FunctionCall
forwarded upstream asks for one ReadyForQuery; extended-protocol messages
forwarded after the last Sync leave the connection mid-pipeline
(``pipeline_messages`` counts the ones that each get an answer of their own:
Parse, Bind, Describe, Execute, Close).  A connection is ``busy`` until every
ReadyForQuery it asked for has come back, no pipeline is left open and no
detour is under way.  Since only whole messages are forwarded, a connection
that is not busy sits at a message boundary with nothing running, and the
shell may close it cleanly (an asynchronous NoticeResponse or notification
after the last ReadyForQuery changes neither).

The connection's prepared statements and portals: once any hook watches client
messages, the relay keeps ``state`` (``server.gateway.connection``) for all of
them, in step with what the server holds.  It cuts out every client message
the server answers (and CopyDone, CopyFail) and every server message that ends
or fails an answer, and gives them to the state: client messages before the
hooks see them (``state.parsed`` and ``state.bound`` are what the message being
hooked put in the table; hooks keep their own facts on those entries), server
messages before anything else is made of them, detours' and cuts' answers
included (what they send is given to the state too, ``state.sent``).  A
message that names what an earlier pipeline may or may not have changed (the
server has not answered it yet) is held, like the messages after it, until
the server has (``holding``).

Detours: a hook that must ask the server something before it can decide on a
client message (the row budget's EXPLAIN) calls ``start_detour`` and returns
``b""``.  From then on every client message after that one is held, unread
(``holding``; the shell stops reading the client meanwhile), and every server
message is offered to the detour first: it takes its own answers (they reach
neither the hooks nor the client, nor the ReadyForQuery count), may replace
one, and sends more with ``send_upstream``.  ``end_detour`` forwards the bytes
the detour decided on in place of the message it held, then runs the held
messages through the hooks as if they had just arrived (one of them may start
the next detour).  What the detour sends itself is never counted: the client
sees the session exactly as if only its own messages had been relayed.

Waiting off the loop: something that must wait on something slow before a
message may go on (a statement review's approval, looked up in the store) may
do so only where ``may_block`` is true.  The shell clears it for the calls it
makes on its event loop, which serves every connection.  There a gate
(``gate_client``) is asked about each message of its types before any hook
sees it; a gate that says it must wait holds that message and every later
one, unforwarded and uncounted, and the shell runs them through the hooks
with ``release_off_loop`` on a thread of its own, where the hooks may wait (and
the gates are asked again after the first message: the next message a gate
holds waits for a turn of its own, so that no client keeps a thread waiting
for as long as it pipelines).  So every hook sees each message once (a hook
chained before the guard keeps per-message state: masking's queue of
statements, the result limit's); only the gate sees a held message twice,
and it decides without effects.  A relay driven directly (tests, a thread)
may block, as before.  Held messages go on only once nothing else holds
them: a cut or a cancel under way keeps them until it ends.

Result limits: a ``Meter`` (``install_meter``; ``server.gateway.result_limit``)
bounds what one statement may return.  The relay keeps the statement's
budget itself, as ``rows_left``/``bytes_left``, and spends it on every
DataRow and CopyData from the server: per chunk on the fast path (the header
walk counts them, in C where ``server.gateway._rowmask`` was built), per run
or per message where a chunk goes through the hooks.  The meter's types
(statement ends: CommandComplete, EmptyQueryResponse, ErrorResponse,
PortalSuspended, ReadyForQuery) reach ``Meter.boundary``, which sets the next
statement's budget.  A row still arriving is judged on its length word: one
that would overspend the budget, or that belongs to a response being cut, is
discarded as its bytes arrive (``_server_skip``), never gathered whole; an
ErrorResponse or NoticeResponse has its fields clipped (``clip_fields``), one
longer than ``_CLIP_KEEP`` on its length word too (``_Clip``).  The
message that would overspend it is not forwarded:
``Meter.cut`` returns a ``Cutter`` that from then on sees every server
message first (it discards the rest of the response and answers in its
place) until it calls ``end_cut``; client messages are held as during a
detour.  ``want_cancel`` sets ``cancel_wanted``, which asks the shell to
cancel the statement upstream; held messages stay held until the shell
reports back with ``cancel_done``.

Errors: a bad length word raises ``ProtocolViolation``, a message type that is
not part of the frontend protocol raises ``GatewayError`` (both 08P01); the
relay stays failed afterwards, since the next message boundary is unknown.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, NoReturn, Protocol

from server.gateway import pgwire
from server.gateway.connection import ConnectionState
from server.gateway.connection.state import CLIENT_TYPES, NAMING_TYPES, SERVER_TYPES, PostponedEntry
from server.gateway.pgwire import ProtocolViolation, RawMessage
from server.gateway.session import KNOWN_FRONTEND, GatewayError

if TYPE_CHECKING:
    from server.gateway.sqlcheck import Analysis

Hook = Callable[[RawMessage, "Relay"], bytes | None]
# (message, relay) -> whether it must wait off the loop (see "Waiting off the loop").
Gate = Callable[[RawMessage, "Relay"], bool]
# (chunk, where a message of the hooked type starts, relay) -> (end of the run taken,
# bytes to forward for it), or None to leave that message to the per-message hook.
RunHook = Callable[[bytes, int, "Relay"], tuple[int, bytes] | None]


class Detour(Protocol):
    """Something a hook asks the server before it decides (see ``start_detour``)."""

    def on_server(self, raw: RawMessage, relay: Relay) -> bytes | None:
        """A server message, before the hooks: None if it is not the detour's, else
        what the client sees instead (``b""``: nothing)."""

    def after(self, raw: RawMessage, relay: Relay) -> None:
        """Called after each server message that was not the detour's has been
        handled (hooks run, ReadyForQuery counted)."""


class Cutter(Protocol):
    """What takes the server's messages once a result is cut (see ``Meter.cut``)."""

    def on_server(self, raw: RawMessage, relay: Relay) -> bytes | None:
        """Every server message, before the hooks: None lets it through (to the
        hooks and the client), else what the client sees instead (``b""``: nothing)."""


class Meter(Protocol):
    """Sets each statement's budget and cuts a result that overspends it."""

    def boundary(self, raw: RawMessage, relay: Relay) -> None:
        """A server message of the meter's types (a statement's end), before the hooks."""

    def cut(self, raw: RawMessage, relay: Relay) -> Cutter:
        """``raw`` (a DataRow or CopyData) would overspend the budget: it and the
        rest of the response go to the returned cutter."""


_HEADER = struct.Struct("!BI")
# A budget no statement reaches: what "no limit" is.
UNLIMITED: Final = 1 << 62
# What a meter must see: where statements end, and the messages that leave even
# while a response is discarded (notifications, parameter changes, notices).
METER_TYPES: Final = b"CIEsZASN"
_ROW_TYPES: Final = frozenset(b"Dd")

# A client message larger than this is refused.  PostgreSQL accepts up to 1 GB,
# but the gateway holds a message whole before it forwards it (hooks need to
# see all of it), and a client that announces a gigabyte must not make the
# broker keep one per connection.
MAX_CLIENT_MESSAGE: Final = 64 * 1024 * 1024
MAX_SERVER_MESSAGE: Final = pgwire.DEFAULT_MAX_MESSAGE_SIZE

# What each frontend type means for the in-flight state.
_UNKNOWN, _SYNCING, _EXTENDED, _OTHER, _TERMINATE, _FLUSH = range(6)


def _client_tables() -> tuple[bytes, list[int]]:
    kinds = bytearray(256)
    for t in KNOWN_FRONTEND:
        kinds[t] = _OTHER
    for t in b"QSF":
        kinds[t] = _SYNCING
    for t in b"PBEDC":
        kinds[t] = _EXTENDED  # each answered on its own (ParseComplete, ...)
    kinds[ord("H")] = _FLUSH
    kinds[ord("X")] = _TERMINATE
    # pgwire's limits by type; a byte that is no frontend type is refused first.
    return bytes(kinds), pgwire.frontend_limits(MAX_CLIENT_MESSAGE, unknown=0)


_CLIENT_KIND, _CLIENT_LIMIT = _client_tables()
_READY: Final = ord("Z")
_STATE_CLIENT: Final = frozenset(CLIENT_TYPES)
_NAMING_CLIENT: Final = frozenset(NAMING_TYPES)
_STATE_SERVER: Final = bytes(1 if t in SERVER_TYPES else 0 for t in range(256))
_NOTHING: Final = (b"", b"")


# An ErrorResponse or NoticeResponse field (message, detail, hint, context, ...)
# longer than this is clipped, with CLIPPED at its end: PostgreSQL echoes a
# value as long as a statement can make it (``repeat('x', 50000000)::int``), and
# the gateway neither holds nor forwards it.  Of a message longer than
# _CLIP_KEEP only its start is kept (the SQLSTATE comes early), the rest is
# discarded as it arrives.  Only where a meter is installed (a session with
# result limits: every session, by default).
FIELD_MAX: Final = 8192
# Guard analyses kept for the hooks after it (``Relay.keep_analysis``): more than
# the Parses a pipeline sends before their Binds, few enough that the texts of
# closed statements kept with them stay small beside what the client sent.
ANALYSES_KEPT: Final = 64
CLIPPED: Final = b" ... [clipped by dbaccess]"
_CLIP_KEEP: Final = 8 * FIELD_MAX


def clip_fields(body: bytes, *, complete: bool) -> bytes:
    """The fields of an ErrorResponse or NoticeResponse body, each at most
    FIELD_MAX bytes (its code byte aside); ``complete=False``: ``body`` is the
    start of a longer one, and its last field is cut wherever it is."""
    pieces = body.split(b"\0")
    last = len(pieces) - 1
    out: list[bytes] = []
    for i, field in enumerate(pieces):
        if not field:
            continue
        if len(field) - 1 > FIELD_MAX or (i == last and not complete):
            text = field[1 : 1 + FIELD_MAX - len(CLIPPED)]
            field = field[:1] + _utf8_prefix(text) + CLIPPED
        out.append(field + b"\0")
    out.append(b"\0")
    return b"".join(out)


def _utf8_prefix(text: bytes) -> bytes:
    """``text`` without a UTF-8 sequence cut at its end."""
    start = len(text)
    while start and len(text) - start < 3 and 0x80 <= text[start - 1] < 0xC0:
        start -= 1
    if start and text[start - 1] >= 0xC0:
        lead = text[start - 1]
        need = 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        if len(text) - (start - 1) < need:
            return text[: start - 1]
    return text


class _Clip:
    """The start of an error or notice too long to keep whole."""

    __slots__ = ("parts", "room", "type")

    def __init__(self, t: int, head: bytes) -> None:
        self.type = t
        self.parts = [head]
        self.room = _CLIP_KEEP - len(head)

    def message(self) -> bytes:
        body = clip_fields(b"".join(self.parts), complete=False)
        return _HEADER.pack(self.type, len(body) + 4) + body


class _Partial:
    """An incomplete trailing message: its chunks, and how many bytes complete it."""

    __slots__ = ("have", "need", "parts")

    def __init__(self, head: bytes) -> None:
        self.parts = [head]
        self.have = len(head)
        self.need = _HEADER.unpack_from(head)[1] + 1 if len(head) >= 5 else 5

    def add(self, data: bytes) -> bytes | None:
        """The joined bytes once the message is complete, else None."""
        self.parts.append(data)
        self.have += len(data)
        if self.have < self.need:
            return None
        return b"".join(self.parts)


class Relay:
    def __init__(self, parameters: Mapping[str, str] | None = None) -> None:
        # The session parameters the gateway set upstream at login (search_path, ...),
        # for hooks whose reading of statements depends on them.
        self.parameters: Mapping[str, str] = dict(parameters or {})
        # Messages the setups want the client to get with its login, before the
        # first ReadyForQuery (the masking setup's notice of what is masked).
        self.greeting: list[bytes] = []
        # Statement texts let run under a statement review's approval, with the
        # review's request id: the guard puts them, the statement's recording takes them.
        self.reviewed: dict[str, str] = {}
        # The analyses the guard made of the texts it let through, for the hooks
        # after it to read rather than analyse the text again (the recording's
        # access facts): a Parse's by its text, the Queries' in the order they
        # were sent (see ``keep_analysis``).
        self.analysed: dict[str, Analysis] = {}
        self.queried: deque[tuple[str, Analysis]] = deque(maxlen=ANALYSES_KEPT)
        # The connection's prepared statements and portals, kept in step with the
        # server's for every hook (``server.gateway.connection``), once a hook
        # watches client messages.
        self.state = ConnectionState()
        self._tracking = False
        self._settling = False  # client messages wait for the server's answer to a change
        self._postponed: PostponedEntry | None = None  # the message a detour holds, in the state
        self._client_hooks: dict[int, Hook] = {}
        self._client_gates: dict[int, Gate] = {}
        self._server_hooks: dict[int, Hook] = {}
        self._server_runs: dict[int, RunHook] = {}
        self._client_hooked: bytes | None = None  # 256 flags, or None without hooks
        self._server_hooked: bytes | None = None
        self._server_watched: bytes | None = None
        self._client_partial: _Partial | None = None
        self._server_partial: _Partial | None = None
        self._server_skip = 0  # bytes still to discard of a row of a cut response
        self._clip: _Clip | None = None  # an error or notice too long to keep whole
        self._failed: str | None = None
        self.asked = 0  # ReadyForQuery the client's forwarded messages asked for
        self.ready = 0  # ReadyForQuery seen from the server
        self.open_pipeline = False
        self.pipeline_messages = 0  # extended messages forwarded since the last Sync
        self.terminating = False
        self._to_client_later: deque[tuple[int, bytes]] = deque()
        self._to_client_now: list[bytes] = []
        self._detour: Detour | None = None
        self._detour_send = b""  # what the detour sends as it starts
        self._held: list[bytes] = []  # whole client messages held during a detour
        self._to_server: list[bytes] = []  # for the server, while handling its bytes
        # Result limits: the meter, the current statement's budget, the cut under way.
        self._meter: Meter | None = None
        self._meter_types = b""
        self._metered_types: bytes | None = None  # 256 flags: rows and the meter's types
        self.rows_left = UNLIMITED
        self.bytes_left = UNLIMITED
        self._cut: Cutter | None = None
        self.cancel_wanted = False  # for the shell: cancel the statement upstream
        self._cancel_pending = False  # asked for, and not yet reported done
        self._after_cancel: RawMessage | None = None  # for a detour, once it is done
        # True while the hooks see a message the gateway made in place of the
        # server's (a cut's ErrorResponse): no server text is in it.
        self.made_here = False
        self.cut_made = False  # and made by a cut (not a hook's refusal in place of an error)
        # Whether a hook may wait on the store here (see "Waiting off the loop").
        self.may_block = True
        self._off_loop_wanted = False
        self._releasing = False  # release_off_loop: gates after its first message are asked

    # -- hooks ------------------------------------------------------------------
    def on_client(self, types: bytes, hook: Hook) -> None:
        """Call ``hook`` for every client message whose type byte is in ``types``."""
        for t in types:
            if t not in KNOWN_FRONTEND:
                raise ValueError(f"{bytes([t])!r} is not a frontend message type")
            self._client_hooks[t] = hook
        self._refresh_flags()

    def gate_client(self, types: bytes, gate: Gate) -> None:
        """Ask ``gate``, where the relay may not block, about every client message whose
        type byte is in ``types`` before any hook sees it: True holds the message
        and every later one for ``release_off_loop`` (see "Waiting off the
        loop").  The hooks get the very message object the gate was given."""
        for t in types:
            if t not in KNOWN_FRONTEND:
                raise ValueError(f"{bytes([t])!r} is not a frontend message type")
            self._client_gates[t] = gate
        self._refresh_flags()

    def on_server(self, types: bytes, hook: Hook) -> None:
        """Call ``hook`` for every server message whose type byte is in ``types``."""
        for t in types:
            self._server_hooks[t] = hook
            self._server_runs.pop(t, None)
        self._refresh_flags()

    def install_meter(self, meter: Meter) -> None:
        """Bound every statement's result with ``meter`` (see the module docstring)."""
        self._meter = meter
        self._meter_types = METER_TYPES
        self._refresh_flags()
        self._metered_types = _flags({}, b"Dd" + METER_TYPES.translate(None, b"ASN"))

    def _refresh_flags(self) -> None:
        # Where hooks read client messages, the connection's state is kept for
        # them: the messages it reads, and the server's answers to them, are
        # always cut out.
        self._tracking = bool(self._client_hooks or self._client_gates)
        tracked = self._tracking
        self._client_hooked = _flags(
            self._client_hooks,
            bytes(self._client_gates) + (CLIENT_TYPES + NAMING_TYPES if tracked else b""),
        )
        self._server_hooked = _flags(self._server_hooks, self._meter_types)
        # While the state watches the server's answers (``ConnectionState.watching``).
        self._server_watched = (
            _flags(self._server_hooks, self._meter_types + SERVER_TYPES) if tracked else None
        )

    def on_server_run(self, types: bytes, hook: RunHook) -> None:
        """Offer runs of server messages whose type byte is in ``types`` to ``hook``
        (see the module docstring); each type must already have a per-message hook,
        which gets whatever the run hook leaves."""
        for t in types:
            if t not in self._server_hooks:
                raise ValueError(f"{bytes([t])!r} has no per-message hook to fall back on")
            self._server_runs[t] = hook

    def client_hook(self, t: int) -> Hook | None:
        """The hook registered for client message type ``t`` (to chain another after it)."""
        return self._client_hooks.get(t)

    def server_hook(self, t: int) -> Hook | None:
        """The hook registered for server message type ``t``."""
        return self._server_hooks.get(t)

    def start_cut(self, cutter: Cutter) -> None:
        """From the meter: hold client messages and offer every server message to
        ``cutter`` first, until ``end_cut``."""
        self._cut = cutter

    def want_cancel(self) -> None:
        """From the cutter: ask the shell to cancel the statement running upstream.
        Client messages stay held until the shell calls ``cancel_done``, so that
        the cancel can only land on what is being cut."""
        self.cancel_wanted = True
        self._cancel_pending = True

    def cancel_done(self) -> tuple[bytes, bytes]:
        """From the shell, once its cancel was delivered (or could not be): returns
        (bytes for the server, bytes for the client) that follow from it."""
        self._cancel_pending = False
        if self._cut is None:
            last, self._after_cancel = self._after_cancel, None
            if last is not None and self._detour is not None:
                self._detour.after(last, self)
            self._release_held()
        return self.flush()

    def end_cut(self) -> None:
        """From the cutter: the response is over; held client messages go on
        (through the hooks) once no cancel is pending and no detour holds them."""
        self._cut = None
        if not self._cancel_pending:
            self._release_held()

    def _release_held(self) -> None:
        if (
            self._detour is None
            and self._cut is None
            and not self._cancel_pending
            and not self._off_loop_wanted
            and not self._settling
            and self._held
        ):
            held = b"".join(self._held)
            self._held = []
            self._to_server.append(self._client_slow(held))

    def flush(self) -> tuple[bytes, bytes]:
        """What is due outside a call of from_client/from_server:
        (bytes for the server, bytes for the client)."""
        up = b"".join(self._to_server)
        self._to_server.clear()
        back = b"".join(self._to_client_now)
        self._to_client_now.clear()
        return up, back

    @property
    def off_loop_wanted(self) -> bool:
        """For the shell: a gate holds messages; run ``release_off_loop`` on a thread
        where hooks may wait."""
        return self._off_loop_wanted

    def release_off_loop(self) -> tuple[bytes, bytes]:
        """From the shell, on a thread, with ``may_block`` set: the held messages go
        through the hooks (the first one is the message its gate held), unless a
        cut or a cancel still holds them, up to the next one a gate holds, which
        waits for a turn of its own; returns (bytes for the server, bytes for
        the client)."""
        assert self.may_block, "held messages wait where hooks may block"
        self._off_loop_wanted = False
        self._releasing = True
        try:
            self._release_held()
        finally:
            self._releasing = False
        return self.flush()

    def start_detour(self, detour: Detour, send: bytes = b"") -> None:
        """From a client hook: hold every later client message until ``end_detour``,
        offer every server message to ``detour`` first, and send ``send`` upstream
        now (uncounted).  The hook returns ``b""`` for the message it holds."""
        if self._detour is not None:
            raise RuntimeError("a detour is already under way")
        self._detour = detour
        self._detour_send = send

    def send_upstream(self, data: bytes) -> None:
        """From a detour, while the server's bytes are handled: bytes of its own for
        the server (uncounted)."""
        if self._tracking:
            self.state.sent(_message_types(data))
        self._to_server.append(data)

    def end_detour(self, resume: bytes) -> None:
        """From a detour: forward ``resume`` in place of the message it held, then
        the held messages, through the hooks."""
        self._detour = None
        out = [resume]
        if self._tracking:
            postponed, self._postponed = self._postponed, None
            if resume:
                self.state.resume(postponed)
            else:
                self.state.dropped(postponed)
        self._count_sent(resume)
        held = b"".join(self._held)
        self._held = []
        if held:
            out.append(self._client_slow(held))
        self._to_server.append(b"".join(out))

    def client_whole_bytes(self, more: int) -> int:
        """How many bytes of whole messages ``from_client`` would take in (and hand
        to the hooks) given ``more`` bytes now: 0 while they only add to a message
        still incomplete.  The shell decides by it where to run ``from_client``."""
        partial = self._client_partial
        if partial is None:
            return more
        have = partial.have + more
        return have if have >= partial.need else 0

    @property
    def holding(self) -> bool:
        """A detour, a cut, a wait off the loop or for the server's answer to a change
        a message uses is under way: client messages are held, not forwarded."""
        return (
            self._detour is not None
            or self._cut is not None
            or self._cancel_pending
            or self._off_loop_wanted
            or self._settling
        )

    @property
    def cutting(self) -> bool:
        return self._cut is not None

    @property
    def held_bytes(self) -> int:
        """The bytes of the client messages held meanwhile."""
        return sum(len(part) for part in self._held)

    def keep_analysis(self, sql: str, analysis: Analysis, *, query: bool = False) -> None:
        """Keep the guard's analysis of ``sql`` for the hooks after it.  A Parse's is
        read when a Bind first names the statement, and stays for other Parses
        of the same text (only the oldest goes, when more are kept than a
        pipeline holds); a Query's is taken when it is recorded
        (``take_query_analysis``)."""
        if query:
            self.queried.append((sql, analysis))
            return
        kept = self.analysed
        if len(kept) >= ANALYSES_KEPT and sql not in kept:
            del kept[next(iter(kept))]
        kept[sql] = analysis

    def take_query_analysis(self, sql: str) -> Analysis | None:
        """The guard's analysis of the Query of ``sql`` that ran: Queries are
        recorded in the order they were sent, so the kept ones before it are of
        Queries refused after the guard let them through (a row budget's
        estimate), which nothing records: they go.  Two Queries of one text in
        a pipeline each get their own."""
        queried = self.queried
        while queried:
            text, analysis = queried.popleft()
            if text == sql:
                return analysis
        return None

    def reply_to_client(self, data: bytes) -> None:
        """Send ``data`` to the client once everything forwarded so far is answered."""
        if self.ready >= self.asked and not self._to_client_later:
            self._to_client_now.append(data)
        else:
            self._to_client_later.append((self.asked, data))

    # -- state ------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A statement is in flight: forwarded, and its ReadyForQuery not yet seen."""
        return (
            self.ready < self.asked
            or self.open_pipeline
            or self._detour is not None
            or self._cut is not None
            or self._cancel_pending
            or self._off_loop_wanted
            or self._settling
        )

    # -- traffic ----------------------------------------------------------------
    def from_client(self, data: bytes) -> tuple[bytes, bytes]:
        """Client bytes in; returns (bytes for the server, bytes back to the client)."""
        if self._failed is not None:
            raise ProtocolViolation(self._failed)
        partial = self._client_partial
        if partial is not None:
            joined = partial.add(data)
            if joined is None:
                return _NOTHING
            self._client_partial = None
            data = joined
        end = len(data)
        pos = 0
        unpack = _HEADER.unpack_from
        kinds = _CLIENT_KIND
        limits = _CLIENT_LIMIT
        hooked = self._client_hooked
        hit = False
        asked = 0
        pipeline = self.open_pipeline
        pending = self.pipeline_messages
        while end - pos >= 5:
            t, length = unpack(data, pos)
            kind = kinds[t]
            if not kind:
                self._unknown(t)
            if length < 4 or length > limits[t]:
                self._fail(t, length, limits[t])
            stop = pos + 1 + length
            if stop > end:
                break
            if kind == _SYNCING:
                asked += 1
                pipeline = False
                pending = 0
            elif kind == _EXTENDED:
                pipeline = True
                pending += 1
            elif kind == _FLUSH:
                pipeline = True
            elif kind == _TERMINATE:
                self.terminating = True
            if hooked is not None and hooked[t]:
                hit = True
            pos = stop
        if pos != end:
            if not kinds[data[pos]]:
                self._unknown(data[pos])
            self._client_partial = _Partial(data[pos:] if pos else data)
            if not pos:
                return _NOTHING
            data = data[:pos]
        if (
            self._detour is not None
            or self._cut is not None
            or self._cancel_pending
            or self._off_loop_wanted
            or self._settling
        ):
            self._held.append(data)
            data = b""
        elif hit:
            data = self._client_slow(data)
        else:
            self.asked += asked
            self.open_pipeline = pipeline
            self.pipeline_messages = pending
        if self._to_client_now:
            back = b"".join(self._to_client_now)
            self._to_client_now.clear()
            return data, back
        return data, b""

    def from_server(self, data: bytes) -> tuple[bytes, bytes]:
        """Server bytes in; returns (bytes for the client, bytes back to the server)."""
        if self._failed is not None:
            raise ProtocolViolation(self._failed)
        partial = self._server_partial
        if partial is not None:
            joined = partial.add(data)
            if joined is None:
                return _NOTHING
            self._server_partial = None
            data = joined
        elif self._server_skip:
            data = self._skip_server(data)
            if not data:
                return _NOTHING
        end = len(data)
        hooked = self._server_hooked
        if self._tracking and self.state.watching:
            hooked = self._server_watched
        tail = 0
        # One walk over the message headers (no body is copied or decoded):
        # where the whole messages end, the ReadyForQuery among them, whether
        # a hooked type is there, and the rows and their bytes.
        pos, ready, hit, rows, size = _scan(data, hooked)
        if end - pos >= 5:
            # Stopped at a message that is not complete, or at a bad length word.
            t, length = _HEADER.unpack_from(data, pos)
            if length < 4 or length > MAX_SERVER_MESSAGE:
                self._fail(t, length, MAX_SERVER_MESSAGE)
            if self._meter is not None and (
                t == 68 or t == 100 or ((t == 69 or t == 78) and length - 4 > FIELD_MAX)
            ):
                # A row, or a long error or notice, still arriving: judged on
                # its length word once the messages before it are handled (see
                # _tail_row).
                tail = t
        if pos != end:
            self._server_partial = _Partial(data[pos:] if pos else data)
            if not pos:
                return self._tail_row(tail) if tail else _NOTHING
            data = data[:pos]
        rows_left = self.rows_left - rows
        bytes_left = self.bytes_left - size
        if (
            hit
            or rows_left < 0
            or bytes_left < 0
            or self._detour is not None
            or self._cut is not None
            or (ready and self._to_client_later)
        ):
            if self._cut is not None and not hit:
                # Only rows of a response being cut: nothing of it goes on.
                return self._tail_row(tail) if tail else _NOTHING
            # Counted again there, message by message (or run by run).
            out = self._server_slow(data)
            if self._settling:
                # The server may have answered what held messages wait for.
                self._settling = False
                self._release_held()  # into _to_server; may wait again
            if tail:
                more, back = self._tail_row(tail)
                return out + more, back
            back = b""
            if self._to_server:
                back = b"".join(self._to_server)
                self._to_server.clear()
            if self._to_client_now:
                out += b"".join(self._to_client_now)
                self._to_client_now.clear()
            return out, back
        self.rows_left = rows_left
        self.bytes_left = bytes_left
        self.ready += ready
        if tail and (rows_left < 1 or bytes_left < length + 1 or tail == 69 or tail == 78):
            more, back = self._tail_row(tail)
            return data + more, back
        return data, b""

    # -- the rare paths ---------------------------------------------------------
    def _tail_row(self, t: int) -> tuple[bytes, bytes]:
        """The chunk ended in a row (DataRow or CopyData) not yet all here, now
        ``_server_partial``, after the whole messages before it were handled.
        If the row is part of a response being cut, or would overspend the
        statement's budget (and so start a cut), its body is discarded as it
        arrives (``_server_skip``) instead of being gathered: a row of a gigabyte
        costs the broker nothing.  Otherwise it is kept, as every partial message
        is.  Returns what is due now: (bytes for the client, bytes for the server)."""
        partial = self._server_partial
        assert partial is not None
        if t == 69 or t == 78:
            # An error or notice: its first _CLIP_KEEP bytes are kept, the rest
            # discarded as it arrives, and the fields clipped (clip_fields).
            self._server_partial = None
            self._server_skip = partial.need - partial.have
            body = b"".join(partial.parts)[5 : 5 + _CLIP_KEEP]
            self._clip = _Clip(t, body)
            up, back = self.flush()
            return back, up
        if self._cut is None and (
            self._detour is not None  # the row may be the detour's own answer
            or (self.rows_left >= 1 and self.bytes_left >= partial.need)
        ):
            up, back = self.flush()
            return back, up
        self._server_partial = None
        self._server_skip = partial.need - partial.have
        if self._cut is None:
            meter = self._meter
            assert meter is not None
            msg = RawMessage(t, b"")  # the body is never read: the cutter discards rows
            parts: list[bytes] = []
            cutter = meter.cut(msg, self)
            self._cut = cutter
            self._to_cut(cutter, msg, parts)
            self._to_client_now[:0] = parts
        up, back = self.flush()
        return back, up

    def _skip_server(self, data: bytes) -> bytes:
        """Discard what is left of a row being skipped (or keep the start of an
        error or notice being clipped); returns the bytes after it, the clipped
        message first."""
        skip = self._server_skip
        n = min(skip, len(data))
        clip = self._clip
        if clip is not None and clip.room > 0:
            kept = data[: min(n, clip.room)]
            clip.parts.append(kept)
            clip.room -= len(kept)
        self._server_skip = skip - n
        if self._server_skip:
            return b""
        rest = data[n:]
        if clip is not None:
            self._clip = None
            return clip.message() + rest
        return rest

    def _fail(self, t: int, length: int, limit: int) -> None:
        if length < 4:
            why = f"invalid message length {length} for message type {pgwire.describe_type(t)}"
        else:
            why = (
                f"message of type {pgwire.describe_type(t)} is {length} bytes long, "
                f"more than the limit of {limit}"
            )
        self._failed = why
        raise ProtocolViolation(why)

    def _unknown(self, t: int) -> NoReturn:
        self._failed = f"message type {pgwire.describe_type(t)} is not relayed"
        raise GatewayError(
            "08P01",
            f"message type {pgwire.describe_type(t)} is not part of the "
            "protocol the gateway relays",
            "this client or driver sent something the gateway does not understand",
        )

    def _client_slow(self, wire: bytes) -> bytes:
        # ``wire`` holds whole messages only, their headers checked by from_client.
        # A message no hook changes goes on as the very bytes that came.
        out: list[bytes] = []
        hooks = self._client_hooks
        unpack = _HEADER.unpack_from
        end = len(wire)
        pos = 0
        # On the loop every gate is asked; off it, in release_off_loop, every gate
        # but the first message's (the one it holds for): each turn waits once.
        gates = self._client_gates if not self.may_block or self._releasing else None
        first = self._releasing
        state = self.state if self._tracking else None
        while pos < end:
            t, length = unpack(wire, pos)
            stop = pos + 1 + length
            hook = hooks.get(t)
            msg: RawMessage | None = None
            tracked = state is not None and t in _STATE_CLIENT
            counted = True
            if state is not None and t in _NAMING_CLIENT:
                msg = RawMessage(t, wire[pos + 5 : stop])
                if state.must_wait(t, msg.body):
                    # It names what an earlier pipeline may have changed or not:
                    # it waits for the server's answer to that change.
                    self._settling = True
                    self._held = [wire[pos:]]
                    break
            if gates and not first:
                gate = gates.get(t)
                if gate is not None:
                    if msg is None:
                        msg = RawMessage(t, wire[pos + 5 : stop])
                    if gate(msg, self):
                        # It waits off the loop: the hooks see it there, once.
                        self._off_loop_wanted = True
                        self._held = [wire[pos:]]
                        break
            first = False
            if tracked and state is not None:
                if msg is None:
                    msg = RawMessage(t, wire[pos + 5 : stop])
                state.client(t, msg.body)
                if not state.journalled:
                    # The server skips it, or its COPY reads it: no answer to count.
                    tracked = False
                    counted = False
            if hook is not None:
                if msg is None:
                    msg = RawMessage(t, wire[pos + 5 : stop])
                replaced = hook(msg, self)
                if replaced == b"" and tracked and state is not None and self._detour is None:
                    state.withdrawn()  # it never reaches the server
            else:
                replaced = None
            if replaced is None:
                out.append(wire[pos:stop])
                if counted:
                    self._count_type(t)
            else:
                out.append(replaced)
                if counted:
                    self._count_sent(replaced)
            pos = stop
            if self._detour is not None:
                # The hook started a detour: what it sends goes now, the rest waits.
                if state is not None:
                    self._postponed = state.postpone() if replaced == b"" else None
                    state.sent(_message_types(self._detour_send))
                out.append(self._detour_send)
                self._detour_send = b""
                self._held = [wire[pos:]] if pos < end else []
                break
        return b"".join(out)

    def _count_sent(self, data: bytes) -> None:
        for msg in pgwire.split_frames(data)[0]:
            self._count_type(msg.type)

    def _count_type(self, t: int) -> None:
        # Counted message by message, so that an answer a later hook queues
        # waits for exactly the messages forwarded before it.
        kind = _CLIENT_KIND[t]
        if kind == _SYNCING:
            self.asked += 1
            self.open_pipeline = False
            self.pipeline_messages = 0
        elif kind == _EXTENDED:
            self.open_pipeline = True
            self.pipeline_messages += 1
        elif kind == _FLUSH:
            self.open_pipeline = True

    def _server_slow(self, wire: bytes) -> bytes:
        # ``wire`` holds whole messages only, their lengths checked by from_server.
        out: list[bytes] = []
        runs = self._server_runs
        unpack = _HEADER.unpack_from
        end = len(wire)
        pos = 0
        metered = self._metered_types
        hooks = self._server_hooks
        state = self.state if self._tracking else None
        while pos < end:
            t, length = unpack(wire, pos)
            if state is not None and _STATE_SERVER[t]:
                # Every answer the server sends, before anything is made of it.
                dropped = state.server(t, wire[pos + 5 : pos + 6] if t == _READY else b"")
                if dropped:
                    # Sent and counted, but never to be answered (a COPY read them,
                    # an error skipped them): as good as answered.
                    self.ready += dropped
            detour = self._detour
            cut = self._cut
            if (
                cut is None
                and detour is None
                and t not in hooks
                and t != _READY
                and t != 69
                and t != 78
                and (metered is None or not metered[t])
                and t not in runs
            ):
                # Nobody looks at it (a RowDescription, a row of an unmasked result
                # with no result limit), and it is not an error or notice that may
                # need clipping: it goes on as it came.
                stop = pos + 1 + length
                out.append(wire[pos:stop])
                pos = stop
                continue
            if cut is None and detour is None and runs:
                run = runs.get(t)
                if run is not None and self._run_fits(wire, pos):
                    taken = run(wire, pos, self)
                    if taken is not None:
                        stop, data = taken
                        if not pos < stop <= end:
                            raise RuntimeError(f"a run hook took bytes {pos}..{stop} of {end}")
                        self._spend_run(wire, pos, stop)
                        out.append(data)
                        pos = stop
                        continue
            start = pos
            stop = pos + 1 + length
            msg = RawMessage(t, wire[pos + 5 : stop])
            pos = stop
            original: bytes | None = None  # the message as it came, while nothing changed it
            if (t == 69 or t == 78) and length - 4 > FIELD_MAX and metered is not None:
                msg = RawMessage(t, clip_fields(msg.body, complete=True))
            else:
                original = wire[start:stop]
            if cut is not None:
                self._to_cut(cut, msg, out)
                if self._detour is not None:
                    # A detour waits for this response to end before it asks,
                    # and for the cancel to be out (it could hit what it asks).
                    if self._cancel_pending:
                        self._after_cancel = msg
                    else:
                        self._detour.after(msg, self)
                continue
            if detour is None:
                if metered is not None and metered[t] and self._metered(msg, out):
                    continue
                self._server_message(msg, out, original)
                continue
            taken_msg = detour.on_server(msg, self)
            if taken_msg is None:
                if metered is None or not metered[t] or not self._metered(msg, out):
                    self._server_message(msg, out, original)
            else:
                # The detour's own answer: dropped, or replaced by what the
                # client is to see in its place (after the held messages, which
                # the detour may have released meanwhile, went through the hooks).
                for part in pgwire.split_frames(taken_msg)[0]:
                    self._server_message(part, out)
            if self._detour is not None and taken_msg is None:
                self._detour.after(msg, self)
        return b"".join(out)

    def _run_fits(self, wire: bytes, pos: int) -> bool:
        """Whether the run of DataRows at ``pos`` fits the statement's budget (if it
        does not, its rows go one by one, and the one that overspends is cut)."""
        if wire[pos] != 68:
            return True
        _stop, rows, size = _run(wire, pos)
        return rows <= self.rows_left and size <= self.bytes_left

    def _spend_run(self, wire: bytes, pos: int, stop: int) -> None:
        if wire[pos] != 68:
            return
        run_stop, rows, size = _run(wire, pos)
        if run_stop != stop:
            # The hook took part of the run: count only that part.
            _s, rows, size = _run(wire[:stop], pos)
        self.rows_left -= rows
        self.bytes_left -= size

    def _metered(self, msg: RawMessage, out: list[bytes]) -> bool:
        """A row or a statement's end, before the hooks: a row spends the budget
        (True: it overspent it and started a cut, which took it), a statement's
        end goes to the meter."""
        meter = self._meter
        assert meter is not None
        if msg.type in _ROW_TYPES:
            rows_left = self.rows_left - 1
            bytes_left = self.bytes_left - 5 - len(msg.body)
            if rows_left < 0 or bytes_left < 0:
                cutter = meter.cut(msg, self)
                self._cut = cutter
                self._to_cut(cutter, msg, out)
                return True
            self.rows_left = rows_left
            self.bytes_left = bytes_left
        else:
            meter.boundary(msg, self)
        return False

    def _to_cut(self, cut: Cutter, msg: RawMessage, out: list[bytes]) -> None:
        taken = cut.on_server(msg, self)
        if taken is None:
            self._server_message(msg, out)
            return
        self.made_here = self.cut_made = True
        try:
            for part in pgwire.split_frames(taken)[0]:
                self._server_message(part, out)
        finally:
            self.made_here = self.cut_made = False

    def _server_message(
        self, msg: RawMessage, out: list[bytes], original: bytes | None = None
    ) -> None:
        """``msg`` through its hook into ``out``; ``original``: its bytes as they came."""
        t = msg.type
        hook = self._server_hooks.get(t)
        replaced = hook(msg, self) if hook is not None else None
        if replaced is None:
            out.append(original if original is not None else pgwire.encode_raw(msg.type, msg.body))
        elif replaced:
            out.append(replaced)
        if t == _READY:
            self.ready += 1
            later = self._to_client_later
            while later and later[0][0] <= self.ready:
                out.append(later.popleft()[1])


def _message_types(data: bytes) -> list[int]:
    """The type of each whole message in ``data`` (the gateway's own)."""
    types = []
    pos = 0
    end = len(data)
    while end - pos >= 5:
        t, length = _HEADER.unpack_from(data, pos)
        types.append(t)
        pos += 1 + length
    return types


def _flags(hooks: dict[int, Hook], extra: bytes = b"") -> bytes | None:
    if not hooks and not extra:
        return None
    flags = bytearray(256)
    for t in hooks:
        flags[t] = 1
    for t in extra:
        flags[t] = 1
    return bytes(flags)


def _scan_py(data: bytes, hooked: bytes | None) -> tuple[int, int, int, int, int]:
    """``_rowmask.scan`` in Python, where the C core was not built."""
    end = len(data)
    pos = ready = hit = rows = size = 0
    unpack = _HEADER.unpack_from
    while end - pos >= 5:
        t, length = unpack(data, pos)
        stop = pos + 1 + length
        if length < 4 or stop > end:
            break
        if t == 68 or t == 100:
            rows += 1
            size += stop - pos
        elif t == _READY:
            ready += 1
        if hooked is not None and hooked[t]:
            hit = 1
        pos = stop
    return pos, ready, hit, rows, size


def _run_py(data: bytes, pos: int) -> tuple[int, int, int]:
    """``_rowmask.run`` in Python."""
    end = len(data)
    start = pos
    rows = 0
    unpack = _HEADER.unpack_from
    while end - pos >= 5 and data[pos] == 68:
        length = unpack(data, pos)[1]
        if length < 4 or pos + 1 + length > end:
            break
        pos += 1 + length
        rows += 1
    return pos, rows, pos - start


_scan: Callable[[bytes, bytes | None], tuple[int, int, int, int, int]] = _scan_py
_run: Callable[[bytes, int], tuple[int, int, int]] = _run_py
try:  # the same walks in C (server/gateway/_rowmask.c), where it was built
    from server.gateway import _rowmask

    _scan = _rowmask.scan
    _run = _rowmask.run
except (ImportError, AttributeError):  # pragma: no cover - no compiler, or a core built before
    pass


def row_run(data: bytes, pos: int) -> tuple[int, int, int]:
    """The run of whole DataRows in ``data`` from ``pos``: where it ends, its rows
    and their bytes (in C where the core was built), for hooks that take runs."""
    return _run(data, pos)
