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
also written as a row of ``access_events`` (one per statement: who, where, when,
command, rows, decision, approval) in the transaction that stores the event.
Which columns of which relations it touched, and how, is the same for every
statement of one shape, so it is kept once per distinct set: ``access_shapes``
(the set's key, ``tables.shape_key``) and ``access_shape_columns`` (one row per
relation and column), which the statement's row names by ``shape_id``.  A
question about a table or column finds the few shapes that touch it, then their
statements by the (shape, time) index; writing a statement's index costs one
row.  The recorder makes each event's :func:`index_entry` and its writer
(``server/audit/event_writes.py``) writes them with :func:`write_entries`;
:func:`write_index` does both for events read back.  The rows name their event
(``session_id``, ``seq``), and :func:`verify_index` — part of ``dbaccess audit
verify`` — holds every row to it: a row edited, added or removed in the index,
or a shape's columns edited, is reported (for every statement of that shape),
and the event itself cannot change unnoticed because of the digest.

:func:`find` and :func:`summarize` answer ``dbaccess audit access`` (one record
per statement, or counts by identity and relation).
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
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
_SHAPE_COLUMNS: Final = (
    "shape_id",
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
    columns: list[ColumnAccess]  # its shape's access_shape_columns rows


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
    shape = shape_ids(conn, [entry.columns for *_, entry in entries])
    bulk.insert(
        conn,
        t.access_events,
        (*_EVENT_COLUMNS, "shape_id"),
        [
            (sid, seq, ts, *entry.described, shape_id)
            for (sid, seq, ts, entry), shape_id in zip(entries, shape, strict=True)
        ],
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
    if q.since is not None:
        conds.append(e.ts >= q.since)
    if q.until is not None:
        conds.append(e.ts < q.until)
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
    e = t.access_events.c
    limit = max(1, min(q.limit, MAX_LIMIT))
    query = (
        sa.select(t.access_events).where(*_where(q)).order_by(e.ts.desc(), e.id.desc()).limit(limit)
    )
    with store.read() as conn:
        rows = conn.execute(query).all()
        columns = _shape_columns(conn, (row.shape_id for row in rows))
    return [_record(row._mapping, columns.get(row.shape_id, ())) for row in rows]


def summarize(store: Store, q: AccessQuery) -> list[dict[str, Any]]:
    """Counts by identity (and the person it acted for) and relation: statements,
    those that wrote, those with a column in clear or masked, rows."""
    e, c = t.access_events.c, t.access_shape_columns.c
    # Per shape and relation (only the relations asked about), then per statement
    # of those shapes that the filters keep.
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
        .select_from(per_relation.join(t.access_events, e.shape_id == p.shape_id))
        .where(*_where(q))
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
    rec = t.session_recordings.c
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
        keys = dict(conn.execute(sa.select(t.access_shapes.c.id, t.access_shapes.c.key)).all())
        shapes = _shape_columns(conn, keys)
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
        elif sorted(shapes.get(row["shape_id"], ())) != sorted(column_rows(data)):
            problems.append(
                IndexProblem(session_id, seq, "the access index's columns differ from the event")
            )
    for (session_id, seq), _row in sorted(indexed.items()):
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
