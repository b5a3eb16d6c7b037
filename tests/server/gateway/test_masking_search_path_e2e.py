"""Masking resolves table names with the session's pinned search_path.

``app.people.ssn`` is masked; ``public.people`` has the same columns and none
masked.  A session that starts with ``search_path = app, public`` reads
``app.people`` when it writes ``people``: an expression over its ``ssn`` must be
refused, as the same expression over ``public.people`` (the default path's
``people``) is not.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from server.demo.provision import DemoTarget
from server.pgcluster import LocalCluster
from tests.fix_broker import demo_policy, running_broker
from tests.fix_pgwire import RawClient
from tests.fix_session import HeldSession, held_session

pytestmark = pytest.mark.slow

MASKING = """\
    masking:
      rules:
        - column: app.people.ssn
          method: redact
      # Computing with masked columns is allowed: these tests are about which
      # table the lineage masks by (test_masking_guard has the refusals).
      inference: allow
"""
SECRET = "123-45-6789"
PUBLIC_SSN = "000-00-0000"


def _policy() -> str:
    return demo_policy(target=MASKING)


@pytest.fixture(scope="module")
def tables(pg_cluster: LocalCluster, demo_target: DemoTarget) -> Iterator[None]:
    dsn = pg_cluster.dsn(dbname=demo_target.database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS app CASCADE")
        conn.execute("DROP TABLE IF EXISTS public.people")
        conn.execute("CREATE SCHEMA app")
        conn.execute("GRANT USAGE ON SCHEMA app TO demo_read")
        for schema, ssn in (("app", SECRET), ("public", PUBLIC_SSN)):
            conn.execute(f"CREATE TABLE {schema}.people (id int PRIMARY KEY, name text, ssn text)")
            conn.execute(f"INSERT INTO {schema}.people VALUES (1, 'Ann', '{ssn}')")
            conn.execute(f"GRANT SELECT ON {schema}.people TO demo_read")
    yield
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS app CASCADE")
        conn.execute("DROP TABLE IF EXISTS public.people")


@pytest.fixture(scope="module")
def session(demo_target: DemoTarget, tables: None) -> Iterator[HeldSession]:
    with running_broker(demo_target, _policy()) as b, held_session(b, "--scope", "read") as s:
        yield s


@pytest.fixture
def app_first(session: HeldSession) -> Iterator[RawClient]:
    client = RawClient(session.port, session.database, session.ticket, search_path="app, public")
    try:
        yield client
    finally:
        client.close()


def _refused(client: RawClient, sql: str) -> None:
    rows, error = client.query(sql)
    assert error is not None, rows
    assert error["C"] == "42501", error
    assert SECRET not in repr(rows) + repr(error)
    # The connection keeps working.
    assert client.query("SELECT 1")[0] == [["1"]]


@pytest.mark.parametrize(
    "sql",
    [
        "select upper(ssn) from people",
        "select ssn || '' from people",
        "select (select ssn from people limit 1)",
        "select row_to_json(p) from people p",
        # Written once with a schema and once without: both tables are read.
        "select upper(p.ssn) from public.people a, people p",
        "select upper(p.ssn) from people a join app.people p using (id)",
    ],
)
def test_expressions_over_the_path_s_masked_table_are_masked(
    app_first: RawClient, sql: str
) -> None:
    rows, error = app_first.query(sql)
    assert error is None, error
    assert rows == [["***"]]


def test_what_the_lineage_cannot_establish_is_refused(app_first: RawClient) -> None:
    _refused(
        app_first,
        "with recursive r(s) as (select ssn from people union all select s from r where false) "
        "select upper(s) from r",
    )


def test_plain_masked_columns_are_masked(app_first: RawClient) -> None:
    rows, error = app_first.query("select id, name, ssn from people")
    assert error is None, error
    assert rows == [["1", "Ann", "***"]]
    rows, error = app_first.query("SHOW search_path")
    assert rows == [["app, public"]]


def test_the_default_path_reads_public_without_spurious_blocks(session: HeldSession) -> None:
    res = session.psql("select upper(ssn), name || '!' from people")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{PUBLIC_SSN.upper()}|Ann!"
    res = session.psql("select upper(ssn) from app.people")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "***"


def test_a_public_first_path_reads_public(session: HeldSession) -> None:
    client = RawClient(session.port, session.database, session.ticket, search_path="public, app")
    try:
        rows, error = client.query("select upper(ssn) from people")
        assert error is None and rows == [[PUBLIC_SSN]]
    finally:
        client.close()
