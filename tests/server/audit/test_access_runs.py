"""The access index's runs: like statements of a session kept as one row, answered one by one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from typing import Any

import pytest
import sqlalchemy as sa

from server.audit import access, report
from server.audit.access import (
    RUN_SPAN,
    AccessQuery,
    IndexEntry,
    RelationAccess,
    SessionFacts,
    access_event,
)
from server.audit.recording import SessionEvent
from server.store import tables as t
from server.store.db import Store
from tests.fix_store import insert_events

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
ALICE = SessionFacts("prod", "alice", "user")
CUSTOMERS = RelationAccess(
    "public", "customers", access.READ, ("id", "email"), frozenset({"email"})
)
ORDERS = RelationAccess("public", "orders", access.READ, ("id",))


def facts(rows: int | None = 1, *, approval: str | None = None, relation: Any = CUSTOMERS) -> Any:
    return access_event(ALICE, command="SELECT", relations=[relation], rows=rows, approval=approval)


def entry(rows: int | None = 1, **kw: Any) -> IndexEntry:
    made = access.index_entry(access.KIND, {access.FACTS: facts(rows, **kw)})
    assert made is not None
    return made


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


SPAN_MS = RUN_SPAN / timedelta(milliseconds=1)
LIKE = entry()


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param(
            [("a", 1, 0, LIKE), ("a", 2, 10, LIKE), ("a", 3, 20, LIKE)],
            [("a", 1, [(0, 1), (10_000, 1), (20_000, 1)])],
            id="like statements one after another",
        ),
        pytest.param(
            [("a", 1, 0, entry(1)), ("a", 2, 5, entry(7)), ("a", 3, 6, entry(None))],
            [("a", 1, [(0, 1), (5_000, 7), (6_000, None)])],
            id="rows differ: each kept",
        ),
        pytest.param(
            [("a", 1, 0, LIKE), ("a", 3, 5, LIKE)],
            [("a", 1, [(0, 1)]), ("a", 3, [(0, 1)])],
            id="an event between them",
        ),
        pytest.param(
            [("a", 1, 0, LIKE), ("a", 2, 5, entry(approval="r-1"))],
            [("a", 1, [(0, 1)]), ("a", 2, [(0, 1)])],
            id="other facts",
        ),
        pytest.param(
            [("a", 1, 0, LIKE), ("a", 2, 5, entry(relation=ORDERS))],
            [("a", 1, [(0, 1)]), ("a", 2, [(0, 1)])],
            id="other columns",
        ),
        pytest.param(
            [("a", 1, 0, LIKE), ("a", 2, SPAN_MS, LIKE), ("a", 3, SPAN_MS + 0.001, LIKE)],
            [("a", 1, [(0, 1), (int(SPAN_MS * 1000), 1)]), ("a", 3, [(0, 1)])],
            id="no further than the span from the first",
        ),
        pytest.param(
            [("a", 1, 10, LIKE), ("a", 2, 5, LIKE)],
            [("a", 1, [(0, 1)]), ("a", 2, [(0, 1)])],
            id="a clock that went back",
        ),
        pytest.param(
            [("a", 1, 0, LIKE), ("b", 1, 1, LIKE), ("a", 2, 2, LIKE), ("b", 2, 3, LIKE)],
            [("a", 1, [(0, 1), (2_000, 1)]), ("b", 1, [(0, 1), (2_000, 1)])],
            id="sessions interleaved",
        ),
    ],
)
def test_runs_of(
    steps: list[tuple[str, int, float, IndexEntry]],
    expected: list[tuple[str, int, list[tuple[int, int | None]]]],
) -> None:
    runs = access.runs_of([(sid, seq, at(ms), e) for sid, seq, ms, e in steps])
    assert [(r.session_id, r.seq, r.each) for r in runs] == expected


def test_a_run_holds_at_most_run_max_statements(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access, "RUN_MAX", 3)
    runs = access.runs_of([("a", seq, at(seq), LIKE) for seq in range(1, 8)])
    assert [(r.seq, len(r.each)) for r in runs] == [(1, 3), (4, 3), (7, 1)]


# A session's statements, 100 ms apart, rows 1..: seq 1-3, a notice (4), seq 5-7; then
# one of another shape (8).
STATEMENTS = [1, 2, 3, 5, 6, 7]


def _record(store: Store) -> None:
    events = []
    for seq in range(1, 9):
        if seq == 4:
            events.append(SessionEvent("s-run", seq, at(seq * 100), "notice", {"message": "hi"}))
            continue
        made = facts(seq, relation=ORDERS if seq == 8 else CUSTOMERS)
        data = {"text": "select id, email from customers where id = 1", access.FACTS: made}
        events.append(SessionEvent("s-run", seq, at(seq * 100), access.KIND, data))
    with store.tx() as conn:
        insert_events(conn, events)
        assert access.write_index(conn, events) == 7


def _runs(store: Store) -> list[tuple[int, int, int | None]]:
    e = t.access_events.c
    with store.read() as conn:
        return [
            tuple(r) for r in conn.execute(sa.select(e.seq, e.statements, e.rows).order_by(e.seq))
        ]


def _answers(records: list[access.AccessRecord]) -> list[tuple[int, datetime, int | None]]:
    return [(r.seq, r.ts, r.rows) for r in records]


def test_like_statements_are_one_row_and_each_is_answered(any_store: Store) -> None:
    _record(any_store)
    assert _runs(any_store) == [(1, 3, 1 + 2 + 3), (5, 3, 5 + 6 + 7), (8, 1, 8)]
    everything = access.find(any_store, AccessQuery(table="customers"))
    assert _answers(everything) == [(s, at(s * 100), s) for s in reversed(STATEMENTS)]
    assert {r.columns for r in everything} == {everything[0].columns}
    assert access.verify_index(any_store) == []


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        (None, None, STATEMENTS),
        (at(200), None, [2, 3, 5, 6, 7]),  # since is inclusive, mid-run
        (at(201), None, [3, 5, 6, 7]),
        (None, at(600), [1, 2, 3, 5]),  # until is exclusive, mid-run
        (at(200), at(600), [2, 3, 5]),
        (at(250), at(300), []),
        (at(300), at(300.001), [3]),
    ],
)
def test_a_period_cuts_runs_exactly(
    any_store: Store, since: datetime | None, until: datetime | None, expected: list[int]
) -> None:
    _record(any_store)
    q = AccessQuery(table="customers", since=since, until=until)
    assert sorted(r.seq for r in access.find(any_store, q)) == expected
    summary = access.summarize(any_store, q)
    if not expected:
        assert summary == []
        return
    (row,) = summary
    assert (row["statements"], row["rows"], row["masked"], row["clear"]) == (
        len(expected),
        sum(expected),
        len(expected),
        len(expected),
    )
    assert (row["first"], row["last"]) == (
        at(expected[0] * 100).isoformat(),
        at(expected[-1] * 100).isoformat(),
    )


def test_the_newest_statements_come_first_across_runs(any_store: Store) -> None:
    """A run that ends later can hold older statements than one that ends earlier."""
    long_run = [("s-long", seq, at(seq * 10), LIKE) for seq in range(1, 51)]  # 10..500 ms
    short_run = [("s-short", seq, at(400 + seq), LIKE) for seq in range(1, 4)]  # 401..403 ms
    with any_store.tx() as conn:
        access.write_entries(conn, long_run + short_run)
    newest = access.find(any_store, AccessQuery(limit=5))
    assert [(r.session_id, r.seq) for r in newest] == [
        ("s-long", 50),
        ("s-long", 49),
        ("s-long", 48),
        ("s-long", 47),
        ("s-long", 46),
    ]
    # 410 ms and after: the long run's 41..50; then the short run's, then its 40.
    ten = access.find(any_store, AccessQuery(limit=14))
    assert [(r.session_id, r.seq) for r in ten][9:] == [
        ("s-long", 41),
        ("s-short", 3),
        ("s-short", 2),
        ("s-short", 1),
        ("s-long", 40),
    ]


def _tamper(store: Store, **values: Any) -> None:
    e = t.access_events.c
    with store.tx() as conn:
        conn.execute(t.access_events.update().where(e.seq == 1).values(**values))


@pytest.mark.parametrize(
    ("forged", "expected"),
    [
        pytest.param(
            {"run": "[[0,1],[100000,2],[200000,30]]", "rows": 33},
            [("s-run", 3, "the access index differs from the recorded event")],
            id="a statement's rows",
        ),
        pytest.param(
            {"run": "[[0,1],[100000,2],[200001,3]]", "last_ts": at(300.001)},
            [("s-run", 3, "the access index differs from the recorded event")],
            id="a statement's time",
        ),
        pytest.param(
            {"run": "[[0,1],[100000,2]]", "statements": 2, "rows": 3, "last_ts": at(200)},
            [("s-run", 3, "a statement's access facts are missing from the index")],
            id="a statement hidden",
        ),
        pytest.param(
            {"run": "[[0,1],[100000,2],[200000,3],[300000,4]]", "statements": 4, "rows": 10},
            [
                ("s-run", 1, "an access index run's last time differs from its statements"),
                ("s-run", 4, "an access index row has no event in the recording"),
            ],
            id="a statement added",
        ),
        pytest.param(
            {"statements": 2},
            [("s-run", 1, "an access index run's count differs from its statements")],
            id="its count",
        ),
        pytest.param(
            {"rows": 5},
            [("s-run", 1, "an access index run's rows differ from its statements'")],
            id="its total",
        ),
        *(
            pytest.param(
                {"run": text},
                [
                    ("s-run", 1, "an access index run cannot be read"),
                    ("s-run", 1, "the access index differs from the recorded event"),
                    ("s-run", 2, "a statement's access facts are missing from the index"),
                    ("s-run", 3, "a statement's access facts are missing from the index"),
                ],
                id=name,
            )
            for name, text in [
                ("numbers too large for a time", "[[0,1],[1e30,2],[200000,3]]"),
                ("not a number", "[[0,1],[Infinity,2],[200000,3]]"),
                ("no statements", "[]"),
                ("times going back", "[[0,1],[200000,2],[100000,3]]"),
                ("longer than a run may last", "[[0,1],[100000,2],[3600000000,3]]"),
                ("rows that are not whole", "[[0,1],[100000,2.5],[200000,3]]"),
            ]
        ),
        pytest.param(
            {"run": "not json"},
            [
                ("s-run", 1, "an access index run cannot be read"),
                # read as its first statement alone, with the run's rows
                ("s-run", 1, "the access index differs from the recorded event"),
                ("s-run", 2, "a statement's access facts are missing from the index"),
                ("s-run", 3, "a statement's access facts are missing from the index"),
            ],
            id="its text",
        ),
        pytest.param(
            {"identity": "bob"},
            [
                ("s-run", seq, "the access index differs from the recorded event")
                for seq in (1, 2, 3)
            ],
            id="whose it is",
        ),
    ],
)
def test_tampering_with_a_run_is_found(
    any_store: Store, forged: dict[str, Any], expected: list[tuple[str, int, str]]
) -> None:
    _record(any_store)
    _tamper(any_store, **forged)
    problems = [(p.session_id, p.seq, p.problem) for p in access.verify_index(any_store)]
    assert sorted(problems) == sorted(expected)


def test_runs_become_rows_and_back_with_the_schema(any_store: Store) -> None:
    """Revision 0015's downgrade gives each statement of a run its own row; the
    upgrade makes each a run of one: the answers stay the same."""
    from alembic import command
    from alembic.config import Config

    _record(any_store)
    everything = AccessQuery(limit=100)
    before = [
        (r.session_id, r.seq, r.ts, r.rows, r.columns) for r in access.find(any_store, everything)
    ]

    def migrate(step: Any, to: str) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(resources.files("server.store") / "migrations"))
        with any_store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            step(cfg, to)

    migrate(command.downgrade, "0014")
    with any_store.read() as conn:
        rows = conn.execute(sa.text("SELECT seq, rows FROM access_events ORDER BY seq")).all()
    assert [tuple(r) for r in rows] == [(s, s) for s in [*STATEMENTS, 8]]
    migrate(command.upgrade, "head")
    assert any_store.at_head()
    assert _runs(any_store) == [(s, 1, s) for s in [*STATEMENTS, 8]]
    after = [
        (r.session_id, r.seq, r.ts, r.rows, r.columns) for r in access.find(any_store, everything)
    ]
    assert after == before
    assert access.verify_index(any_store) == []


def test_the_newest_statements_of_a_period_are_found_past_runs_it_cuts(any_store: Store) -> None:
    """Runs are read newest-ending first; one that the period's end cuts says little
    about the statements of runs read after it."""
    with any_store.tx() as conn:
        access.write_entries(
            conn,
            [
                ("s-x", 1, at(100), LIKE),
                ("s-x", 2, at(900), LIKE),  # after the period: run x is cut
                ("s-y", 1, at(400), LIKE),
                ("s-y", 2, at(700), LIKE),  # after it too
                ("s-z", 1, at(300), LIKE),
            ],
        )
    q = AccessQuery(until=at(450), limit=2)
    assert [(r.session_id, r.seq) for r in access.find(any_store, q)] == [("s-y", 1), ("s-z", 1)]


def _exempt_read() -> IndexEntry:
    """The entry of alice's read of customers.email in clear, her group exempt."""
    exempt = RelationAccess(
        "public", "customers", access.READ, ("email",), exempt=frozenset({"email"})
    )
    made = access.index_entry(
        access.KIND,
        {
            access.FACTS: access_event(
                ALICE, command="SELECT", relations=[exempt], rows=2, exemption="group dba"
            )
        },
    )
    assert made is not None
    return made


