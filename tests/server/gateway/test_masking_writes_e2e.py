"""Writes to a table with masked columns, through the real tunnel: an UPDATE
that assigns only clear values runs, and one whose values (or RETURNING, when
another statement consumes it) carry a masked column never runs.

``customers.email`` and ``customers.card_number`` are masked; the session uses
the ``write`` scope.  ``masking_sink`` is a clear table an attacker would copy
masked values into.  Every test checks, as the superuser, what the database
holds afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from server.demo.provision import DemoTarget
from server.pgcluster import LocalCluster
from tests.fix_broker import masked_demo_policy, running_broker
from tests.fix_session import HeldSession, held_session

pytestmark = pytest.mark.slow

SINK = "masking_sink"
ROW = 7  # the customer the tests write to


@pytest.fixture(scope="module")
def superuser(pg_cluster: LocalCluster, demo_target: DemoTarget) -> Iterator[psycopg.Connection]:
    dsn = pg_cluster.dsn(dbname=demo_target.database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {SINK}")
        conn.execute(f"CREATE TABLE {SINK} (v text)")
        conn.execute(f"GRANT SELECT, INSERT ON {SINK} TO demo_write")
        yield conn
        conn.execute(f"DROP TABLE IF EXISTS {SINK}")


@pytest.fixture(scope="module")
def session(demo_target: DemoTarget, superuser: psycopg.Connection) -> Iterator[HeldSession]:
    policy = masked_demo_policy()
    with running_broker(demo_target, policy) as b, held_session(b, "--scope", "write") as s:
        yield s


@pytest.fixture
def customer(superuser: psycopg.Connection) -> Iterator[tuple[str, str, str]]:
    """The clear (city, email, card_number) of the customer, restored afterwards;
    the sink is empty before and checked to be empty of them after."""
    row = superuser.execute(
        "SELECT city, email, card_number FROM customers WHERE id = %s", (ROW,)
    ).fetchone()
    assert row is not None
    superuser.execute(f"DELETE FROM {SINK}")
    yield row
    sink = [v for (v,) in superuser.execute(f"SELECT v FROM {SINK}").fetchall()]
    assert not any(row[1] in (v or "") or row[2] in (v or "") for v in sink), sink
    superuser.execute("UPDATE customers SET city = %s WHERE id = %s", (row[0], ROW))


def _city(superuser: psycopg.Connection) -> str:
    found = superuser.execute("SELECT city FROM customers WHERE id = %s", (ROW,)).fetchone()
    assert found is not None
    return str(found[0])


@pytest.mark.parametrize(
    "sql",
    [
        f"update customers set city = 'Lyon-x' where id = {ROW}",
        f"update customers set city = upper('lyon-x'), full_name = full_name where id = {ROW}",
        f"update customers set city = 'Lyon-x' where id = {ROW} returning id, city",
        # A value from another (clear) relation.
        f"update customers c set city = o.status from orders o "
        f"where o.customer_id = c.id and c.id = {ROW}",
    ],
)
def test_an_update_of_clear_values_runs(
    session: HeldSession,
    superuser: psycopg.Connection,
    customer: tuple[str, str, str],
    sql: str,
) -> None:
    res = session.psql(sql)
    assert res.returncode == 0, res.stderr
    assert _city(superuser) != customer[0]


@pytest.mark.parametrize(
    "sql",
    [
        # The masked value would land in a clear column.
        f"update customers set city = email where id = {ROW}",
        f"update customers set city = substr(card_number, 1, 8) where id = {ROW}",
        f"update customers c set city = c.email where id = {ROW}",
        f"update customers c set city = c::text where id = {ROW}",
        f"update customers set (city, full_name) = (select email, 'x') where id = {ROW}",
        f"update customers set city = 'x' where id = {ROW} returning email",
        f"insert into customers (id, full_name, email, phone, card_number, city) "
        f"select {ROW}, 'n', 'e@x.org', '1', '4000', 'c' "
        f"on conflict (id) do update set city = customers.email",
        # A RETURNING that another statement writes elsewhere.
        f"with d as (update customers set city = 'x' where id = {ROW} returning email) "
        f"insert into {SINK} select email from d",
        f"with d as (delete from customers where id = {ROW} returning card_number) "
        f"insert into {SINK} select card_number from d",
        f"with d as (delete from customers where id = {ROW} returning *) "
        f"insert into {SINK} select d::text from d",
    ],
)
def test_a_write_that_passes_masked_values_on_never_runs(
    session: HeldSession,
    superuser: psycopg.Connection,
    customer: tuple[str, str, str],
    sql: str,
) -> None:
    res = session.psql(sql)
    assert res.returncode != 0, res.stdout
    assert "masking.write_from_masked" in res.stderr, res.stderr
    assert "HINT:" in res.stderr
    assert _city(superuser) == customer[0]
    assert superuser.execute("SELECT count(*) FROM customers WHERE id = %s", (ROW,)).fetchone() == (
        1,
    )


def test_the_planner_statistics_do_not_give_masked_values_away(
    session: HeldSession, superuser: psycopg.Connection
) -> None:
    # After ANALYZE, pg_stats holds most common values and histogram bounds of
    # every column: for a column of distinct e-mails, a sample of them in clear.
    superuser.execute("ANALYZE customers")
    bounds = superuser.execute(
        "SELECT histogram_bounds::text FROM pg_stats "
        "WHERE tablename = 'customers' AND attname = 'email'"
    ).fetchone()
    assert bounds is not None and "@" in str(bounds[0])
    for sql in (
        "select histogram_bounds from pg_stats where tablename = 'customers'",
        "select s.most_common_vals::text from pg_catalog.pg_stats s",
        "with s as (select * from pg_stats) select attname, histogram_bounds from s",
    ):
        res = session.psql(sql)
        assert res.returncode != 0, res.stdout
        assert "masking.statistics" in res.stderr, res.stderr
        assert "@" not in res.stdout
    # Functions that run a query given as text are refused (a guardrail too).
    res = session.psql(
        "select * from ts_stat('select to_tsvector(''simple'', email) from customers')"
    )
    assert res.returncode != 0 and "@" not in res.stdout, res.stdout
