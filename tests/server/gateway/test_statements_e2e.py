"""Guardrails in the gateway, as attacks through the real tunnel: psql and psycopg
send what the guardrails refuse, and the database shows that nothing changed."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import psycopg
import pytest

from tests.fix_broker import Broker
from tests.fix_session import HeldSession, held_session

pytestmark = pytest.mark.slow

TABLE = "guard_scratch"


@pytest.fixture
def scratch(admin_conn: psycopg.Connection[tuple[object, ...]]) -> Iterator[None]:
    """A table the write scope's role owns, so only the guardrails stand in the way."""
    admin_conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    admin_conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, v text)")
    admin_conn.execute(f"INSERT INTO {TABLE} SELECT g, 'x' || g FROM generate_series(1, 5) g")
    admin_conn.execute(f"ALTER TABLE {TABLE} OWNER TO demo_write")
    yield
    admin_conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


@pytest.fixture
def write_session(broker: Broker, scratch: None) -> Iterator[HeldSession]:
    with held_session(broker, "--scope", "write") as s:
        yield s


def _rows(admin: psycopg.Connection[tuple[object, ...]]) -> list[tuple[object, ...]]:
    return admin.execute(f"SELECT id, v FROM {TABLE} ORDER BY id").fetchall()


BLOCKED = [
    f"DROP TABLE {TABLE}",
    f"drop /* x */ TABLE public.{TABLE}",
    f'DrOp TaBlE "{TABLE}"',
    f"TRUNCATE {TABLE}",
    f"DELETE FROM {TABLE}",
    f"DELETE FROM {TABLE} WHERE 1=1",
    f"UPDATE {TABLE} SET v = 'gone' WHERE true",
    f"WITH d AS (DELETE FROM {TABLE} RETURNING *) SELECT count(*) FROM d",
    f"EXPLAIN ANALYZE DELETE FROM {TABLE}",
    f"PREPARE p AS DELETE FROM {TABLE}; EXECUTE p",
    f"SELECT 1; UPDATE {TABLE} SET v = 'one'; DELETE FROM {TABLE}",
    "SET ROLE demo_write",
    "SELECT set_config('role', 'demo_write', false)",
    f"COPY {TABLE} TO PROGRAM 'cat > /dev/null'",
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT \"pg_read_file\"('/etc/passwd')",
    "SET client_encoding = 'LATIN1'",
    "set /**/ standard_conforming_strings TO off",
]


@pytest.mark.parametrize("sql", BLOCKED)
def test_blocked_statement_changes_nothing(
    write_session: HeldSession,
    admin_conn: psycopg.Connection[tuple[object, ...]],
    sql: str,
) -> None:
    before = _rows(admin_conn)
    res = write_session.psql(sql)
    assert res.returncode != 0, res.stdout
    assert "dbaccess:" in res.stderr and "guardrails." in res.stderr, res.stderr
    assert _rows(admin_conn) == before
    # The session still works afterwards, with its settings untouched.
    after = write_session.psql("SHOW client_encoding; SHOW standard_conforming_strings")
    assert after.stdout.split() == ["UTF8", "on"], after.stderr


