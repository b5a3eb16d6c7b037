"""The evidence report of a period, for auditors: what was accessed, approved, refused and revoked.

:func:`build` reads the audit log (the hash-chained events of the period) and
the access index (``server.audit.access``) and returns one JSON document:

* ``sessions`` — started sessions by identity and target, and per day;
* ``approvals`` — access requests approved or denied, by whom, with their comments;
* ``reviews`` — statement reviews asked for, and approved statements run;
* ``refusals`` — statements the guardrails refused, by rule;
* ``masked`` — per masked column, how often it was read masked, and every
  access to a masked-by-rule column in clear (by whom, the session, the
  approval it ran under): the exemptions at work;
* ``break_glass`` — sessions started without the approval their scope needs;
* ``revocations`` — how sessions' credentials were revoked, and every one
  that was not verified;
* ``verification`` — the audit chain's check (and the recordings' and the
  access index's), with the hash of the chain's head.

The CLI renders it as Markdown or as one self-contained HTML page
(``brokercli/report.py``); the JSON is the report itself.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from server.audit import access, chain
from server.audit.access import EXEMPT, MASKED
from server.store import tables as t
from server.store.db import Store, _aware

# The longest list of single items a report keeps per section (the counts are whole).
MAX_ITEMS = 500


def _iso(ts: datetime | None) -> str | None:
    aware = _aware(ts)
    return aware.isoformat() if aware is not None else None


def build(
    store: Store, since: datetime, until: datetime, *, verification: Mapping[str, Any]
) -> dict[str, Any]:
    """The report of [``since``, ``until``); ``verification`` is ``audit verify``'s answer."""
    events = [e for e in chain.events(store, since=since) if e.ts < until]
    by_kind: dict[str, list[chain.AuditEvent]] = defaultdict(list)
    for event in events:
        by_kind[event.kind].append(event)

    started = by_kind["session.started"]
    pairs = Counter((e.identity or "", e.target or "") for e in started)
    per_day = Counter(e.ts.date().isoformat() for e in started)
    approvals = [
        {
            "ts": e.ts.isoformat(),
            "decision": "approved" if e.kind == "request.approved" else "denied",
            "request_id": e.data.get("request_id") or e.data.get("id"),
            "by": e.identity,
            "target": e.target,
            "requester": e.data.get("requester"),
            "comment": e.data.get("comment") or e.data.get("note"),
        }
        for e in events
        if e.kind in ("request.approved", "request.denied")
    ]
    reviews = [
        {
            "ts": e.ts.isoformat(),
            "event": "requested" if e.kind == "statement.review_requested" else "run",
            "identity": e.identity,
            "target": e.target,
            "session_id": e.session_id,
            "request_id": e.data.get("request_id"),
            "rule": e.data.get("rule"),
            "statement": e.data.get("statement"),
        }
        for e in events
        if e.kind in ("statement.review_requested", "statement.approved_used")
    ]
    blocked = by_kind["statement.blocked"]
    by_rule = Counter(str(e.data.get("rule") or "?") for e in blocked)
    revocations = []
    unverified = []
    for e in by_kind["session.ended"]:
        rev = e.data.get("revocation") or {}
        verified = bool(rev.get("verified"))
        revocations.append(verified)
        if not verified:
            unverified.append(
                {
                    "ts": e.ts.isoformat(),
                    "session_id": e.session_id,
                    "identity": e.identity,
                    "target": e.target,
                    "detail": rev.get("detail") or rev.get("error") or "not verified",
                }
            )
    head = _head(store)
    return {
        "period": {"since": since.isoformat(), "until": until.isoformat()},
        "sessions": {
            "total": len(started),
            "by_identity_target": [
                {"identity": ident, "target": target, "sessions": n}
                for (ident, target), n in sorted(pairs.items())
            ],
            "per_day": [{"day": day, "sessions": n} for day, n in sorted(per_day.items())],
            "denied": len(by_kind["session.denied"]),
        },
        "approvals": approvals[:MAX_ITEMS],
        "reviews": reviews[:MAX_ITEMS],
        "refusals": {
            "total": len(blocked),
            "by_rule": [{"rule": r, "count": n} for r, n in by_rule.most_common()],
            "examples": [
                {
                    "ts": e.ts.isoformat(),
                    "identity": e.identity,
                    "target": e.target,
                    "rule": e.data.get("rule"),
                    "statement": e.data.get("statement"),
                }
                for e in blocked[:MAX_ITEMS]
            ],
        },
        "masked": _masked(store, since, until),
        "break_glass": [
            {
                "ts": e.ts.isoformat(),
                "identity": e.identity,
                "target": e.target,
                "session_id": e.session_id,
                "reason": e.data.get("reason"),
                "rule": e.data.get("rule"),
            }
            for e in by_kind["session.break_glass"]
        ],
        "revocations": {
            "total": len(revocations),
            "verified": sum(revocations),
            "not_verified": unverified,
        },
        "verification": {
            "ok": bool(verification.get("ok")),
            "events": verification.get("events"),
            "problem": verification.get("problem"),
            "first_bad_seq": verification.get("first_bad_seq"),
            "head_seq": head[0],
            "head_hash": head[1],
        },
    }


