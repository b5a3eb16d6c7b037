"""A Query of several statements where one is refused, through the real gateway,
against what PostgreSQL itself does when that statement fails.

PostgreSQL runs a multi-statement simple Query as one implicit transaction
(unless the text has its own BEGIN/COMMIT): the statements before a failing one
run and their results come back, the failing one gets the error, the rest do
not run, and what the implicit transaction changed is rolled back.  The
gateway runs the statements before a refused one and answers the refused one
with its own error; each scenario here runs once through the gateway and once
straight on the database with the refused statement replaced by one that fails
(``select 1/0``), and the two must show the same rows and leave the same state.
A masked read smuggled after an allowed statement is refused like any other.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import psycopg
import pytest

from server.demo.provision import DemoTarget
from tests.fix_broker import Broker, masked_demo_policy, running_broker
from tests.fix_session import HeldSession, held_session

pytestmark = pytest.mark.slow

TABLE = "several_e2e"
FAILS = "select 1/0"


@pytest.fixture(scope="module")
def table(demo_target: DemoTarget) -> Iterator[str]:
    with psycopg.connect(demo_target.admin_dsn, autocommit=True) as conn:
        conn.execute(f"drop table if exists {TABLE}")
        conn.execute(f"create table {TABLE} (id int primary key, note text)")
        conn.execute(f"grant select on {TABLE} to demo_read")
        conn.execute(f"grant select, insert, update, delete on {TABLE} to demo_write")
    try:
        yield TABLE
    finally:
        with psycopg.connect(demo_target.admin_dsn, autocommit=True) as conn:
            conn.execute(f"drop table if exists {TABLE}")


@pytest.fixture(scope="module")
def masked_broker(demo_target: DemoTarget, table: str) -> Iterator[Broker]:
    with running_broker(demo_target, masked_demo_policy()) as b:
        yield b


@pytest.fixture(scope="module")
def write(masked_broker: Broker) -> Iterator[HeldSession]:
    with held_session(masked_broker, "--scope", "write", "--reason", "tests") as s:
        yield s


@pytest.fixture(scope="module")
def read(masked_broker: Broker) -> Iterator[HeldSession]:
    with held_session(masked_broker, "--scope", "read") as s:
        yield s


def _ids(admin_dsn: str) -> list[int]:
    with psycopg.connect(admin_dsn) as conn:
        return [int(r[0]) for r in conn.execute(f"select id from {TABLE} order by id")]


def _reset(admin_dsn: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f"truncate {TABLE}")


def _direct(admin_dsn: str, text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["psql", "-XAt", "-v", "ON_ERROR_STOP=1", "-c", text, admin_dsn],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def _like_postgres(
    session: HeldSession, admin_dsn: str, text: str, refused: str
) -> tuple[subprocess.CompletedProcess[str], list[int]]:
    """Runs ``text`` through the gateway and, with ``refused`` failing instead,
    straight on the database; both show the same rows and leave the same state."""
    _reset(admin_dsn)
    via = session.psql(text)
    state = _ids(admin_dsn)
    _reset(admin_dsn)
    direct = _direct(admin_dsn, text.replace(refused, FAILS))
    assert direct.returncode != 0, direct.stdout
    assert via.returncode != 0, via.stdout
    assert via.stdout == direct.stdout, (via.stdout, direct.stdout)
    assert state == _ids(admin_dsn)
    return via, state


INSERT = f"insert into {TABLE} values ({{}}, 'x')"
COUNT = f"select count(*) from {TABLE}"
DELETE_ALL = f"delete from {TABLE}"  # guardrails.where_required


@pytest.mark.parametrize(
    ("statements", "state"),
    [
        # The implicit transaction: what ran before the refusal is rolled back.
        ([INSERT.format(1), COUNT, DELETE_ALL, INSERT.format(2)], []),
        # The text's own COMMIT keeps what came before it.
        (["begin", INSERT.format(1), "commit", INSERT.format(2), COUNT, DELETE_ALL,
          INSERT.format(3)], [1]),
        # Inside the text's own transaction: aborted, the COMMIT after never runs.
        (["begin", INSERT.format(1), DELETE_ALL, "commit"], []),
        # The first statement refused: nothing runs.
        ([DELETE_ALL, INSERT.format(1)], []),
    ],
)  # fmt: skip
def test_statements_before_a_refused_one_run_as_postgres_runs_them(
    write: HeldSession, demo_target: DemoTarget, statements: list[str], state: list[int]
) -> None:
    via, after = _like_postgres(write, demo_target.admin_dsn, "; ".join(statements), DELETE_ALL)
    assert "guardrails.where_required" in via.stderr, via.stderr
    assert after == state
    if COUNT in statements[: statements.index(DELETE_ALL)]:
        assert via.stdout.strip().splitlines()[-1].isdigit(), via.stdout


def test_a_statement_that_fails_before_the_refused_one_shows_its_own_error(
    write: HeldSession, demo_target: DemoTarget
) -> None:
    text = "; ".join([INSERT.format(1), INSERT.format(1), DELETE_ALL])
    via, after = _like_postgres(write, demo_target.admin_dsn, text, DELETE_ALL)
    assert "duplicate key value violates unique constraint" in via.stderr, via.stderr
    assert "where_required" not in via.stderr
    assert after == []


def test_the_session_is_left_as_postgres_leaves_it(
    write: HeldSession, demo_target: DemoTarget
) -> None:
    """In the text's own transaction, the refusal aborts it: the next statement
    fails until ROLLBACK, as after any error."""
    text = f"begin; {INSERT.format(1)}; {DELETE_ALL}"
    for dsn, failing in (
        (write.dsn(), text),
        (demo_target.admin_dsn, text.replace(DELETE_ALL, FAILS)),
    ):
        _reset(demo_target.admin_dsn)
        with psycopg.connect(dsn, autocommit=True) as conn, psycopg.ClientCursor(conn) as cur:
            with pytest.raises(psycopg.Error):
                cur.execute(failing)
            assert conn.info.transaction_status is psycopg.pq.TransactionStatus.INERROR
            with pytest.raises(psycopg.errors.InFailedSqlTransaction):
                cur.execute("select 1")
            cur.execute("rollback")
            assert cur.execute(COUNT).fetchone() == (0,)


def test_a_refused_statement_that_needs_review_refuses_the_whole_query(
    write: HeldSession, demo_target: DemoTarget
) -> None:
    """A review is of the whole text: nothing of it runs before it is approved."""
    _reset(demo_target.admin_dsn)
    res = write.psql(f"{INSERT.format(1)}; create table several_e2e_x (a int)")
    assert res.returncode != 0
    assert "held for review" in res.stderr, res.stderr
    assert res.stdout == ""
    assert _ids(demo_target.admin_dsn) == []


def test_a_masked_read_smuggled_after_an_allowed_statement_is_refused(
    read: HeldSession, demo_target: DemoTarget
) -> None:
    with psycopg.connect(demo_target.admin_dsn) as conn:
        row = conn.execute("select city, email from customers where id = 1").fetchone()
    assert row is not None
    city, email = str(row[0]), str(row[1])
    res = read.psql(
        "select city from customers where id = 1; "
        "select lower(email) from customers where id = 1; "
        "select email from customers where id = 1"
    )
    assert res.returncode != 0
    assert res.stdout.strip() == city
    assert "masking.computed" in res.stderr, res.stderr
    for secret in (email, email.lower(), email.split("@")[0]):
        assert secret not in res.stdout + res.stderr
    # The refused statement's own way round: what follows a clear read is still masked.
    res = read.psql(
        "select city from customers where id = 1; select email from customers where id = 1"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [city, "***" + email[email.rfind("@") :]]