def test_the_evidence_report_counts_the_statements_of_runs_its_period_cuts(
    any_store: Store,
) -> None:
    """Masked reads and reads in clear under an exemption, counted one by one at the
    period's edges, and each read in clear listed with its own time and rows."""
    clear = _exempt_read()
    with any_store.tx() as conn:
        access.write_entries(
            conn,
            [("s-run", seq, at(seq * 100), LIKE) for seq in range(1, 6)]  # 100..500 ms
            + [("s-dba", seq, at(seq * 100), clear) for seq in range(1, 6)],
        )
    got = report._masked(any_store, at(200), at(400))
    assert got["columns"] == [{"column": "public.customers.email", "masked": 2, "clear": 2}]
    assert [(a["ts"], a["rows"], a["exemption"]) for a in got["clear_accesses"]] == [
        (at(200).isoformat(), 2, "group dba"),
        (at(300).isoformat(), 2, "group dba"),
    ]


def test_a_statement_two_rows_claim_is_reported_whoever_is_read_first(any_store: Store) -> None:
    """A forged row claims statements a real run holds (the unique key is only a
    run's first number): neither row is taken as the truth."""
    _record(any_store)
    e = t.access_events.c
    with any_store.tx() as conn:
        real = conn.execute(sa.select(t.access_events).where(e.seq == 1)).one()._mapping
        forged = {k: v for k, v in real.items() if k != "id"}
        conn.execute(
            t.access_events.insert().values(
                {
                    **forged,
                    "seq": 2,
                    "ts": at(200),
                    "last_ts": at(200),
                    "statements": 1,
                    "rows": 2,
                    "run": None,
                    "identity": "bob",
                }
            )
        )
    problems = [(p.session_id, p.seq, p.problem) for p in access.verify_index(any_store)]
    assert problems == [("s-run", 2, "more than one access index row holds this statement")]


