"""Result limits in the relay: a statement's result past ``max_result_rows`` or
``max_result_bytes`` is cut, and the connection stays usable.

``ResultLimit`` is sans-IO and belongs to one client connection; it is the
relay's ``Meter`` (``Relay.install_meter``).  The counting itself is the
relay's: it spends the statement's budget (``rows_left``/``bytes_left``) on
every DataRow and CopyData (COPY TO STDOUT) the server sends, a whole chunk
or run at a time on its fast paths, and calls ``cut`` with the message that
would overspend it.  What counts is the message on the wire, header included.

What a statement is.  Each result of a simple Query (one per statement in
it), and each portal of the extended protocol from its Bind to its
CommandComplete: a portal run with a row limit (PortalSuspended) and resumed
by later Executes -- in the same pipeline or after a Sync, inside a
transaction -- keeps counting where it stopped.  To know which portal the
server answers for, the meter keeps the Executes the client sent, in order,
between the Query/Sync/FunctionCall markers whose ReadyForQuery ends them;
what a suspended portal spent is kept until its portal is bound again or
closed, or the transaction ends.  A SQL cursor's FETCH is a statement of its
own.

The cut (``_Cut``, a ``Cutter``).  The message that overspends is not
forwarded, and neither is anything else of the response; the client's later
messages are held.  Then:

* cancel: when nothing the client sent after the statement waits for an
  answer of its own (the statement's ReadyForQuery is the last one asked for,
  or it runs in a pipeline not yet synced), the shell sends a CancelRequest
  with the session's backend key, and the held messages stay held until
  that cancel has been delivered (the target closed the cancel connection):
  a cancel that arrives late finds the backend idle, and PostgreSQL ignores
  it there, so it can never hit the client's next statement.  Otherwise the
  gateway does not cancel and only discards, up to the response's end.
* the end of the response: the server's ReadyForQuery (or, in a pipeline
  not yet synced, its first ErrorResponse: the cancel's 57014, or the
  failing Bind the gateway sends right behind the Execute so that the server
  skips to the client's Sync as the client expects).  Everything before it is
  discarded -- the rest of the rows, the command tag (kept for the
  recording: the statement finished upstream), the cancel's 57014, answers
  to messages the server ran after the statement although the client now
  expects them skipped.  In its place the client gets one ErrorResponse
  (SQLSTATE 54000, the limit, a hint naming the policy key and scope) and
  the ReadyForQuery.
* the transaction: the ReadyForQuery carries the server's status, except
  where the server finished the statement inside a transaction block (status
  ``T``) while the client is told it failed: the gateway then sends a Query
  that fails (as the guardrails' refusals do), takes its answer itself, and
  the client sees ``E`` -- the transaction is aborted as PostgreSQL aborts it
  after an error, on both sides.  (With more of the client's statements
  already in flight behind it, this is not done and the status stays ``T``.)

Outside a transaction block a statement that the server finished before the
cut (the rows were already on their way) keeps its effects: the error's
detail says so, and the recording keeps the command tag.

Each cut is recorded as a ``limit`` event (``server.audit.recording``): the
limit, its value and scope, the rows and bytes the client got before it, the
statement (literals redacted).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NamedTuple

from server.audit.recording import LimitHit, RecordFn, record_limit
from server.gateway import pgwire
from server.gateway.pgwire import Bind, Query, RawMessage
from server.gateway.relay import UNLIMITED, Relay
from server.policy.model import SessionLimits

SQLSTATE: Final = "54000"
ROWS_KEY: Final = "max_result_rows"
BYTES_KEY: Final = "max_result_bytes"
# What the server is sent to fail on purpose: a statement it cannot parse (to
# abort a transaction block), a Bind of a statement that cannot exist (to make
# it skip a pipeline up to the client's Sync).  Neither runs anything.
_ABORT_SQL: Final = "dbaccess_result_limit"
_ABORT_NAME: Final = "dbaccess: result limit"
_FAILING_BIND: Final = Bind(_ABORT_NAME, _ABORT_NAME).encode()
_ASYNC: Final = frozenset(b"ASN")
_TEXT_KEPT: Final = 4_000


def size_text(n: int) -> str:
    """Bytes as the policy writes them (1024-based): ``1MB``, ``512kB``, ``1234 bytes``."""
    for unit, factor in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class Caps:
    """The two limits of one session's scope (None: no limit)."""

    max_rows: int | None
    max_bytes: int | None
    scope: str

    @classmethod
    def of(cls, limits: SessionLimits, scope: str) -> Caps:
        return cls(limits.max_result_rows, limits.max_result_bytes, scope)

    @property
    def active(self) -> bool:
        return self.max_rows is not None or self.max_bytes is not None


class _Item(NamedTuple):
    """Something whose rows the server sends, in order: a Query or an Execute."""

    execute: bool
    portal: bytes  # an Execute's portal
    ready: int  # the number of the ReadyForQuery that ends its pipeline (or Query)
    # Where its text is, read only if its result is cut: a Query's body, or the
    # body of the Parse its portal was bound from.
    source: bytes | None

    @property
    def sql(self) -> str | None:
        body = self.source
        if body is None:
            return None
        start = _cstring(body, 0)[1] if self.execute else 0  # a Parse: its name first
        return _cstring(body, start)[0].decode("utf-8", "replace")


