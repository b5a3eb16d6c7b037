"""Errors of statements that read masked columns, through the real tunnel: the
server's text is withheld, so a value that a cast, a lookup or a parser quotes
back never reaches the client; the SQLSTATE and the names of what failed do.

The policy allows computing with masked columns (``inference: allow``), so
these statements run and fail on the server: the texts are the last wall.
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


@pytest.fixture(scope="module")
def clear(pg_cluster: LocalCluster, demo_target: DemoTarget) -> tuple[str, str]:
    dsn = pg_cluster.dsn(dbname=demo_target.database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT email, card_number FROM customers WHERE id = 1").fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


@pytest.fixture(scope="module")
def session(demo_target: DemoTarget) -> Iterator[HeldSession]:
    policy = masked_demo_policy("inference: allow")
    with running_broker(demo_target, policy) as b, held_session(b, "--scope", "read") as s:
        yield s


@pytest.mark.parametrize(
    ("sql", "sqlstate"),
    [
        ("select card_number::int from customers where id = 1", "22003"),
        ("select card_number::regclass from customers where id = 1", "42P01"),
        ("select current_setting(email) from customers where id = 1", "42704"),
        ("select convert_to('x', email) from customers where id = 1", "22023"),
        (
            "select has_column_privilege('customers', email, 'select') from customers where id = 1",
            "42703",
        ),
        ("select email::regproc from customers where id = 1", "0A000"),
        ("select email::regtype from customers where id = 1", "42601"),
        ("select ('<' || email)::xml from customers where id = 1", "2200N"),
        ("select translate(email, '.@', 'xx')::jsonb from customers where id = 1", "22P02"),
    ],
)
def test_an_error_of_a_masked_statement_quotes_no_value(
    session: HeldSession, clear: tuple[str, str], sql: str, sqlstate: str
) -> None:
    res = session.psql(sql)
    assert res.returncode != 0, res.stdout
    assert "withheld" in res.stderr and sqlstate in res.stderr, res.stderr
    email, card = clear
    for secret in (email, email.split("@")[0], card, email.replace(".", "x").replace("@", "x")):
        assert secret not in res.stderr, res.stderr


@pytest.fixture(scope="module")
def status(pg_cluster: LocalCluster, demo_target: DemoTarget) -> str:
    dsn = pg_cluster.dsn(dbname=demo_target.database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT status FROM orders WHERE id = 1").fetchone()
    assert row is not None
    return str(row[0])


def test_errors_of_statements_on_clear_tables_keep_their_text(
    session: HeldSession, status: str
) -> None:
    res = session.psql("select status::int from orders where id = 1")
    assert res.returncode != 0
    # The server's own text, the value it quotes included: nothing masked is read.
    assert f'invalid input syntax for type integer: "{status}"' in res.stderr, res.stderr


def test_a_missing_table_is_named(session: HeldSession) -> None:
    res = session.psql("select * from custmers")
    assert res.returncode != 0
    assert 'relation "custmers" does not exist' in res.stderr, res.stderr


def test_in_a_query_of_several_only_the_failing_statement_counts(
    session: HeldSession, clear: tuple[str, str], status: str
) -> None:
    res = session.psql(
        "select email from customers where id = 1; select status::int from orders where id = 1"
    )
    assert res.returncode != 0
    assert f'invalid input syntax for type integer: "{status}"' in res.stderr, res.stderr
    assert clear[0] not in res.stdout + res.stderr
    # The attack the other way round: a masked read smuggled after a clear one.
    res = session.psql(
        "select status from orders where id = 1; select card_number::int from customers "
        "where id = 1"
    )
    assert res.returncode != 0
    assert "withheld" in res.stderr and "22003" in res.stderr, res.stderr
    assert clear[1] not in res.stdout + res.stderr
