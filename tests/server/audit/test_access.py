"""The data-access index on both stores: exact answers to exact questions, and tampering found."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

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
from tests.fix_store import insert_events

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


# Later that day, carol reads what the agent and alice read: the same shapes.
CAROL = SessionFacts("prod", "carol", "user")
AGAIN: list[tuple[str, int, SessionFacts, str, list[RelationAccess], int, str | None]] = [
    ("s-carol", 120, CAROL, "SELECT", [customers("email", masked=("email",))], 4, None),
    ("s-carol", 121, CAROL, "SELECT", [customers("id", "email", masked=("email",))], 2, None),
]


def record_day(store: Store, script: list[Any] = SCRIPT) -> dict[str, int]:
    """Store the scripted day as the recorder does: the events and their index, in one go."""
    seqs: dict[str, int] = {}
    events = []
    for session_id, minutes, facts, command, relations, rows, approval in script:
        seqs[session_id] = seqs.get(session_id, 0) + 1
        facts = access_event(
            facts, command=command, relations=relations, rows=rows, approval=approval
        )
        ts = DAY + timedelta(minutes=minutes)
        data = {"text": TEXTS.get(command, "select 1"), "decision": "allowed", access.FACTS: facts}
        events.append(SessionEvent(session_id, seqs[session_id], ts, access.KIND, data))
    with store.tx() as conn:
        insert_events(conn, events)
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
    e, c = t.access_events.c, t.access_shape_columns.c
    with any_store.tx() as conn:
        # Someone hides that bob saw email in clear: his statement is pointed at a
        # shape of its own that says masked.
        shape = conn.execute(
            sa.select(e.shape_id).where(e.session_id == "s-bob", e.seq == 2)
        ).scalar_one()
        rows = [
            {**row._mapping, "state": "masked"}
            for row in conn.execute(sa.select(t.access_shape_columns).where(c.shape_id == shape))
        ]
        # With the key a writer would give such a shape: the forgery is in the rows.
        key = t.shape_key(
            [
                (r["schema_name"], r["table_name"], r["column_name"], r["action"], r["state"])
                for r in rows
            ]
        )
        forged = conn.execute(
            sa.select(t.access_shapes.c.id).where(t.access_shapes.c.key == key)
        ).scalar()  # alice's statement has these columns
        if forged is None:
            forged = conn.execute(
                t.access_shapes.insert().values(key=key).returning(t.access_shapes.c.id)
            ).scalar_one()
            for row in rows:
                conn.execute(t.access_shape_columns.insert().values({**row, "shape_id": forged}))
        conn.execute(
            t.access_events.update()
            .where(e.session_id == "s-bob", e.seq == 2)
            .values(shape_id=forged)
        )
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


def _shapes(store: Store) -> dict[int, list[tuple[str, ...]]]:
    with store.read() as conn:
        rows = conn.execute(sa.select(t.access_shape_columns)).all()
        ids = conn.execute(sa.select(t.access_shapes.c.id)).scalars().all()
    out: dict[int, list[tuple[str, ...]]] = {i: [] for i in ids}
    for r in rows:
        out[r.shape_id].append((r.schema_name, r.table_name, r.column_name, r.action, r.state))
    return out


def test_statements_of_one_shape_share_its_columns_and_each_costs_one_row(
    any_store: Store,
) -> None:
    record_day(any_store, SCRIPT + AGAIN)
    with any_store.read() as conn:
        statements = conn.execute(sa.select(sa.func.count()).select_from(t.access_events)).scalar()
    # One shape per distinct set of columns touched, however many statements had it.
    distinct = {
        t.shape_key(column_rows(access_event(f, command=c, relations=r, rows=n)))
        for _, _, f, c, r, n, _ in SCRIPT + AGAIN
    }
    shapes = _shapes(any_store)
    assert statements == len(SCRIPT) + 2 and len(shapes) == len(distinct) == len(SCRIPT)
    # The same rows in another order are the same shape.
    rows = column_rows(
        access_event(ALICE, command="SELECT", relations=[customers("id", "email")], rows=1)
    )
    assert t.shape_key(rows) == t.shape_key(list(reversed(rows)))
    assert access.verify_index(any_store) == []


def test_a_shape_added_by_a_transaction_that_failed_is_added_again(any_store: Store) -> None:
    """A shape's id is remembered only once it was found committed: a batch rolled
    back after adding one leaves no id pointing at nothing for the next batch."""
    new_shape = customers("id", "phone", masked=("phone",))
    entry = access.index_entry(
        access.KIND,
        {access.FACTS: access_event(BOB, command="SELECT", relations=[new_shape], rows=1)},
    )
    assert entry is not None

    class Refused(Exception):
        pass

    with pytest.raises(Refused), any_store.tx() as conn:
        stamp = DAY
        access.write_entries(conn, [("s-1", 1, stamp, entry)])
        raise Refused
    assert _shapes(any_store) == {}
    with any_store.tx() as conn:
        access.write_entries(conn, [("s-1", 1, stamp, entry)])
    with any_store.tx() as conn:
        access.write_entries(conn, [("s-1", 2, stamp, entry)])  # known now: no lookup needed
    [(shape, columns)] = _shapes(any_store).items()
    assert sorted(columns) == [
        ("public", "customers", "id", "read", "clear"),
        ("public", "customers", "phone", "read", "masked"),
    ]
    with any_store.read() as conn:
        assert conn.execute(sa.select(t.access_events.c.shape_id)).scalars().all() == [shape] * 2


def test_tampering_with_a_shared_shape_is_found_for_each_of_its_statements(
    any_store: Store,
) -> None:
    record_day(any_store, SCRIPT + AGAIN)
    e, c = t.access_events.c, t.access_shape_columns.c
    with any_store.tx() as conn:
        shape = conn.execute(
            sa.select(e.shape_id).where(e.session_id == "s-agent", e.seq == 1)
        ).scalar_one()
        sharing = conn.execute(
            sa.select(e.session_id, e.seq).where(e.shape_id == shape).order_by(e.session_id, e.seq)
        ).all()
        # The index is edited to say the e-mail came back in clear.
        conn.execute(
            t.access_shape_columns.update().where(c.shape_id == shape).values(state="clear")
        )
    assert [tuple(r) for r in sharing] == [("s-agent", 1), ("s-carol", 1)]
    problems = [(p.session_id, p.seq, p.problem) for p in access.verify_index(any_store)]
    assert problems == [
        *((sid, seq, "the access index's columns differ from the event") for sid, seq in sharing),
        ("", None, f"access shape {shape}'s key differs from its columns"),
    ]


def test_the_index_moves_into_shapes_and_back_with_the_schema(any_store: Store) -> None:
    """Revision 0014 moves each statement's column rows into shared shapes; its
    downgrade gives each statement its rows back: the answers stay the same."""
    from importlib import resources

    from alembic import command
    from alembic.config import Config

    # And a statement that touched no relation (select 1): a shape with no columns.
    nothing = [("s-carol", 122, CAROL, "SELECT", [], 1, None)]
    record_day(any_store, SCRIPT + AGAIN + nothing)
    everything = AccessQuery(limit=1000)
    before = [r.to_json() for r in access.find(any_store, everything)]

    def migrate(step: Any, to: str) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(resources.files("server.store") / "migrations"))
        with any_store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            step(cfg, to)

    migrate(command.downgrade, "0013")
    with any_store.read() as conn:
        old = conn.execute(
            sa.text(
                "SELECT e.session_id, e.seq, c.schema_name, c.table_name, c.column_name,"
                " c.action, c.state"
                " FROM access_columns c JOIN access_events e ON e.id = c.access_id"
            )
        ).all()
        assert "access_shapes" not in sa.inspect(conn).get_table_names()
    expected = []
    seqs: dict[str, int] = {}
    for session_id, _, facts, command_, relations, rows, _ in SCRIPT + AGAIN + nothing:
        seqs[session_id] = seqs.get(session_id, 0) + 1
        data = access_event(facts, command=command_, relations=relations, rows=rows)
        expected += [(session_id, seqs[session_id], *c) for c in column_rows(data)]
    assert sorted(tuple(r) for r in old) == sorted(expected)

    migrate(command.upgrade, "head")
    assert any_store.at_head()
    assert [r.to_json() for r in access.find(any_store, everything)] == before
    assert len(before) == len(SCRIPT) + 3
    assert len(_shapes(any_store)) == len(SCRIPT) + 1
    assert [] in _shapes(any_store).values()
    assert access.verify_index(any_store) == []


def test_two_writers_adding_one_new_shape_share_it(any_store: Store) -> None:
    """Two replicas' writers index a statement of a shape neither store nor cache
    knows, at the same time: the second waits for the first (PostgreSQL: on the
    key's unique index; SQLite: on the database's write lock) and takes its id."""
    import threading

    relations = [customers("id", "city")]
    entry = access.index_entry(
        access.KIND,
        {access.FACTS: access_event(BOB, command="SELECT", relations=relations, rows=1)},
    )
    assert entry is not None
    first_added = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            with any_store.tx() as conn:
                access.write_entries(conn, [("s-1", 1, DAY, entry)])
                first_added.set()
                assert release.wait(30)
        except BaseException as exc:  # reported below
            errors.append(exc)
            first_added.set()

    writer = threading.Thread(target=first)
    writer.start()
    assert first_added.wait(30)
    second = threading.Thread(target=lambda: _write_second(any_store, entry, errors))
    second.start()
    second.join(0.5)
    assert second.is_alive()  # waiting for the first writer's transaction
    release.set()
    writer.join(30)
    second.join(30)
    assert not errors
    [(shape, columns)] = _shapes(any_store).items()
    assert len(columns) == 2
    with any_store.read() as conn:
        assert conn.execute(sa.select(t.access_events.c.shape_id)).scalars().all() == [shape] * 2


def _write_second(store: Store, entry: access.IndexEntry, errors: list[BaseException]) -> None:
    try:
        access._KNOWN.pop(store.engine, None)  # as a writer in another process
        with store.tx() as conn:
            access.write_entries(conn, [("s-2", 1, DAY, entry)])
    except BaseException as exc:  # reported by the test
        errors.append(exc)


def _entry(*relations: RelationAccess) -> access.IndexEntry:
    entry = access.index_entry(
        access.KIND,
        {access.FACTS: access_event(BOB, command="SELECT", relations=list(relations), rows=1)},
    )
    assert entry is not None
    return entry


def _index(store: Store, seq: int, *entries: access.IndexEntry) -> None:
    with store.tx() as conn:
        stamp = DAY
        access.write_entries(conn, [("s-1", seq + i, stamp, e) for i, e in enumerate(entries)])


def _shape_of(store: Store, seq: int) -> list[tuple[str, ...]]:
    e = t.access_events.c
    with store.read() as conn:
        shape = conn.execute(
            sa.select(e.shape_id).where(e.session_id == "s-1", e.seq == seq)
        ).scalar_one()
    return sorted(_shapes(store)[shape])


def test_a_full_cache_of_shape_ids_is_emptied_without_losing_a_batch(
    any_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of shapes some of which were kept and some not, when keeping the new
    ones goes over the bound: every statement still gets its own shape's id."""
    monkeypatch.setattr(access, "_KNOWN_MAX", 2)
    a, b, c = (_entry(customers(column)) for column in ("id", "email", "city"))
    _index(any_store, 1, a, b)
    _index(any_store, 3, a, c)  # a kept, c new: keeping c empties the cache
    _index(any_store, 5, c, a, b)
    for seq, column in ((1, "id"), (2, "email"), (4, "city"), (5, "city"), (6, "id"), (7, "email")):
        assert _shape_of(any_store, seq) == [("public", "customers", column, "read", "clear")]