def error_response(caps: Caps, which: str, rows: int, nbytes: int, completed: str | None) -> bytes:
    """The ErrorResponse a cut result ends with."""
    value = f"{caps.max_rows} rows" if which == ROWS_KEY else size_text(caps.max_bytes or 0)
    message = (
        f"dbaccess: the result passed {which} ({value}) and was cut after "
        f"{rows} rows ({size_text(nbytes)})"
    )
    hint = (
        f"scope {caps.scope} allows {value} per statement ({which} in the policy's "
        "limits): narrow the query (a WHERE clause, fewer columns, LIMIT n), or ask "
        f"an administrator to raise {which}"
    )
    detail = (
        f"the server had finished the statement ({completed}) before the gateway stopped it"
        if completed is not None
        else None
    )
    return pgwire.error_response("ERROR", SQLSTATE, message, hint=hint, detail=detail)


class ResultLimit:
    """The relay's meter for one connection (see the module docstring)."""

    def __init__(
        self,
        caps: Caps,
        *,
        session_id: str = "",
        record: RecordFn | None = None,
    ) -> None:
        self.caps = caps
        self.max_rows = caps.max_rows if caps.max_rows is not None else UNLIMITED
        self.max_bytes = caps.max_bytes if caps.max_bytes is not None else UNLIMITED
        self.session_id = session_id
        self.record = record
        self.pending: deque[_Item] = deque()
        self.suspended: dict[bytes, tuple[int, int]] = {}  # portal -> (rows, bytes) spent
        self.cuts = 0

    # -- installing ---------------------------------------------------------------
    def install(self, relay: Relay) -> None:
        hooks: dict[bytes, Callable[[RawMessage, Relay], None]] = {
            b"Q": self._on_query,
            b"B": self._on_bind,
            b"E": self._on_execute,
            b"C": self._on_close,
        }
        for types, hook in hooks.items():
            _observe_client(relay, types, hook)
        relay.rows_left = self.max_rows
        relay.bytes_left = self.max_bytes
        relay.install_meter(self)

    # -- client messages ------------------------------------------------------------
    # They come with every statement: read only as far as the names, and the
    # texts kept as they came, for a statement that is cut.  A hook runs before
    # the relay counts its message, so the ReadyForQuery that ends it (the
    # next one a Query or Sync asks for) is ``relay.asked + 1``.
    def _on_query(self, raw: RawMessage, relay: Relay) -> None:
        self._push(_Item(False, b"", relay.asked + 1, raw.body), relay)

    def _on_bind(self, raw: RawMessage, relay: Relay) -> None:
        if self.suspended:
            self.suspended.pop(_cstring(raw.body, 0)[0], None)  # a new portal of that name

    def _on_execute(self, raw: RawMessage, relay: Relay) -> None:
        portal = _cstring(raw.body, 0)[0]
        # The statement's Parse, from the connection's state, for a statement that is cut.
        bound = relay.state.portal_at(portal)
        parse = bound.statement.body if bound is not None and bound.statement else None
        self._push(_Item(True, portal, relay.asked + 1, parse), relay)

    def _on_close(self, raw: RawMessage, relay: Relay) -> None:
        body = raw.body
        if body[:1] != b"S" and self.suspended:
            self.suspended.pop(_cstring(body, 1)[0], None)

    def _push(self, item: _Item, relay: Relay) -> None:
        self.pending.append(item)
        if self.suspended and len(self.pending) == 1:
            self._arm(relay)

    # -- server messages (Meter) ----------------------------------------------------------
    def boundary(self, raw: RawMessage, relay: Relay) -> None:
        t = raw.type
        pending = self.pending
        if t == 67 or t == 73:  # C, I: the statement is complete
            if pending and pending[0].execute:
                head = pending.popleft()
                if self.suspended:
                    self.suspended.pop(head.portal, None)
        elif t == 115:  # s: the portal is suspended, to be resumed
            if pending and pending[0].execute:
                self.suspended[pending.popleft().portal] = self._spent(relay)
        elif t == 69:  # E: in a pipeline, the server skips to the Sync
            self._skip_to_sync(relay)
        else:  # Z
            self._ready(raw, relay)
        if self.suspended:
            self._arm(relay)
        else:  # the common case, inline: every statement gets all of it
            relay.rows_left = self.max_rows
            relay.bytes_left = self.max_bytes

    def _spent(self, relay: Relay) -> tuple[int, int]:
        return self.max_rows - relay.rows_left, self.max_bytes - relay.bytes_left

    def _arm(self, relay: Relay) -> None:
        """The budget of the statement the server answers next: all of it, or what
        is left of a suspended portal's."""
        rows = nbytes = 0
        if self.suspended and self.pending:
            head = self.pending[0]
            if head.execute:
                rows, nbytes = self.suspended.get(head.portal, (0, 0))
        relay.rows_left = self.max_rows - rows
        relay.bytes_left = self.max_bytes - nbytes

    def _skip_to_sync(self, relay: Relay) -> None:
        pending = self.pending
        ready = relay.ready + 1  # the ReadyForQuery that ends the failed pipeline
        while pending and pending[0].execute and pending[0].ready <= ready:
            pending.popleft()

    def _ready(self, raw: RawMessage, relay: Relay) -> None:
        pending = self.pending
        ready = relay.ready + 1  # this one: the relay counts it after the meter
        while pending and pending[0].ready <= ready:
            pending.popleft()
        if self.suspended and raw.body[:1] == b"I":
            self.suspended.clear()  # the transaction ended, and its portals with it

    def cut(self, raw: RawMessage, relay: Relay) -> _Cut:
        rows, nbytes = self._spent(relay)
        which = ROWS_KEY if relay.rows_left < 1 else BYTES_KEY
        head = self.pending[0] if self.pending else None
        self.cuts += 1
        return _Cut(self, relay, which, rows, nbytes, head)

    def recorded(self, cut: _Cut) -> None:
        caps = self.caps
        value = caps.max_rows if cut.which == ROWS_KEY else caps.max_bytes
        sql = cut.item.sql if cut.item is not None else None
        record_limit(
            self.record,
            self.session_id,
            LimitHit(
                limit=cut.which,
                value=value if value is not None else 0,
                scope=caps.scope,
                action="cut",
                sqlstate=SQLSTATE,
                message="the result was cut"
                + ("; the statement was cancelled upstream" if cut.cancel else ""),
                statement=sql[:_TEXT_KEPT] if sql is not None else None,
                rows=cut.rows,
                bytes=cut.nbytes,
                completed=cut.completed,
            ),
        )


