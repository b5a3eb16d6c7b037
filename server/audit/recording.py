"""Session recordings: what happened in a session, in order, tamper-evident, off the data path.

A recording is the ordered list of a session's events in ``session_events``
(``session_id``, ``seq``, ``ts``, ``kind``, ``data``) plus a row in
``session_recordings`` (status, event count, digest).  Kinds:

* ``session.start`` — identity, groups, target, scope, reason, approval, client;
* ``connection.open`` / ``connection.close`` — a client connection of the session
  (addresses, application name);
* ``statement`` — text and parameters with secrets and masked-column literals
  redacted (:func:`redact_statement`, :func:`statement_event`), start time,
  duration, rows, command tag, SQLSTATE, guardrail decision, masked columns,
  and, for a statement that ran, its access facts (``access``: the relations
  and columns it touched, masked or clear; ``server.audit.access``), which the
  writer also indexes in the same transaction (``access.index_entry``,
  written by ``event_writes.write_events``);
* ``notice`` — a NoticeResponse the client was sent (already redacted);
* ``limit`` — a statement refused or a result cut by one of the scope's limits
  (:class:`LimitHit`, :func:`limit_event`, :func:`record_limit`): which limit,
  its value, the scope that set it, what was done (``refused`` before it ran,
  ``cut`` while its result streamed), the SQLSTATE the client got and, for a
  cut, the rows and bytes delivered before it;
* ``session.end`` — why, and the revocation result.

**Off the data path.**  :meth:`Recorder.record` is all the data path does:
under the recorder's lock it checks that the session's recording takes events
and appends a small tuple (the session, the time in nanoseconds, the kind,
and the raw fields with the function that makes the event's data from them,
``build``) to an in-memory queue.  A background thread takes the queue in
batches and, per batch, makes each event's data (``build``: for a statement,
the redaction of its text and parameters, its start time; for a limit event,
its statement redacted), checks it holds only JSON's own types and
serializes it once, to its canonical JSON (:func:`stored_form`), numbers the
events (``seq`` of their session, in the order they were queued), writes them
in one transaction through the driver's fast path (``server.store.bulk``:
COPY on PostgreSQL; the data column gets that very text) and adds their
canonical lines, made around the same text, to their recording's digest.
With a writer process (``event_writes``), the making of a statement's event
happens there, off the interpreter lock the event loop shares (:class:`TwoStep`):
the thread reads its access facts and numbers it, the process makes and
writes it and answers with its text, for the digest.
So raw statement texts stay in memory only until their batch is written, and
nothing unredacted reaches the store.  (The first event of a
session this process did not open -- the broker restarted -- looks the
recording up in the store once.)  The queue is bounded: when it is full the
event is refused, which counts as a failure of that session's recording.

**Failing closed.**  When a batch cannot be written, when an event's data
cannot be made, when the writer fails on a batch for any other reason (it
goes on with the next), or when an event is refused, every session it
concerns is *failed*: ``on_failure(session_id, reason)`` is called (on a
thread of its own, so that it may end the session, which closes the
recording) and later events of that session are refused (or dropped by the
writer, counted).  A session
opened with ``RecordingFailure.CONTINUE`` (an admin's choice in the policy:
``recording_failure: continue``) instead goes on unrecorded, and the number of
lost events is noted when its recording closes.  Events queued after a
session's ``session.end`` are dropped and counted too.

**Tamper evidence.**  A recording's digest is the SHA-256 of its events'
canonical form (:func:`recording_digest`: one sorted-key compact JSON object
per event, newline-terminated, in ``seq`` order), taken incrementally by the
writer as it writes them: the line hashed holds the very text stored as the
event's data, which reads back as data whose canonical text it is again
(:func:`stored_form`).
:meth:`Recorder.close` appends ``session.end``, waits until everything of the
session is written, stores the digest and the event count, and appends a
``recording.closed`` audit event with the digest to the hash chain; it reads
no event back, so closing costs the same however long the recording is.  (A
recording this process took over from an earlier one, after a restart, has
its stored events hashed once, a chunk at a time, before its next write.)
The chain makes the digest itself unchangeable, so :func:`verify_recordings`
-- part of ``dbaccess audit verify`` -- recomputes every closed recording's
digest from the store and reports any recording that was edited, cut short,
added to, reordered or deleted, or that misses an event (a gap in ``seq``)
although it was closed without any lost.

**Replicas.**  Brokers sharing a store each record as themselves (``writer``,
their replica id).  One replica writes a recording at a time: the session's
owner, or the replica that took the session over when its owner died, which
becomes the writer (:meth:`Recorder._resume`) before it reads the last stored
event.  Every batch is written only for the recordings this recorder is still
the writer of (``event_writes.write_events``, ``FOR SHARE`` on PostgreSQL, so
a taking over waits for a batch under way): a replica taken for dead that still
writes has its recording failed, loudly, instead of numbering an event the
same as the new writer's, and it does not close a recording it no longer
writes.  Sequence numbers of one recording therefore never collide.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final, Protocol, cast

import sqlalchemy as sa

from server.audit import access, canonical, chain, event_writes
from server.audit.canonical import stored_form
from server.audit.event_writes import EventRow
from server.errors import DbaccessError
from server.policy.model import RecordingFailure
from server.store import tables as t
from server.store.db import Store, _aware, utcnow

log = logging.getLogger(__name__)

REDACTED: Final = "[redacted]"
DEFAULT_BATCH_SIZE: Final = 500
DEFAULT_FLUSH_INTERVAL: Final = 0.2
DEFAULT_MAX_QUEUE: Final = 100_000

FailureCallback = Callable[[str, str], None]


# --------------------------------------------------------------------------
# Events and digests


@dataclass(frozen=True)
class SessionEvent:
    session_id: str
    seq: int
    ts: datetime
    kind: str
    data: Mapping[str, Any]

    def canonical(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": _iso(self.ts),
            "kind": self.kind,
            "data": self.data,
        }

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": _iso(self.ts), "kind": self.kind, "data": dict(self.data)}


def _iso(ts: datetime) -> str:
    aware = _aware(ts)
    assert aware is not None
    return aware.isoformat(timespec="microseconds")


def canonical_line(event: SessionEvent) -> bytes:
    """One event as the digest (and the archived copy) has it: compact sorted-key JSON, newline.

    That is ``json.dumps(event.canonical(), sort_keys=True, separators=(",", ":"),
    default=str)``, put together from its parts (its keys sort as data, kind,
    seq, ts) so that only ``data`` goes through the encoder."""
    return _line(canonical.encode(event.data), event.kind, event.seq, _iso(event.ts))


def _line(data: str, kind: str, seq: int, ts: str) -> bytes:
    """The canonical line of an event whose data is ``data`` in canonical JSON (see
    :func:`canonical_line`); the writer hashes the very text it stores."""
    return f'{{"data":{data},"kind":{_kind_json(kind)},"seq":{seq:d},"ts":"{ts}"}}\n'.encode()


def _lines(events: Sequence[EventRow]) -> list[bytes | None]:
    """The canonical lines of the events whose text is made (None for the others):
    made before they are written, so that nothing is left to fail after."""
    return [_line(e.text, e.kind, e.seq, e.iso) if e.later is None else None for e in events]


@lru_cache(maxsize=64)
def _kind_json(kind: str) -> str:
    return canonical.encode(kind)


def recording_digest(events: Iterable[SessionEvent]) -> str:
    """SHA-256 over the canonical form of ``events`` (given in ``seq`` order)."""
    digest = hashlib.sha256()
    for event in events:
        digest.update(canonical_line(event))
    return digest.hexdigest()


# --------------------------------------------------------------------------
# Redaction of statements


# Every alternative runs in time linear in what it matches, whatever the text:
# quoted forms are written as unrolled loops, and an opening that is never
# closed runs to the end of the text (as PostgreSQL reads it) instead of
# making the scan try again from every later position.
_TOKEN = re.compile(
    r"""
      (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<estring>[eE]'[^'\\]*(?:(?:\\(?:.|\Z)|'')[^'\\]*)*(?:'|\Z))
    | (?P<string>'[^']*(?:''[^']*)*(?:'|\Z))
    | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z0-9_]*)?\$.*?(?:\$(?P=tag)\$|\Z))
    | (?P<ident>"[^"]*(?:""[^"]*)*(?:"|\Z))
    | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
    | (?P<number>(?<![A-Za-z0-9_$])[0-9][0-9._eE+-]*)
    """,
    re.VERBOSE | re.DOTALL,
)
_INLINE_SECRET = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|api_?key)\s*[=:]\s*)(?P<value>[^\s'&;,]+)",
    re.IGNORECASE,
)
# ``scheme://user:password@``.  The match starts at ``://`` (a scheme before it
# changes nothing about what to hide), and the password stops at a slash as
# libpq's URI parser does: so each ``://`` scans only up to the next one.
_URI_PASSWORD = re.compile(r"(?P<head>://[^/\s:@']+:)[^@\s'/]+(?P<tail>@)")


def redact_statement(sql: str, *, literals: Iterable[str] = (), all_literals: bool = False) -> str:
    """``sql`` as it may be recorded: no passwords, no values of masked columns.

    * the string after the keyword PASSWORD (``ALTER ROLE x PASSWORD '...'``,
      ``CREATE USER MAPPING ... OPTIONS (password '...')``) becomes ``'[redacted]'``;
    * inside any string, ``password=...``-style settings and the password of a
      ``scheme://user:password@host`` URI are cut out (connection strings);
    * a string whose content is in ``literals`` (the values the statement
      compares with or writes into masked columns) becomes ``'[redacted]'``;
    * with ``all_literals`` every string and number does (for statements that
      touch masked columns when it cannot be told which literal goes where).

    Comments, identifiers and dollar-quoted bodies are recognised, so a quote
    inside them does not throw the scan off.
    """
    hidden = frozenset(v for v in literals if v)
    if not hidden and not all_literals and _nothing_to_redact(sql):
        return sql
    if len(sql) > _REDACT_CACHE_MAX_TEXT:
        return _redact_statement(sql, hidden, all_literals)
    return _redact_cached(sql, hidden, all_literals)


def _nothing_to_redact(sql: str) -> bool:
    """Whether :func:`redact_statement` without literals to hide leaves ``sql`` as it is:
    it has no word PASSWORD, and no inline secret or URI password anywhere.  A string
    of the text is a piece of it that starts with a quote (or ``$``), so a secret the
    string-by-string scan would find in one is found in the whole text by the same
    pattern; most statements have none, and are not scanned token by token."""
    return (
        _INLINE_SECRET.search(sql) is None
        and _URI_PASSWORD.search(sql) is None
        and _PASSWORD_WORD.search(sql) is None
    )


_PASSWORD_WORD = re.compile("password", re.IGNORECASE)

# The same statement text is recorded again and again (prepared statements, loops).
_REDACT_CACHE_MAX_TEXT = 4_096


@lru_cache(maxsize=1_024)
def _redact_cached(sql: str, hidden: frozenset[str], all_literals: bool) -> str:
    return _redact_statement(sql, hidden, all_literals)


def _redact_statement(sql: str, hidden: frozenset[str], all_literals: bool) -> str:
    out: list[str] = []
    pos = 0
    after_password = False
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup
        if kind == "tag":
            kind = "dollar"
        out.append(sql[pos : match.start()])
        text = match.group()
        pos = match.end()
        if kind == "comment":
            out.append(text)
            continue
        if kind == "word":
            out.append(text)
            after_password = text.lower() == "password"
            continue
        if kind in ("string", "estring", "dollar"):
            content = _literal_content(text, kind)
            if after_password or all_literals or content in hidden:
                out.append(f"'{REDACTED}'")
            else:
                out.append(_redact_inline(text))
        elif kind == "number" and all_literals:
            out.append(REDACTED)
        else:
            out.append(text)
        after_password = False
    out.append(sql[pos:])
    return "".join(out)


def _literal_content(text: str, kind: str | None) -> str:
    if kind == "string":
        return text[1:-1].replace("''", "'")
    if kind == "estring":
        return text[2:-1].replace("''", "'")
    tag_end = text.index("$", 1) + 1
    return text[tag_end:-tag_end]


def _redact_inline(text: str) -> str:
    text = _INLINE_SECRET.sub(lambda m: m["key"] + REDACTED, text)
    return _URI_PASSWORD.sub(lambda m: m["head"] + REDACTED + m["tail"], text)


def redact_params(
    params: Sequence[bytes | None],
    formats: Sequence[int] = (),
    *,
    masked: Iterable[int] = (),
) -> list[str | None]:
    """Bind parameters as they may be recorded: text as text, binary as a size, masked hidden.

    ``formats`` follow the protocol (none: all text; one: all alike); ``masked``
    are the positions the statement binds to masked columns.
    """
    hidden = set(masked)
    out: list[str | None] = []
    for index, value in enumerate(params):
        fmt = formats[0] if len(formats) == 1 else formats[index] if formats else 0
        if value is None:
            out.append(None)
        elif index in hidden:
            out.append(REDACTED)
        elif fmt:
            out.append(f"<binary {len(value)} bytes>")
        else:
            out.append(_redact_inline(value.decode("utf-8", "replace")))
    return out


# Redacting a statement costs time linear in its length, on the recorder's
# writer thread; a recording keeps at most this much of one (the gateway refuses
# statements over its size limit anyway, see server.gateway.analysis_limits).
RECORDED_TEXT_MAX: Final = 64 * 1024


def recorded_text(text: str, *, literals: Iterable[str] = (), all_literals: bool = False) -> str:
    """``text`` as a ``statement`` event keeps it: redacted, cut (see :func:`statement_event`)."""
    cut = len(text) > RECORDED_TEXT_MAX
    shown = redact_statement(
        text[:RECORDED_TEXT_MAX] if cut else text, literals=literals, all_literals=all_literals
    )
    return shown + "…" if cut else shown


def statement_event(
    text: str,
    *,
    started_at: datetime | str,
    duration_ms: float,
    params: Sequence[str | None] | None = None,
    rows: int | None = None,
    tag: str | None = None,
    sqlstate: str | None = None,
    decision: str | None = None,
    masked_fields: Sequence[Mapping[str, str]] = (),
    literals: Iterable[str] = (),
    all_literals: bool = False,
    shown: str | None = None,
) -> dict[str, Any]:
    """The data of a ``statement`` event; ``text`` is redacted here (unless ``shown``
    gives :func:`recorded_text` of it already), ``params`` must be already
    (see :func:`redact_params`); ``started_at`` may be given as its ISO text
    already (:func:`event_iso`).  A text longer than :data:`RECORDED_TEXT_MAX` is kept
    cut to that many characters (then ``…``; ``text_length`` gives its length): it is
    redacted as cut, so a literal the cut leaves open is hidden as the rest of one."""
    cut = len(text) > RECORDED_TEXT_MAX
    if shown is None:
        shown = recorded_text(text, literals=literals, all_literals=all_literals)
    data: dict[str, Any] = {
        "text": shown,
        "params": list(params) if params is not None else None,
        "started_at": (
            started_at
            if isinstance(started_at, str)
            else started_at.isoformat(timespec="microseconds")
        ),
        "duration_ms": round(duration_ms, 3),
        "rows": rows,
        "tag": tag,
        "sqlstate": sqlstate,
        "decision": decision,
        "masked": [dict(f) for f in masked_fields],
    }
    if cut:
        data["text_length"] = len(text)
    return data


# What :func:`statement_made` makes a ``statement`` event's data from: plain values
# only (they go to the recorder's writer process as they are).
StatementParts = tuple[
    str,  # the text as sent
    bool,  # it touches masked columns (or what it touches cannot be told): every literal hidden
    tuple[bool, ...] | None,  # a Query of several: the same, per statement
    list[int] | None,  # where those statements end
    tuple[bytes | None, ...] | None,  # an Execute's Bind parameters
    tuple[int, ...],  # their formats
    int,  # how long it took, in nanoseconds
    int,  # rows
    str | None,  # command tag
    str | None,  # SQLSTATE
    str,  # decision
    list[dict[str, str]],  # masked fields
    tuple[Any, ...] | None,  # its access facts (``server.audit.access.Facts``), as a tuple
]


def statement_made(
    parts: StatementParts, ts_ns: int, said: access.Said | None = None
) -> dict[str, Any]:
    """A ``statement`` event's data from its parts: the text redacted (every literal
    when it touches masked columns; in a Query of several, those of such statements
    only), the parameters too (all hidden when it touches masked columns: which
    goes to a masked column cannot be told), its start told from the event's time.
    ``said``: the access facts that earlier statements of its recording in the same
    batch hold in full (updated): facts of the template of one of those are made as a
    reference to it (``access.Facts.said_in``)."""
    sql, touches, hides, ends, params, formats, duration_ns = parts[:7]
    rows, tag, sqlstate, decision, masked, facts = parts[7:]
    shown_params = None
    if params is not None:
        shown_params = redact_params(params, formats, masked=range(len(params)) if touches else ())
    shown = None
    if touches and hides is not None and ends is not None and len(ends) == len(hides):
        shown = recorded_text(redacted_by_statement(sql, hides, ends))
    data = statement_event(
        sql,
        shown=shown if shown is not None else recorded_text(sql, all_literals=touches),
        started_at=event_iso(ts_ns - duration_ns),
        duration_ms=duration_ns / 1e6,
        rows=rows,
        tag=tag,
        sqlstate=sqlstate,
        decision=decision,
        masked_fields=masked,
        params=shown_params,
    )
    if facts is not None:
        # In full, their text is put in place as it was made (``stored_form``).
        data[access.FACTS] = access.Facts(*facts).said_in(said, rows, decision)
    return data


def redacted_by_statement(sql: str, hides: Sequence[bool], ends: Sequence[int]) -> str:
    """A Query of several statements, ending where ``ends`` says, each with its
    literals hidden where ``hides`` says (what comes after the last: all)."""
    out: list[str] = []
    start = 0
    for end, hide in zip(ends, hides, strict=True):
        out.append(redact_statement(sql[start:end], all_literals=hide))
        start = end
    out.append(redact_statement(sql[start:], all_literals=True))  # comments, ';'
    return "".join(out)


LIMIT_KIND: Final = "limit"


@dataclass(frozen=True, kw_only=True)
class LimitHit:
    """A statement that one of the scope's limits refused or cut.

    ``limit`` is the policy key (``max_result_rows``, ``statement_timeout``,
    ``max_statement_bytes``...), ``value`` its value in the policy's unit (a
    count, bytes, or a text such as ``5min``), ``scope`` the scope that set
    it.  ``action`` is ``refused`` (the statement never ran) or ``cut`` (its
    result was stopped part way; ``rows``/``bytes`` are what the client got
    before the cut).  ``statement`` is recorded with every literal redacted:
    the statement may touch masked columns, and its text is not the point.
    """

    limit: str
    value: int | str
    scope: str
    action: str
    sqlstate: str
    message: str = ""
    statement: str | None = None
    rows: int | None = None
    bytes: int | None = None
    completed: str | None = None  # the server finished the statement first (its command tag)


def limit_event(hit: LimitHit) -> dict[str, Any]:
    """The data of a ``limit`` event; its statement is kept as :func:`recorded_text`
    keeps one (every literal redacted, cut at :data:`RECORDED_TEXT_MAX`)."""
    data: dict[str, Any] = {
        "limit": hit.limit,
        "value": hit.value,
        "scope": hit.scope,
        "action": hit.action,
        "sqlstate": hit.sqlstate,
        "message": hit.message,
        "statement": (
            recorded_text(hit.statement, all_literals=True) if hit.statement is not None else None
        ),
    }
    if hit.rows is not None:
        data["rows"] = hit.rows
    if hit.bytes is not None:
        data["bytes"] = hit.bytes
    if hit.completed is not None:
        data["completed"] = hit.completed
    return data


# --------------------------------------------------------------------------
# The recorder


Build = Callable[[Any, int], Mapping[str, Any] | None]
"""Makes an event's data on the writer thread from what the data path kept
(``fields``) and the event's time (nanoseconds since the epoch); None when
there turns out to be nothing to record."""


class RecordFn(Protocol):
    """How the gateway's hooks record: :meth:`Recorder.record`'s signature."""

    def __call__(
        self, session_id: str, kind: str, data: Any, build: Build | None = None, /
    ) -> object: ...


class TwoStep:
    """A :data:`Build` in two steps, so that the second can run in the recorder's
    writer process (``event_writes``), off the broker's interpreter lock:
    ``prepare`` reads, on the writer thread, what only the broker holds (the
    gateway's analyses and caches) into plain values; ``make`` makes the event's
    data from those, the event's time and what earlier events of its recording in
    the same batch said (``access.Said``, which it may add to; None: nothing is
    known of them), anywhere.  ``make`` is a module-level function (it goes to
    the process by name) and always makes data.  Called as it is, it is the plain :data:`Build`
    ``make(prepare(fields), ts_ns, None)``."""

    __slots__ = ("make", "prepare")

    def __init__(self, prepare: Callable[[Any], Any], make: event_writes.Make) -> None:
        self.prepare = prepare
        self.make = make

    def __call__(self, fields: Any, ts_ns: int) -> Mapping[str, Any]:
        return self.make(self.prepare(fields), ts_ns, None)


def event_data(data: Any, build: Build | None, ts_ns: int) -> Mapping[str, Any] | None:
    """The data an event recorded with ``build`` (or as ``data``) has, as the writer makes it."""
    return build(data, ts_ns) if build is not None else cast("Mapping[str, Any]", data)


def _limit_data(hit: LimitHit, _ts_ns: int) -> dict[str, Any]:
    return limit_event(hit)


def record_limit(record: RecordFn | None, session_id: str, hit: LimitHit) -> None:
    """Put a ``limit`` event in the session's recording (``record``: the
    recorder's ``record``; None records nothing).  Its data (the statement
    redacted) is made on the recorder's writer thread.  Never raises: the
    refusal or cut stands even when its recording fails (the recorder counts
    that as a failure of the session's recording)."""
    if record is None:
        return
    try:
        record(session_id, LIMIT_KIND, hit, _limit_data)
    except Exception:
        log.exception("recording a %s limit failed", hit.limit)


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Events read back at a time, to take up a resumed recording's digest or verify one.
_READ_CHUNK: Final = 5_000


def event_time(ts_ns: int) -> datetime:
    """A time in nanoseconds since the epoch as the store keeps times (microseconds, UTC)."""
    return _EPOCH + timedelta(microseconds=ts_ns // 1000)


def event_iso(ts_ns: int) -> str:
    """``event_time(ts_ns).isoformat(timespec="microseconds")``, as events write their
    times: the writer formats two a statement, and the events of one second share all
    but the microseconds."""
    global _SECOND  # a one-entry cache
    seconds, micros = divmod(ts_ns // 1000, 1_000_000)
    known = _SECOND
    if known[0] != seconds:
        known = _SECOND = (seconds, (_EPOCH + timedelta(seconds=seconds)).isoformat()[:19])
    return f"{known[1]}.{micros:06d}+00:00"


# The second event_iso formatted last, and its text (replaced whole: the writer and a
# caller of statement_data on another thread each read one consistent pair).
_SECOND: tuple[int, str] = (-1, "")


@dataclass(eq=False)
class _Session:
    """A recording this recorder writes.  ``mode``, ``failed``, ``dropped``,
    ``closing`` and ``ended`` change under the recorder's lock; ``next_seq``,
    ``digest`` and ``written`` belong to the writer thread (and to ``close``
    once the writer is done with the session)."""

    session_id: str
    mode: RecordingFailure
    next_seq: int = 1
    failed: str | None = None
    dropped: int = 0
    closing: bool = False
    ended: bool = False  # the writer has taken its session.end: later events are dropped
    # SHA-256 of the canonical lines written so far, and how many; None: a recording
    # this process took over, whose earlier events are hashed before its first write.
    digest: Any = None
    written: int = 0


# An event's data as it is kept, and its canonical JSON text (:func:`stored_form`).
_Stored = tuple[Mapping[str, Any], str]


# An event as the data path queues it: its recording, its time (ns since the
# epoch), kind, and what the writer makes its data from.
_Queued = tuple[_Session, int, str, Any, Build | None]
# An event as the writer made it: its recording, time and kind; its data and text
# (:func:`stored_form`), or what the writer process makes them from; or why it
# could not be made.
_Made = tuple[_Session, int, str, _Stored | None, event_writes.Later | None, str | None]
# An event of a batch that is to be written.
_Kept = tuple[_Session, int, str, _Stored | None, event_writes.Later | None]


@dataclass(frozen=True)
class ClosedRecording:
    session_id: str
    status: str
    events: int
    dropped: int
    digest: str | None
    audit_seq: int | None


# Why a replica's recording failed when another replica had taken its session over.
_TAKEN_OVER = "another broker replica took the session over"


class Recorder:
    """Queues session events and makes and writes them in batches on a background thread."""

    def __init__(
        self,
        store: Store,
        *,
        on_failure: FailureCallback | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_queue: int = DEFAULT_MAX_QUEUE,
        writer: str | None = None,
        write_process: bool = False,
    ) -> None:
        self.store = store
        # The replica this recorder writes as (None: a recorder that never shares a store).
        self.writer = writer
        self.on_failure = on_failure
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[_Queued] = deque()
        self._sessions: dict[str, _Session] = {}
        # Closed here: late events (a connection still draining) must not extend them.
        self._closed: set[str] = set()
        self._enqueued = 0
        self._done = 0
        self._flush_to = 0  # a flush waits until _done reaches this: no gathering meanwhile
        self._thread: threading.Thread | None = None
        self._stopping = False
        # What _writes asks, built once: the writer asks it for every batch.
        self._mine = event_writes.mine_query(writer)
        # The store's part of the writes, in a child process (event_writes' docstring).
        self._process = (
            event_writes.WriterProcess(store, writer)
            if write_process and event_writes.shareable(store)
            else None
        )

    # -- lifecycle ----------------------------------------------------------------
    def _ensure_thread(self) -> None:
        # Called with the lock held.
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="dbaccess-recorder", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then end the background thread."""
        self.flush(timeout)
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        if self._process is not None:
            self._process.stop(timeout)

    # -- recording ----------------------------------------------------------------
    def open(
        self,
        session_id: str,
        data: Mapping[str, Any],
        *,
        failure: RecordingFailure = RecordingFailure.CLOSE,
    ) -> None:
        """Start a session's recording with its ``session.start`` event.

        The recording's row is written at once (this raises if the store is
        unusable, so a session is never started unrecorded by accident).
        """
        now = utcnow()
        with self.store.tx() as conn:
            conn.execute(
                t.session_recordings.insert().values(
                    session_id=session_id,
                    status="open",
                    opened_at=now,
                    dropped=0,
                    writer=self.writer,
                )
            )
        with self._lock:
            self._sessions[session_id] = _Session(session_id, failure, digest=hashlib.sha256())
        self.record(session_id, "session.start", data)

    def record(self, session_id: str, kind: str, data: Any, build: Build | None = None, /) -> bool:
        """Queue one event; never waits on the store (but for the first event of a
        session this process did not open: :meth:`_resume`).  False when it was refused.

        The event's time is taken now; its data is ``data`` (a mapping, which
        must not change after this call), or, with ``build``, what ``build``
        makes of ``data`` on the writer thread.  Refused: the session's
        recording failed (or, with ``continue``, the event is dropped and
        counted), was closed, or the queue is full.
        """
        failed_now: str | None = None
        with self._lock:
            state = self._state_of(session_id)
            if state is None:
                return False
            if state.failed is not None or (state.closing and kind != "session.end"):
                state.dropped += 1
                return False
            queue = self._queue
            if len(queue) >= self.max_queue:
                state.dropped += 1
                if state.mode is RecordingFailure.CONTINUE:
                    return False
                state.failed = failed_now = "the recording queue is full"
            else:
                queue.append((state, time.time_ns(), kind, data, build))
                self._enqueued += 1
                if len(queue) == 1 or len(queue) == self.batch_size:
                    # The writer waits for a first event or gathers a batch: wake it
                    # once for each (while it writes, more waking would only cost).
                    self._ensure_thread()
                    self._wake.notify_all()
                return True
        self._report(session_id, failed_now)
        return False

    def _resume(self, session_id: str) -> _Session | None:
        """A session this process did not open (its broker died, or restarted): this
        recorder becomes its writer and continues after its last stored event; None
        when its recording is closed.  Called with the lock held.

        Becoming the writer comes first, in the same transaction: on PostgreSQL the
        UPDATE waits for a write of the previous writer that is under way (it holds
        the row ``FOR SHARE``), so the last event read next is the last there will
        be, and that writer's later writes are refused (:meth:`_write`)."""
        r, e = t.session_recordings.c, t.session_events.c
        with self.store.tx() as conn:
            conn.execute(
                t.session_recordings.update()
                .where(r.session_id == session_id, r.status == "open")
                .values(writer=self.writer)
            )
            status = conn.execute(sa.select(r.status).where(r.session_id == session_id)).scalar()
            if status is not None and status != "open":
                return None
            if status is None:
                conn.execute(
                    t.session_recordings.insert().values(
                        session_id=session_id,
                        status="open",
                        opened_at=utcnow(),
                        dropped=0,
                        writer=self.writer,
                    )
                )
            last = conn.execute(
                sa.select(sa.func.max(e.seq)).where(e.session_id == session_id)
            ).scalar()
        # Its earlier events are hashed by the writer, before it writes the next one.
        digest = None if last is not None else hashlib.sha256()
        return _Session(session_id, RecordingFailure.CLOSE, int(last or 0) + 1, digest=digest)

    def hand_over(self, session_id: str, timeout: float = 10.0) -> bool:
        """Write what is queued for a session another replica will record from now on
        (an API-only replica hands its sessions to a gateway replica), and forget it
        here: anything this recorder is asked later for it starts from the store.
        False when its events were not written in time."""
        written = self.flush(timeout)
        with self._lock:
            state = self._sessions.pop(session_id, None)
        return written and (state is None or state.failed is None)

    def take_over(self, session_id: str, failure: RecordingFailure) -> bool:
        """Become the writer of a session's open recording that another replica began
        (its ``session.start`` is written already), recording it as ``failure`` says.
        False when the recording is closed."""
        with self._lock:
            state = self._state_of(session_id)
            if state is None:
                return False
            state.mode = failure
        return True

    def _state_of(self, session_id: str) -> _Session | None:
        """The session's recording state, resumed from the store where another
        replica began it; None when it is closed.  Called with the lock held."""
        state = self._sessions.get(session_id)
        if state is None:
            if session_id in self._closed:
                return None
            state = self._resume(session_id)
            if state is None:
                self._closed.add(session_id)
                return None
            self._sessions[session_id] = state
        return state

    def _writes(self, conn: sa.Connection, session_ids: Iterable[str]) -> set[str]:
        """Of ``session_ids``, the recordings this recorder is still the writer of, held
        ``FOR SHARE`` until the transaction ends (a taking over waits for it)."""
        ids = sorted(set(session_ids))
        return {str(sid) for sid in conn.execute(self._mine, {"ids": ids}).scalars()}

    def queue_depth(self) -> int:
        """Events queued and not written yet."""
        with self._lock:
            return len(self._queue)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event queued so far has been written (or failed)."""
        with self._lock:
            target = self._enqueued
            if self._done >= target:
                return True
            self._flush_to = max(self._flush_to, target)
            self._ensure_thread()
            self._wake.notify_all()
            return self._wake.wait_for(lambda: self._done >= target, timeout)

    def close(self, session_id: str, data: Mapping[str, Any]) -> ClosedRecording:
        """End a session's recording: ``session.end``, write all, chain its digest.

        The digest was taken as the events were written, so closing reads none
        of them back.  Never raises for store trouble: a recording that cannot
        be closed is reported as ``failed`` (and logged).
        """
        if not self.record(session_id, "session.end", data):
            with self._lock:
                closed = session_id in self._closed and session_id not in self._sessions
            if closed:
                info = recording_info(self.store, session_id)
                if info is not None:
                    return ClosedRecording(
                        session_id,
                        info.status,
                        info.events or 0,
                        info.dropped,
                        info.digest,
                        info.audit_seq,
                    )
        with self._lock:
            state = self._sessions.get(session_id)
            if state is not None:
                state.closing = True
        written = self.flush(30.0)
        with self._lock:
            state = self._sessions.pop(session_id, None)
            self._closed.add(session_id)
            if state is not None and not written and state.failed is None:
                state.failed = "the recording's last events were not written in time"
        failed = state.failed if state is not None else None
        dropped = state.dropped if state is not None else 0
        try:
            if state is None:  # not recorded here, and nothing could be queued
                state = _Session(session_id, RecordingFailure.CLOSE)
            with self.store.tx() as conn:
                taken = not self._writes(conn, [session_id])
            if taken:
                # Another replica took the session over (this one was taken for
                # dead): the recording is its to close.
                log.warning("recording of session %s is written by another replica", session_id)
                return ClosedRecording(session_id, "taken over", state.written, dropped, None, None)
            if state.digest is None:
                self._take_up(state)
            digest = state.digest.hexdigest()
            events = state.written
            status = "failed" if failed is not None else "closed"
            audit = chain.append(
                self.store,
                "recording.closed",
                session_id=session_id,
                data={
                    "digest": digest,
                    "events": events,
                    "dropped": dropped,
                    "status": status,
                    "problem": failed,
                },
            )
            with self.store.tx() as conn:
                conn.execute(
                    t.session_recordings.update()
                    .where(t.session_recordings.c.session_id == session_id)
                    .values(
                        status=status,
                        closed_at=utcnow(),
                        events=events,
                        dropped=dropped,
                        digest=digest,
                        audit_seq=audit.seq,
                    )
                )
        except Exception as exc:  # the store itself is failing: nothing more can be kept
            log.error("recording of session %s could not be closed: %s", session_id, exc)
            return ClosedRecording(session_id, "failed", 0, dropped, None, None)
        return ClosedRecording(session_id, status, events, dropped, digest, audit.seq)

    def _take_up(self, state: _Session) -> None:
        """Hash the events a recording already has in the store (written by an earlier
        process), a chunk at a time, before this one writes more or closes it."""
        digest = hashlib.sha256()
        written = 0
        for event in stored_events(self.store, state.session_id):
            digest.update(canonical_line(event))
            written += 1
        state.digest = digest
        state.written = written

    # -- the writer ---------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if not self._queue:
                    return
                if (
                    len(self._queue) < self.batch_size
                    and not self._stopping
                    and self._flush_to <= self._done
                ):
                    # Let a batch gather; a full queue or a flush cuts this short
                    # (a flush asked for before this wait, too: _flush_to).
                    self._wake.wait(self.flush_interval)
                queue = self._queue
                batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
            try:
                failed = self._write_batch(batch)
            except Exception as exc:  # the writer must go on, and nothing be lost quietly
                log.exception("the recorder could not write a batch")
                failed = []
                with self._lock:
                    for state, lost in Counter(item[0] for item in batch).items():
                        self._lost(
                            state, lost, f"the recorder failed: {type(exc).__name__}", failed
                        )
            with self._lock:
                self._done += len(batch)
                self._wake.notify_all()
            for session_id, reason in failed:
                self._report(session_id, reason)

    def _write_batch(self, batch: list[_Queued]) -> list[tuple[str, str]]:
        """Make, number, write and hash one batch; the sessions it failed, and why."""
        # The data first, outside the lock (redaction and the like take time).
        # Each event's data is serialized once, here or in the writer process (a
        # ``TwoStep`` build, when there is one): that text is stored and hashed.
        later = self._process is not None
        made: list[_Made] = []
        for state, ts_ns, kind, data, build in batch:
            try:
                if later and type(build) is TwoStep:
                    deferral = (build.make, build.prepare(data), ts_ns)
                    made.append((state, ts_ns, kind, None, deferral, None))
                    continue
                built = event_data(data, build, ts_ns)
                stored = None if built is None else stored_form(built)
                made.append((state, ts_ns, kind, stored, None, None))
            except Exception as exc:
                log.exception("a %s event of session %s could not be made", kind, state.session_id)
                why = f"an event could not be recorded: {type(exc).__name__}"
                made.append((state, ts_ns, kind, None, None, why))
        failed: list[tuple[str, str]] = []
        kept: list[_Kept] = []
        with self._lock:  # only what record() shares: failures and drops
            for state, ts_ns, kind, stored, deferred, unmade in made:
                if state.failed is not None or state.ended:
                    state.dropped += 1
                elif unmade is not None:
                    self._lost(state, 1, unmade, failed)
                else:
                    if kind == "session.end":
                        state.ended = True
                    if stored is not None or deferred is not None:  # else: nothing to record
                        kept.append((state, ts_ns, kind, stored, deferred))
        if not kept:
            return failed
        events: list[EventRow] = []
        lines: list[bytes | None] = []
        try:
            for state in dict.fromkeys(state for state, *_ in kept):
                if state.digest is None:
                    self._take_up(state)
        except Exception as exc:
            log.error("cannot read back a recording this recorder took over: %s", exc)
            problem: str | None = f"the store refused the recording: {type(exc).__name__}"
            fenced: set[str] = set()
            texts: list[str] | None = []
        else:
            events = self._numbered(kept)
            lines = _lines(events)
            try:
                problem, fenced, texts = self._write(events)
            except event_writes.Unmade as exc:
                # Nothing of the batch was written: its events are made here, and
                # one that cannot be made is lost as any other (the rest renumbered).
                log.error("the writer process could not make a batch's events: %s", exc)
                for (state, *_), event in reversed(list(zip(kept, events, strict=True))):
                    state.next_seq = event.seq
                kept = self._made_here(kept, failed)
                if not kept:
                    return failed
                events = self._numbered(kept)
                lines = _lines(events)
                problem, fenced, texts = self._write(events)
        if problem is None:
            if texts is None:
                # The writer process ended after it wrote the batch: the texts it
                # made are in the store, and the digests of their recordings are
                # taken up from there before their next write or close.
                for state, *_, deferred in kept:
                    if deferred is not None:
                        state.digest = None
            made_texts = iter(texts or ())
            for (state, *_), event, line in zip(kept, events, lines, strict=True):
                if line is None and texts is not None:  # made by the writer process
                    line = _line(next(made_texts), event.kind, event.seq, event.iso)
                if state.session_id in fenced or state.digest is None:
                    continue
                assert line is not None
                state.digest.update(line)
                state.written += 1
            if fenced:
                with self._lock:
                    taken = Counter(s for s, *_ in kept if s.session_id in fenced)
                    for state, lost in taken.items():
                        self._lost(state, lost, _TAKEN_OVER, failed)
        else:
            with self._lock:
                for state, lost in Counter(state for state, *_ in kept).items():
                    self._lost(state, lost, problem, failed)
        return failed

    @staticmethod
    def _numbered(kept: list[_Kept]) -> list[EventRow]:
        """The kept events, numbered in their recordings (numbers and digests belong
        to the writer thread)."""
        events: list[EventRow] = []
        index_entry = access.index_entry
        for state, ts_ns, kind, stored, deferred in kept:
            seq = state.next_seq
            state.next_seq += 1
            iso = event_iso(ts_ns)
            if stored is None:
                events.append(EventRow(state.session_id, seq, kind, "", iso, None, deferred))
            else:
                data, text = stored
                events.append(
                    EventRow(state.session_id, seq, kind, text, iso, index_entry(kind, data))
                )
        return events

    def _made_here(self, kept: list[_Kept], failed: list[tuple[str, str]]) -> list[_Kept]:
        """``kept`` with the data the writer process was to make made on this thread;
        an event whose data cannot be made is lost (and its recording failed)."""
        out: list[_Kept] = []
        for state, ts_ns, kind, stored, deferred in kept:
            if deferred is not None:
                try:
                    stored = event_writes.made_data(deferred)
                except Exception as exc:
                    log.exception(
                        "a %s event of session %s could not be made", kind, state.session_id
                    )
                    with self._lock:
                        self._lost(
                            state,
                            1,
                            f"an event could not be recorded: {type(exc).__name__}",
                            failed,
                        )
                    continue
            out.append((state, ts_ns, kind, stored, None))
        return out

    @staticmethod
    def _lost(state: _Session, lost: int, problem: str, failed: list[tuple[str, str]]) -> None:
        # Called with the lock held.
        state.dropped += lost
        if state.mode is RecordingFailure.CLOSE and state.failed is None:
            state.failed = problem
            failed.append((state.session_id, problem))

    def _write(self, batch: list[EventRow]) -> tuple[str | None, set[str], list[str] | None]:
        """Write the events of the recordings this recorder still writes, in one
        transaction: (the store's problem, or None; the sessions another replica has
        taken over, whose events were not written; the texts of the events whose
        data was made there, in order, or None when they are not known: the writer
        process ended after it wrote them).  ``event_writes.Unmade`` when the data
        of one could not be made: nothing was written."""
        if self._process is not None:
            try:
                return self._process.write(batch)
            except event_writes.WriterLost as exc:
                problem, fenced = self._settle(batch, str(exc))
                return problem, fenced, None
            except event_writes.WriterUnavailable as exc:
                # Nothing was handed over: this thread writes, from now on.
                log.error(
                    "the recording's writer process could not start (%s): "
                    "recordings are written from the broker's own process",
                    exc,
                )
                self._process = None
        batch, texts = event_writes.made(batch)
        try:
            with self.store.tx() as conn:
                fenced = event_writes.write_events(conn, self._mine, batch)
        except Exception as exc:
            access.forget(self.store.engine)
            log.error("cannot write %d session events: %s", len(batch), exc)
            return f"the store refused the recording: {type(exc).__name__}", set(), texts
        return None, fenced, texts

    def _settle(self, batch: list[EventRow], why: str) -> tuple[str | None, set[str]]:
        """What ``_write`` returns for a batch the writer process ended with: it was
        written in one transaction or not at all, and the store tells which."""
        log.error(
            "the recording's writer process ended with %d events (%s): "
            "reading back whether it wrote them",
            len(batch),
            why,
        )
        lost = "the recording's writer process failed"
        ids = sorted({e.session_id for e in batch})
        se = t.session_events.c
        try:
            # A snapshot: the child is gone, so what it committed is all it wrote (and
            # a store still locked by someone else does not hold this up).
            with self.store.read() as conn:
                mine = self._writes(conn, ids)
                stored = set(
                    conn.execute(
                        sa.select(se.session_id, se.seq).where(
                            se.session_id.in_(ids), se.seq >= min(e.seq for e in batch)
                        )
                    ).all()
                )
        except Exception as exc:
            log.error("cannot read back what the writer process wrote: %s", exc)
            return lost, set()
        if not any((e.session_id, e.seq) in stored for e in batch if e.session_id in mine):
            return lost, set()
        return None, set(ids) - mine

    def _report(self, session_id: str, reason: str | None) -> None:
        if reason is None or self.on_failure is None:
            return
        callback = self.on_failure
        # Its own thread: the callback ends the session, which closes the
        # recording, which waits for this writer.
        threading.Thread(
            target=_call_quietly,
            args=(callback, session_id, reason),
            name="dbaccess-recording-failure",
            daemon=True,
        ).start()


def _call_quietly(callback: FailureCallback, session_id: str, reason: str) -> None:
    try:
        callback(session_id, reason)
    except Exception:
        log.exception("handling the recording failure of session %s failed", session_id)


# --------------------------------------------------------------------------
# Reading and verifying


@dataclass(frozen=True)
class RecordingInfo:
    session_id: str
    status: str
    opened_at: datetime
    closed_at: datetime | None
    events: int | None
    dropped: int
    digest: str | None
    audit_seq: int | None
    archive_key: str | None = None
    archive_sha256: str | None = None
    archived_at: datetime | None = None
    pruned_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "status": self.status,
            "opened_at": _iso(self.opened_at),
            "closed_at": _iso(self.closed_at) if self.closed_at else None,
            "events": self.events,
            "dropped": self.dropped,
            "digest": self.digest,
            "audit_seq": self.audit_seq,
            "archive": {
                "key": self.archive_key,
                "sha256": self.archive_sha256,
                "archived_at": _iso(self.archived_at),
                "local_copy": self.pruned_at is None,
            }
            if self.archived_at is not None
            else None,
        }


def _info(row: sa.Row[Any]) -> RecordingInfo:
    m = row._mapping
    opened = _aware(m["opened_at"])
    assert opened is not None
    return RecordingInfo(
        session_id=m["session_id"],
        status=m["status"],
        opened_at=opened,
        closed_at=_aware(m["closed_at"]),
        events=m["events"],
        dropped=m["dropped"] or 0,
        digest=m["digest"],
        audit_seq=m["audit_seq"],
        archive_key=m["archive_key"],
        archive_sha256=m["archive_sha256"],
        archived_at=_aware(m["archived_at"]),
        pruned_at=_aware(m["pruned_at"]),
    )


def recording_info(store: Store, session_id: str) -> RecordingInfo | None:
    with store.read() as conn:
        row = conn.execute(
            t.session_recordings.select().where(t.session_recordings.c.session_id == session_id)
        ).first()
    return _info(row) if row is not None else None


def load_events(
    store: Store, session_id: str, *, after: int = 0, limit: int | None = None
) -> list[SessionEvent]:
    """A session's stored events in ``seq`` order (those after ``after``, at most ``limit``)."""
    q = (
        t.session_events.select()
        .where(t.session_events.c.session_id == session_id, t.session_events.c.seq > after)
        .order_by(t.session_events.c.seq)
    )
    if limit is not None:
        q = q.limit(limit)
    with store.read() as conn:
        rows = conn.execute(q).all()
    out: list[SessionEvent] = []
    for row in rows:
        m = row._mapping
        ts = _aware(m["ts"])
        assert ts is not None
        out.append(SessionEvent(m["session_id"], m["seq"], ts, m["kind"], m["data"]))
    return out


def stored_events(
    store: Store, session_id: str, *, chunk: int = _READ_CHUNK
) -> Iterator[SessionEvent]:
    """A session's stored events in ``seq`` order, read ``chunk`` at a time, so that
    going through a long recording takes memory for one chunk only."""
    after = 0
    while True:
        events = load_events(store, session_id, after=after, limit=chunk)
        yield from events
        if len(events) < chunk:
            return
        after = events[-1].seq


@dataclass(frozen=True)
class RecordingProblem:
    session_id: str
    audit_seq: int | None
    problem: str

    def to_json(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "audit_seq": self.audit_seq, "problem": self.problem}


@dataclass(frozen=True)
class RecordingsVerifyResult:
    ok: bool
    recordings: int
    problems: tuple[RecordingProblem, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "recordings": self.recordings,
            "problems": [p.to_json() for p in self.problems],
        }


def check_recording(
    session_id: str,
    audit_seq: int,
    chained_digest: str,
    events: Iterable[SessionEvent],
    *,
    dropped: int = 0,
) -> RecordingProblem | None:
    """Compare one recording's events with the digest the audit chain holds for it (pure).

    ``events`` are read once, in order (a recording's may be read from the store a
    chunk at a time: :func:`stored_events`).  Numbered 1, 2, 3, ... as they were
    written, they may skip a number only where the chain says events were lost
    (``dropped``): an event written and then removed, digest and all, is found."""
    digest = hashlib.sha256()
    last: int | None = None
    missing: int | None = None
    for event in events:
        if last is not None and event.seq <= last:
            return RecordingProblem(session_id, audit_seq, "events are out of order")
        if missing is None and not dropped and event.seq != (last or 0) + 1:
            missing = (last or 0) + 1
        last = event.seq
        digest.update(canonical_line(event))
    if last is None:
        return RecordingProblem(session_id, audit_seq, "the recording's events are gone")
    if digest.hexdigest() != chained_digest:
        return RecordingProblem(
            session_id, audit_seq, "the events do not match the digest in the audit log"
        )
    if missing is not None:
        # The digest holds, so the event was never written: lost, not removed.
        return RecordingProblem(
            session_id, audit_seq, f"event {missing} of the recording was never written"
        )
    return None


ArchiveReader = Callable[[str], tuple[list[SessionEvent], str | None]]


def verify_recordings(
    store: Store, archived: ArchiveReader | None = None
) -> RecordingsVerifyResult:
    """Recompute the digest of every closed recording and compare it with the chained one.

    The audit chain is the reference (``dbaccess audit verify`` checks it too):
    a recording whose events changed, or whose row claims another digest, or
    that is gone, is a problem.  A recording whose local events were deleted
    after archival is read back through ``archived`` (session id → events and
    any mismatch with the chain); without one it is reported as unverifiable.
    """
    with store.read() as conn:
        closed = conn.execute(
            sa.select(t.audit_events.c.seq, t.audit_events.c.session_id, t.audit_events.c.data)
            .where(t.audit_events.c.kind == "recording.closed")
            .order_by(t.audit_events.c.seq)
        ).all()
        rows = {r.session_id: _info(r) for r in conn.execute(t.session_recordings.select())}
    problems: list[RecordingProblem] = []
    for seq, session_id, data in closed:
        digest = str((data or {}).get("digest") or "")
        row = rows.get(session_id)
        if row is None:
            problems.append(RecordingProblem(session_id, seq, "the recording is gone"))
            continue
        if row.digest != digest:
            problems.append(RecordingProblem(session_id, seq, "the recording's digest was changed"))
            continue
        events: Iterable[SessionEvent] = stored_events(store, session_id)
        if row.pruned_at is not None and not load_events(store, session_id, limit=1):
            try:
                events, archive_problem = _read_archived(session_id, archived)
            except DbaccessError as exc:
                problems.append(RecordingProblem(session_id, seq, exc.message))
                continue
            if archive_problem is not None:
                problems.append(RecordingProblem(session_id, seq, archive_problem))
                continue
        lost = int((data or {}).get("dropped") or 0)
        found = check_recording(session_id, seq, digest, events, dropped=lost)
        if found is not None:
            problems.append(found)
    chained = {session_id for _, session_id, _ in closed}
    for session_id, row in rows.items():
        if row.status != "open" and session_id not in chained:
            problems.append(
                RecordingProblem(session_id, None, "closed, but the audit log has no digest for it")
            )
    return RecordingsVerifyResult(not problems, len(closed), tuple(problems))


def _read_archived(
    session_id: str, archived: ArchiveReader | None
) -> tuple[list[SessionEvent], str | None]:
    if archived is None:
        raise DbaccessError(
            "archived and removed locally, and this broker has no archive configured to read it"
        )
    return archived(session_id)


def chained_digest(store: Store, audit_seq: int) -> str | None:
    """The digest the audit event ``audit_seq`` holds (a ``recording.closed`` event)."""
    with store.read() as conn:
        row = conn.execute(
            sa.select(t.audit_events.c.kind, t.audit_events.c.data).where(
                t.audit_events.c.seq == audit_seq
            )
        ).first()
    if row is None or row[0] != "recording.closed":
        return None
    digest = (row[1] or {}).get("digest")
    return str(digest) if digest else None


def verify_recording(
    store: Store, info: RecordingInfo, events: Sequence[SessionEvent]
) -> str | None:
    """Why one closed recording does not match the audit log, or None when it does.

    Only whole recordings are checked: pass all its events.
    """
    if info.audit_seq is None:
        return "closed, but the audit log has no digest for it"
    digest = chained_digest(store, info.audit_seq)
    if digest is None:
        return "the audit log has no digest for it"
    if info.digest != digest:
        return "the recording's digest was changed"
    found = check_recording(info.session_id, info.audit_seq, digest, events)
    return found.problem if found is not None else None
