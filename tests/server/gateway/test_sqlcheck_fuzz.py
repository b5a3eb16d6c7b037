"""Fuzzing ``analyze``: whatever text arrives, it returns an Analysis, raises
nothing, stays within its CPU budget, and anything it could not read is UNKNOWN.

Three kinds of input: arbitrary Unicode text; a soup of SQL tokens (keywords,
names, literals of every quoting style, comments, operators, brackets and
semicolons), which reaches far deeper into the parser; and the statements of
the analysis tables with random edits.
"""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.gateway.guardrails import GuardrailRules, Outcome, decide
from server.gateway.sqlcheck import Analysis, StatementClass, analyze
from tests.server.gateway.test_sqlcheck import ALL_TABLES

BUDGET = 1.0
# The budget is checked between statements and after the last one, so one
# statement may run past it by its own length; the structural budgets keep that short.
SLACK = 0.5

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

TOKENS = [
    "SELECT",
    "FROM",
    "WHERE",
    "INSERT",
    "INTO",
    "VALUES",
    "UPDATE",
    "SET",
    "DELETE",
    "MERGE",
    "USING",
    "WHEN",
    "MATCHED",
    "THEN",
    "WITH",
    "AS",
    "RECURSIVE",
    "UNION",
    "CREATE",
    "TABLE",
    "ALTER",
    "DROP",
    "TRUNCATE",
    "GRANT",
    "REVOKE",
    "ROLE",
    "TO",
    "EXPLAIN",
    "ANALYZE",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "COPY",
    "STDIN",
    "STDOUT",
    "PROGRAM",
    "DO",
    "CALL",
    "LISTEN",
    "NOTIFY",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RESET",
    "SHOW",
    "SESSION",
    "AUTHORIZATION",
    "LOCAL",
    "TRANSACTION",
    "FOR",
    "NOT",
    "AND",
    "OR",
    "NULL",
    "TRUE",
    "FALSE",
    "IS",
    "IN",
    "EXISTS",
    "CASE",
    "END",
    "ARRAY",
    "ROW",
    "CAST",
    "FUNCTION",
    "RETURNS",
    "LANGUAGE",
    "DECLARE",
    "CURSOR",
    "FETCH",
    "LOCK",
    "VACUUM",
    "DISCARD",
    "ALL",
    "ON",
    "CONFLICT",
    "NOTHING",
    "t",
    "u",
    "public",
    "pg_catalog",
    "pg_read_file",
    "set_config",
    "lo_import",
    "dblink",
    "id",
    "x",
    '"Quoted"',
    '"a""b"',
    'U&"x"',
    "$1",
    "$2",
    "'str'",
    "'it''s'",
    "E'\\''",
    "E'a\\\\'",
    "$$body$$",
    "$t$ ; $t$",
    "U&'\\0041'",
    "B'01'",
    "X'1F'",
    "1",
    "1.5",
    "-2",
    "1e3",
    "(",
    ")",
    "[",
    "]",
    ",",
    ".",
    ";",
    "::",
    "=",
    "<>",
    "<",
    ">",
    "+",
    "-",
    "*",
    "/",
    "||",
    "->",
    "->>",
    "@>",
    "~",
    "!",
    "@",
    "#",
    "%",
    "^",
    "&",
    "|",
    "--c\n",
    "/* c */",
    "/* /* n */ */",
    "\n",
    "\t",
    " ",
    "\u00a0",
    "\x00",
]

sql_soup = st.lists(st.sampled_from(TOKENS), max_size=60).flatmap(
    lambda words: st.lists(
        st.sampled_from([" ", "", "\n"]), min_size=len(words), max_size=len(words)
    ).map(lambda seps: "".join(w + s for w, s in zip(words, seps, strict=True)))
)


@st.composite
def edited_statements(draw: st.DrawFn) -> str:
    sql, _ = draw(st.sampled_from(ALL_TABLES))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(sql)))
        action = draw(st.sampled_from(["insert", "delete", "duplicate"]))
        if action == "insert":
            sql = sql[:position] + draw(st.sampled_from(TOKENS)) + sql[position:]
        elif action == "delete":
            sql = sql[:position] + sql[position + draw(st.integers(1, 5)) :]
        else:
            sql = sql[:position] + sql[position:] + ";" + sql[:position]
    return sql


def _check(sql: str) -> Analysis:
    started = time.thread_time()
    analysis = analyze(sql, time_budget=BUDGET)
    used = time.thread_time() - started
    assert isinstance(analysis, Analysis)
    assert used < BUDGET + SLACK
    if used > BUDGET:
        assert analysis.unknown
    for statement in analysis.walk_all():
        assert isinstance(statement.kind, StatementClass)
        if statement.kind is StatementClass.UNKNOWN:
            assert statement.reason
        else:
            assert statement.command
    # Whatever the analysis, a decision is reached and an unknown part blocks.
    decision = decide(analysis, GuardrailRules())
    if analysis.unknown:
        assert decision.outcome is Outcome.BLOCK
    return analysis


@FUZZ
@given(st.text(max_size=2000))
def test_arbitrary_text(sql: str) -> None:
    _check(sql)


@FUZZ
@given(sql_soup)
def test_sql_token_soup(sql: str) -> None:
    _check(sql)


@FUZZ
@given(edited_statements())
def test_edited_statements(sql: str) -> None:
    _check(sql)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 200), st.sampled_from(["(", "[", "ARRAY[", "NOT ", "- ", "(SELECT "]))
def test_deep_prefixes(depth: int, opener: str) -> None:
    _check("SELECT " + opener * depth + "1")