class _Cut:
    """One cut response, from the message that overspent to the response's end."""

    def __init__(
        self,
        limit: ResultLimit,
        relay: Relay,
        which: str,
        rows: int,
        nbytes: int,
        item: _Item | None,
    ) -> None:
        self.limit = limit
        self.which = which
        self.rows = rows
        self.nbytes = nbytes
        self.item = item
        self.completed: str | None = None  # the server's command tag, if it finished
        self.errored = False
        # The statement is in a pipeline the client has not synced yet: the
        # response ends at the server's first error.
        self.unsynced = relay.open_pipeline and relay.ready == relay.asked
        # Nothing the client sent after it waits for an answer of its own.
        self.last = self.unsynced or (relay.asked - relay.ready == 1 and not relay.open_pipeline)
        self.cancel = self.last
        self.aborting = False
        self.over = False
        relay.start_cut(self)
        if self.cancel:
            relay.want_cancel()
        if self.unsynced:
            relay.send_upstream(_FAILING_BIND)

    def on_server(self, raw: RawMessage, relay: Relay) -> bytes | None:
        t = raw.type
        if t in _ASYNC:
            return None  # not part of the response
        if self.aborting:
            if t == 90:  # Z: the failing Query's, never the client's
                self.aborting = False
                self._over(relay)
            return b""
        if t in (67, 115) and not self.errored and self.completed is None:  # C, s
            self.completed = _tag(raw) if t == 67 else "suspended"
        elif t == 69:  # E
            first = not self.errored
            self.errored = True
            if self.unsynced and first:
                self.limit._skip_to_sync(relay)
                self.limit._arm(relay)
                self._over(relay)
                return self._error()
        elif t == 90:  # Z
            status = raw.body[:1] or b"I"
            self.limit._ready(raw, relay)
            self.limit._arm(relay)
            if status == b"T" and self.last:
                # Finished upstream inside a transaction block: abort it there
                # too, as the client is told it failed.
                relay.send_upstream(Query(_ABORT_SQL).encode())
                self.aborting = True
                return self._error() + pgwire.ready_for_query("E")
            self._over(relay)
            return self._error() + pgwire.ready_for_query(status.decode("ascii"))
        return b""

    def _error(self) -> bytes:
        return error_response(self.limit.caps, self.which, self.rows, self.nbytes, self.completed)

    def _over(self, relay: Relay) -> None:
        self.over = True
        self.limit.recorded(self)
        relay.end_cut()


def _cstring(body: bytes, start: int) -> tuple[bytes, int]:
    """The NUL-terminated string at ``start`` and where the next field starts (a
    malformed message gives what it gives: the server refuses it anyway)."""
    end = body.find(b"\0", start)
    if end < 0:
        return body[start:], len(body)
    return body[start:end], end + 1


def _tag(raw: RawMessage) -> str:
    return bytes(raw.body).rstrip(b"\0").decode("utf-8", "replace")


def _observe_client(relay: Relay, types: bytes, hook: Callable[[RawMessage, Relay], None]) -> None:
    """Call ``hook`` on every client message of ``types`` before the hooks
    registered already (which decide what goes upstream)."""
    before = relay.client_hook(types[0])

    def chained(raw: RawMessage, r: Relay) -> bytes | None:
        hook(raw, r)
        return before(raw, r) if before is not None else None

    relay.on_client(types, chained)
