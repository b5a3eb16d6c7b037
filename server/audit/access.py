"""Data-access events: who read or changed which relations and columns, masked or clear.

For every statement that ran, the gateway's ``statement`` event in the
session's recording carries the statement's access facts under ``access``
(:func:`access_event` builds them from what the gateway already has: the
statement's analysis, the result's masking plan, the command tag's row count,
the guardrail decision and the approval it ran under)::

    {"target": "prod", "identity": "ci-bot", "identity_kind": "agent",
     "on_behalf_of": "alice", "command": "SELECT", "rows": 3,
     "decision": "allowed", "rule": null, "approval": null,
     "relations": [{"schema": "public", "table": "customers", "action": "read",
                    "columns": ["email", "id"], "masked": ["email"], "exempt": []}],
     "key": "5f0c…"}

All but rows, decision, rule and approval is the same for the statements of one
shape in one session (:class:`FactsTemplate`, made once; ``key`` is a digest of
it).  The recorder's writer says the facts in full for the first statement of
a template in each batch it writes, and for the batch's later ones only that
statement's key -- alone (``"access": "5f0c…"``) where they differ from its
only in the event's own ``rows`` and ``decision``, which the facts then take
from the event -- or with their own values (:meth:`Facts.said_in`)::

    {"same_as": "5f0c…", "rows": 1, "decision": "allowed", "rule": null,
     "approval": "r-…"}

A batch is one transaction, so the statement named is always in the
recording, earlier; :class:`FactsReader` makes such facts whole again for
those who read recordings.  That keeps a busy session's facts from being
written, stored and hashed thousands of times a second.

``columns`` are the relation's columns the statement touched: for a read those
whose values came back, for a write those it set (an UPDATE's SET targets, an
INSERT's column list, or every column the catalog holds for an INSERT without
one), for a filter (``"action": "filter"``) those it decides rows by (WHERE,
JOIN, GROUP BY, ORDER BY, ...: ``server.gateway.access_facts``); empty where it
touched the relation without naming one (``count(*)``, a DELETE's target, a
MERGE or COPY's).  Of the columns read,
``masked`` those that left masked, ``exempt`` those a masking rule names that
came back in clear because the session's groups or scope are exempt (the
facts of such a session then also say what exempts it: ``"exemption": "group
dba"``); every other column came back clear.  Being part of an event of the recording, the facts
are redacted like the rest (they hold names, never values) and covered by the
recording's digest, which the audit hash chain holds.

**The index.**  So that "who read customers.email in clear last week" is one
indexed query rather than a read of every recording, the facts of each event are
also written to ``access_events`` (who, where, when, command, rows, decision,
approval) in the transaction that stores the event.  An application sends one
statement shape again and again, so a row stands for a *run*
(:func:`runs_of`): consecutive statements of one session (numbers one apart:
nothing else recorded between them), with the same facts but their rows,
within :data:`RUN_SPAN` of the first and at most :data:`RUN_MAX` of them.  The
row holds their count, the first's and the last's time, the total of their
rows and, for a run of several, each one's time and rows; questions answer
statement by statement (:func:`statements_of`), and a period cuts a run
exactly (:class:`Period`: the runs wholly inside are counted in SQL, the
statements of the others one by one).  Runs are made per batch of the
recorder, so a busy session's statements cost a row per batch rather than one
each.  Which columns of which relations they touched, and how, is the same for
every statement of one shape, so it is kept once per distinct set:
``access_shapes`` (the set's key, ``tables.shape_key``) and
``access_shape_columns`` (one row per relation and column), which the run's
row names by ``shape_id``.  A question about a table or column finds the few
shapes that touch it, then their runs by the (shape, time) index.  The
recorder makes each event's :func:`index_entry` and its writer
(``server/audit/event_writes.py``) writes them with :func:`write_entries`;
:func:`write_index` does both for events read back.  The rows name their
events (``session_id``, ``seq`` and those after it), and :func:`verify_index`
— part of ``dbaccess audit verify`` — holds every statement of every run to
its event: a run edited, a statement added to or hidden from it, a row
removed, or a shape's columns edited, is reported (for every statement of that
shape), and the event itself cannot change unnoticed because of the digest.

:func:`find` and :func:`summarize` answer ``dbaccess audit access`` (one record
per statement, or counts by identity and relation).
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final, NamedTuple

import sqlalchemy as sa

from server.audit import canonical
from server.store import bulk
from server.store import tables as t
from server.store.db import Store, _aware, insert_ignoring_duplicate

KIND: Final = "statement"  # the recording's events that carry access facts
FACTS: Final = "access"  # the key of the facts in such an event's data
READ: Final = "read"
WRITE: Final = "write"
FILTER: Final = "filter"  # a column the statement decides rows by (WHERE, JOIN, ORDER BY...)
CLEAR: Final = "clear"
MASKED: Final = "masked"
EXEMPT: Final = "exempt"
STATES: Final = (CLEAR, MASKED, EXEMPT)
IDENTITY_KINDS: Final = ("user", "agent", "workload", "service", "dev")
MAX_LIMIT: Final = 10_000


# --------------------------------------------------------------------------
# The event


@dataclass(frozen=True)
class RelationAccess:
    """What one statement did to one relation."""

    schema: str
    table: str
    action: str  # READ, WRITE or FILTER
    columns: tuple[str, ...] = ()
    masked: frozenset[str] = frozenset()
    exempt: frozenset[str] = frozenset()

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "table": self.table,
            "action": self.action,
            "columns": list(self.columns),
            "masked": sorted(self.masked),
            "exempt": sorted(self.exempt),
        }


@dataclass(frozen=True)
class SessionFacts:
    """What every access event of one session says the same: who, where."""

    target: str
    identity: str
    identity_kind: str
    on_behalf_of: str | None = None


def access_event(
    session: SessionFacts,
    *,
    command: str,
    relations: Sequence[RelationAccess],
    rows: int | None,
    decision: str = "allowed",
    rule: str | None = None,
    approval: str | None = None,
    exemption: str | None = None,
) -> dict[str, Any]:
    """The access facts of a ``statement`` event (JSON's own types only), for its ``access`` key;
    ``exemption`` (what exempts the session from masking) only where there is one."""
    template = facts_template(
        session, command=command, relations=[r.to_json() for r in relations], exemption=exemption
    )
    return template.fill(rows, decision, rule, approval)


# What differs between the facts of statements of one shape in one session: filled in
# per statement (``FactsTemplate.fill``), in this order.
_SLOTS: Final = ("rows", "decision", "rule", "approval")
# In a statement's facts: their template's key (``FactsTemplate.key``), which later
# statements of the same batch of its recording name instead of saying them again.
KEY: Final = "key"
# A statement's facts that are those of the last earlier statement of its recording
# whose facts have this key, but for its own values (``_SLOTS``).
SAME_AS: Final = "same_as"
# What earlier statements of a recording in one batch said in full: the key of
# each template, with the rule and approval they said (``Facts.said_in``).
Said = dict[str, tuple[str | None, str | None]]


class FactsTemplate(NamedTuple):
    """What the facts of the statements of one shape in one session share, encoded
    once (:func:`facts_template`), with its key (a digest of what it says)."""

    template: canonical.Template
    key: str

    def fill(
        self, rows: int | None, decision: str, rule: str | None, approval: str | None
    ) -> canonical.Encoded:
        """One statement's facts, in full."""
        return self.template.fill(rows, decision, rule, approval)

    def facts(
        self, rows: int | None, decision: str, rule: str | None, approval: str | None
    ) -> Facts:
        return Facts(self, (rows, decision, rule, approval))


class Facts(NamedTuple):
    """One statement's facts as the gateway hands them to the recorder: its template
    and its own values (``_SLOTS``' order).  Its event holds them in full
    (:meth:`full`) or, after the first statement of the same template in the batch
    its recording is written in, as a reference to that one (:meth:`said_in`): the
    batch is written whole or not at all, so the one it names is always there."""

    template: FactsTemplate
    values: tuple[int | None, str, str | None, str | None]

    @property
    def key(self) -> str:
        return self.template.key

    def full(self) -> canonical.Encoded:
        return self.template.fill(*self.values)

    def same(self) -> dict[str, Any]:
        # Small and plain: the event's own encoding writes it.
        rows, decision, rule, approval = self.values
        return {
            SAME_AS: self.template.key,
            "rows": rows,
            "decision": decision,
            "rule": rule,
            "approval": approval,
        }

    def said_in(
        self, said: Said | None, rows: int | None, decision: str
    ) -> canonical.Encoded | dict[str, Any] | str:
        """These facts as the statement's event says them, whose own rows and
        decision are ``rows`` and ``decision``, knowing what earlier statements of
        its recording in the batch said (``said``, updated; None: nothing is
        known): in full the first of their template; after it, where they differ
        from those only in the event's own rows and decision (a run of one
        statement shape), as the template's key alone; else as a reference with
        their own values (:meth:`same`)."""
        if said is None:
            return self.full()
        key = self.template.key
        mine, decided, rule, approval = self.values
        before = said.get(key)
        if before is None:
            said[key] = (rule, approval)
            return self.full()
        if before == (rule, approval) and mine == rows and decided == decision:
            return key
        return self.same()


def facts_template(
    session: SessionFacts,
    *,
    command: str,
    relations: list[dict[str, Any]],
    exemption: str | None = None,
) -> FactsTemplate:
    """What the facts of the statements of one shape in one session share, encoded once;
    ``fill(rows, decision, rule, approval)`` makes each statement's facts (an
    ``Encoded`` dict, which the recorder stores without encoding it again).
    ``relations``: ``RelationAccess.to_json()`` of each (kept, not copied)."""
    facts: dict[str, Any] = {
        "target": session.target,
        "identity": session.identity,
        "identity_kind": session.identity_kind,
        "on_behalf_of": session.on_behalf_of,
        "command": command,
        "rows": None,
        "decision": None,
        "rule": None,
        "approval": None,
        "relations": relations,
    }
    if exemption is not None:
        facts["exemption"] = exemption
    key = hashlib.sha256(canonical.encode(facts).encode()).hexdigest()[:32]
    facts[KEY] = key
    return FactsTemplate(canonical.Template(facts, _SLOTS), key)


class FactsReader:
    """The access facts of recordings' events, each recording's read in its order: a
    reference to an earlier statement's (its key alone, or ``same_as``) is made
    whole again.  The recordings are read one after another, or ``interleaved``."""

    def __init__(self, *, interleaved: bool = False) -> None:
        self._interleaved = interleaved
        self._known: dict[str, dict[str, Mapping[str, Any]]] = {}
        self._entries: dict[tuple[str, str], IndexEntry] = {}

    def facts(
        self, session_id: str, kind: str, data: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        """The event's facts (None: it has none); :class:`LookupError` when they name
        facts no earlier event of its recording read here holds."""
        known = self._known.get(session_id)
        if known is None:
            if not self._interleaved:
                self._known.clear()
                self._entries.clear()
            known = self._known[session_id] = {}
        own: dict[str, Any]
        if kind == KIND and type(same := data.get(FACTS)) is str:
            # The key alone: the facts of that key, but for the event's own rows
            # and decision (``Facts.said_in``).
            own = {"rows": data.get("rows"), "decision": data.get("decision")}
        else:
            facts = facts_of(kind, data)
            if facts is None:
                return None
            same = facts.get(SAME_AS)
            if same is None:
                key = facts.get(KEY)
                if isinstance(key, str):
                    known[key] = facts
                return facts
            own = {slot: facts.get(slot) for slot in _SLOTS}
        base = known.get(str(same))
        if base is None:
            raise LookupError(f"access facts {same} are not those of an earlier statement")
        return {**base, **own}

    def entry(self, session_id: str, kind: str, data: Mapping[str, Any]) -> IndexEntry | None:
        """The index entry of the event's facts (:meth:`facts`), made from the one of
        the facts it refers to where it refers to some."""
        if kind == KIND and type(key := data.get(FACTS)) is str:
            base = self._entries.get((session_id, key))
            if base is not None and base.described[5] == str(data.get("decision") or "allowed"):
                # A run of one shape: the entry of the facts named, but for its rows.
                return IndexEntry(base.described, _rows_of(data), base.columns)
            return entry_of(self.facts(session_id, kind, data))
        facts = facts_of(kind, data)
        same = None if facts is None else facts.get(SAME_AS)
        if same is None:
            entry = entry_of(self.facts(session_id, kind, data))
            key = None if facts is None else facts.get(KEY)
            if entry is not None and isinstance(key, str):
                self._entries[(session_id, key)] = entry
            return entry
        assert facts is not None
        base = self._entries.get((session_id, str(same)))
        if base is None:
            return entry_of(self.facts(session_id, kind, data))
        # _described's order: the session's and shape's five, then the statement's
        # decision, rule and approval, then the exemption.
        d = base.described
        return IndexEntry(
            (
                *d[:5],
                str(facts.get("decision") or "allowed"),
                facts.get("rule"),
                facts.get("approval"),
                d[8],
            ),
            _rows_of(facts),
            base.columns,
        )


# --------------------------------------------------------------------------
# The index


class ColumnAccess(NamedTuple):
    """One ``access_shape_columns`` row but its ``shape_id``, in the table's column order (a
    tuple: the writer hands it to the driver as it is)."""

    schema: str
    table: str
    column: str  # "" where no column of the relation is known
    action: str
    state: str

    @property
    def relation(self) -> str:
        return f"{self.schema}.{self.table}"

    def to_json(self) -> dict[str, str]:
        return {
            "relation": self.relation,
            "column": self.column,
            "action": self.action,
            "state": self.state,
        }


def column_rows(data: Mapping[str, Any]) -> list[ColumnAccess]:
    """The ``access_shape_columns`` rows of one event's data, in a stable order (pure)."""
    relations = data.get("relations") or ()
    made = _ROWS.get(id(relations))
    if made is not None and made[0] is relations:
        return made[1]
    rows = _column_rows(relations)
    if len(_ROWS) >= _ROWS_MAX:
        _ROWS.clear()
    _ROWS[id(relations)] = (relations, rows)
    return rows


# The rows of the relations lists the gateway shares between the events of one
# statement shape (``access_facts``), by identity: made once (bounded).
_ROWS: dict[int, tuple[Any, list[ColumnAccess]]] = {}
_ROWS_MAX: Final = 2_048


def _column_rows(relations: Iterable[Mapping[str, Any]]) -> list[ColumnAccess]:
    out: list[ColumnAccess] = []
    seen: set[tuple[str, str, str, str]] = set()
    for rel in relations:
        schema, table, action = str(rel["schema"]), str(rel["table"]), str(rel["action"])
        masked = set(rel.get("masked") or ())
        exempt = set(rel.get("exempt") or ())
        columns = list(dict.fromkeys([*(rel.get("columns") or ()), *sorted(masked | exempt)]))
        for column in columns or [""]:
            key = (schema, table, column, action)
            if key in seen:
                continue
            seen.add(key)
            state = MASKED if column in masked else EXEMPT if column in exempt else CLEAR
            out.append(ColumnAccess(schema, table, str(column), action, state))
    return out


# The ``access_events`` columns that every statement of a run says alike.
_FACT_COLUMNS: Final = (
    "target",
    "identity",
    "identity_kind",
    "on_behalf_of",
    "command",
    "decision",
    "rule",
    "approval",
    "exemption",
)
_ROW_COLUMNS: Final = (
    "session_id",
    "seq",
    "ts",
    "last_ts",
    "statements",
    "rows",
    "run",
    *_FACT_COLUMNS,
    "shape_id",
)
_SHAPE_COLUMNS: Final = (
    "shape_id",
    "schema_name",
    "table_name",
    "column_name",
    "action",
    "state",
)

# A run's statements fall within RUN_SPAN of its first, so that a question about a
# period finds every run that holds a statement of it by the runs' first times.
RUN_SPAN: Final = timedelta(seconds=1)
RUN_MAX: Final = 1_000  # statements in one run, so that its ``run`` text stays small


def _described(data: Mapping[str, Any]) -> tuple[Any, ...]:
    # The values of an access_events row's _FACT_COLUMNS.
    return (
        str(data.get("target") or ""),
        str(data.get("identity") or ""),
        str(data.get("identity_kind") or "user"),
        data.get("on_behalf_of"),
        str(data.get("command") or ""),
        str(data.get("decision") or "allowed"),
        data.get("rule"),
        data.get("approval"),
        data.get("exemption"),
    )


def _rows_of(data: Mapping[str, Any]) -> int | None:
    rows = data.get("rows")
    return int(rows) if rows is not None else None


class IndexEntry(NamedTuple):
    """What the index holds of one event's facts but the event's session, number and
    time: plain values, which a writer in another process can take as they are."""

    described: tuple[Any, ...]  # the access_events row's _FACT_COLUMNS
    rows: int | None  # the statement's rows
    columns: list[ColumnAccess]  # its shape's access_shape_columns rows


def index_entry(kind: str, data: Mapping[str, Any]) -> IndexEntry | None:
    """The index entry of a recording's event whose facts are whole, or None when it
    has no access facts; :class:`LookupError` for facts that refer to another
    statement's (its key alone, or ``same_as``), which only a
    :class:`FactsReader` of the recording can make whole."""
    facts = facts_of(kind, data)
    if facts is None and kind == KIND and type(data.get(FACTS)) is str:
        raise LookupError("access facts that refer to an earlier statement's (its key)")
    if facts is not None and SAME_AS in facts:
        raise LookupError("access facts that refer to an earlier statement's")
    return entry_of(facts)


def entry_of(facts: Mapping[str, Any] | None) -> IndexEntry | None:
    """The index entry of whole access facts (None: none)."""
    if facts is None:
        return None
    return IndexEntry(_described(facts), _rows_of(facts), column_rows(facts))


def facts_of(kind: str, data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The access facts of a recording's event, or None when it has none."""
    facts = data.get(FACTS) if kind == KIND else None
    return facts if type(facts) is dict or isinstance(facts, Mapping) else None


@dataclass
class Run:
    """Consecutive statements of one session with the same facts and shape: one
    ``access_events`` row."""

    session_id: str
    seq: int  # the first's number; the others follow it, one apart
    ts: datetime  # the first's time
    entry: IndexEntry  # the first's (the others differ only in rows)
    each: list[tuple[int, int | None]]  # each one's microseconds after ``ts``, and rows

    @property
    def last_ts(self) -> datetime:
        return self.ts + timedelta(microseconds=self.each[-1][0])

    def takes(self, seq: int, ts: datetime, entry: IndexEntry) -> int | None:
        """The microseconds after the run's first at which the statement ``seq`` at
        ``ts`` would join it, or None when it is not the run's next like statement."""
        if seq != self.seq + len(self.each) or len(self.each) >= RUN_MAX:
            return None
        offset = (ts - self.ts) // _MICROSECOND
        if not self.each[-1][0] <= offset <= _RUN_SPAN_US:
            return None
        first = self.entry
        if entry.described != first.described:
            return None
        if entry.columns is not first.columns and entry.columns != first.columns:
            return None
        return offset

    def values(self, stamp: Any, shape_id: int) -> tuple[Any, ...]:
        """The run's ``access_events`` row, in _ROW_COLUMNS' order."""
        counted = [rows for _, rows in self.each if rows is not None]
        return (
            self.session_id,
            self.seq,
            stamp(self.ts),
            stamp(self.last_ts),
            len(self.each),
            sum(counted) if counted else None,
            _run_text(self.each) if len(self.each) > 1 else None,
            *self.entry.described,
            shape_id,
        )


_MICROSECOND: Final = timedelta(microseconds=1)
_RUN_SPAN_US: Final = RUN_SPAN // _MICROSECOND


def _run_text(each: Sequence[tuple[int, int | None]]) -> str:
    return json.dumps(each, separators=(",", ":"))


def runs_of(entries: Iterable[tuple[str, int, datetime, IndexEntry]]) -> list[Run]:
    """The runs of the index entries of a batch of events, each with its event's
    session, number and (aware) time, a session's in order (pure)."""
    runs: list[Run] = []
    open_runs: dict[str, Run] = {}
    for session_id, seq, ts, entry in entries:
        run = open_runs.get(session_id)
        offset = run.takes(seq, ts, entry) if run is not None else None
        if run is not None and offset is not None:
            run.each.append((offset, entry.rows))
            continue
        run = open_runs[session_id] = Run(session_id, seq, ts, entry, [(0, entry.rows)])
        runs.append(run)
    return runs


def write_index(conn: sa.Connection, events: Iterable[Any]) -> int:
    """Index the access facts of ``events`` (each with ``session_id``, ``seq``, an
    aware ``ts``, ``kind``, ``data``; a session's in order) in the caller's
    transaction; returns how many events had some."""
    reader = FactsReader(interleaved=True)
    wanted = [
        (e.session_id, e.seq, e.ts, entry)
        for e in events
        if (entry := reader.entry(e.session_id, e.kind, e.data)) is not None
    ]
    write_entries(conn, wanted)
    return len(wanted)


def write_entries(
    conn: sa.Connection, entries: Sequence[tuple[str, int, datetime, IndexEntry]]
) -> None:
    """Write index entries, each with its event's session, number and aware time (a
    session's in order), in the caller's transaction: one row per run."""
    if not entries:
        return
    runs = runs_of(entries)
    shape = shape_ids(conn, [run.entry.columns for run in runs])
    stamp = bulk.timestamps(conn)
    bulk.insert(
        conn,
        t.access_events,
        _ROW_COLUMNS,
        [run.values(stamp, shape_id) for run, shape_id in zip(runs, shape, strict=True)],
    )


def shape_ids(conn: sa.Connection, sets: Sequence[Sequence[ColumnAccess]]) -> list[int]:
    """The ``access_shapes`` id of each set of column rows, the shapes not yet in the
    store added (with their columns) in the caller's transaction.  The events of one
    statement shape share their rows' list (``column_rows``), so each distinct list
    is keyed once.  The ids are kept by engine, from when the transaction that
    looked them up or added them commits (a shape is never removed; one found
    before may be one this transaction added itself); a writer whose transaction
    may not have committed drops them (:func:`forget`)."""
    known = _KNOWN.setdefault(conn.engine, {})
    by_list: dict[int, str] = {}
    keys: list[str] = []
    for columns in sets:
        key = by_list.get(id(columns))
        if key is None:
            key = by_list[id(columns)] = t.shape_key(columns)
        keys.append(key)
    # Read once: another writer thread of this engine may empty the cache meanwhile.
    ids: dict[str, int] = {}
    missing: set[str] = set()
    for key in dict.fromkeys(keys):
        cached = known.get(key)
        if cached is None:
            missing.add(key)
        else:
            ids[key] = cached
    if missing:
        found = _find_shapes(conn, missing)
        ids.update(found)
        # In one order whoever writes: two writers adding the same two shapes
        # would otherwise each wait for the other's.
        new = sorted(missing.difference(found))
        if new:
            rows_of = {key: columns for key, columns in zip(keys, sets, strict=True)}
            ids.update(_add_shapes(conn, new, rows_of))
        fresh = {key: ids[key] for key in missing}
        sa.event.listen(conn, "commit", partial(_remember, known, fresh), once=True)
    return [ids[key] for key in keys]


def forget(engine: sa.Engine) -> None:
    """Drop the shape ids kept for ``engine``: after a transaction that wrote index
    entries failed, whose commit may not have taken place."""
    _KNOWN.pop(engine, None)


def _remember(known: dict[str, int], fresh: dict[str, int], _conn: object) -> None:
    if len(known) + len(fresh) > _KNOWN_MAX:
        known.clear()
    known.update(fresh)


# The ids of the shapes a store holds, by engine (bounded).
_KNOWN: weakref.WeakKeyDictionary[sa.Engine, dict[str, int]] = weakref.WeakKeyDictionary()
_KNOWN_MAX: Final = 100_000


def _find_shapes(conn: sa.Connection, keys: Iterable[str]) -> dict[str, int]:
    s = t.access_shapes.c
    wanted = sorted(keys)
    found: dict[str, int] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        found.update(
            (key, int(i)) for key, i in conn.execute(sa.select(s.key, s.id).where(s.key.in_(chunk)))
        )
    return found


def _add_shapes(
    conn: sa.Connection, keys: Sequence[str], rows_of: Mapping[str, Sequence[ColumnAccess]]
) -> dict[str, int]:
    """Add the shapes ``keys``: each is added with its columns by the one transaction
    that inserts it; a writer that finds another's (``ON CONFLICT``: on PostgreSQL
    after that one commits) takes its id."""
    insert = insert_ignoring_duplicate(conn.engine, t.access_shapes)
    added: dict[str, int] = {}
    for key in keys:
        got = conn.execute(insert.values(key=key).returning(t.access_shapes.c.id)).scalar()
        if got is not None:
            added[key] = int(got)
    columns = [(added[k], *row) for k in keys if k in added for row in rows_of[k]]
    bulk.insert(conn, t.access_shape_columns, _SHAPE_COLUMNS, columns)
    others = [k for k in keys if k not in added]
    if others:
        added.update(_find_shapes(conn, others))
    missing = [k for k in keys if k not in added]
    if missing:
        raise RuntimeError(f"access shapes {missing} neither added nor found")
    return added


# --------------------------------------------------------------------------
# Questions


@dataclass(frozen=True)
class AccessQuery:
    """The filters of ``dbaccess audit access``; every one given must hold.

    ``table`` is ``name`` (any schema) or ``schema.name``; ``column`` needs
    ``table``.  ``writes`` keeps statements that wrote the table (or any
    relation), ``clear_only`` those where a column of it came back in clear, or
    decided rows in clear (a filter), clear or exempt (a relation touched without
    a column does not count).
    ``identity`` matches the identity or the person an agent acted for;
    ``viewer`` (set for a caller who is not an auditor) keeps only that
    person's own statements, whatever else is asked.
    """

    target: str | None = None
    table: str | None = None
    column: str | None = None
    identity: str | None = None
    kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    writes: bool = False
    clear_only: bool = False
    viewer: str | None = None
    limit: int = 200


@dataclass(frozen=True)
class AccessRecord:
    id: int
    ts: datetime
    session_id: str
    seq: int
    target: str
    identity: str
    identity_kind: str
    on_behalf_of: str | None
    command: str
    rows: int | None
    decision: str
    rule: str | None
    approval: str | None
    columns: tuple[ColumnAccess, ...] = field(default=())
    exemption: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts.isoformat(),
            "session_id": self.session_id,
            "seq": self.seq,
            "target": self.target,
            "identity": self.identity,
            "identity_kind": self.identity_kind,
            "on_behalf_of": self.on_behalf_of,
            "command": self.command,
            "rows": self.rows,
            "decision": self.decision,
            "rule": self.rule,
            "approval": self.approval,
            "exemption": self.exemption,
            "columns": [c.to_json() for c in self.columns],
        }


def _split_table(name: str) -> tuple[str | None, str]:
    schema, dot, table = name.rpartition(".")
    return (schema, table) if dot else (None, name)


def _relation(q: AccessQuery) -> list[sa.ColumnElement[bool]]:
    """Which shape rows are of the table ``q`` asks about (all, if none)."""
    c = t.access_shape_columns.c
    if q.table is None:
        return []
    schema, table = _split_table(q.table)
    return [c.table_name == table] + ([c.schema_name == schema] if schema is not None else [])


def _touched(q: AccessQuery) -> list[sa.ColumnElement[bool]]:
    """What ``q`` asks of the columns a statement touched (of its shape's rows)."""
    c = t.access_shape_columns.c
    touched = _relation(q)
    if q.column is not None:
        touched.append(c.column_name == q.column)
    if q.writes:
        touched.append(c.action == WRITE)
    if q.clear_only:
        touched += [c.state != MASKED, c.column_name != ""]
    return touched


def _where(q: AccessQuery) -> list[sa.ColumnElement[bool]]:
    # All but the period, which callers ask of runs as they need (``Period``).
    e, c = t.access_events.c, t.access_shape_columns.c
    conds: list[sa.ColumnElement[bool]] = []
    if q.target is not None:
        conds.append(e.target == q.target)
    if q.identity is not None:
        conds.append(sa.or_(e.identity == q.identity, e.on_behalf_of == q.identity))
    if q.viewer is not None:
        conds.append(sa.or_(e.identity == q.viewer, e.on_behalf_of == q.viewer))
    if q.kind is not None:
        conds.append(e.identity_kind == q.kind)
    touched = _touched(q)
    if touched:
        # Shapes are few beside statements: the statements of the shapes that
        # match, by their (shape, time) index.
        conds.append(e.shape_id.in_(sa.select(c.shape_id).where(*touched).scalar_subquery()))
    return conds


def _shape_columns(conn: sa.Connection, ids: Iterable[int]) -> dict[int, list[ColumnAccess]]:
    """The column rows of the shapes ``ids``, by shape."""
    c = t.access_shape_columns.c
    out: dict[int, list[ColumnAccess]] = defaultdict(list)
    wanted = sorted(set(ids))
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        for m in conn.execute(sa.select(t.access_shape_columns).where(c.shape_id.in_(chunk))):
            out[m.shape_id].append(
                ColumnAccess(m.schema_name, m.table_name, m.column_name, m.action, m.state)
            )
    return out


# A statement of a run: its number, time and rows.
RunStatement = tuple[int, datetime, int | None]


@dataclass(frozen=True)
class Period:
    """A question's period, ``since`` <= time < ``until`` (each optional), as the
    runs of the index answer it: a run may hold statements on both sides of a
    bound, so counts take the runs wholly inside in SQL and count the statements
    of the others one by one."""

    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        # The store's times are UTC; SQLite compares them as they are written.
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _utc(value))

    # Only the runs' first times are asked of (a run's statements are within
    # RUN_SPAN of its first): the (…, ts) indexes answer every question so.

    def overlapping(self) -> list[sa.ColumnElement[bool]]:
        """The runs that may hold a statement of the period."""
        e = t.access_events.c
        conds: list[sa.ColumnElement[bool]] = []
        if self.since is not None:
            conds.append(e.ts >= self.since - RUN_SPAN)
        if self.until is not None:
            conds.append(e.ts < self.until)
        return conds

    def whole(self) -> list[sa.ColumnElement[bool]]:
        """The runs whose every statement is in the period."""
        e = t.access_events.c
        conds: list[sa.ColumnElement[bool]] = []
        if self.since is not None:
            conds.append(e.ts >= self.since)
        if self.until is not None:
            conds.append(e.ts < self.until - RUN_SPAN)
        return conds

    @property
    def bounded(self) -> bool:
        return self.since is not None or self.until is not None

    def partial(self) -> sa.ColumnElement[bool]:
        """Of the overlapping runs, those that may also hold statements outside it."""
        e = t.access_events.c
        parts: list[sa.ColumnElement[bool]] = []
        if self.since is not None:
            parts.append(e.ts < self.since)
        if self.until is not None:
            parts.append(e.ts >= self.until - RUN_SPAN)
        return sa.or_(*parts) if parts else sa.false()

    def holds(self, ts: datetime) -> bool:
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _time(value: Any) -> datetime:
    aware = _aware(value)
    assert aware is not None
    return aware


def statements_of(m: Any) -> list[RunStatement]:
    """Each statement of an ``access_events`` row (a run): its number, time and rows.
    A ``run`` that cannot be read as the writer makes it (:func:`_run_read`) stands
    for its first statement alone (:func:`verify_index` reports it)."""
    ts = _time(m["ts"])
    seq, run = int(m["seq"]), m["run"]
    each = None if run is None else _run_read(run)
    if each is None:
        return [(seq, ts, m["rows"])]
    return [(seq + i, ts + timedelta(microseconds=offset), n) for i, (offset, n) in enumerate(each)]


def _run_read(text: str) -> list[tuple[int, int | None]] | None:
    """A run's statements as :meth:`Run.values` writes them: two to RUN_MAX, the
    first at 0, each no earlier than the one before and within RUN_SPAN of the
    first, whole numbers of rows (None: not such a run)."""
    try:
        each = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if type(each) is not list or not 2 <= len(each) <= RUN_MAX:
        return None
    out: list[tuple[int, int | None]] = []
    last = 0
    for item in each:
        if type(item) is not list or len(item) != 2:
            return None
        offset, n = item
        if type(offset) is not int or not last <= offset <= _RUN_SPAN_US:
            return None
        if n is not None and type(n) is not int:
            return None
        out.append((offset, n))
        last = offset
    return out if out[0][0] == 0 else None


def _record(m: Any, columns: Sequence[ColumnAccess], statement: RunStatement) -> AccessRecord:
    seq, ts, rows = statement
    return AccessRecord(
        id=m["id"],
        ts=ts,
        session_id=m["session_id"],
        seq=seq,
        target=m["target"],
        identity=m["identity"],
        identity_kind=m["identity_kind"],
        on_behalf_of=m["on_behalf_of"],
        command=m["command"],
        rows=rows,
        decision=m["decision"],
        rule=m["rule"],
        approval=m["approval"],
        columns=tuple(columns),
        exemption=m["exemption"],
    )


def find(store: Store, q: AccessQuery) -> list[AccessRecord]:
    """The statements that match ``q``, newest first, at most ``q.limit``, each with
    every column it touched."""
    if q.column is not None and q.table is None:
        raise ValueError("a column filter needs a table")
    e = t.access_events.c
    limit = max(1, min(q.limit, MAX_LIMIT))
    period = Period(q.since, q.until)
    page = min(limit, _PAGE)  # runs read at a time: a run may hold RUN_MAX statements
    # Newest first by their first times, which the (…, ts) indexes keep in order.
    query = sa.select(t.access_events).order_by(e.ts.desc(), e.id.desc()).limit(page)
    found: list[tuple[Any, RunStatement]] = []
    after: list[sa.ColumnElement[bool]] = []
    with store.read() as conn:
        while True:
            rows = conn.execute(query.where(*_where(q), *period.overlapping(), *after)).all()
            for row in rows:
                m = row._mapping
                found += [(m, s) for s in statements_of(m) if period.holds(s[1])]
            found.sort(key=lambda f: (f[1][1], f[0]["id"], f[1][0]), reverse=True)
            del found[limit:]
            if len(rows) < page:
                break
            # The runs not read yet begin no later than the last one read, and
            # hold no statement more than RUN_SPAN after their first.
            last = rows[-1]
            after = [sa.or_(e.ts < last.ts, sa.and_(e.ts == last.ts, e.id < last.id))]
            if len(found) >= limit:
                newest = found[limit - 1][1][1]
                if newest > _time(last.ts) + RUN_SPAN:
                    break
                # Only those that began within RUN_SPAN of the limit-th newest can
                # hold a newer one: a short range of the index.
                after.append(e.ts >= newest - RUN_SPAN)
        columns = _shape_columns(conn, (m["shape_id"] for m, _ in found))
    return [_record(m, columns.get(m["shape_id"], ()), s) for m, s in found]


_PAGE: Final = 200

_SUMMARY_KEY: Final = ("identity", "on_behalf_of", "target", "schema_name", "table_name")


def summarize(store: Store, q: AccessQuery) -> list[dict[str, Any]]:
    """Counts by identity (and the person it acted for) and relation: statements,
    those that wrote, those with a column in clear or masked, rows."""
    e, c = t.access_events.c, t.access_shape_columns.c
    # Per shape and relation (only the relations asked about), then per run of
    # those shapes that the filters keep.
    per_relation = (
        sa.select(
            c.shape_id,
            c.schema_name,
            c.table_name,
            sa.func.max(sa.case((c.action == WRITE, 1), else_=0)).label("wrote"),
            sa.func.max(sa.case((c.state == MASKED, 1), else_=0)).label("masked"),
            sa.func.max(
                sa.case((sa.and_(c.state != MASKED, c.column_name != ""), 1), else_=0)
            ).label("clear"),
        )
        .where(*_relation(q))
        .group_by(c.shape_id, c.schema_name, c.table_name)
        .subquery()
    )
    p = per_relation.c
    joined = per_relation.join(t.access_events, e.shape_id == p.shape_id)
    keys = (e.identity, e.on_behalf_of, e.target, p.schema_name, p.table_name)
    period = Period(q.since, q.until)
    whole = (
        sa.select(
            *keys,
            sa.func.sum(e.statements).label("statements"),
            sa.func.sum(p.wrote * e.statements).label("writes"),
            sa.func.sum(p.clear * e.statements).label("clear"),
            sa.func.sum(p.masked * e.statements).label("masked"),
            sa.func.sum(e.rows).label("rows"),
            sa.func.min(e.ts).label("first"),
            sa.func.max(e.last_ts).label("last"),
        )
        .select_from(joined)
        .where(*_where(q), *period.whole())
        .group_by(*keys)
    )
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    with store.read() as conn:
        for row in conn.execute(whole):
            m = row._mapping
            groups[tuple(m[k] for k in _SUMMARY_KEY)] = {
                "statements": int(m["statements"]),
                "writes": int(m["writes"] or 0),
                "clear": int(m["clear"] or 0),
                "masked": int(m["masked"] or 0),
                "rows": int(m["rows"] or 0),
                "first": _aware(m["first"]),
                "last": _aware(m["last"]),
            }
        if period.bounded:
            runs = sa.select(*keys, p.wrote, p.clear, p.masked, e.seq, e.ts, e.rows, e.run)
            partial = runs.select_from(joined).where(
                *_where(q), *period.overlapping(), period.partial()
            )
            for row in conn.execute(partial):
                m = row._mapping
                for _, ts, n in statements_of(m):
                    if period.holds(ts):
                        _count(groups, tuple(m[k] for k in _SUMMARY_KEY), m, ts, n)
    out = []
    for key in sorted(groups, key=lambda k: (k[0], k[2], k[3], k[4], k[1] or "")):
        identity, on_behalf_of, target, schema, table = key
        g = groups[key]
        out.append(
            {
                "identity": identity,
                "on_behalf_of": on_behalf_of,
                "target": target,
                "relation": f"{schema}.{table}",
                **{n: g[n] for n in ("statements", "writes", "clear", "masked", "rows")},
                "first": g["first"].isoformat() if g["first"] else None,
                "last": g["last"].isoformat() if g["last"] else None,
            }
        )
    return out[: max(1, min(q.limit, MAX_LIMIT))]


def _count(
    groups: dict[tuple[Any, ...], dict[str, Any]],
    key: tuple[Any, ...],
    m: Any,
    ts: datetime,
    rows: int | None,
) -> None:
    """Add one statement of a run that is partly in the period to its group's counts."""
    g = groups.get(key)
    if g is None:
        g = groups[key] = dict.fromkeys(("statements", "writes", "clear", "masked", "rows"), 0)
        g["first"] = g["last"] = ts
    g["statements"] += 1
    g["writes"] += int(m["wrote"])
    g["clear"] += int(m["clear"])
    g["masked"] += int(m["masked"])
    g["rows"] += rows or 0
    g["first"] = min(g["first"], ts) if g["first"] else ts
    g["last"] = max(g["last"], ts) if g["last"] else ts


# --------------------------------------------------------------------------
# Verification


@dataclass(frozen=True)
class IndexProblem:
    session_id: str
    seq: int | None
    problem: str

    def to_json(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "seq": self.seq, "problem": self.problem}


def _run_problem(m: Any, each: Sequence[RunStatement]) -> str | None:
    """What is wrong with a run's row in itself (None: nothing)."""
    counted = [n for _, _, n in each if n is not None]
    # A run that cannot be read stands for its first statement alone (a read one
    # holds two or more: ``statements_of``).
    if m["run"] is not None and len(each) == 1:
        return "an access index run cannot be read"
    if m["statements"] != len(each):
        return "an access index run's count differs from its statements"
    if _time(m["last_ts"]) != each[-1][1]:
        return "an access index run's last time differs from its statements"
    if m["rows"] != (sum(counted) if counted else None):
        return "an access index run's rows differ from its statements'"
    return None


_UNRESOLVED: Final = "a statement's access facts refer to none an earlier statement holds"
_TWICE: Final = "more than one access index row holds this statement"


def verify_index(store: Store) -> list[IndexProblem]:
    """Hold every statement of the access index's runs to the recording event it
    names, and every event's access facts to their run: what differs is reported
    (the events themselves are held to the audit chain by the recordings' digests)."""
    rec = t.session_recordings.c
    problems: list[IndexProblem] = []
    # Each statement the index holds, by its event's key: its run's row, time and rows.
    indexed: dict[tuple[str, int], tuple[Any, datetime, int | None]] = {}
    claimed: set[tuple[str, int]] = set()  # by more than one row
    with store.read() as conn:
        # A recording archived and removed from the store is held to its archive
        # copy by the recordings' own check; its index rows stay for the questions.
        pruned = set(
            conn.execute(sa.select(rec.session_id).where(rec.pruned_at.is_not(None))).scalars()
        )
        for r in conn.execute(sa.select(t.access_events)):
            m = r._mapping
            each = statements_of(m)
            problem = _run_problem(m, each)
            if problem is not None:
                problems.append(IndexProblem(m["session_id"], m["seq"], problem))
            for seq, ts, n in each:
                key = (m["session_id"], seq)
                if key in indexed:
                    # Either may say the truth: neither is taken.
                    problems.append(IndexProblem(*key, _TWICE))
                    claimed.add(key)
                indexed[key] = (m, ts, n)
        keys = dict(conn.execute(sa.select(t.access_shapes.c.id, t.access_shapes.c.key)).all())
        shapes = _shape_columns(conn, keys)
    reader = FactsReader()
    for session_id, seq, ts, event in _statement_events(store):
        try:
            data = reader.facts(session_id, KIND, event or {})
        except LookupError:
            indexed.pop((session_id, seq), None)
            problems.append(IndexProblem(session_id, seq, _UNRESOLVED))
            continue
        if data is None:
            continue
        held = indexed.pop((session_id, seq), None)
        if (session_id, seq) in claimed:
            continue
        if held is None:
            problems.append(
                IndexProblem(
                    session_id, seq, "a statement's access facts are missing from the index"
                )
            )
            continue
        m, indexed_ts, rows = held
        said = tuple(m[key] for key in _FACT_COLUMNS)
        try:
            recorded = (_described(data), _aware(ts), _rows_of(data))
        except (TypeError, ValueError):
            recorded = None  # rows that are no count (an edited event): no row says so
        if recorded is None or (said, indexed_ts, rows) != recorded:
            problems.append(
                IndexProblem(session_id, seq, "the access index differs from the recorded event")
            )
        elif sorted(shapes.get(m["shape_id"], ())) != sorted(column_rows(data)):
            problems.append(
                IndexProblem(session_id, seq, "the access index's columns differ from the event")
            )
    for (session_id, seq), _held in sorted(indexed.items()):
        if session_id in pruned:
            continue
        problems.append(
            IndexProblem(session_id, seq, "an access index row has no event in the recording")
        )
    # A shape's key is what writers file new statements by: one that does not
    # match its columns would file them under another shape's.
    for shape, key in sorted(keys.items()):
        if t.shape_key(shapes.get(shape, ())) != key:
            problems.append(
                IndexProblem("", None, f"access shape {shape}'s key differs from its columns")
            )
    return problems


_CHUNK: Final = 5_000  # events read at a time by verify_index


def _statement_events(store: Store) -> Iterator[tuple[str, int, datetime, Any]]:
    """Every ``statement`` event, in (session, seq) order, read a chunk at a time."""
    se = t.session_events.c
    after: tuple[str, int] = ("", 0)
    while True:
        with store.read() as conn:
            rows = conn.execute(
                sa.select(se.session_id, se.seq, se.ts, se.data)
                .where(
                    se.kind == KIND,
                    sa.or_(
                        se.session_id > after[0],
                        sa.and_(se.session_id == after[0], se.seq > after[1]),
                    ),
                )
                .order_by(se.session_id, se.seq)
                .limit(_CHUNK)
            ).all()
        yield from ((r.session_id, r.seq, r.ts, r.data) for r in rows)
        if len(rows) < _CHUNK:
            return
        after = (rows[-1][0], rows[-1][1])
