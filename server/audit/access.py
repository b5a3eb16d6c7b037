"""Data-access events: who read or changed which relations and columns, masked or clear.

For every statement that ran, the gateway's ``statement`` event in the
session's recording carries the statement's access facts under ``access``
(:func:`access_event` builds them from what the gateway already has: the
statement's analysis, the result's masking plan, the command tag's row count,
the guardrail decision and the approval it ran under).  They are
self-contained::

    {"target": "prod", "identity": "ci-bot", "identity_kind": "agent",
     "on_behalf_of": "alice", "command": "SELECT", "rows": 3,
     "decision": "allowed", "rule": null, "approval": null,
     "relations": [{"schema": "public", "table": "customers", "action": "read",
                    "columns": ["email", "id"], "masked": ["email"], "exempt": []}]}

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
also written as rows of ``access_events`` (one per statement) and
``access_columns`` (one per relation and column), in the transaction that
stores the event: the recorder makes each event's :func:`index_entry` and its
writer (``server/audit/event_writes.py``) writes them with
:func:`write_entries`; :func:`write_index` does both for events read back.
The rows name their event (``session_id``, ``seq``), and :func:`verify_index`
— part of ``dbaccess audit verify`` — holds every row to it: a row edited,
added or removed in the index is reported, and the event itself cannot change
unnoticed because of the digest.

:func:`find` and :func:`summarize` answer ``dbaccess audit access`` (one record
per statement, or counts by identity and relation).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple

import sqlalchemy as sa

from server.audit import canonical
from server.store import bulk
from server.store import tables as t
from server.store.db import Store, _aware

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
FactsTemplate = canonical.Template


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
    return canonical.Template(facts, _SLOTS)


# --------------------------------------------------------------------------
# The index


class ColumnAccess(NamedTuple):
    """One ``access_columns`` row but its ``access_id``, in the table's column order (a
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
    """The ``access_columns`` rows of one event's data, in a stable order (pure)."""
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


def event_row(session_id: str, seq: int, ts: datetime, data: Mapping[str, Any]) -> dict[str, Any]:
    """The ``access_events`` row of one event (pure; no ``id``)."""
    return dict(zip(_EVENT_COLUMNS, event_values(session_id, seq, ts, data), strict=True))


_EVENT_COLUMNS: Final = (
    "session_id",
    "seq",
    "ts",
    "target",
    "identity",
    "identity_kind",
    "on_behalf_of",
    "command",
    "rows",
    "decision",
    "rule",
    "approval",
    "exemption",
)
_COLUMN_COLUMNS: Final = (
    "access_id",
    "schema_name",
    "table_name",
    "column_name",
    "action",
    "state",
)


def event_values(
    session_id: str, seq: int, ts: datetime, data: Mapping[str, Any]
) -> tuple[Any, ...]:
    """:func:`event_row`'s values, in its columns' order."""
    return (session_id, seq, ts, *_described(data))


def _described(data: Mapping[str, Any]) -> tuple[Any, ...]:
    # The values of an access_events row after its session, seq and time.
    rows = data.get("rows")
    return (
        str(data.get("target") or ""),
        str(data.get("identity") or ""),
        str(data.get("identity_kind") or "user"),
        data.get("on_behalf_of"),
        str(data.get("command") or ""),
        int(rows) if rows is not None else None,
        str(data.get("decision") or "allowed"),
        data.get("rule"),
        data.get("approval"),
        data.get("exemption"),
    )


class IndexEntry(NamedTuple):
    """What the index holds of one event's facts but the event's session, number and
    time: plain values, which a writer in another process can take as they are."""

    described: tuple[Any, ...]  # the access_events row's other values
    columns: list[ColumnAccess]  # its access_columns rows


def index_entry(kind: str, data: Mapping[str, Any]) -> IndexEntry | None:
    """The index entry of a recording's event, or None when it has no access facts."""
    facts = facts_of(kind, data)
    if facts is None:
        return None
    return IndexEntry(_described(facts), column_rows(facts))


