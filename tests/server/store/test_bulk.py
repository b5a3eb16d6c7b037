"""Rows through the driver's fast path, on SQLite and PostgreSQL: read back as SQLAlchemy's own."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from server.store import bulk
from server.store import tables as t
from server.store.db import Store, _aware

WHEN = datetime(2026, 12, 7, 3, 4, 5, 678901, tzinfo=UTC)
EVENT_COLUMNS = ("session_id", "seq", "ts", "kind", "data")
ACCESS_COLUMNS = (
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
)


@pytest.mark.parametrize(
    "value",
    [
        WHEN,
        WHEN.replace(microsecond=0),
        datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5),  # naive
        datetime(1, 1, 1, tzinfo=UTC),
    ],
)
def test_a_time_is_stored_on_sqlite_as_sqlalchemy_stores_it(value: datetime) -> None:
    dialect = sqlite.dialect()
    process = sa.DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    assert bulk.sqlite_time(value) == process(value)
    if value.tzinfo is not None:  # the same time as its ISO text, as the recorder has it
        with sa.create_engine("sqlite://").connect() as conn:
            stamp = bulk.iso_timestamps(conn)
            assert stamp(value.isoformat(timespec="microseconds")) == process(value)


def test_rows_read_back_as_those_sqlalchemy_wrote(any_store: Store) -> None:
    data = {"text": "select 'é', \"x\"\n\t\\", "rows": 3, "nested": {"b": [1.5, None, True]}}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    with any_store.tx() as conn:
        conn.execute(
            t.session_events.insert(),
            [{"session_id": "s-orm", "seq": 1, "ts": WHEN, "kind": "statement", "data": data}],
        )
        stamp = bulk.timestamps(conn)
        bulk.insert(conn, t.session_events, EVENT_COLUMNS, [])  # nothing: no statement
        bulk.insert(
            conn,
            t.session_events,
            EVENT_COLUMNS,
            [
                ("s-fast", seq, stamp(WHEN + timedelta(seconds=seq - 1)), "statement", text)
                for seq in (1, 2)
            ],
        )
    se = t.session_events.c
    with any_store.tx() as conn:
        rows = {
            (r.session_id, r.seq): r
            for r in conn.execute(sa.select(t.session_events).order_by(se.session_id, se.seq))
        }
        texts = dict(
            conn.execute(
                sa.select(se.seq, sa.cast(se.data, sa.Text)).where(se.session_id == "s-fast")
            ).all()
        )
    orm, fast = rows[("s-orm", 1)], rows[("s-fast", 1)]
    assert fast.data == orm.data == data
    assert _aware(fast.ts) == _aware(orm.ts) == WHEN
    assert _aware(rows[("s-fast", 2)].ts) == WHEN + timedelta(seconds=1)
    # The very text given is what the store keeps.
    assert texts == {1: text, 2: text}
    # Times compare in SQL as SQLAlchemy's own do (SQLite compares their text).
    with any_store.tx() as conn:
        later = conn.execute(
            sa.select(sa.func.count()).where(se.ts > WHEN, se.session_id == "s-fast")
        ).scalar()
    assert later == 1


def _access_row(session_id: str, seq: int, when: datetime) -> tuple[object, ...]:
    return (
        session_id,
        seq,
        when,
        "prod",
        "alice",
        "user",
        None,
        "SELECT",
        seq,
        "allowed",
        None,
        None,
    )


def test_each_new_row_is_told_its_id_by_its_key(any_store: Store) -> None:
    # More rows than one SQLite statement takes parameters for.
    wanted = [(f"s-{n % 3}", n, WHEN) for n in range(1, 201)]
    with any_store.tx() as conn:
        stamp = bulk.timestamps(conn)
        ids = bulk.insert_keyed(
            conn,
            t.access_events,
            ACCESS_COLUMNS,
            [_access_row(s, n, stamp(w)) for s, n, w in wanted],
            key=("session_id", "seq"),
        )
    c = t.access_events.c
    with any_store.tx() as conn:
        stored = {
            (r.session_id, r.seq): (r.id, r.rows)
            for r in conn.execute(sa.select(c.id, c.session_id, c.seq, c.rows))
        }
    assert len(ids) == len(stored) == 200
    assert {key: (i, key[1]) for key, i in ids.items()} == stored
    assert bulk.insert_keyed(conn, t.access_events, ACCESS_COLUMNS, [], key=("seq",)) == {}


def test_a_row_the_store_refuses_raises_and_nothing_of_the_transaction_stays(
    any_store: Store,
) -> None:
    with pytest.raises(sa.exc.IntegrityError), any_store.tx() as conn:
        stamp = bulk.timestamps(conn)
        rows = [("s-dup", 1, stamp(WHEN), "statement", "{}")]
        bulk.insert(conn, t.session_events, EVENT_COLUMNS, rows)
        bulk.insert(conn, t.session_events, EVENT_COLUMNS, rows)  # the same key again
    with any_store.tx() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.session_events)).scalar() == 0
        # The connection it happened on is usable again.
        bulk.insert(conn, t.session_events, EVENT_COLUMNS, [("s-ok", 1, stamp(WHEN), "x", "{}")])
    with any_store.tx() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.session_events)).scalar() == 1
