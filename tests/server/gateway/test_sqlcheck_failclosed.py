"""Fail-closed analysis: what ``analyze`` does not understand is UNKNOWN, with a reason.

Also the record of sqlglot's misreadings of PostgreSQL found while building the
analysis, each with what ``analyze`` makes of the statement, and the budgets
that keep hostile input from crashing or stalling the gateway.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.gateway.sqlcheck import StatementClass, analyze, cache_clear, classify
from tests.server.gateway.test_sqlcheck import summary

ROOT = Path(__file__).resolve().parents[3]


def _only_unknown(sql: str, **kwargs: object) -> str:
    statements = analyze(sql, **kwargs).statements  # type: ignore[arg-type]
    assert len(statements) == 1
    assert statements[0].kind is StatementClass.UNKNOWN
    assert statements[0].command == ""
    return statements[0].reason


# (statement, part of the reason)
NOT_UNDERSTOOD = [
    # Not PostgreSQL, or not a statement the grammar here accepts.
    ("SELEC 1", "unrecognised statement SELEC"),
    ("FOO BAR", "unrecognised statement FOO"),
    ("42", "statement starts with '42'"),
    ("'DROP TABLE x'", "statement starts with"),
    ('"DROP" TABLE x', "statement starts with 'DROP'"),
    ('"SELECT" 1', "statement starts with 'SELECT'"),
    ('DROP "TABLE" x', "unrecognised object type"),
    ("CREATE BOGUS THING x", "unrecognised object type 'BOGUS'"),
    ("ALTER BOGUS x", "unrecognised object type 'BOGUS'"),
    ("DROP BOGUS x", "unrecognised object type 'BOGUS'"),
    ("EXPLAIN DROP TABLE t", "'DROP' cannot start a statement here"),
    ("EXPLAIN PREPARE p AS SELECT 1", "'PREPARE' cannot start a statement here"),
    ("EXPLAIN COPY t TO STDOUT", "'COPY' cannot start a statement here"),
    ("EXPLAIN SELEC 1", "'SELEC' cannot start a statement here"),
    ("EXPLAIN", "statement ends too early"),
    ("PREPARE p AS DROP TABLE t", "'DROP' cannot start a statement here"),
    ("PREPARE p AS EXECUTE q", "'EXECUTE' cannot start a statement here"),
    ("PREPARE p AS COPY t TO STDOUT", "'COPY' cannot start a statement here"),
    ("PREPARE p AS SELEC 1", "'SELEC' cannot start a statement here"),
    ("PREPARE p AS SELECT 1 +", "cannot parse"),
    ("PREPARE p SELECT 1", "expected AS"),
    ("PREPARE", "statement ends too early"),
    ("EXECUTE p 1", "EXECUTE arguments not understood"),
    ("EXECUTE p(1) 2", "unexpected '2'"),
    ("EXECUTE", "statement ends too early"),
    ("DEALLOCATE p q", "unexpected 'q'"),
    ("DECLARE c CURSOR FOR DELETE FROM t RETURNING *", "'DELETE' cannot start a statement here"),
    ("DECLARE c CURSOR FOR INSERT INTO t VALUES (1)", "'INSERT' cannot start a statement here"),
    ("DECLARE c FOR SELECT 1", "expected BINARY"),
    ("FETCH (1) c", "FETCH not understood"),
    ("COPY (SELECT 1) FROM STDIN", "COPY (query) FROM"),
    ("COPY (DROP TABLE t) TO STDOUT", "'DROP' cannot start a statement here"),
    ("COPY t FROM STDIN WITH (format f(1))", "COPY options not understood"),
    ("COPY t FROM somewhere", "COPY source or destination not understood"),
    ("COPY t FROM PROGRAM STDIN", "COPY source or destination not understood"),
    ("COPY t TO STDOUT WHERE a > 0", "COPY TO with WHERE"),
    ("COPY t", "expected FROM or TO"),
    ("DO", "DO without code"),
    ("DO 1", "DO not understood"),
    ("DO $$a$$ $$b$$", "DO not understood"),
    ("CALL", "CALL not understood"),
    ("CALL 1", "CALL not understood"),
    ("LISTEN ch, x", "unexpected ','"),
    ("NOTIFY ch, 1", "expected a string"),
    ("UNLISTEN", "statement ends too early"),
    ("SET x = f(1)", "unexpected '(' in a setting value"),
    ("SET x = (SELECT 1)", "unexpected '(' in a setting value"),
    ("SET search_path = pg_read_file('x')", "unexpected '(' in a setting value"),
    ("SET x", "SET without TO or ="),
    ("SET", "statement ends too early"),
    ("SET TRANSACTION ISOLATION LEVEL bogus", "isolation level not understood"),
    ("SET TRANSACTION bogus", "transaction mode not understood"),
    ("SET SESSION CHARACTERISTICS TRANSACTION READ ONLY", "expected AS"),
    ("RESET", "statement ends too early"),
    ("RESET a b", "unexpected 'b'"),
    ("RESET ALL x", "unexpected 'x'"),
    ("SHOW f(1)", "unexpected '(' in a setting value"),
    ("DISCARD everything", "expected ALL or PLANS"),
    ("START", "expected TRANSACTION"),
    ("COMMIT extra", "unexpected 'extra'"),
    ("COMMIT AND", "expected CHAIN"),
    ("SAVEPOINT", "statement ends too early"),
    ("PREPARE TRANSACTION x", "expected a string"),
    ("LOAD 'x' y", "unexpected 'y'"),
    ("LOAD x", "expected a string"),
    ("REFRESH MATERIALIZED VIEW s.mv extra", "unexpected 'extra'"),
    ("REFRESH VIEW v", "expected MATERIALIZED"),
    ("LOCK TABLE t IN ACCESS EXCLUSIVE", "statement ends too early"),
    ("IMPORT SCHEMA s", "expected FOREIGN"),
    # Queries and DML whose tree sqlglot cannot build or builds wrong.
    ("SELECT 1 +", "cannot parse"),
    ("SELECT * FROM", "cannot parse"),
    ("SELECT (1; SELECT 2)", "cannot parse"),
    ("SELECT 10 % 3, @ -5", "cannot parse"),  # sqlglot: no prefix @ (absolute value)
    ("SELECT * FROM t WHERE a ~>=~ b", "cannot parse"),  # sqlglot: text pattern operators
    ("SELECT * FROM t ORDER BY a USING <", "cannot parse"),  # sqlglot: ORDER BY ... USING
    ("SELECT * FROM t WHERE id = 1_000", "cannot parse"),  # sqlglot: digit separators
    ("INSERT INTO t VALUES (1) RETURNING", "cannot parse"),
    # DDL that sqlglot falls back to a Command for, where the body can hold a
    # query that runs now: never classified by its leading words alone.
    ("CREATE TABLE t (a int) PARTITION OF", "CREATE TABLE not understood"),
    ("CREATE TABLE", "CREATE TABLE not understood"),
    ("CREATE TABLE x AS SELEC 1", "CREATE TABLE not understood (parsed as Command)"),
    ("CREATE TABLE x AS SELECT 1 +", "cannot parse"),
    # PostgreSQL ends BEGIN ATOMIC bodies at END, not at their semicolons.
    (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1",
        "BEGIN ATOMIC function bodies are not supported",
    ),
    # A data-modifying statement or EXECUTE that the tree lost.
    ("SELECT * FROM t WHERE x IN (EXECUTE p)", "cannot parse"),
]


@pytest.mark.parametrize(("sql", "reason"), NOT_UNDERSTOOD)
def test_not_understood(sql: str, reason: str) -> None:
    assert reason in _only_unknown(sql)


def test_begin_atomic_body_blocks_the_whole_input() -> None:
    sql = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC DELETE FROM t; SELECT 1; END"
    assert summary(sql) == ("unknown ; read SELECT ; transaction COMMIT")


# (statement, what sqlglot does with it, what analyze reports)
SQLGLOT_MISREADINGS = [
    # sqlglot's tokenizer swallows the rest of a statement after these keywords as
    # one string, ending it at the next semicolon even inside a literal.
    (
        "EXPLAIN SELECT 'a;b'; SELECT 2",
        "swallowed",
        "read EXPLAIN {read SELECT E=never} ; read SELECT",
    ),
    ("CALL p('a;b')", "swallowed", "utility CALL F=p X=opaque"),
    ("LOCK TABLE t", "swallowed", "write LOCK TABLE W=public.t X=row_lock"),
    ("FETCH 10 FROM c", "swallowed", "read FETCH"),
    ("SHOW search_path", "swallowed", "read SHOW"),
    ("EXECUTE p('a;b')", "swallowed", "utility EXECUTE P=p"),
    ("PREPARE p AS SELECT ';'", "swallowed", "utility PREPARE P=p {read SELECT E=later}"),
    # Statements sqlglot reads as a column or an alias.
    ("SAVEPOINT a", "Alias(SAVEPOINT AS a)", "transaction SAVEPOINT"),
    ("LISTEN ch", "Alias(LISTEN AS ch)", "utility LISTEN X=listen"),
    ("DEALLOCATE p", "Alias(DEALLOCATE AS p)", "utility DEALLOCATE P=p"),
    ("DEALLOCATE ALL", "Alias(DEALLOCATE AS ALL)", "utility DEALLOCATE ALL"),
    ("CLUSTER t", "Alias(CLUSTER AS t)", "utility CLUSTER"),
    ("CLOSE c", "Alias(CLOSE AS c)", "utility CLOSE"),
    ("MOVE c", "Alias(MOVE AS c)", "read MOVE"),
    ("DISCARD ALL", "Alias(DISCARD AS ALL)", "session_state DISCARD ALL S=all"),
    ("CHECKPOINT", "Column(CHECKPOINT)", "utility CHECKPOINT"),
    # Statements sqlglot cannot parse at all.
    (
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "ParseError",
        "transaction START TRANSACTION S=transaction_isolation",
    ),
    ("RELEASE SAVEPOINT a", "ParseError", "transaction RELEASE"),
    ("NOTIFY ch, 'x'", "ParseError", "utility NOTIFY X=notify"),
    ("UNLISTEN *", "ParseError", "utility UNLISTEN"),
    ("REASSIGN OWNED BY a TO b", "ParseError", "privilege REASSIGN OWNED"),
    ("SECURITY LABEL ON TABLE t IS 'x'", "ParseError", "privilege SECURITY LABEL"),
    (
        "IMPORT FOREIGN SCHEMA s FROM SERVER x INTO y",
        "ParseError",
        "ddl IMPORT FOREIGN SCHEMA X=foreign",
    ),
    ("UPDATE t SET a = 1 WHERE CURRENT OF c", "ParseError", "write UPDATE W=public.t where=yes"),
    ("DELETE FROM t WHERE CURRENT OF c", "ParseError", "write DELETE W=public.t where=yes"),
    # Statements sqlglot keeps only as a Command.
    ("SET ROLE postgres", "Command", "privilege SET ROLE S=role"),
    ("SET search_path = a, b", "Command", "session_state SET S=search_path"),
    ("RESET ALL", "Command", "session_state RESET ALL S=all"),
    (
        "EXPLAIN ANALYZE DELETE FROM t WHERE id = 1",
        "Command",
        ("write EXPLAIN ANALYZE W=public.t {write DELETE W=public.t where=yes}"),
    ),
    (
        "PREPARE p AS DELETE FROM t WHERE id = $1",
        "Command",
        ("utility PREPARE P=p {write DELETE W=public.t where=yes E=later}"),
    ),
    ("DO $$ BEGIN END $$", "Command", "utility DO X=code,opaque"),
    ("CALL p(1)", "Command", "utility CALL F=p X=opaque"),
    ("VACUUM t", "Command", "utility VACUUM"),
    ("GRANT demo_write TO bob", "Command", "privilege GRANT"),
    ("CREATE ROLE bob", "Command", "privilege CREATE ROLE X=unparsed"),
    ("ALTER SYSTEM SET work_mem = '1GB'", "Command", "ddl ALTER SYSTEM X=unparsed"),
    ("CREATE EXTENSION dblink", "Command", "ddl CREATE EXTENSION X=code,foreign,unparsed"),
    ("ALTER TABLE t OWNER TO bob", "Command", "ddl ALTER TABLE W=public.t X=unparsed"),
    (
        "CREATE MATERIALIZED VIEW mv AS SELECT * FROM t",
        "Command",
        ("ddl CREATE MATERIALIZED VIEW R=public.t W=public.mv {read SELECT R=public.t}"),
    ),
    # Trees that say something else than PostgreSQL would do.
    (
        "CREATE TABLE x AS EXECUTE p",
        "ExecuteAsProperty",
        "ddl CREATE TABLE W=public.x {utility EXECUTE P=p}",
    ),
    (
        "COPY t FROM PROGRAM 'rm -rf /'",
        "COPY t FROM PROGRAM WITH (rm -rf /)",
        "write COPY W=public.t C=from:program",
    ),
    ('SELECT "Upper"(x)', "Upper(x): the quoted name folded", 'read SELECT F="Upper"'),
    ("SELECT now()", "CurrentTimestamp", "read SELECT F=now"),
    ("SELECT to_char(now(), 'YYYY')", "TimeToStr", "read SELECT F=to_char,now"),
    ("TRUNCATE a *", "the * dropped (harmless)", "write TRUNCATE W=public.a"),
    ("SELECT 'a' 'b'", "accepted; PostgreSQL needs a newline between", "read SELECT"),
    ("SELECT 0x1F", "a hex string; PostgreSQL 16 reads an integer", "read SELECT"),
    ("SELECT 1_000", "1 AS _000; PostgreSQL 16 reads 1000", "read SELECT"),
    (
        "UPDATE t SET WHERE id = 1",
        "an empty SET list; PostgreSQL: syntax error",
        ("write UPDATE W=public.t where=yes"),
    ),
    (
        "DELETE t WHERE id = 1",
        "DELETE without FROM; PostgreSQL: syntax error",
        ("write DELETE W=public.t where=yes"),
    ),
    (
        "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = 1",
        ("the action is an Update node"),
        "write MERGE R=public.s W=public.t where=yes",
    ),
]


@pytest.mark.parametrize(("sql", "sqlglot_does", "expected"), SQLGLOT_MISREADINGS)
def test_sqlglot_misreadings(sql: str, sqlglot_does: str, expected: str) -> None:
    assert sqlglot_does
    assert summary(sql) == expected


# --- lexical differences between sqlglot and PostgreSQL -----------------------------

LEXICAL = [
    ("SELECT 1\u00a0; DROP TABLE x", "text between tokens"),  # PostgreSQL: an identifier character
    ("SELECT\u2028pg_read_file('x')", "text between tokens"),
    ("SELECT\u3000pg_read_file('x')", "text between tokens"),
    ("SELECT\x1c1", "text between tokens"),
    ("SELECT\x85 1", "text between tokens"),
    ("SELECT\x0b1", "text between tokens"),  # whitespace only from PostgreSQL 16 on
    ("SELECT 1\u00a0", "text after the last token"),
    ("SELECT 1 /* unterminated", "cannot tokenize"),
    ("SELECT 1 /* a /* b */", "cannot tokenize"),
    ("SELECT 'unterminated", "cannot tokenize"),
    ('SELECT "unterminated', "cannot tokenize"),
    ("SELECT $$unterminated", "cannot tokenize"),
    ("SELECT $a$ x $b$", "cannot tokenize"),
    ("SELECT E'\\'", "cannot tokenize"),
    ("SELECT 1\x00; DROP TABLE x", "NUL"),
    ('SELECT U&"d\\0061t" FROM t', 'Unicode-escaped identifiers (U&"...")'),
    ('SELECT u&"x" FROM t', 'Unicode-escaped identifiers (U&"...")'),
    ("SELECT U&'\\0041' UESCAPE '!'", "UESCAPE is not supported"),
    ("SELECT U&\"\\0070g_read_file\"('x')", 'Unicode-escaped identifiers (U&"...")'),
]


@pytest.mark.parametrize(("sql", "reason"), LEXICAL)
def test_lexical_differences_are_unknown(sql: str, reason: str) -> None:
    analysis = analyze(sql)
    assert analysis.unknown
    assert reason in analysis.statements[0].reason


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 'caf\u00a0e'", "read SELECT"),  # inside a literal: a character like any other
        ("SELECT 1 -- caf\u00a0e", "read SELECT"),  # inside a comment
        ("SELECT 1 /* caf\u00a0e */", "read SELECT"),
        ('SELECT 1 AS "caf\u00a0e"', "read SELECT"),
        ('SELECT u & "x" FROM t', "read SELECT R=public.t"),  # spaced: the & operator
        ("SELECT U&'\\0041'", "read SELECT"),
        ("SELECT\x0c1", "read SELECT"),
        ("SELECT\r\n1", "read SELECT"),
    ],
)
def test_lexically_fine(sql: str, expected: str) -> None:
    assert summary(sql) == expected


# --- budgets ------------------------------------------------------------------------


def test_length_budget_boundary() -> None:
    sql = "SELECT 1"
    assert summary(sql, max_len=len(sql)) == "read SELECT"
    assert "longer than 7 characters" in _only_unknown(sql, max_len=len(sql) - 1)


@pytest.mark.parametrize(
    "sql",
    [
        "x" * 262_145,
        "SELECT 1;" * 40_000,
        "SELECT '" + "a" * 400_000 + "'",
        "-- " + "c" * 300_000,
    ],
)
def test_huge_inputs_are_unknown_fast(sql: str) -> None:
    started = time.thread_time()
    assert "longer than 262144 characters" in _only_unknown(sql)
    assert time.thread_time() - started < 0.05


def test_too_many_tokens() -> None:
    sql = "SELECT " + ",".join(["1"] * 30_000)
    assert "more than 50000 tokens" in _only_unknown(sql)


def test_large_statement_within_budget() -> None:
    sql = "SELECT " + ", ".join(f"c{i}" for i in range(5000)) + " FROM t WHERE id = 1"
    assert summary(sql) == "read SELECT R=public.t"


@pytest.mark.parametrize(
    ("depth", "ok"),
    [(1, True), (32, True), (64, True), (65, False), (1_000, False), (20_000, False)],
)
def test_parenthesis_depth(depth: int, ok: bool) -> None:
    sql = "SELECT " + "(" * depth + "1" + ")" * depth
    if ok:
        assert summary(sql) == "read SELECT"
    else:
        assert "nested deeper than 64 levels" in _only_unknown(sql)


@pytest.mark.parametrize(("depth", "ok"), [(2, True), (6, True), (7, False), (50, False)])
def test_array_depth(depth: int, ok: bool) -> None:
    # sqlglot's work doubles with each nested ARRAY[.
    sql = "SELECT " + "ARRAY[" * depth + "1" + "]" * depth
    started = time.thread_time()
    if ok:
        assert summary(sql) == "read SELECT"
    else:
        assert "brackets nested deeper than 6" in _only_unknown(sql)
    assert time.thread_time() - started < 0.5


def test_nested_subqueries() -> None:
    sql = "SELECT * FROM " + "(SELECT * FROM " * 30 + "t" + ") s" * 30
    assert summary(sql) == "read SELECT R=public.t"
    deep = "SELECT * FROM " + "(SELECT * FROM " * 70 + "t" + ") s" * 70
    assert "nested deeper than 64 levels" in _only_unknown(deep)


def test_deep_nesting_cannot_crash_the_process() -> None:
    # Without the depth budget the compiled parser overflows the C stack here
    # and the process dies with SIGSEGV, which no except clause can catch.
    code = (
        "from server.gateway.sqlcheck import analyze\n"
        "sql = 'SELECT * FROM ' + '(SELECT * FROM ' * 10000 + 't' + ') x' * 10000\n"
        "print(analyze(sql).statements[0].kind.value)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "unknown"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT " + "NOT " * 5000 + "true",
        "SELECT " + "- " * 5000 + "1",
        "SELECT " + "CASE WHEN a THEN " * 3000 + "1" + " END" * 3000,
    ],
)
def test_recursion_without_brackets_is_unknown(sql: str) -> None:
    assert "nested too deeply" in _only_unknown(sql)


def test_long_chains_are_analysed() -> None:
    ors = "DELETE FROM t WHERE " + " OR ".join(f"id = {i}" for i in range(3000))
    assert summary(ors) == "write DELETE W=public.t where=yes"
    trues = "DELETE FROM t WHERE id = 1 AND (" + " OR ".join(["true"] * 3000) + ")"
    assert summary(trues) == "write DELETE W=public.t where=yes"
    escape = "DELETE FROM t WHERE " + " OR ".join(f"id = {i}" for i in range(3000)) + " OR true"
    assert summary(escape) == "write DELETE W=public.t where=no"


def test_many_statements() -> None:
    sql = "SELECT 1;" * 2000 + "DROP TABLE x"
    analysis = analyze(sql)
    assert len(analysis.statements) == 2001
    assert analysis.statements[-1].command == "DROP TABLE"
    assert analysis.statements[-1].index == 2000


def test_time_budget_overrun_is_unknown_and_not_cached() -> None:
    cache_clear()
    sql = "SELECT a, b, c FROM t WHERE id = 7"
    assert "s of CPU" in _only_unknown(sql, time_budget=0.0)
    assert summary(sql) == "read SELECT R=public.t"


def test_a_full_garbage_collection_is_not_the_statement_s_cost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full collection that happens to run during an analysis walks every
    object of the process, which may take longer than the whole budget in a
    large broker: it is left out of the budget's clock, so the statement is
    read, not refused."""
    import gc

    from server.gateway.sqlcheck import budgets

    cache_clear()
    heap = [[i] for i in range(1_500_000)]  # a full collection walks all of them
    tokenize = classify._tokenize

    def collecting(sql: str) -> object:
        gc.collect()  # a full collection, on the analysing thread, mid-analysis
        return tokenize(sql)

    monkeypatch.setattr(classify, "_tokenize", collecting)
    started = time.thread_time()
    gc.collect()
    collection = time.thread_time() - started
    sql = "SELECT a, b, c FROM t WHERE id = 7"
    # A budget the collection alone overruns: without the collection it is ample.
    analysis = analyze(sql, time_budget=max(collection / 2, 0.02))
    assert not analysis.over_budget, (collection, analysis)
    assert summary(sql) == "read SELECT R=public.t"
    clock = budgets.cpu_clock()
    gc.collect()
    assert budgets.cpu_clock() - clock < (time.thread_time() - started) / 2
    del heap
    cache_clear()


def test_unexpected_errors_are_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    cache_clear()

    def explode(*args: object, **kwargs: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(classify, "_lexical_problem", explode)
    assert "analysis failed: KeyError" in _only_unknown("SELECT 1")
    cache_clear()


def test_recursion_error_anywhere_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    cache_clear()

    def recurse(*args: object, **kwargs: object) -> None:
        raise RecursionError

    monkeypatch.setattr(classify, "_split", recurse)
    assert "nested too deeply" in _only_unknown("SELECT 2")
    cache_clear()


def test_one_bad_statement_leaves_the_others_analysed() -> None:
    assert summary("SELECT 1; SELEC 2; DELETE FROM t WHERE id = 1") == (
        "read SELECT ; unknown ; write DELETE W=public.t where=yes"
    )
