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


def test_rows_beyond_one_statement_s_worth_are_all_written(any_store: Store) -> None:
    """SQLite takes them a statement of ``SQLITE_ROWS`` at a time, the last one fewer."""
    count = 2 * bulk.SQLITE_ROWS + 7
    with any_store.tx() as conn:
        stamp = bulk.timestamps(conn)
        rows = [("s-many", n, stamp(WHEN), "statement", f'{{"n":{n}}}') for n in range(count)]
        bulk.insert(conn, t.session_events, EVENT_COLUMNS, rows)
    se = t.session_events.c
    with any_store.tx() as conn:
        got = conn.execute(sa.select(se.seq, se.data).order_by(se.seq)).all()
    assert [(seq, data) for seq, data in got] == [(n, {"n": n}) for n in range(count)]


def test_a_row_refused_in_a_later_statement_leaves_nothing(any_store: Store) -> None:
    count = bulk.SQLITE_ROWS + 3
    with pytest.raises(sa.exc.IntegrityError), any_store.tx() as conn:
        stamp = bulk.timestamps(conn)
        rows = [("s-late", n, stamp(WHEN), "statement", "{}") for n in range(count)]
        rows.append(rows[-1])  # the same key again, in the last statement
        bulk.insert(conn, t.session_events, EVENT_COLUMNS, rows)
    with any_store.tx() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.session_events)).scalar() == 0
