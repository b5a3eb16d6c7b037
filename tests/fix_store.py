"""A broker store on each backend the product supports.

``sqlite_store`` is the embedded default alone (a file in the test's temp dir,
``store.db``); ``any_store`` is parametrized: the embedded SQLite default and
PostgreSQL (a fresh database on the test run's cluster, as several broker
replicas would share).  Both go through the same Alembic migrations in
``Store.open``; ``any_store``'s each with a fresh store key (``new_keys``).
``insert_events`` stores session events as a recording holds them (tests that
script a day of statements without a gateway).  ``found_in_clear`` reads every
column of every table as someone with a copy of the store would, looking for
secrets that must not be there.
``broker_store_url`` is the same choice for a module's broker process
(``running_broker(..., store_url=...)``): None for its own SQLite file, or the
URL of a fresh PostgreSQL database, dropped afterwards.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql

from server.audit.recording import SessionEvent
from server.pgcluster import LocalCluster
from server.store import tables as t
from server.store.db import Store
from server.store.sealing import StoreKey, StoreKeys


def new_keys(key_id: str = "t1") -> StoreKeys:
    """A key file's keys held in memory: one fresh key named ``key_id``."""
    return StoreKeys([StoreKey(key_id, secrets.token_bytes(32))], f"test keys {key_id}")


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    """The embedded default alone: a SQLite file, ``store.db`` in the test's temp dir."""
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        yield store
    finally:
        store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        store = Store.open(f"sqlite:///{tmp_path / 'store.db'}", new_keys())
        try:
            yield store
        finally:
            store.close()
        return
    cluster: LocalCluster = request.getfixturevalue("pg_cluster")
    with pg_store_url(cluster) as url:
        store = Store.open(url, new_keys())
        try:
            yield store
        finally:
            store.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def broker_store_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    with pg_store_url(request.getfixturevalue("pg_cluster")) as url:
        yield url


@contextmanager
def pg_store_url(cluster: LocalCluster) -> Iterator[str]:
    """The store URL of a fresh database on ``cluster``, dropped afterwards."""
    name = f"store_{secrets.token_hex(4)}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield cluster.dsn(dbname=name).replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def raw_texts(store: Store) -> Iterator[tuple[str, str, str]]:
    """Every value of every column of every table, as text: (table, column, text)."""
    with store.engine.connect() as conn:
        for name in sa.inspect(conn).get_table_names():
            table = sa.Table(name, sa.MetaData(), autoload_with=conn)
            for row in conn.execute(table.select()):
                for column, value in row._mapping.items():
                    if value is None:
                        continue
                    if isinstance(value, bytes):
                        text = value.decode("latin-1")
                    elif isinstance(value, (dict, list)):
                        text = json.dumps(value)
                    else:
                        text = str(value)
                    yield name, str(column), text


def found_in_clear(store: Store, *secrets: str) -> list[str]:
    return [
        f"{table}.{column}"
        for table, column, text in raw_texts(store)
        for secret in secrets
        if secret in text
    ]


def insert_events(conn: sa.Connection, events: Iterable[SessionEvent]) -> None:
    """Store ``events`` in ``session_events``, in the caller's transaction."""
    conn.execute(
        t.session_events.insert(),
        [
            {"session_id": e.session_id, "seq": e.seq, "ts": e.ts, "kind": e.kind, "data": e.data}
            for e in events
        ],
    )
