"""The row budget without sockets: which statements are estimated, how a plan is
read, when the EXPLAIN may go upstream, and the relay conversation byte by byte
(what the server is sent, what the client sees) with a scripted server."""

from __future__ import annotations

import json

import pytest

from server.gateway import pgwire
from server.gateway.guardrails import GuardrailRules
from server.gateway.pgwire import (
    Bind,
    BindComplete,
    Close,
    CloseComplete,
    CommandComplete,
    DataRow,
    Describe,
    Execute,
    Flush,
    NoData,
    Parse,
    ParseComplete,
    Query,
    Sync,
)
from server.gateway.relay import Relay
from server.gateway.row_budget import (
    ESTIMATE_NAME,
    Need,
    Readiness,
    ServerSeen,
    estimated_rows,
    explain_sql,
    needs,
    readiness,
)
from server.gateway.sqlcheck import analyze
from server.gateway.statements import StatementGuard
from tests.fix_relay import FACTS

BUDGET = 3


def plan(*nodes: dict[str, object]) -> str:
    return json.dumps([{"Plan": node} for node in nodes])


def modify(rows: float, op: str = "Delete", **extra: object) -> dict[str, object]:
    child = {"Node Type": "Seq Scan", "Parent Relationship": "Outer", "Plan Rows": rows}
    return {"Node Type": "ModifyTable", "Operation": op, "Plan Rows": 0, "Plans": [child], **extra}


# --- which statements are estimated ------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "prepared", "expected"),
    [
        ("DELETE FROM t WHERE id > 0", {}, Need.ESTIMATE),
        ("UPDATE t SET a = 1 WHERE id = 1", {}, Need.ESTIMATE),
        ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", {}, Need.ESTIMATE),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT count(*) FROM d", {}, Need.ESTIMATE),
        ("EXPLAIN ANALYZE DELETE FROM t WHERE id > 0", {}, Need.ESTIMATE),
        ("COPY (DELETE FROM t RETURNING *) TO STDOUT", {}, Need.ESTIMATE),
        ("EXECUTE d(1)", {"d": "DELETE FROM t WHERE id > $1"}, Need.ESTIMATE),
        ("EXECUTE unknown_to_the_gateway", {}, Need.ESTIMATE),
        ("EXECUTE s", {"s": "SELECT 1"}, Need.NONE),
        ("DELETE FROM t WHERE id = 1; SELECT 1", {}, Need.REFUSE),
        ("SELECT 1; UPDATE t SET a = 1 WHERE id = 2", {}, Need.REFUSE),
        ("SELECT * FROM t", {}, Need.NONE),
        ("SELECT * FROM t FOR UPDATE", {}, Need.NONE),
        ("INSERT INTO t VALUES (1)", {}, Need.NONE),
        ("INSERT INTO t SELECT * FROM s", {}, Need.NONE),
        ("COPY t FROM STDIN", {}, Need.NONE),
        ("EXPLAIN DELETE FROM t", {}, Need.NONE),  # planned, never run
        ("PREPARE d AS DELETE FROM t", {}, Need.NONE),  # runs at EXECUTE
        ("SELECT 1; SELECT 2", {}, Need.NONE),
    ],
)
def test_needs(sql: str, prepared: dict[str, str], expected: Need) -> None:
    known = {name: analyze(body) for name, body in prepared.items()}
    assert needs(analyze(sql), known) is expected


def test_explain_sql() -> None:
    assert explain_sql("delete from t where id > 0;") == (
        "EXPLAIN (FORMAT JSON) delete from t where id > 0;"
    )


# --- reading the plan --------------------------------------------------------------------

CTE = {
    "Node Type": "Aggregate",
    "Plan Rows": 1,
    "Plans": [
        {**modify(51), "Parent Relationship": "InitPlan", "Subplan Name": "CTE d"},
    ],
}


