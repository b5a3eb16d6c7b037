"""The inference channel, through the real tunnel: a statement that filters,
joins, groups or sorts on a masked column is refused before it runs, since its
result tells what the masked values are (``where email like 'a%'`` returns the
rows whose clear e-mail starts with ``a``)."""

from __future__ import annotations

import re
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


REQUEST = re.compile(r"request (r-[A-Za-z0-9_-]+)")


def test_inference_review_runs_the_statement_once_a_reviewer_approved_it(
    demo_target: DemoTarget,
) -> None:
    policy = demo_policy(target=MASKING + "      inference: review\n")
    sql = "select id, email from customers where email like 'a%' order by id limit 3"
    with running_broker(demo_target, policy) as b:
        alice, bob = b.token("alice", "dev"), b.token("bob", "dev")
        with held_session(b, "--scope", "read", "--reason", "find a-users", token=alice) as s:
            held = s.psql(sql)
            assert held.returncode != 0, held.stdout
            assert "masking.inference" in held.stderr, held.stderr
            found = REQUEST.search(held.stderr)
            assert found, held.stderr
            request_id = found.group(1)
            # Nobody approves their own.
            assert b.cli("approve", request_id, "--yes", token=alice).returncode != 0
            assert s.psql(sql).returncode != 0
            approved = b.cli("approve", request_id, "--yes", token=bob)
            assert approved.returncode == 0, approved.stderr
            ran = s.psql(sql)
            assert ran.returncode == 0, ran.stderr
            rows = [line.split("|") for line in ran.stdout.splitlines()]
            assert rows, ran.stdout
            # The approval lets the predicate run; the result is still masked.
            assert all(email.startswith("***@") for _id, email in rows), rows
            # One run per approval.
            assert REQUEST.search(s.psql(sql).stderr)
