"""The row budget through the real tunnel: a scope that may change at most 3 rows
per statement, a table of 10, and psql and psycopg (simple and extended protocol,
transactions, pipelines) trying to change more."""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest

from server.demo.provision import DemoTarget
from tests.fix_broker import Broker, demo_policy, running_broker
from tests.fix_pgwire import RawClient, rows_and_error
from tests.fix_session import HeldSession, held_session

pytestmark = pytest.mark.slow

TABLE = "budget_scratch"
BUDGET = 3
SCOPE = f"""\
      budget:
        grants: [demo_write]
        max_ttl: 1h
        allow:
          groups: [dev]
        guardrails:
          preset: write
          max_rows_by_explain: {BUDGET}
"""


def _policy() -> str:
    return demo_policy(scopes=SCOPE)


@pytest.fixture(scope="module")
def budget_broker(demo_target: DemoTarget) -> Iterator[Broker]:
    with running_broker(demo_target, _policy()) as b:
        yield b


@pytest.fixture
def scratch(admin_conn: psycopg.Connection[tuple[object, ...]]) -> Iterator[None]:
    admin_conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    admin_conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, v text)")
    admin_conn.execute(f"INSERT INTO {TABLE} SELECT g, 'x' || g FROM generate_series(1, 10) g")
    admin_conn.execute(f"ALTER TABLE {TABLE} OWNER TO demo_write")
    # Statistics, so that the planner's estimates are the row counts.
    admin_conn.execute(f"ANALYZE {TABLE}")
    yield
    admin_conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


@pytest.fixture(scope="module")
def held(budget_broker: Broker) -> Iterator[HeldSession]:
    with held_session(budget_broker, "--scope", "budget") as s:
        yield s


@pytest.fixture
def session(held: HeldSession, scratch: None) -> HeldSession:
    return held


def _ids(admin: psycopg.Connection[tuple[object, ...]]) -> list[int]:
    return [int(str(r[0])) for r in admin.execute(f"SELECT id FROM {TABLE} ORDER BY id")]


ALL = list(range(1, 11))


@pytest.mark.parametrize(
    ("sql", "estimate"),
    [
        (f"delete from {TABLE} where id > 0", 10),
        (f"DELETE FROM {TABLE} WHERE v LIKE 'x%'", 10),
        (f"update {TABLE} set v = 'gone' where id >= 5", 6),
        (f"WITH d AS (DELETE FROM {TABLE} WHERE id > 2 RETURNING *) SELECT count(*) FROM d", 8),
        (f"MERGE INTO {TABLE} t USING {TABLE} s ON t.id = s.id WHEN MATCHED THEN DELETE", 10),
    ],
)
def test_over_the_budget_is_refused_and_nothing_changes(
    session: HeldSession,
    admin_conn: psycopg.Connection[tuple[object, ...]],
    sql: str,
    estimate: int,
) -> None:
    res = session.psql(sql)
    assert res.returncode != 0, res.stdout
    assert "guardrails.row_budget" in res.stderr, res.stderr
    # The hint names the planner's estimate (a histogram's guess for a range) and the budget.
    found = re.search(rf"the estimate is (\d+) rows and the budget {BUDGET}\b", res.stderr)
    assert found, res.stderr
    assert abs(int(found.group(1)) - estimate) <= 1
    assert _ids(admin_conn) == ALL
    # The session goes on.
    assert session.psql("select 1").stdout.strip() == "1"


@pytest.mark.parametrize(
    ("sql", "left"),
    [
        (f"delete from {TABLE} where id = 1", ALL[1:]),
        (f"delete from {TABLE} where id <= 3", ALL[3:]),
        (f"update {TABLE} set v = 'new' where id in (4, 5)", ALL),
        (f"delete from {TABLE} where id > 100", ALL),
    ],
)
def test_within_the_budget_runs(
    session: HeldSession,
    admin_conn: psycopg.Connection[tuple[object, ...]],
    sql: str,
    left: list[int],
) -> None:
    res = session.psql(sql)
    assert res.returncode == 0, res.stderr
    assert _ids(admin_conn) == left