def facts_of(kind: str, data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The access facts of a recording's event, or None when it has none."""
    facts = data.get(FACTS) if kind == KIND else None
    return facts if type(facts) is dict or isinstance(facts, Mapping) else None


def write_index(
    conn: sa.Connection, events: Iterable[Any], *, times: Iterable[Any] | None = None
) -> int:
    """Index the access facts of ``events`` (each with ``session_id``, ``seq``, ``ts``,
    ``kind``, ``data``) in the caller's transaction; returns how many events had some.
    ``times``: each event's time as the store takes it (``server.store.bulk``), where
    the caller has them already."""
    stamp = bulk.timestamps(conn)
    pairs = ((e, None) for e in events) if times is None else zip(events, times, strict=True)
    wanted = [
        (e.session_id, e.seq, stamp(e.ts) if ts is None else ts, entry)
        for e, ts in pairs
        if (entry := index_entry(e.kind, e.data)) is not None
    ]
    write_entries(conn, wanted)
    return len(wanted)


def write_entries(conn: sa.Connection, entries: Sequence[tuple[str, int, Any, IndexEntry]]) -> None:
    """Write index entries, each with its event's session, number and time as the
    store takes it, in the caller's transaction."""
    if not entries:
        return
    bulk.insert_family(
        conn,
        t.access_events,
        _EVENT_COLUMNS,
        [(sid, seq, ts, *entry.described) for sid, seq, ts, entry in entries],
        ("session_id", "seq"),
        t.access_columns,
        "access_id",
        _COLUMN_COLUMNS[1:],
        [entry.columns for *_, entry in entries],
    )


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


def _where(q: AccessQuery) -> list[sa.ColumnElement[bool]]:
    e, c = t.access_events.c, t.access_columns.c
    conds: list[sa.ColumnElement[bool]] = []
    if q.target is not None:
        conds.append(e.target == q.target)
    if q.identity is not None:
        conds.append(sa.or_(e.identity == q.identity, e.on_behalf_of == q.identity))
    if q.viewer is not None:
        conds.append(sa.or_(e.identity == q.viewer, e.on_behalf_of == q.viewer))
    if q.kind is not None:
        conds.append(e.identity_kind == q.kind)
    if q.since is not None:
        conds.append(e.ts >= q.since)
    if q.until is not None:
        conds.append(e.ts < q.until)
    touched: list[sa.ColumnElement[bool]] = []
    if q.table is not None:
        schema, table = _split_table(q.table)
        touched.append(c.table_name == table)
        if schema is not None:
            touched.append(c.schema_name == schema)
    if q.column is not None:
        touched.append(c.column_name == q.column)
    if q.writes:
        touched.append(c.action == WRITE)
    if q.clear_only:
        touched += [c.state != MASKED, c.column_name != ""]
    if touched:
        conds.append(
            e.id.in_(sa.select(c.access_id).where(*touched).scalar_subquery())
            if q.table is not None
            else sa.exists().where(c.access_id == e.id, *touched)
        )
    return conds


def _record(m: Any, columns: Sequence[ColumnAccess]) -> AccessRecord:
    ts = _aware(m["ts"])
    assert ts is not None
    return AccessRecord(
        id=m["id"],
        ts=ts,
        session_id=m["session_id"],
        seq=m["seq"],
        target=m["target"],
        identity=m["identity"],
        identity_kind=m["identity_kind"],
        on_behalf_of=m["on_behalf_of"],
        command=m["command"],
        rows=m["rows"],
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
    e, c = t.access_events.c, t.access_columns.c
    limit = max(1, min(q.limit, MAX_LIMIT))
    query = (
        sa.select(t.access_events).where(*_where(q)).order_by(e.ts.desc(), e.id.desc()).limit(limit)
    )
    with store.read() as conn:
        rows = conn.execute(query).all()
        ids = [row._mapping["id"] for row in rows]
        by_id: dict[int, list[ColumnAccess]] = defaultdict(list)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for col in conn.execute(
                sa.select(t.access_columns).where(c.access_id.in_(chunk)).order_by(c.access_id)
            ):
                m = col._mapping
                by_id[m["access_id"]].append(
                    ColumnAccess(
                        m["schema_name"], m["table_name"], m["column_name"], m["action"], m["state"]
                    )
                )
    return [_record(row._mapping, by_id.get(row._mapping["id"], ())) for row in rows]


def summarize(store: Store, q: AccessQuery) -> list[dict[str, Any]]:
    """Counts by identity (and the person it acted for) and relation: statements,
    those that wrote, those with a column in clear or masked, rows."""
    e, c = t.access_events.c, t.access_columns.c
    # Per statement and relation (only the statements asked about: the filters go
    # inside, so that a week of one table does not group every row there is).
    touched: list[sa.ColumnElement[bool]] = []
    if q.table is not None:
        schema, table = _split_table(q.table)
        touched.append(c.table_name == table)
        if schema is not None:
            touched.append(c.schema_name == schema)
    per_relation = (
        sa.select(
            c.access_id,
            c.schema_name,
            c.table_name,
            sa.func.max(sa.case((c.action == WRITE, 1), else_=0)).label("wrote"),
            sa.func.max(sa.case((c.state == MASKED, 1), else_=0)).label("masked"),
            sa.func.max(
                sa.case((sa.and_(c.state != MASKED, c.column_name != ""), 1), else_=0)
            ).label("clear"),
        )
        .select_from(t.access_columns.join(t.access_events, e.id == c.access_id))
        .where(*_where(q), *touched)
        .group_by(c.access_id, c.schema_name, c.table_name)
        .subquery()
    )
    p = per_relation.c
    query = (
        sa.select(
            e.identity,
            e.on_behalf_of,
            e.target,
            p.schema_name,
            p.table_name,
            sa.func.count().label("statements"),
            sa.func.sum(p.wrote).label("writes"),
            sa.func.sum(p.clear).label("clear"),
            sa.func.sum(p.masked).label("masked"),
            sa.func.sum(e.rows).label("rows"),
            sa.func.min(e.ts).label("first"),
            sa.func.max(e.ts).label("last"),
        )
        .select_from(per_relation.join(t.access_events, e.id == p.access_id))
        .group_by(e.identity, e.on_behalf_of, e.target, p.schema_name, p.table_name)
        .order_by(e.identity, e.target, p.schema_name, p.table_name)
        .limit(max(1, min(q.limit, MAX_LIMIT)))
    )
    with store.read() as conn:
        rows = conn.execute(query).all()
    out = []
    for row in rows:
        m = row._mapping
        first, last = _aware(m["first"]), _aware(m["last"])
        out.append(
            {
                "identity": m["identity"],
                "on_behalf_of": m["on_behalf_of"],
                "target": m["target"],
                "relation": f"{m['schema_name']}.{m['table_name']}",
                "statements": int(m["statements"]),
                "writes": int(m["writes"] or 0),
                "clear": int(m["clear"] or 0),
                "masked": int(m["masked"] or 0),
                "rows": int(m["rows"] or 0),
                "first": first.isoformat() if first else None,
                "last": last.isoformat() if last else None,
            }
        )
    return out


# --------------------------------------------------------------------------
# Verification


@dataclass(frozen=True)
class IndexProblem:
    session_id: str
    seq: int | None
    problem: str

    def to_json(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "seq": self.seq, "problem": self.problem}


# What an index row says of its event: every column but the event's key.
_COMPARED = _EVENT_COLUMNS[2:]


def _comparable(row: Any) -> tuple[Any, ...]:
    values = []
    for key in _COMPARED:
        value = row[key]
        if key == "ts":
            value = _aware(value)
        values.append(value)
    return tuple(values)


def verify_index(store: Store) -> list[IndexProblem]:
    """Hold every row of the access index to the recording event it names, and
    every event's access facts to their rows: what differs is reported (the events
    themselves are held to the audit chain by the recordings' digests)."""
    c, rec = t.access_columns.c, t.session_recordings.c
    problems: list[IndexProblem] = []
    with store.read() as conn:
        # A recording archived and removed from the store is held to its archive
        # copy by the recordings' own check; its index rows stay for the questions.
        pruned = set(
            conn.execute(sa.select(rec.session_id).where(rec.pruned_at.is_not(None))).scalars()
        )
        indexed = {
            (m["session_id"], m["seq"]): m
            for m in (r._mapping for r in conn.execute(sa.select(t.access_events)))
        }
        columns: dict[int, list[ColumnAccess]] = defaultdict(list)
        for r in conn.execute(sa.select(t.access_columns).order_by(c.access_id)):
            m = r._mapping
            columns[m["access_id"]].append(
                ColumnAccess(
                    m["schema_name"], m["table_name"], m["column_name"], m["action"], m["state"]
                )
            )
    for session_id, seq, ts, event in _statement_events(store):
        data = facts_of(KIND, event or {})
        if data is None:
            continue
        row = indexed.pop((session_id, seq), None)
        if row is None:
            problems.append(
                IndexProblem(
                    session_id, seq, "a statement's access facts are missing from the index"
                )
            )
            continue
        expected = event_row(session_id, seq, ts, data)
        if _comparable(row) != _comparable(expected):
            problems.append(
                IndexProblem(session_id, seq, "the access index differs from the recorded event")
            )
        elif sorted(columns.get(row["id"], ()), key=repr) != sorted(column_rows(data), key=repr):
            problems.append(
                IndexProblem(session_id, seq, "the access index's columns differ from the event")
            )
    for (session_id, seq), _row in sorted(indexed.items()):
        if session_id in pruned:
            continue
        problems.append(
            IndexProblem(session_id, seq, "an access index row has no event in the recording")
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