@pytest.mark.parametrize(
    ("text", "rows"),
    [
        (plan(modify(100)), 100.0),
        (plan(modify(1)), 1.0),
        (plan(modify(0)), 0.0),
        (plan(modify(8, "Update")), 8.0),
        (plan(CTE), 51.0),  # the modifying CTE counts, not the query's own rows
        (plan(modify(2), modify(5, "Insert")), 7.0),  # a rule's second statement
        ("[]", 0.0),  # rewritten to nothing
        (plan({"Node Type": "Result", "Plan Rows": 9}), 0.0),
        (
            plan(
                {
                    "Node Type": "ModifyTable",
                    "Plans": [
                        {"Parent Relationship": "Member", "Plan Rows": 4},
                        {"Parent Relationship": "Member", "Plan Rows": 6},
                    ],
                }
            ),
            10.0,
        ),
    ],
)
def test_estimated_rows(text: str, rows: float) -> None:
    assert estimated_rows(text) == rows


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "{}",
        "[1]",
        json.dumps([{"Plan": 1}]),
        plan({"Node Type": "ModifyTable", "Plans": []}),
        plan({"Node Type": "ModifyTable", "Plans": [{"Parent Relationship": "Outer"}]}),
        plan(modify(-1)),
        plan(
            {
                "Node Type": "ModifyTable",
                "Plans": [{"Parent Relationship": "Outer", "Plan Rows": True}],
            }
        ),
        plan({"Node Type": "Limit", "Plans": "x"}),
    ],
)
def test_unreadable_plans_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        estimated_rows(text)


# --- when the EXPLAIN may go upstream -----------------------------------------------------


def seen(**kw: object) -> ServerSeen:
    return ServerSeen(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("extended", "asked", "ready", "pipeline", "messages", "server", "expected"),
    [
        # simple protocol at rest: ask now
        (False, 3, 3, False, 0, seen(), Readiness.READY),
        # an earlier Query is still running: wait for its ReadyForQuery
        (False, 4, 3, False, 0, seen(), Readiness.WAIT),
        # an aborted transaction refuses the statement itself
        (False, 3, 3, False, 0, seen(status="E"), Readiness.SKIP),
        (False, 3, 3, False, 0, seen(status="T"), Readiness.READY),
        # a Query inside an unfinished pipeline
        (False, 3, 3, True, 2, seen(answers=2), Readiness.REFUSE),
        # a COPY FROM STDIN waits for data the gateway may be holding
        (False, 4, 3, False, 0, seen(copy_in=True), Readiness.REFUSE),
        (True, 1, 1, True, 1, seen(copy_in=True), Readiness.REFUSE),
        # extended: the Parse before the Bind is not answered yet
        (True, 0, 0, True, 1, seen(), Readiness.WAIT),
        (True, 0, 0, True, 1, seen(answers=1), Readiness.READY),
        (True, 0, 0, True, 3, seen(answers=2), Readiness.WAIT),
        # an earlier pipeline is not answered yet (its answers are not this one's)
        (True, 1, 0, True, 1, seen(answers=5), Readiness.WAIT),
        # an error in this pipeline: the server discards up to the Sync
        (True, 0, 0, True, 2, seen(answers=0, error=True), Readiness.SKIP),
        # a Bind first in its pipeline, in an aborted transaction
        (True, 2, 2, False, 0, seen(status="E"), Readiness.SKIP),
        # a Parse of ROLLBACK may have run since the transaction aborted: ask
        (True, 2, 2, True, 3, seen(answers=3, status="E"), Readiness.READY),
    ],
)
def test_readiness(
    extended: bool,
    asked: int,
    ready: int,
    pipeline: bool,
    messages: int,
    server: ServerSeen,
    expected: Readiness,
) -> None:
    state, why = readiness(
        extended=extended,
        asked=asked,
        ready=ready,
        open_pipeline=pipeline,
        pipeline_messages=messages,
        seen=server,
    )
    assert state is expected
    assert bool(why) == (expected is Readiness.REFUSE)


