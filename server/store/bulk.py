"""Many rows into one table in one go, through the driver's own fast path.

SQLAlchemy Core's ``insert()`` with a list of rows compiles the statement and
runs every value of every row through its type's bind processor (a JSON
column's is ``json.dumps``) in Python; for the recorder's writer, which writes
each statement of every session, that is most of its cost, and the broker's
interpreter lock is what the gateway's event loop needs.  Here the values are
handed to the driver as they are, within the caller's transaction:

* PostgreSQL: ``COPY ... FROM STDIN`` on the connection's psycopg connection
  (rows formatted by psycopg's C code; one stream per table);
* SQLite: plain ``INSERT``s of many rows each (``VALUES (...), (...)``, at
  most :data:`SQLITE_ROWS` a statement), through ``Connection.exec_driver_sql``,
  so SQLAlchemy's events and its wrapping of driver errors still apply, without
  its compiling and bind processing.  Not ``executemany``: the driver runs
  each statement as one step, letting go of the interpreter lock for it and
  taking it back after, and ``executemany`` makes each row a statement -- on
  a broker whose event loop is busy, each of those is a hand-over of the lock
  between the threads, which costs both of them more than the row.

So the values must already be what the driver takes for the column: text for
a JSON column (the caller's own serialization, stored as it is -- PostgreSQL's
``json`` keeps the text it is given), a timestamp as :func:`timestamps` makes
it (what SQLAlchemy writes for one on each backend: see :func:`sqlite_time`).  A row the
store refuses raises, as SQLAlchemy would (its exception classes, PostgreSQL's
errors included), and the transaction is the caller's to roll back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import lru_cache
from itertools import chain
from typing import Any, Final

import sqlalchemy as sa

Row = Sequence[Any]

# Rows one SQLite INSERT takes at most: a statement of that many is prepared once
# (the driver keeps it by its text), and keeps under the 999 variables an older
# SQLite allows a statement.
SQLITE_ROWS: Final = 64
_SQLITE_VARIABLES: Final = 999


def sqlite_time(value: datetime) -> str:
    """``value`` as SQLAlchemy's SQLite ``DateTime`` stores it: its own fields, microseconds
    always, no offset (the store's times are UTC; readers make them aware again)."""
    return value.isoformat(" ", "microseconds")[:26]


def timestamps(conn: sa.Connection) -> Callable[[datetime], Any]:
    """What a ``datetime`` is handed to ``conn``'s driver as, for a timestamp column."""
    return _as_is if conn.dialect.name == "postgresql" else sqlite_time


def _as_is(value: datetime) -> datetime:
    return value


def iso_timestamps(conn: sa.Connection) -> Callable[[str], Any]:
    """Like :func:`timestamps`, for a UTC time given as its ISO text with microseconds
    (``datetime.isoformat(timespec="microseconds")`` of an aware UTC time:
    ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``), which PostgreSQL reads as it is."""
    return _iso_as_is if conn.dialect.name == "postgresql" else _sqlite_iso


def _iso_as_is(value: str) -> str:
    return value


def _sqlite_iso(value: str) -> str:
    # The same text as sqlite_time of that time, cut from the ISO text (the offset is +00:00).
    return value[:10] + " " + value[11:26]


def insert(
    conn: sa.Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Row]
) -> None:
    """Insert ``rows`` (values in ``columns``' order) into ``table`` in ``conn``'s transaction."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        _copy(conn, table, columns, rows)
        return
    names = tuple(columns)
    _sqlite_insert(conn, lambda n: _insert_sql(conn.dialect, table, names, n), len(names), rows)


def _sqlite_insert(
    conn: sa.Connection, sql: Callable[[int], str], width: int, rows: Sequence[Row]
) -> None:
    """``rows`` (``width`` values each) by statements of :data:`SQLITE_ROWS` rows (the
    last fewer): ``sql(n)`` is the statement that takes ``n``."""
    per = max(1, min(SQLITE_ROWS, _SQLITE_VARIABLES // max(width, 1)))
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        conn.exec_driver_sql(sql(len(chunk)), tuple(chain.from_iterable(chunk)))


def _copy(
    conn: sa.Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Row]
) -> None:
    prep = conn.dialect.identifier_preparer
    sql = (
        f"COPY {prep.format_table(table)} ({', '.join(prep.quote(c) for c in columns)}) FROM STDIN"
    )
    driver = conn.connection.driver_connection
    assert driver is not None
    dbapi = conn.dialect.loaded_dbapi
    try:
        with driver.cursor() as cur, cur.copy(sql) as copy:
            write = copy.write_row
            for row in rows:
                write(row)
    except dbapi.Error as exc:
        # As SQLAlchemy reports a driver's error (its class for the SQLSTATE), and a
        # connection the error broke is not handed out again.
        invalidated = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
        if invalidated:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            sql,
            None,
            exc,
            dbapi.Error,
            hide_parameters=True,
            connection_invalidated=invalidated,
            dialect=conn.dialect,
        ) from exc


# Kept: a table's statements of SQLITE_ROWS rows and of the last chunk's sizes.
@lru_cache(maxsize=512)
def _insert_sql(dialect: sa.Dialect, table: sa.Table, columns: tuple[str, ...], rows: int) -> str:
    prep = dialect.identifier_preparer
    names = ", ".join(prep.quote(c) for c in columns)
    values = "(" + ", ".join("?" for _ in columns) + ")"
    return f"INSERT INTO {prep.format_table(table)} ({names}) VALUES " + ", ".join([values] * rows)