def test_a_shape_found_in_a_transaction_that_rolled_back_is_not_kept(any_store: Store) -> None:
    """A transaction that added a shape finds it again (its own, uncommitted): an id
    kept from it would name nothing, or the next shape the store numbers so, once
    the transaction rolls back."""
    x, y = _entry(customers("id", "phone")), _entry(customers("city"))

    class Refused(Exception):
        pass

    with pytest.raises(Refused), any_store.tx() as conn:
        stamp = DAY
        access.write_entries(conn, [("s-1", 1, stamp, x)])
        access.write_entries(conn, [("s-1", 2, stamp, x)])  # found: this transaction's own
        raise Refused
    _index(any_store, 1, y)  # may take the id the rolled-back shape had
    _index(any_store, 2, x)
    assert _shape_of(any_store, 1) == [("public", "customers", "city", "read", "clear")]
    assert _shape_of(any_store, 2) == [
        ("public", "customers", "id", "read", "clear"),
        ("public", "customers", "phone", "read", "clear"),
    ]


def test_a_shape_key_that_does_not_match_its_columns_is_found(any_store: Store) -> None:
    """Writers file statements by a shape's key: swapping two shapes' keys would file
    the next statements of one under the other's columns."""
    record_day(any_store)
    s = t.access_shapes.c
    with any_store.tx() as conn:
        (one, k1), (two, k2) = conn.execute(sa.select(s.id, s.key).order_by(s.id).limit(2)).all()
        conn.execute(t.access_shapes.update().where(s.id == one).values(key="x" * 64))
        conn.execute(t.access_shapes.update().where(s.id == two).values(key=k1))
        conn.execute(t.access_shapes.update().where(s.id == one).values(key=k2))
    problems = [(p.session_id, p.seq, p.problem) for p in access.verify_index(any_store)]
    assert problems == [
        ("", None, f"access shape {one}'s key differs from its columns"),
        ("", None, f"access shape {two}'s key differs from its columns"),
    ]
