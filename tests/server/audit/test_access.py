"""The data-access index on both stores: exact answers to exact questions, and tampering found."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from server.audit import access
from server.audit.access import (
    AccessQuery,
    ColumnAccess,
    RelationAccess,
    SessionFacts,
    access_event,
    column_rows,
)
from server.audit.recording import SessionEvent
from server.store import tables as t
from server.store.db import Store

DAY = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
ALICE = SessionFacts("prod", "alice", "user")
BOB = SessionFacts("prod", "bob", "user")
AGENT = SessionFacts("prod", "helper-bot", "agent", on_behalf_of="alice")
CI = SessionFacts("staging", "ci-deploy", "workload")


def customers(
    *columns: str, masked: tuple[str, ...] = (), exempt: tuple[str, ...] = ()
) -> RelationAccess:
    return RelationAccess(
        "public", "customers", access.READ, columns, frozenset(masked), frozenset(exempt)
    )


@pytest.mark.parametrize(
    ("relation", "expected"),
    [
        (
            customers("id", "email", masked=("email",)),
            [("id", "clear"), ("email", "masked")],
        ),
        (customers("id", "email", exempt=("email",)), [("id", "clear"), ("email", "exempt")]),
        (customers(), [("", "clear")]),
        # A masked column the result named only through an expression still counts.
        (customers("id", masked=("ssn",)), [("id", "clear"), ("ssn", "masked")]),
    ],
)
def test_column_rows(relation: RelationAccess, expected: list[tuple[str, str]]) -> None:
    data = access_event(ALICE, command="SELECT", relations=[relation], rows=1)
    assert [(c.column, c.state) for c in column_rows(data)] == expected


# (session, minutes after DAY, facts, command, relations, rows, approval)
SCRIPT: list[tuple[str, int, SessionFacts, str, list[RelationAccess], int, str | None]] = [
    ("s-alice", 0, ALICE, "SELECT", [customers("id", "email", masked=("email",))], 3, None),
    (
        "s-alice",
        1,
        ALICE,
        "SELECT",  # a join: orders in clear, customers' email masked
        [
            customers("email", masked=("email",)),
            RelationAccess("public", "orders", access.READ, ("total",)),
        ],
        5,
        None,
    ),
    ("s-alice", 2, ALICE, "SELECT", [customers()], 1, None),  # count(*)
    (
        "s-bob",
        30,
        BOB,
        "UPDATE",
        [
            RelationAccess("public", "customers", access.WRITE, ("email",)),
            customers("id", exempt=()),
        ],
        1,
        "r-review1",
    ),
    ("s-bob", 31, BOB, "SELECT", [customers("email", exempt=("email",))], 2, "r-break"),
    ("s-agent", 60, AGENT, "SELECT", [customers("email", masked=("email",))], 10, None),
    (
        "s-ci",
        90,
        CI,
        "INSERT",
        [RelationAccess("sales", "customers", access.WRITE, ("id", "email"))],
        1,
        None,
    ),
]


# What each command's statement event says it ran (its access facts are the point here).
TEXTS = {
    "UPDATE": "update customers set email = '[redacted]' where id = 0",
    "INSERT": "insert into sales.customers (id, email) values (0, '[redacted]')",
}


def record_day(store: Store) -> dict[str, int]:
    """Store the scripted day as the recorder does: the events and their index, in one go."""
    seqs: dict[str, int] = {}
    events = []
    for session_id, minutes, facts, command, relations, rows, approval in SCRIPT:
        seqs[session_id] = seqs.get(session_id, 0) + 1
        facts = access_event(
            facts, command=command, relations=relations, rows=rows, approval=approval
        )
        ts = DAY + timedelta(minutes=minutes)
        data = {"text": TEXTS.get(command, "select 1"), "decision": "allowed", access.FACTS: facts}
        events.append(SessionEvent(session_id, seqs[session_id], ts, access.KIND, data))
    with store.tx() as conn:
        conn.execute(
            t.session_events.insert(),
            [
                {
                    "session_id": e.session_id,
                    "seq": e.seq,
                    "ts": e.ts,
                    "kind": e.kind,
                    "data": e.data,
                }
                for e in events
            ],
        )
        assert access.write_index(conn, events) == len(events)
    return seqs


def keys(records: list[access.AccessRecord]) -> list[tuple[str, int]]:
    return [(r.session_id, r.seq) for r in records]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            AccessQuery(table="customers", column="email"),
            [
                ("s-ci", 1),
                ("s-agent", 1),
                ("s-bob", 2),
                ("s-bob", 1),
                ("s-alice", 2),
                ("s-alice", 1),
            ],
        ),
        (
            AccessQuery(table="public.customers", column="email", clear_only=True),
            [("s-bob", 2), ("s-bob", 1)],
        ),
        (AccessQuery(table="customers", writes=True), [("s-ci", 1), ("s-bob", 1)]),
        (
            AccessQuery(table="customers", identity="alice"),
            [("s-agent", 1), ("s-alice", 3), ("s-alice", 2), ("s-alice", 1)],
        ),
        (AccessQuery(kind="agent"), [("s-agent", 1)]),
        (AccessQuery(target="staging"), [("s-ci", 1)]),
        (AccessQuery(table="orders"), [("s-alice", 2)]),
        (
            AccessQuery(since=DAY + timedelta(minutes=1), until=DAY + timedelta(minutes=31)),
            [("s-bob", 1), ("s-alice", 3), ("s-alice", 2)],
        ),
        (AccessQuery(viewer="bob", identity="alice"), []),
        (AccessQuery(viewer="alice", table="customers", column="email", clear_only=True), []),
        (AccessQuery(viewer="alice", table="customers", clear_only=True), [("s-alice", 1)]),
        (AccessQuery(limit=2), [("s-ci", 1), ("s-agent", 1)]),
    ],
)
def test_questions_get_exact_rows(
    any_store: Store, query: AccessQuery, expected: list[tuple[str, int]]
) -> None:
    record_day(any_store)
    assert keys(access.find(any_store, query)) == expected


def test_a_record_holds_every_column_and_the_approval(any_store: Store) -> None:
    record_day(any_store)
    (update,) = access.find(any_store, AccessQuery(table="customers", writes=True, identity="bob"))
    assert update.approval == "r-review1"
    assert update.command == "UPDATE" and update.rows == 1
    assert set(update.columns) == {
        ColumnAccess("public", "customers", "email", "write", "clear"),
        ColumnAccess("public", "customers", "id", "read", "clear"),
    }
    (agent,) = access.find(any_store, AccessQuery(kind="agent"))
    assert (agent.identity, agent.on_behalf_of, agent.ts) == (
        "helper-bot",
        "alice",
        DAY + timedelta(minutes=60),
    )


def test_summary_by_identity_and_relation(any_store: Store) -> None:
    record_day(any_store)
    rows = access.summarize(any_store, AccessQuery(table="customers"))
    got = {
        (r["identity"], r["relation"]): (
            r["statements"],
            r["writes"],
            r["clear"],
            r["masked"],
            r["rows"],
        )
        for r in rows
    }
    assert got == {
        ("alice", "public.customers"): (3, 0, 1, 2, 9),
        ("bob", "public.customers"): (2, 1, 2, 0, 3),
        ("ci-deploy", "sales.customers"): (1, 1, 1, 0, 1),
        ("helper-bot", "public.customers"): (1, 0, 0, 1, 10),
    }


def test_tampering_with_the_index_is_found(
    any_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(access, "_CHUNK", 2)  # the events are read a few at a time
    record_day(any_store)
    assert access.verify_index(any_store) == []
    e, c = t.access_events.c, t.access_columns.c
    with any_store.tx() as conn:
        # Someone hides that bob saw email in clear: masked in the index.
        target = conn.execute(
            sa.select(e.id).where(e.session_id == "s-bob", e.seq == 2)
        ).scalar_one()
        conn.execute(t.access_columns.update().where(c.access_id == target).values(state="masked"))
        # ...and puts the agent's read on its owner.
        conn.execute(
            t.access_events.update().where(e.session_id == "s-agent").values(identity="alice")
        )
        conn.execute(t.access_events.delete().where(e.session_id == "s-ci"))
    problems = [(p.session_id, p.seq, p.problem) for p in access.verify_index(any_store)]
    assert problems == [
        ("s-agent", 1, "the access index differs from the recorded event"),
        ("s-bob", 2, "the access index's columns differ from the event"),
        ("s-ci", 1, "a statement's access facts are missing from the index"),
    ]