@pytest.mark.parametrize(
    ("messages", "answers", "error", "copy_in", "status"),
    [
        ([b"1", b"2", b"t", b"n", b"D", b"C"], 4, False, False, "I"),
        ([b"1", b"E"], 1, True, False, "I"),
        ([b"1", b"E", b"Z:T"], 0, False, False, "T"),
        ([b"G"], 0, False, True, "I"),
        ([b"G", b"C"], 1, False, False, "I"),
        ([b"Z:E", b"1"], 1, False, False, "E"),
        ([b"s", b"I", b"3", b"T"], 4, False, False, "I"),
    ],
)
def test_server_seen(
    messages: list[bytes], answers: int, error: bool, copy_in: bool, status: str
) -> None:
    server = ServerSeen()
    for m in messages:
        body = m[2:] if m.startswith(b"Z:") else b""
        server.see(pgwire.RawMessage(m[0], body))
    assert (server.answers, server.error, server.copy_in, server.status) == (
        answers,
        error,
        copy_in,
        status,
    )


# --- the conversation ---------------------------------------------------------------------


def guarded(budget: int | None = BUDGET) -> Relay:
    relay = Relay()
    rules = GuardrailRules.preset("write")
    rules = GuardrailRules(**{**_fields(rules), "max_rows_by_explain": budget})
    StatementGuard(rules, FACTS, approvals=None, audit=None).install(relay)
    return relay


def _fields(rules: GuardrailRules) -> dict[str, object]:
    return {
        name: getattr(rules, name)
        for name in rules.__dataclass_fields__
        if not name.startswith("_")
    }


def ready(status: str = "I") -> bytes:
    return pgwire.ready_for_query(status)


def plan_row(rows: float) -> bytes:
    return DataRow([plan(modify(rows)).encode()]).encode()


def explain_answer(rows: float) -> bytes:
    """The server's answer to the simple-protocol EXPLAIN."""
    desc = pgwire.RowDescription([_plan_field()]).encode()
    return desc + plan_row(rows) + CommandComplete("EXPLAIN").encode() + ready()


def _plan_field() -> pgwire.Field:
    return pgwire.Field("QUERY PLAN", 0, 0, 114, -1, -1, 0)


def extended_explain_answer(rows: float) -> bytes:
    close = CloseComplete().encode()
    return (
        close
        + close
        + ParseComplete().encode()
        + BindComplete().encode()
        + plan_row(rows)
        + CommandComplete("EXPLAIN").encode()
        + close
        + close
    )


def error(message: str, code: str = "42601") -> bytes:
    return pgwire.error_response("ERROR", code, message)


def fields_of(data: bytes) -> list[dict[str, str]]:
    out = []
    for raw in pgwire.split_frames(data)[0]:
        if raw.type == ord("E"):
            out.append(dict(pgwire.decode_backend(raw).fields))  # type: ignore[union-attr]
    return out


def types(data: bytes) -> bytes:
    return bytes(m.type for m in pgwire.split_frames(data)[0])


DELETE_ALL = "delete from t where id > 0"
DELETE_ONE = "delete from t where id = 1"


def test_a_query_within_the_budget_runs_after_its_explain() -> None:
    relay = guarded()
    up, back = relay.from_client(Query(DELETE_ONE).encode())
    assert up == Query(explain_sql(DELETE_ONE)).encode() and back == b""
    assert relay.busy and relay.holding
    to_client, to_server = relay.from_server(explain_answer(1))
    assert to_client == b""  # the EXPLAIN's answer is the gateway's
    assert to_server == Query(DELETE_ONE).encode()
    assert not relay.holding
    done = CommandComplete("DELETE 1").encode() + ready()
    assert relay.from_server(done) == (done, b"")
    assert not relay.busy


def test_a_query_over_the_budget_is_refused_and_nothing_runs() -> None:
    relay = guarded()
    relay.from_client(Query(DELETE_ALL).encode())
    _to_client, to_server = relay.from_server(explain_answer(10))
    assert to_server == Query("dbaccess_refused_statement").encode()
    to_client, _ = relay.from_server(
        error('syntax error at or near "dbaccess_refused_statement"') + ready()
    )
    [refusal] = fields_of(to_client)
    assert refusal["C"] == "42501"
    assert "guardrails.row_budget" in refusal["M"]
    assert refusal["H"].startswith(f"the estimate is 10 rows and the budget {BUDGET}")
    assert types(to_client) == b"EZ"


