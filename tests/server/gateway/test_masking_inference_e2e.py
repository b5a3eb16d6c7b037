"""The inference channel, through the real tunnel: a statement that filters,
joins, groups or sorts on a masked column is refused before it runs, since its
result tells what the masked values are (``where email like 'a%'`` returns the
rows whose clear e-mail starts with ``a``)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from server.demo.provision import DemoTarget
from tests.fix_broker import demo_policy, running_broker
from tests.fix_session import HeldSession, held_session

pytestmark = pytest.mark.slow

MASKING = """\
    masking:
      rules:
        - column: public.customers.email
          method: partial
          keep: domain
"""


def _policy() -> str:
    return demo_policy(target=MASKING)


@pytest.fixture(scope="module")
def session(demo_target: DemoTarget) -> Iterator[HeldSession]:
    with running_broker(demo_target, _policy()) as b, held_session(b, "--scope", "read") as s:
        yield s


@pytest.mark.parametrize(
    "sql",
    [
        "select id from customers where email like 'a%'",
        "select id from customers where email between 'a' and 'b'",
        "select id from customers order by email limit 1",
        "select id, email from customers order by 2 limit 1",
        "select distinct on (email) id from customers",
        "select c.id from customers c join customers d on c.email = d.email and c.id <> d.id",
        "select id from customers where id in (select id from customers where email > 'm')",
        "select id from customers c where c::text like '%@%'",
    ],
)
def test_predicates_on_masked_columns_are_refused(session: HeldSession, sql: str) -> None:
    res = session.psql(sql)
    assert res.returncode != 0, res.stdout
    assert "masking.inference" in res.stderr, res.stderr
    assert "statement review" in res.stderr
    assert res.stdout == ""


def test_parameters_do_not_get_around_it(session: HeldSession) -> None:
    with psycopg.connect(session.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"masking\.inference"):
            conn.execute("select id from customers where email = %s", ("ada@example.com",))
        rows = conn.execute("select id, email from customers where id = %s", (1,)).fetchall()
        assert len(rows) == 1 and str(rows[0][1]).startswith("***@")


def test_clear_columns_filter_and_sort_as_usual(session: HeldSession) -> None:
    res = session.psql("select email from customers where city is not null order by id limit 2")
    assert res.returncode == 0, res.stderr
    assert all(line.startswith("***@") for line in res.stdout.splitlines())