def test_explain_analyze_is_refused_not_run(
    session: HeldSession, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    res = session.psql(f"EXPLAIN ANALYZE DELETE FROM {TABLE} WHERE id = 1")
    assert res.returncode != 0
    assert "guardrails.row_budget" in res.stderr and "EXPLAIN failed" in res.stderr, res.stderr
    assert _ids(admin_conn) == ALL


def test_several_statements_in_one_query_are_refused_whole(
    session: HeldSession, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    res = session.psql(f"delete from {TABLE} where id = 1; delete from {TABLE} where id = 2")
    assert res.returncode != 0
    assert "one of several statements" in res.stderr, res.stderr
    assert _ids(admin_conn) == ALL


def test_inside_a_transaction_a_refusal_aborts_it(
    session: HeldSession, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    # psql reading a script sends each statement as a Query of its own.
    script = (
        f"BEGIN;\ndelete from {TABLE} where id = 2;\ndelete from {TABLE} where id > 0;\nCOMMIT;\n"
    )
    res = session.psql_script(script)
    assert "guardrails.row_budget" in res.stderr, res.stderr
    assert _ids(admin_conn) == ALL  # COMMIT of an aborted transaction rolls back
    with psycopg.connect(session.dsn()) as conn:
        conn.execute(f"delete from {TABLE} where id = 2")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"guardrails\.row_budget"):
            conn.execute(f"delete from {TABLE} where id > 0")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        # Within the budget, inside a transaction: runs and commits.
        conn.execute(f"delete from {TABLE} where id = 10")
        conn.commit()
    assert _ids(admin_conn) == ALL[:-1]


def test_extended_protocol_estimates_with_the_bound_parameters(
    session: HeldSession, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    with psycopg.connect(session.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"guardrails\.row_budget"):
            conn.execute(f"delete from {TABLE} where id > %s", (0,))
        assert _ids(admin_conn) == ALL
        # The same statement with another value: 2 rows, within the budget.
        cur = conn.execute(f"delete from {TABLE} where id > %s", (8,))
        assert cur.rowcount == 2
        # Prepared once, bound many times, each Bind estimated.
        for _ in range(3):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"update {TABLE} set v = %s where id < %s", ("y", 8), prepare=True)
        cur = conn.execute(f"update {TABLE} set v = %s where id < %s", ("y", 3), prepare=True)
        assert cur.rowcount == 2
        # Binary parameters too.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"delete from {TABLE} where id > %b", (0,))
    assert _ids(admin_conn) == ALL[:8]


def test_sql_prepared_statements_are_estimated_at_execute(
    session: HeldSession, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    with psycopg.connect(session.dsn(), autocommit=True) as conn:
        conn.execute(f"PREPARE d(int) AS DELETE FROM {TABLE} WHERE id > $1")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"guardrails\.row_budget"):
            conn.execute("EXECUTE d(0)")
        conn.execute("EXECUTE d(9)")
    assert _ids(admin_conn) == ALL[:9]


def test_a_pipeline_with_a_refused_statement_is_discarded_whole(
    session: HeldSession, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    with psycopg.connect(session.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.pipeline():
            conn.execute(f"update {TABLE} set v = %s where id = %s", ("p1", 3))
            conn.execute(f"delete from {TABLE} where id > %s", (0,))
            conn.execute(f"update {TABLE} set v = %s where id = %s", ("p3", 4))
        assert _ids(admin_conn) == ALL
        rows = admin_conn.execute(f"SELECT v FROM {TABLE} WHERE id IN (3, 4) ORDER BY id")
        assert [r[0] for r in rows] == ["x3", "x4"]
        # A pipeline within the budget runs, every statement estimated in turn.
        with conn.pipeline():
            conn.execute(f"delete from {TABLE} where id = %s", (1,))
            conn.execute(f"delete from {TABLE} where id <= %s", (3,))
            cur = conn.execute(f"select count(*) from {TABLE}")
        assert cur.fetchone() == (7,)
    assert _ids(admin_conn) == ALL[3:]


def test_a_raw_pipeline_sees_the_answers_it_expects(
    session: HeldSession, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    """Byte-level: the client gets exactly PostgreSQL's answers to its own messages,
    the refusal in place of the answer to the refused Bind, and nothing of the EXPLAIN."""
    from server.gateway import pgwire

    client = RawClient(session.port, session.database, session.ticket)
    try:
        sql = f"delete from {TABLE} where id > $1"
        client.send(
            pgwire.Parse("d", sql, [23]),
            pgwire.Bind("", "d", [0], [b"9"], []),
            pgwire.Execute("", 0),
            pgwire.Bind("", "d", [0], [b"0"], []),
            pgwire.Execute("", 0),
            pgwire.Sync(),
        )
        got = client.until_ready()
        assert bytes(m.type for m in got) == b"12CEZ"
        _rows, error = rows_and_error(got)
        assert error is not None and "guardrails.row_budget" in error["M"]
        # The first delete ran in the pipeline's implicit transaction, which the
        # refusal rolled back.
        assert _ids(admin_conn) == ALL
        rows, error = client.query(f"select count(*) from {TABLE}")
        assert error is None and rows == [["10"]]
    finally:
        client.close()


def test_blocks_are_audited(session: HeldSession, budget_broker: Broker) -> None:
    res = session.psql(f"delete from {TABLE} where id > 0")
    assert res.returncode != 0
    audit = budget_broker.cli("audit", "--output", "json")
    assert audit.returncode == 0, audit.stderr
    assert "statement.blocked" in audit.stdout and "guardrails.row_budget" in audit.stdout