def test_a_failed_explain_refuses_the_query() -> None:
    relay = guarded()
    relay.from_client(Query(DELETE_ALL).encode())
    to_client, to_server = relay.from_server(
        error("permission denied for table t", "42501") + ready("E")
    )
    assert to_client == b""
    assert to_server == Query("dbaccess_refused_statement").encode()
    to_client, _ = relay.from_server(error("current transaction is aborted", "25P02") + ready("E"))
    [refusal] = fields_of(to_client)
    assert "could not estimate" in refusal["M"] and "permission denied" in refusal["M"]
    assert "guardrails.row_budget" in refusal["M"]


def test_without_a_budget_nothing_is_asked() -> None:
    relay = guarded(None)
    data = Query(DELETE_ALL).encode()
    assert relay.from_client(data) == (data, b"")


def test_several_statements_in_one_query_are_refused() -> None:
    relay = guarded()
    up, _ = relay.from_client(Query(f"{DELETE_ONE}; select 1").encode())
    assert up == Query("dbaccess_refused_statement").encode()
    to_client, _ = relay.from_server(error("syntax error") + ready())
    [refusal] = fields_of(to_client)
    assert "one of several statements" in refusal["M"]


def test_pipelined_queries_wait_for_the_earlier_ones() -> None:
    relay = guarded()
    first = Query("select 1").encode()
    up, _ = relay.from_client(first + Query(DELETE_ONE).encode() + Query("select 2").encode())
    # The first goes; the EXPLAIN waits until it is answered (a Flush meanwhile).
    assert up == first + Flush().encode()
    answer = CommandComplete("SELECT 1").encode() + ready()
    to_client, to_server = relay.from_server(answer)
    assert to_client == answer
    assert to_server == Query(explain_sql(DELETE_ONE)).encode()
    to_client, to_server = relay.from_server(explain_answer(1))
    assert to_client == b""
    assert to_server == Query(DELETE_ONE).encode() + Query("select 2").encode()


def test_in_an_aborted_transaction_the_statement_goes_as_it_is() -> None:
    relay = guarded()
    relay.from_client(Query("select 1/0").encode())
    relay.from_server(error("division by zero", "22012") + ready("E"))
    data = Query(DELETE_ALL).encode()
    assert relay.from_client(data) == (data, b"")


def test_a_query_inside_an_open_pipeline_is_refused() -> None:
    relay = guarded()
    parse = Parse("", "select 1").encode()
    up, _ = relay.from_client(parse + Query(DELETE_ONE).encode())
    assert up == parse + Query("dbaccess_refused_statement").encode()


def extended(sql: str, *params: bytes) -> tuple[bytes, bytes]:
    """The client's Parse, and its Bind/Describe/Execute/Sync."""
    parse = Parse("", sql, [23] * len(params)).encode()
    rest = (
        Bind("", "", [0], list(params), []).encode()
        + Describe("P", "").encode()
        + Execute("", 0).encode()
        + Sync().encode()
    )
    return parse, rest


def estimate_request(sql: str, *params: bytes) -> bytes:
    name = ESTIMATE_NAME
    return b"".join(
        m.encode()
        for m in (
            Close("S", name),
            Close("P", name),
            Parse(name, explain_sql(sql), [23] * len(params)),
            Bind(name, name, [0], list(params), [0]),
            Execute(name, 0),
            Close("P", name),
            Close("S", name),
            Flush(),
        )
    )


SQL = "delete from t where id > $1"