def test_a_run_stretched_over_hours_to_hide_a_statement_is_found(any_store: Store) -> None:
    """The questions find a run by its first time, no earlier than RUN_SPAN before
    the period: one that claims to last longer is a forgery."""
    events = [
        SessionEvent(
            "s-run",
            seq,
            at(0) + timedelta(hours=3 * (seq - 1)),
            access.KIND,
            {"text": "select 1", access.FACTS: facts(1)},
        )
        for seq in (1, 2)
    ]
    with any_store.tx() as conn:
        insert_events(conn, events)
        access.write_index(conn, events)
    assert len(_runs(any_store)) == 2
    e = t.access_events.c
    with any_store.tx() as conn:
        conn.execute(t.access_events.delete().where(e.seq == 2))
    _tamper(
        any_store,
        statements=2,
        rows=2,
        last_ts=at(0) + timedelta(hours=3),
        run=f"[[0,1],[{3 * 3600 * 10**6},1]]",
    )
    assert "an access index run cannot be read" in [
        p.problem for p in access.verify_index(any_store)
    ]


def test_a_period_given_in_another_time_zone_is_the_same_period(any_store: Store) -> None:
    _record(any_store)
    plus_two = timezone(timedelta(hours=2))
    for since in (at(200), at(200).astimezone(plus_two), at(200).replace(tzinfo=None)):
        q = AccessQuery(table="customers", since=since, until=at(600).astimezone(plus_two))
        assert sorted(r.seq for r in access.find(any_store, q)) == [2, 3, 5]
        assert [r["statements"] for r in access.summarize(any_store, q)] == [3]


