"""The analysis against PostgreSQL itself: the server must split an input into
the same statements, with the same commands, as ``analyze`` does.

Each input goes to a real server over the simple Query protocol, where one
string may hold several statements; the command tags that come back (one per
statement) are compared with the analysis.  The inputs are the ones where a
reader that lexes differently from PostgreSQL would see another number of
statements: semicolons inside literals, identifiers, dollar quotes, E'' escapes,
nested comments, ``--`` comments ending at a carriage return, and
standard_conforming_strings (on, as the gateway pins it).
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import pq

from server.gateway.sqlcheck import StatementClass, analyze
from server.pgcluster import LocalCluster

# What PostgreSQL's command tag starts with, for commands whose name here differs.
TAGS = {
    "SELECT INTO": "SELECT",
    "VALUES": "SELECT",
    "EXPLAIN ANALYZE": "EXPLAIN",
    "SET ROLE": "SET",
    "RESET ROLE": "RESET",
    "SET SESSION AUTHORIZATION": "SET",
    "RESET SESSION AUTHORIZATION": "RESET",
    "RESET ALL": "RESET",
    "SET TRANSACTION": "SET",
    "SET SESSION CHARACTERISTICS": "SET",
    "ROLLBACK TO SAVEPOINT": "ROLLBACK",
    "CLOSE": "CLOSE CURSOR",
    "TRUNCATE": "TRUNCATE TABLE",
    "DEALLOCATE ALL": "DEALLOCATE ALL",
    "CREATE USER": "CREATE ROLE",
}

INPUTS = [
    "SELECT 1; SELECT 2",
    "SELECT 'a;b'; SELECT 2",
    "SELECT 'a\\'; SELECT 2; --'",
    "SELECT E'a\\'; SELECT 2; --'",
    "SELECT E'a\\\\'; SELECT 2",
    "SELECT 'it''s; fine'; SELECT 2",
    "SELECT $$;$$; SELECT 2",
    "SELECT $a$ $b$ ; $a$; SELECT 2",
    "SELECT $a$ ; $A$ ; $a$",
    "SELECT 1 /* ; */; SELECT 2",
    "SELECT 1 /* /* ; */ ; */; SELECT 2",
    "SELECT 1 -- ;\n; SELECT 2",
    "SELECT 1 --c\r; SELECT 2",
    "SELECT 1 --c\x0c; SELECT 2\n; SELECT 3",
    'SELECT "a;b" FROM (SELECT 1 AS "a;b") s; SELECT 2',
    'SELECT "a"";b" FROM (SELECT 1 AS "a"";b") s',
    "SELECT a$$b FROM (SELECT 1 AS a$$b) s; SELECT 2",
    "SELECT 1;;; SELECT 2;",
    "/* c */ SELECT 1 -- end",
    "SELECT\x0c1;\x0cSELECT\t2",
    "SELECT B'01', X'1F', N'x'; SELECT U&'\\0041'",
    "DELETE FROM t WHERE id = 1; SELECT count(*) FROM t",
    "UPDATE t SET a = 1 WHERE id = -1; INSERT INTO t VALUES (5, 5)",
    "WITH x AS (DELETE FROM t WHERE id = -1 RETURNING *) SELECT count(*) FROM x",
    "EXPLAIN SELECT 'a;b'; SELECT 2",
    "EXPLAIN ANALYZE SELECT 1; SELECT 2",
    "PREPARE p AS SELECT ';'; EXECUTE p; DEALLOCATE p",
    "PREPARE q(int) AS DELETE FROM t WHERE id = $1; DEALLOCATE ALL",
    "DO $$ BEGIN PERFORM 1; END $$; SELECT 1",
    "DO $x$ BEGIN PERFORM ';'; END $x$",
    "SET LOCAL work_mem = '8MB'; SHOW work_mem; RESET work_mem",
    "SET application_name = 'a;b'; RESET ALL",
    "BEGIN; SAVEPOINT s; ROLLBACK TO SAVEPOINT s; RELEASE s; COMMIT",
    "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY; END",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "VALUES (1), (2); TABLE t",
    "SELECT * INTO TEMP x FROM t; DROP TABLE x",
    "CREATE TEMP TABLE y AS SELECT 1 AS z WITH NO DATA; TRUNCATE y; DROP TABLE y",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1; FETCH c; CLOSE c",
    "BEGIN; LOCK TABLE t IN ACCESS SHARE MODE; COMMIT",
    "COMMENT ON TABLE t IS 'a;b'",
    "CREATE TEMP VIEW v AS SELECT ';' AS c; DROP VIEW v",
    "CREATE RULE r AS ON INSERT TO t DO ALSO (SELECT 1; SELECT 2); DROP RULE r ON t",
    "SELECT set_config('application_name', 'x', false); SHOW application_name",
    "NOTIFY ch, 'a;b'; LISTEN ch; UNLISTEN *",
    "CALL sqlcheck_live.noop(';')",
    "SELECT 1 FROM t WHERE a = ANY(ARRAY[1, 2]) AND name LIKE '%;%'",
    "MERGE INTO t USING (VALUES (1)) v(k) ON t.id = v.k WHEN MATCHED THEN UPDATE SET a = 1",
]


SCHEMA = "sqlcheck_live"
SEARCH_PATH = (SCHEMA,)


@pytest.fixture(scope="module")
def server(pg_cluster: LocalCluster) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    # A schema of its own, not temporary tables: a read-only transaction may
    # write temporary tables.
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        conn.execute(f"SET search_path = {SCHEMA}")
        conn.execute("SET standard_conforming_strings = on")
        conn.execute("CREATE TABLE t (id int, a int, x int, name text)")
        conn.execute("INSERT INTO t VALUES (1, 1, 1, 'one'), (2, 2, 2, 'two')")
        conn.execute("CREATE PROCEDURE noop(text) LANGUAGE sql AS 'SELECT 1'")
        try:
            yield conn
        finally:
            if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
                run(conn, "ROLLBACK")
            conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")


@pytest.fixture
def conn(server: psycopg.Connection[tuple[object, ...]]) -> psycopg.Connection[tuple[object, ...]]:
    """The connection, out of any transaction an earlier test left and with the
    search_path the analysis assumes (some inputs RESET ALL)."""
    if server.pgconn.transaction_status != pq.TransactionStatus.IDLE:
        run(server, "ROLLBACK")
    run(server, f"SET search_path = {SCHEMA}")
    return server


def run(conn: psycopg.Connection[tuple[object, ...]], sql: str) -> list[str]:
    """The command tags of one simple Query; fails on an error response."""
    conn.pgconn.send_query(sql.encode("utf-8"))
    tags: list[str] = []
    errors: list[str] = []
    while (result := conn.pgconn.get_result()) is not None:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            errors.append((result.error_message or b"").decode())
        elif result.status != pq.ExecStatus.EMPTY_QUERY:
            tags.append((result.command_status or b"").decode())
    assert not errors, errors
    return tags


@pytest.mark.parametrize("sql", INPUTS)
def test_postgres_splits_and_names_statements_alike(
    conn: psycopg.Connection[tuple[object, ...]], sql: str
) -> None:
    analysis = analyze(sql, search_path=SEARCH_PATH)
    assert not analysis.unknown, [s.reason for s in analysis.statements]
    tags = run(conn, sql)
    assert len(tags) == len(analysis.statements), (tags, [s.command for s in analysis.statements])
    for statement, tag in zip(analysis.statements, tags, strict=True):
        if statement.command == "EXECUTE":
            continue  # the tag is the prepared statement's
        expected = TAGS.get(statement.command, statement.command)
        assert tag == expected or tag.startswith(expected + " "), (statement.command, tag)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1\u00a0; SELECT 2",  # one identifier character to PostgreSQL
        'SELECT U&"\\0061" FROM (SELECT 1 AS a) s',
    ],
)
def test_inputs_read_differently_are_unknown(
    conn: psycopg.Connection[tuple[object, ...]], sql: str
) -> None:
    assert analyze(sql).unknown
    conn.pgconn.send_query(sql.encode("utf-8"))
    statuses = []
    while (result := conn.pgconn.get_result()) is not None:
        statuses.append(result.status)
    # Whatever the server makes of it, the analysis did not guess.
    assert statuses


def test_read_statements_run_in_a_read_only_transaction(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    reads = [
        "SELECT * FROM t",
        "SELECT count(*) FROM t WHERE a > 0",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "VALUES (1)",
        "TABLE t",
        "EXPLAIN DELETE FROM t",
        "SHOW work_mem",
    ]
    for sql in reads:
        analysis = analyze(sql, search_path=SEARCH_PATH)
        assert analysis.statements[0].kind is StatementClass.READ, sql
        run(conn, "BEGIN READ ONLY")
        try:
            run(conn, sql)
        finally:
            run(conn, "ROLLBACK")


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM t FOR UPDATE",
        "SELECT * FROM t FOR KEY SHARE",
        "DELETE FROM t WHERE id = -1",
        "WITH x AS (DELETE FROM t WHERE id = -1 RETURNING 1) SELECT * FROM x",
        "EXPLAIN ANALYZE DELETE FROM t WHERE id = -1",
        "SELECT * INTO u FROM t",
        # LOCK TABLE is a write here although PostgreSQL allows every lock mode
        # in a read-only transaction: an exclusive lock stops everyone else.
    ],
)
def test_write_statements_fail_in_a_read_only_transaction(
    conn: psycopg.Connection[tuple[object, ...]], sql: str
) -> None:
    kind = analyze(sql, search_path=SEARCH_PATH).statements[0].kind
    assert kind in (StatementClass.WRITE, StatementClass.DDL)
    run(conn, "BEGIN READ ONLY")
    conn.pgconn.send_query(sql.encode())
    statuses = []
    while (result := conn.pgconn.get_result()) is not None:
        statuses.append(result.status)
    run(conn, "ROLLBACK")
    assert pq.ExecStatus.FATAL_ERROR in statuses