def _head(store: Store) -> tuple[int | None, str | None]:
    with store.read() as conn:
        row = conn.execute(
            sa.select(t.audit_events.c.seq, t.audit_events.c.hash)
            .order_by(t.audit_events.c.seq.desc())
            .limit(1)
        ).first()
    return (row[0], row[1]) if row is not None else (None, None)


def _masked(store: Store, since: datetime, until: datetime) -> dict[str, Any]:
    """Per column a masking rule names: reads masked, and every access to it in clear."""
    e, c = t.access_events.c, t.access_shape_columns.c
    relation = (c.schema_name + "." + c.table_name + "." + c.column_name).label("column")
    period = access.Period(since, until)
    joined = t.access_shape_columns.join(t.access_events, e.shape_id == c.shape_id)
    named = (c.state.in_((MASKED, EXEMPT)),)
    runs = (e.seq, e.ts, e.rows, e.run)
    with store.read() as conn:
        counts = conn.execute(
            sa.select(relation, c.state, sa.func.sum(e.statements))
            .select_from(joined)
            .where(*named, *period.whole())
            .group_by(relation, c.state)
        ).all()
        partial = conn.execute(
            sa.select(relation, c.state, *runs)
            .select_from(joined)
            .where(*named, *period.overlapping(), period.partial())
        ).all()
        accesses = _clear_accesses(conn, period, relation, runs)
    columns: dict[str, dict[str, int]] = defaultdict(lambda: {"masked": 0, "clear": 0})
    for column, state, n in counts:
        columns[column]["masked" if state == MASKED else "clear"] += int(n)
    for row in partial:
        m = row._mapping
        inside = sum(period.holds(ts) for _, ts, _ in access.statements_of(m))
        columns[m["column"]]["masked" if m["state"] == MASKED else "clear"] += inside
    return {
        "columns": [{"column": col, **n} for col, n in sorted(columns.items())],
        "clear_accesses": [
            {
                "ts": _iso(ts),
                "identity": m["identity"],
                "identity_kind": m["identity_kind"],
                "on_behalf_of": m["on_behalf_of"],
                "target": m["target"],
                "session_id": m["session_id"],
                "command": m["command"],
                "rows": rows,
                "approval": m["approval"],
                "exemption": m["exemption"],
                "column": m["column"],
            }
            for ts, rows, m in accesses
        ],
    }


def _clear_accesses(
    conn: sa.Connection,
    period: access.Period,
    relation: sa.ColumnElement[str],
    runs: tuple[sa.ColumnElement[Any], ...],
) -> list[tuple[datetime, int | None, Any]]:
    """The first MAX_ITEMS statements of the period that read a column in clear under
    an exemption (time, rows, and their run's row), in order.  Runs are read in
    order of their first statements, a page at a time: the statements up to the
    last one read's first are all known, those after it may wait in runs not read."""
    e, c = t.access_events.c, t.access_shape_columns.c
    query = (
        sa.select(
            *runs,
            e.id,
            e.identity,
            e.identity_kind,
            e.on_behalf_of,
            e.target,
            e.session_id,
            e.command,
            e.approval,
            e.exemption,
            relation,
        )
        .select_from(t.access_shape_columns.join(t.access_events, e.shape_id == c.shape_id))
        .where(*period.overlapping(), c.state == EXEMPT)
        .order_by(e.ts, e.id, relation)
        .limit(MAX_ITEMS)
    )
    found: list[tuple[datetime, int | None, Any]] = []
    after: list[sa.ColumnElement[bool]] = []
    while True:
        rows = conn.execute(query.where(*after)).all()
        found += [
            (ts, n, m)
            for m in (r._mapping for r in rows)
            for _, ts, n in access.statements_of(m)
            if period.holds(ts)
        ]
        found.sort(key=lambda a: a[0])
        if len(rows) < MAX_ITEMS:
            return found[:MAX_ITEMS]
        last = rows[-1]
        known = _aware(last.ts)
        assert known is not None
        complete = [a for a in found if a[0] <= known]
        if len(complete) >= MAX_ITEMS:
            return complete[:MAX_ITEMS]
        del found[MAX_ITEMS:]
        after = [
            sa.or_(
                e.ts > last.ts,
                sa.and_(
                    e.ts == last.ts,
                    sa.or_(e.id > last.id, sa.and_(e.id == last.id, relation > last.column)),
                ),
            )
        ]