def test_allowed_statements_run(
    write_session: HeldSession, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    res = write_session.psql(f"UPDATE {TABLE} SET v = 'new' WHERE id = 1")
    assert res.returncode == 0, res.stderr
    assert _rows(admin_conn)[0] == (1, "new")


def test_read_scope_blocks_writes(
    broker: Broker, scratch: None, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    with held_session(broker) as s:
        res = s.psql("DELETE FROM customers WHERE id = 1")
        assert res.returncode != 0
        assert "guardrails.block_write" in res.stderr, res.stderr
        assert s.psql("SELECT count(*) FROM customers").stdout.strip() == "300"


def test_block_in_a_transaction_aborts_it_as_postgres_would(
    write_session: HeldSession, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    before = _rows(admin_conn)
    with psycopg.connect(write_session.dsn()) as conn:
        conn.execute(f"UPDATE {TABLE} SET v = 'in-tx' WHERE id = 2")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"guardrails\.no_drop"):
            conn.execute(f"DROP TABLE {TABLE}")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert _rows(admin_conn) == before
    # The same through psql's simple protocol, as one script.
    res = write_session.psql(f"BEGIN; DROP TABLE {TABLE}; SELECT 1; ROLLBACK;")
    assert res.returncode != 0 and "guardrails.no_drop" in res.stderr
    assert _rows(admin_conn) == before


def test_pipeline_discards_until_sync_and_later_pipelines_work(
    write_session: HeldSession, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    before = _rows(admin_conn)
    with psycopg.connect(write_session.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.pipeline():
            conn.execute(f"UPDATE {TABLE} SET v = %s WHERE id = %s", ("p1", 3))
            conn.execute(f"DELETE FROM {TABLE} WHERE id > %s OR true", (0,))
            conn.execute(f"UPDATE {TABLE} SET v = %s WHERE id = %s", ("p3", 4))
        # psycopg ends the pipeline with one Sync: the server discarded everything
        # after the refused Parse, and the statement before it rolled back with it.
        with conn.pipeline():
            cur = conn.execute("SELECT count(*) FROM " + TABLE)
        assert cur.fetchone() == (5,)
        # parameters that name a pinned setting are judged at Bind
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pinned_setting"):
            conn.execute("SELECT set_config(%s, %s, false)", ("client_encoding", "LATIN1"))
        assert conn.execute(
            "SELECT set_config(%s, %s, false)", ("application_name", "x")
        ).fetchone()
    assert _rows(admin_conn)[2:] == before[2:]


REQ = re.compile(r"request (r-[A-Za-z0-9_-]+)")


def test_review_round_trip(
    broker: Broker, scratch: None, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    alice = broker.token("alice", "dev")
    bob = broker.token("bob", "dev")
    ddl = f"ALTER TABLE {TABLE} ADD COLUMN reviewed int"
    with held_session(broker, "--scope", "write", "--reason", "add a column", token=alice) as s:
        res = s.psql(ddl)
        assert res.returncode != 0
        found = REQ.search(res.stderr)
        assert found, res.stderr
        request_id = found.group(1)
        assert f"dbaccess approve {request_id}" in res.stderr
        # Asking again reuses the pending review.
        assert request_id in s.psql(ddl).stderr
        # Self-approval is refused.
        own = broker.cli("approve", request_id, "--yes", token=alice)
        assert own.returncode != 0
        ok = broker.cli("approve", request_id, "--yes", token=bob)
        assert ok.returncode == 0, ok.stderr
        # A changed byte is not approved (and does not use up the approval).
        changed = s.psql(ddl.replace("ADD", "add"))
        assert changed.returncode != 0 and REQ.search(changed.stderr), changed.stderr
        assert REQ.search(changed.stderr).group(1) != request_id  # type: ignore[union-attr]
        # Another identity running the approved text gets no approval from it.
        with held_session(broker, "--scope", "write", token=bob) as other_session:
            theirs = other_session.psql(ddl)
            assert theirs.returncode != 0 and REQ.search(theirs.stderr), theirs.stderr
        # Surrounding whitespace and a trailing semicolon are not part of the text.
        ran = s.psql(ddl + " ;")
        assert ran.returncode == 0, ran.stderr
        cols = [
            r[0]
            for r in admin_conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0",
                (TABLE,),
            )
        ]
        assert "reviewed" in cols
        # Consumed: the same text is held again.
        again = s.psql(ddl)
        assert again.returncode != 0 and REQ.search(again.stderr), again.stderr
    audit = broker.cli("audit", "--identity", "alice", "--output", "json")
    assert audit.returncode == 0, audit.stderr
    for kind in ("statement.review_requested", "statement.approved_used"):
        assert kind in audit.stdout
    # The reviewed statement's access facts name the review it ran under.
    ran_under = broker.cli("audit", "access", "--identity", "alice", "--since", "1h", "-o", "json")
    assert ran_under.returncode == 0, ran_under.stderr
    assert request_id in {r["approval"] for r in json.loads(ran_under.stdout)}


def test_blocks_are_audited_with_secrets_redacted(
    write_session: HeldSession, broker: Broker
) -> None:
    res = write_session.psql("ALTER ROLE CURRENT_USER PASSWORD 'hunter2-secret'")
    assert res.returncode != 0 and "guardrails.no_privilege" in res.stderr, res.stderr
    audit = broker.cli("audit", "--output", "json")
    assert audit.returncode == 0, audit.stderr
    assert "statement.blocked" in audit.stdout
    assert "hunter2-secret" not in audit.stdout


def test_the_same_execute_is_judged_by_what_it_names_each_time(
    write_session: HeldSession,
) -> None:
    """Decisions are kept per statement, but never for EXECUTE: the name may mean
    something else by now, or nothing."""
    with psycopg.connect(write_session.dsn(), autocommit=True) as conn:
        conn.execute("PREPARE p AS SELECT 1", prepare=False)
        assert conn.execute("EXECUTE p", prepare=False).fetchone() == (1,)
        conn.execute("DEALLOCATE p", prepare=False)
        # The same text again: the gateway no longer knows p (not PostgreSQL's
        # "does not exist", which a kept decision would have let through to).
        with pytest.raises(
            psycopg.errors.InsufficientPrivilege, match=r"guardrails\.unknown_prepared"
        ):
            conn.execute("EXECUTE p", prepare=False)