def test_a_bind_within_the_budget_is_estimated_with_its_parameters() -> None:
    relay = guarded()
    parse, rest = extended(SQL, b"8")
    up, _ = relay.from_client(parse + rest)
    # The Parse goes; the Bind and what follows wait for the Parse's answer.
    assert up == parse + Flush().encode()
    to_client, to_server = relay.from_server(ParseComplete().encode())
    assert to_client == ParseComplete().encode()
    assert to_server == estimate_request(SQL, b"8")
    to_client, to_server = relay.from_server(extended_explain_answer(2))
    assert to_client == b""
    assert to_server == rest  # the client's own messages, unchanged
    answer = (
        BindComplete().encode() + NoData().encode() + CommandComplete("DELETE 2").encode() + ready()
    )
    assert relay.from_server(answer) == (answer, b"")
    assert not relay.busy


def test_a_bind_over_the_budget_is_refused_in_its_pipeline() -> None:
    relay = guarded()
    parse, rest = extended(SQL, b"0")
    relay.from_client(parse + rest)
    relay.from_server(ParseComplete().encode())
    _to_client, to_server = relay.from_server(extended_explain_answer(10))
    substitute = Bind("", "dbaccess: refused statement").encode()
    assert to_server == substitute + rest[len(Bind("", "", [0], [b"0"], []).encode()) :]
    to_client, _ = relay.from_server(error("prepared statement does not exist", "26000") + ready())
    [refusal] = fields_of(to_client)
    assert refusal["C"] == "42501" and "guardrails.row_budget" in refusal["M"]
    assert types(to_client) == b"EZ"


def test_a_failed_extended_explain_answers_in_place_of_the_bind() -> None:
    relay = guarded()
    parse, rest = extended(SQL, b"0")
    relay.from_client(parse + rest)
    relay.from_server(ParseComplete().encode())
    close = CloseComplete().encode()
    to_client, to_server = relay.from_server(
        close + close + error('column "nope" does not exist', "42703")
    )
    # The client sees the gateway's refusal where the answer to its Bind belongs,
    # and the server, now discarding up to the Sync, gets the rest.
    [refusal] = fields_of(to_client)
    assert "could not estimate" in refusal["M"] and "42703" in refusal["M"]
    assert to_server.endswith(Sync().encode())
    assert to_server.startswith(Bind("", "dbaccess: refused statement").encode())
    assert relay.from_server(ready()) == (ready(), b"")


def test_an_error_earlier_in_the_pipeline_skips_the_estimate() -> None:
    relay = guarded()
    parse, rest = extended(SQL, b"0")
    relay.from_client(parse + rest)
    failed = error("syntax error", "42601")
    to_client, to_server = relay.from_server(failed)
    assert to_client == failed
    assert to_server == rest  # discarded by the server, which is skipping to Sync
    assert relay.from_server(ready()) == (ready(), b"")


def test_a_second_budgeted_bind_in_the_same_pipeline_is_estimated_in_turn() -> None:
    relay = guarded()
    parse = Parse("d", SQL, [23]).encode()
    bind = Bind("", "d", [0], [b"9"], []).encode() + Execute("", 0).encode()
    up, _ = relay.from_client(parse + bind + bind + Sync().encode())
    assert up == parse + Flush().encode()
    _c, to_server = relay.from_server(ParseComplete().encode())
    assert to_server == estimate_request(SQL, b"9")
    _c, to_server = relay.from_server(extended_explain_answer(1))
    # The first Bind and its Execute go; the second Bind waits for their answers.
    assert to_server == bind + Flush().encode()
    _c, to_server = relay.from_server(BindComplete().encode())
    assert to_server == b""
    to_client, to_server = relay.from_server(CommandComplete("DELETE 1").encode())
    assert to_client == CommandComplete("DELETE 1").encode()
    assert to_server == estimate_request(SQL, b"9")
    _c, to_server = relay.from_server(extended_explain_answer(1))
    assert to_server == bind + Sync().encode()


def test_the_estimate_name_is_reserved() -> None:
    relay = guarded()
    up, _ = relay.from_client(Parse(ESTIMATE_NAME, "select 1").encode())
    assert up == Parse("", "dbaccess_refused_statement").encode()
