"""Many rows into one table in one go, through the driver's own fast path.

SQLAlchemy Core's ``insert()`` with a list of rows compiles the statement and
runs every value of every row through its type's bind processor (a JSON
column's is ``json.dumps``) in Python; for the recorder's writer, which writes
each statement of every session, that is most of its cost, and the broker's
interpreter lock is what the gateway's event loop needs.  Here the values are
handed to the driver as they are, within the caller's transaction:

* PostgreSQL: ``COPY ... FROM STDIN`` on the connection's psycopg connection
  (rows formatted by psycopg's C code; one stream per table);
* SQLite: one ``executemany`` of a plain ``INSERT`` (through
  ``Connection.exec_driver_sql``, so SQLAlchemy's events and its wrapping of
  driver errors still apply, without its compiling and bind processing).

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
from typing import Any, Final

import sqlalchemy as sa

Row = Sequence[Any]

# SQLite's smallest limit on the parameters of one statement (SQLITE_MAX_VARIABLE_NUMBER
# before 3.32); a multi-row INSERT is cut into statements under it.
_SQLITE_MAX_PARAMS: Final = 999


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
    conn.exec_driver_sql(_insert_sql(conn.dialect, table, tuple(columns)), list(rows))


def insert_keyed(
    conn: sa.Connection,
    table: sa.Table,
    columns: Sequence[str],
    rows: Sequence[Row],
    key: Sequence[str],
) -> dict[tuple[Any, ...], int]:
    """Insert ``rows`` into ``table``, whose ``id`` the store numbers, and tell each new
    row's ``id`` by its values in ``key`` (columns among ``columns`` that are unique
    together)."""
    if not rows:
        return {}
    at = [list(columns).index(k) for k in key]
    if conn.dialect.name == "postgresql":
        # The ids first, from the column's own sequence: COPY returns nothing.
        ids = list(
            conn.exec_driver_sql(
                "SELECT nextval(pg_get_serial_sequence(%(table)s, 'id')) "
                "FROM generate_series(1, %(n)s)",
                {"table": table.name, "n": len(rows)},
            ).scalars()
        )
        _copy(conn, table, ("id", *columns), [(i, *row) for i, row in zip(ids, rows, strict=True)])
        return {tuple(row[a] for a in at): i for i, row in zip(ids, rows, strict=True)}
    # SQLite: multi-row INSERTs that return the new ids with the key (in any order).
    per = max(1, _SQLITE_MAX_PARAMS // len(columns))
    made: dict[tuple[Any, ...], int] = {}
    for start in range(0, len(rows), per):
        chunk = rows[start : start + per]
        sql = _returning_sql(conn.dialect, table, tuple(columns), tuple(key), len(chunk))
        flat = tuple(v for row in chunk for v in row)
        for new_id, *found in conn.exec_driver_sql(sql, flat):
            made[tuple(found)] = new_id
    if len(made) != len(rows) or any(tuple(row[a] for a in at) not in made for row in rows):
        raise sa.exc.InvalidRequestError(
            f"{len(rows)} rows inserted into {table.name}, {len(made)} ids returned by their key"
        )
    return made


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


@lru_cache(maxsize=64)
def _insert_sql(dialect: sa.Dialect, table: sa.Table, columns: tuple[str, ...]) -> str:
    prep = dialect.identifier_preparer
    names = ", ".join(prep.quote(c) for c in columns)
    marks = ", ".join("?" for _ in columns)
    return f"INSERT INTO {prep.format_table(table)} ({names}) VALUES ({marks})"


@lru_cache(maxsize=256)
def _returning_sql(
    dialect: sa.Dialect, table: sa.Table, columns: tuple[str, ...], key: tuple[str, ...], n: int
) -> str:
    prep = dialect.identifier_preparer
    names = ", ".join(prep.quote(c) for c in columns)
    row = "(" + ", ".join("?" for _ in columns) + ")"
    back = ", ".join(prep.quote(c) for c in ("id", *key))
    return (
        f"INSERT INTO {prep.format_table(table)} ({names}) VALUES "
        f"{', '.join([row] * n)} RETURNING {back}"
    )