def test_the_reports_clear_accesses_are_found_past_runs_that_began_before_the_period(
    any_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report, "MAX_ITEMS", 3)
    clear = _exempt_read()
    with any_store.tx() as conn:
        access.write_entries(
            conn,
            [
                (f"s-dba-{n}", seq, at(500 + 100 * seq + n), clear)
                for n in range(4)
                for seq in range(1, 6)  # 600..1000 ms
            ],
        )
    got = report._masked(any_store, at(950), at(2000))
    assert got["columns"] == [{"column": "public.customers.email", "masked": 0, "clear": 4}]
    assert [a["session_id"] for a in got["clear_accesses"]] == ["s-dba-0", "s-dba-1", "s-dba-2"]


def test_a_run_that_began_earlier_may_hold_the_newest_statement(any_store: Store) -> None:
    """Runs are read by their first times: one that began before another may end
    after it, up to RUN_SPAN later."""
    with any_store.tx() as conn:
        access.write_entries(
            conn,
            [("s-a", 1, at(1000), LIKE), ("s-a", 2, at(1100), LIKE)]
            + [("s-b", seq, at(400 + seq * 100), LIKE) for seq in range(1, 11)],  # 500..1400
        )
    newest = access.find(any_store, AccessQuery(limit=1))
    assert [(r.session_id, r.seq) for r in newest] == [("s-b", 10)]
