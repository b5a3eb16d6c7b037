"""Masking hooks in the relay without sockets: extended-protocol bookkeeping,
refusals of rows whose shape is unknown, and the recorded statements."""

from __future__ import annotations

from typing import Any

import pytest

from server.gateway import pgwire
from server.gateway.masking import ColumnRef, MaskingRules
from server.gateway.masking_relay import MaskingHooks
from server.gateway.pgwire import (
    Bind,
    BindComplete,
    CommandComplete,
    CopyData,
    CopyDone,
    CopyInResponse,
    Describe,
    ErrorResponse,
    Execute,
    Field,
    Flush,
    FunctionCall,
    FunctionCallResponse,
    NoData,
    Parse,
    ParseComplete,
    Query,
    RowDescription,
    Sync,
)
from server.gateway.relay import Relay
from server.gateway.session import GatewayError
from server.policy.model import MaskMethod, MaskRule
from tests.fix_relay import StaticCatalog, recording_to
from tests.fix_relay import row as _row
from tests.fix_relay import types as _types

OID = 16400
EMAIL = ColumnRef("public", "customers", "email", type_oid=25)
CITY = ColumnRef("public", "customers", "city", type_oid=25)
RULES = MaskingRules(
    (MaskRule(column="public.customers.email", method=MaskMethod.PARTIAL, keep_domain=True),)
)


def _relay(events: list[dict[str, Any]]) -> Relay:
    relay = Relay()
    hooks = MaskingHooks(
        RULES,
        StaticCatalog(OID, (EMAIL, CITY)),  # type: ignore[arg-type]
        session_id="s-1",
        record=recording_to(lambda _sid, _kind, data: events.append(dict(data))),
    )
    hooks.install(relay)
    return relay


def _fields(*cols: tuple[str, int]) -> bytes:
    return RowDescription(
        [Field(name, OID if att else 0, att, 25, -1, -1, 0) for name, att in cols]
    ).encode()


def test_simple_query_masks_and_records() -> None:
    events: list[dict[str, Any]] = []
    relay = _relay(events)
    relay.from_client(Query("select email, city from customers where email = 'a@b.c'").encode())
    out, _ = relay.from_server(
        _fields(("email", 1), ("city", 2))
        + _row(b"ann@example.com", b"Oslo")
        + pgwire.encode_raw(ord("C"), b"SELECT 1\0")
        + pgwire.ready_for_query("I")
    )
    assert b"ann@" not in out and b"***@example.com" in out and b"Oslo" in out
    assert len(events) == 1
    assert "a@b.c" not in events[0]["text"] and events[0]["rows"] == 1
    assert events[0]["masked"][0]["field"] == "email"


def test_expression_over_a_masked_column_is_masked() -> None:
    relay = _relay([])
    relay.from_client(Query("select lower(email), upper(city) from customers").encode())
    out, _ = relay.from_server(
        _fields(("lower", 0), ("upper", 0))
        + _row(b"ann@example.com", b"OSLO")
        + pgwire.encode_raw(ord("C"), b"SELECT 1\0")
        + pgwire.ready_for_query("I")
    )
    # S: the report of the masked columns (dbaccess.masked_columns) ahead of the ReadyForQuery.
    assert _types(out) == "TDCSZ" and b"ann@" not in out
    assert b"***" in out and b"OSLO" in out


def test_expression_without_lineage_blocked_rows_dropped_ready_kept() -> None:
    relay = _relay([])
    relay.from_client(
        Query(
            "with recursive r(e) as (select email from customers union all "
            "select e from r where false) select lower(e) from r"
        ).encode()
    )
    out, _ = relay.from_server(
        _fields(("lower", 0))
        + _row(b"ann@example.com")
        + pgwire.encode_raw(ord("C"), b"SELECT 1\0")
        + pgwire.ready_for_query("I")
    )
    assert _types(out) == "EZ" and b"ann@" not in out
    err = pgwire.decode_backend(pgwire.split_frames(out)[0][0])
    assert isinstance(err, ErrorResponse) and err.sqlstate == "42501"


# An Execute without a Describe: its rows are refused, after the server ran it.
_UNDESCRIBED = (
    Parse("", "select email from customers").encode() + Bind("", "").encode() + Execute("").encode()
)
_UNDESCRIBED_ANSWER = (
    pgwire.encode_raw(ord("1"), b"")
    + pgwire.encode_raw(ord("2"), b"")
    + _row(b"ann@example.com")
    + pgwire.encode_raw(ord("C"), b"SELECT 1\0")
)
_RECURSIVE = (
    "with recursive r(e) as (select email from customers union all "
    "select e from r where false) select lower(e) from r"
)
_REFUSED_ROWS = (
    _fields(("lower", 0)) + _row(b"ann@example.com") + pgwire.encode_raw(ord("C"), b"SELECT 1\0")
)


def _relayed_or_told(relay: Relay, answer: bytes, told: str | None) -> bytes:
    """What the client gets of the server's ``answer``; or, where ``told`` is given,
    the connection ends with 40003 naming it (what ran after a refused result)."""
    if told is None:
        return relay.from_server(answer)[0]
    with pytest.raises(GatewayError) as refused:
        relay.from_server(answer)
    assert refused.value.sqlstate == "40003" and told in refused.value.message
    return b""


@pytest.mark.parametrize(
    ("later", "its_answer", "fatal"),
    [
        ("update customers set city = 'x'", b"UPDATE 3", True),
        ("delete from customers where id = 7", b"DELETE 1", True),
        ("select city from customers", b"SELECT 1", False),
    ],
)
def test_what_ran_after_a_refused_result_in_a_query_is_told_and_recorded(
    later: str, its_answer: bytes, fatal: bool
) -> None:
    """The server runs a Query's later statements although masking refused an
    earlier result (it had no error): one that changed something ends the
    connection (40003) rather than let the client take the Query for undone, and
    the recording keeps what ran."""
    events: list[dict[str, Any]] = []
    relay = _relay(events)
    relay.from_client(Query(f"{_RECURSIVE}; {later}").encode())
    answer = _REFUSED_ROWS
    if not fatal:
        answer += _fields(("city", 2)) + _row(b"Lisbon")
    answer += pgwire.encode_raw(ord("C"), its_answer + b"\0") + pgwire.ready_for_query("I")
    out = _relayed_or_told(relay, answer, f"({its_answer.decode()})" if fatal else None)
    if not fatal:
        assert _types(out) == "EZ" and b"ann@" not in out and b"Lisbon" not in out
    (event,) = events
    assert event["decision"] == "masking_blocked" and event["tag"] == its_answer.decode()


@pytest.mark.parametrize(
    ("later", "functions", "fatal"),
    [
        ("select nextval('orders_id_seq')", frozenset(), True),
        ("select pg_catalog.setval('orders_id_seq', 5)", frozenset(), True),
        ("select pg_advisory_lock(7)", frozenset(), True),
        ("select set_config('application_name', 'x', false)", frozenset(), True),
        ("select pg_notify('c', 'x')", frozenset(), True),
        ("select lo_unlink(16400)", frozenset(), True),
        ("select city from customers where id in (select nextval('s'))", frozenset(), True),
        # A function that is not built-in may do anything.
        ("select bump()", frozenset({"bump"}), True),
        ("select public.lower('x')", frozenset({"lower"}), True),
        ("select lower('x')", frozenset({"lower"}), True),  # public.lower may win
        ("select lower('x')", None, False),  # not known which names are built-in
        # Built-in functions that only compute.
        ("select count(*), lower(min(city)) from customers", frozenset({"bump"}), False),
        ("select pg_catalog.now(), random()", frozenset(), False),
    ],
)
def test_a_read_that_called_a_function_that_changes_something_is_told(
    later: str, functions: frozenset[str] | None, fatal: bool
) -> None:
    """A SELECT can change what a rollback of the client's reading would not undo
    (a sequence, an advisory lock, a setting, a notification at commit), or call a
    function that may write: run after a refused result, it ends the connection
    (40003) like a write; a SELECT of built-ins that only compute does not."""
    relay = Relay()
    MaskingHooks(
        RULES,
        StaticCatalog(OID, (EMAIL, CITY), functions),
        session_id="s-1",  # type: ignore[arg-type]
    ).install(relay)
    relay.from_client(Query(f"{_RECURSIVE}; {later}").encode())
    answer = (
        _REFUSED_ROWS
        + _fields(("x", 0))
        + _row(b"1")
        + _row(b"2")
        + pgwire.encode_raw(ord("C"), b"SELECT 2\0")
        + pgwire.ready_for_query("I")
    )
    out = _relayed_or_told(relay, answer, "SELECT 2)" if fatal else None)
    if not fatal:
        assert _types(out) == "EZ" and b"ann@" not in out


def test_a_refused_result_whose_statement_changed_something_is_told() -> None:
    """The statement whose rows were refused had run: if it advanced a sequence, the
    client must not take it for undone either."""
    relay = _relay([])
    relay.from_client(Query(f"{_RECURSIVE}, nextval('orders_id_seq')").encode())
    with pytest.raises(GatewayError) as refused:
        relay.from_server(
            _fields(("lower", 0), ("nextval", 0))
            + _row(b"ann@example.com", b"8")
            + pgwire.encode_raw(ord("C"), b"SELECT 1\0")
            + pgwire.ready_for_query("I")
        )
    assert refused.value.sqlstate == "40003" and "(SELECT 1)" in refused.value.message


def test_a_function_call_is_recorded_with_its_function_and_arguments() -> None:
    """A FunctionCall (psql's \\lo_import, where a scope allows large objects) is a
    statement like any other in the recording: the function by its OID, the
    arguments as parameters (binary ones by their size), an error by its SQLSTATE."""
    events: list[dict[str, Any]] = []
    relay = _relay(events)
    relay.from_client(FunctionCall(955, [1], [b"\0\0\0\0", b"data"]).encode())  # lowrite
    out, _ = relay.from_server(
        FunctionCallResponse(b"\0\0\0\4").encode() + pgwire.ready_for_query("T")
    )
    assert _types(out) == "VZ"
    relay.from_client(FunctionCall(964, [1], [b"\0\0\0\7"]).encode())  # lo_unlink
    relay.from_server(
        ErrorResponse({"S": "ERROR", "C": "42704", "M": "large object 7 does not exist"}).encode()
        + pgwire.ready_for_query("E")
    )
    called, failed = events
    # Masked session: every argument hidden, as a Bind's parameters would be.
    assert (called["text"], called["tag"], called["sqlstate"]) == (
        "FunctionCall",
        "FunctionCall 955",
        None,
    )
    assert called["params"] is not None and len(called["params"]) == 2
    assert all(p != "data" for p in called["params"])
    assert (failed["tag"], failed["sqlstate"]) == ("FunctionCall 964", "42704")


def test_a_function_call_in_a_session_without_rules_is_recorded_in_clear() -> None:
    events: list[dict[str, Any]] = []
    relay = Relay()
    MaskingHooks(
        MaskingRules(),
        None,
        session_id="s-1",
        record=recording_to(lambda _sid, _kind, data: events.append(dict(data))),
    ).install(relay)
    relay.from_client(FunctionCall(952, [0], [b"16400", b"262144"]).encode())  # lo_open
    relay.from_server(FunctionCallResponse(b"0").encode() + pgwire.ready_for_query("T"))
    (called,) = events
    assert called["tag"] == "FunctionCall 952" and called["params"] == ["16400", "262144"]


@pytest.mark.parametrize(("oid", "fatal"), [(964, True), (955, True), (4242, True), (954, False)])
def test_a_function_call_that_ran_after_a_refused_result_is_told(oid: int, fatal: bool) -> None:
    """A FunctionCall sent before the pipeline's Sync runs although the result before
    it was refused: unless it only read a large object (loread), it ends the
    connection (40003) like a write; one the gateway does not know may do anything."""
    relay = _relay([])
    relay.from_client(
        _UNDESCRIBED + FunctionCall(oid, [1], [b"\0\0\0\7"]).encode() + Sync().encode()
    )
    answer = (
        _UNDESCRIBED_ANSWER
        + FunctionCallResponse(b"\0\0\0\1").encode()
        + pgwire.ready_for_query("T")
    )
    out = _relayed_or_told(relay, answer, f"(FunctionCall {oid})" if fatal else None)
    if not fatal:
        assert _types(out) == "12EZ" and b"ann@" not in out  # its answer dropped
        out, _ = relay.from_server(pgwire.ready_for_query("I"))
        assert _types(out) == "Z"


def test_a_function_call_that_failed_after_a_refused_result_is_recorded_failed() -> None:
    """Its error comes while the answers after the refusal are dropped: it did not
    run, so it changed nothing, and the recording says it failed."""
    events: list[dict[str, Any]] = []
    relay = _relay(events)
    relay.from_client(
        _UNDESCRIBED + FunctionCall(964, [1], [b"\0\0\0\7"]).encode() + Sync().encode()
    )
    out, _ = relay.from_server(
        _UNDESCRIBED_ANSWER
        + ErrorResponse({"S": "ERROR", "C": "42704", "M": "large object 7 does not exist"}).encode()
        + pgwire.ready_for_query("T")
        + pgwire.ready_for_query("I")
    )
    assert _types(out) == "12EZZ"
    assert [(e["tag"], e["sqlstate"]) for e in events] == [
        ("SELECT 1", "42501"),
        ("FunctionCall 964", "42704"),
    ]


def test_a_function_call_skipped_after_an_error_is_recorded_as_not_run() -> None:
    """After the server's error in a pipeline it skips to the Sync, a FunctionCall
    sent before it included."""
    events: list[dict[str, Any]] = []
    relay = _relay(events)
    relay.from_client(
        Parse("", "select city from nosuch").encode()
        + Bind("", "").encode()
        + Execute("").encode()
        + FunctionCall(955, [1], [b"\0\0\0\0", b"x"]).encode()
        + Sync().encode()
    )
    relay.from_server(
        ErrorResponse(
            {"S": "ERROR", "C": "42P01", "M": 'relation "nosuch" does not exist'}
        ).encode()
        + pgwire.ready_for_query("I")
    )
    assert [(e["tag"], e["sqlstate"]) for e in events][-1] == ("FunctionCall 955", "error")


def test_a_function_call_whose_result_was_refused_is_told_if_it_changed_something() -> None:
    """The detectors refuse a large object's bytes after the call ran: lo_get read
    only (a plain refusal), a call the gateway does not know may have written."""
    from server.policy.model import DetectorAction, DetectorKind

    events: list[dict[str, Any]] = []
    relay = Relay()
    detectors = MaskingRules((), b"", {DetectorKind.SECRET: DetectorAction.BLOCK})
    MaskingHooks(
        detectors,
        None,
        session_id="s-1",
        record=recording_to(lambda _sid, _kind, data: events.append(dict(data))),
    ).install(relay)
    secret = FunctionCallResponse(b"key AKIAIOSFODNN7EXAMPLE").encode() + pgwire.ready_for_query(
        "I"
    )
    relay.from_client(FunctionCall(954, [1], [b"\0\0\0\0", b"\0\0\0\x40"]).encode())  # loread
    out, _ = relay.from_server(secret)
    assert _types(out) == "EZ" and b"AKIA" not in out
    relay.from_client(FunctionCall(4242).encode())
    with pytest.raises(GatewayError) as refused:
        relay.from_server(secret)
    assert refused.value.sqlstate == "40003" and "(FunctionCall 4242)" in refused.value.message
    assert [(e["tag"], e["decision"]) for e in events] == [
        ("FunctionCall 954", "masking_blocked"),
        ("FunctionCall 4242", "masking_blocked"),
    ]


@pytest.mark.parametrize("status", [b"I", b"T", b"E"])
def test_a_write_before_a_refused_result_in_a_query_is_told_whatever_the_status(
    status: bytes,
) -> None:
    """A Query that fails is all or nothing to the client, but the server had no
    error: the UPDATE before the refused result committed with it (ReadyForQuery
    ``I``), or a COMMIT among its statements did (``T`` after a ``commit; begin``,
    ``E`` after a later error), or it waits in a block the client would commit.
    Closing the connection tells the client, and rolls back what is still open."""
    relay = _relay([])
    relay.from_client(
        Query(f"update customers set city = 'x'; commit; begin; {_RECURSIVE}").encode()
    )
    answer = (
        pgwire.encode_raw(ord("C"), b"UPDATE 3\0")
        + pgwire.encode_raw(ord("C"), b"COMMIT\0")
        + pgwire.encode_raw(ord("C"), b"BEGIN\0")
        + _REFUSED_ROWS
        + pgwire.encode_raw(ord("Z"), status)
    )
    with pytest.raises(GatewayError) as refused:
        relay.from_server(answer)
    assert refused.value.sqlstate == "40003"
    assert "(UPDATE 3, COMMIT, BEGIN)" in refused.value.message


def test_a_refused_read_in_a_session_with_detectors_only_keeps_the_connection() -> None:
    """Masking does not analyse statements there; the refused statement is read
    when a result is refused, and a plain SELECT changed nothing."""
    from server.policy.model import DetectorAction, DetectorKind

    relay = Relay()
    detectors = MaskingRules((), b"", {DetectorKind.SECRET: DetectorAction.BLOCK})
    MaskingHooks(detectors, None, session_id="s-1").install(relay)
    relay.from_client(Query("select note from people").encode())
    out, _ = relay.from_server(
        RowDescription([Field("note", 0, 0, 25, -1, -1, 0)]).encode()
        + _row(b"AKIAIOSFODNN7EXAMPLE")
        + pgwire.encode_raw(ord("C"), b"SELECT 1\0")
        + pgwire.ready_for_query("I")
    )
    assert _types(out) == "TEZ" and b"AKIA" not in out  # the rows refused, no 40003


def test_a_query_sent_after_a_refused_result_in_a_pipeline_is_told() -> None:
    """A simple Query sent before the pipeline's Sync runs although the result before
    it was refused: its write ends the connection too."""
    events: list[dict[str, Any]] = []
    relay = _relay(events)
    relay.from_client(
        _UNDESCRIBED + Query("update customers set city = 'x'").encode() + Sync().encode()
    )
    with pytest.raises(GatewayError) as refused:
        relay.from_server(
            _UNDESCRIBED_ANSWER
            + pgwire.encode_raw(ord("C"), b"UPDATE 3\0")
            + pgwire.ready_for_query("I")
        )
    assert refused.value.sqlstate == "40003" and "(UPDATE 3)" in refused.value.message
    assert [e["tag"] for e in events] == ["SELECT 1", "UPDATE 3"]


def test_a_write_run_part_way_after_a_refused_result_is_told() -> None:
    """An UPDATE ... RETURNING run with a row limit answers PortalSuspended, no
    command tag, but the server ran all of it."""
    relay = _relay([])
    relay.from_client(
        _UNDESCRIBED
        + Parse("s2", "update customers set city = 'x' returning id").encode()
        + Bind("p2", "s2").encode()
        + Execute("p2", 1).encode()
        + Sync().encode()
    )
    with pytest.raises(GatewayError) as refused:
        relay.from_server(
            _UNDESCRIBED_ANSWER
            + pgwire.encode_raw(ord("1"), b"")
            + pgwire.encode_raw(ord("2"), b"")
            + _row(b"7")
            + pgwire.encode_raw(ord("s"), b"")
            + pgwire.ready_for_query("I")
        )
    assert refused.value.sqlstate == "40003" and "part way" in refused.value.message


@pytest.mark.parametrize(
    ("later", "its_answer", "fatal"),
    [
        ("update customers set city = 'x'", b"UPDATE 3", True),
        ("select city from customers", b"SELECT 1", False),
    ],
)
def test_what_ran_after_a_refused_result_in_a_pipeline_is_told_and_recorded(
    later: str, its_answer: bytes, fatal: bool
) -> None:
    """The server ran the rest of the pipeline up to its Sync: a later statement that
    changed something ends the connection (40003) rather than pass for one the
    server skipped, and each is recorded as it ran, never as an error."""
    events: list[dict[str, Any]] = []
    relay = _relay(events)
    relay.from_client(
        _UNDESCRIBED
        + Parse("s2", later).encode()
        + Bind("p2", "s2").encode()
        + Execute("p2").encode()
        + Sync().encode()
    )
    answer = (
        _UNDESCRIBED_ANSWER
        + pgwire.encode_raw(ord("1"), b"")
        + pgwire.encode_raw(ord("2"), b"")
        + (b"" if fatal else _row(b"Lisbon"))
        + pgwire.encode_raw(ord("C"), its_answer + b"\0")
        + pgwire.ready_for_query("I")
    )
    out = _relayed_or_told(relay, answer, "" if fatal else None)
    if not fatal:
        assert _types(out) == "12EZ" and b"Lisbon" not in out
    refused_event, later_event = events
    assert refused_event["decision"] == "masking_blocked"
    assert (later_event["tag"], later_event["sqlstate"]) == (its_answer.decode(), None)


def test_execute_without_describe_is_refused() -> None:
    relay = _relay([])
    relay.from_client(_UNDESCRIBED + Sync().encode())
    out, _ = relay.from_server(_UNDESCRIBED_ANSWER + pgwire.ready_for_query("I"))
    assert _types(out) == "12EZ" and b"ann@" not in out


def test_described_statement_masks_later_executes_and_suspended_portals() -> None:
    relay = _relay([])
    relay.from_client(
        Parse("st", "select email from customers").encode()
        + Describe("S", "st").encode()
        + Sync().encode()
    )
    relay.from_server(
        pgwire.encode_raw(ord("1"), b"")
        + pgwire.encode_raw(ord("t"), b"\0\0")
        + _fields(("email", 1))
        + pgwire.ready_for_query("I")
    )
    relay.from_client(
        Bind("p", "st").encode()
        + Execute("p", 1).encode()
        + Execute("p", 1).encode()
        + Sync().encode()
    )
    out, _ = relay.from_server(
        pgwire.encode_raw(ord("2"), b"")
        + _row(b"ann@example.com")
        + pgwire.encode_raw(ord("s"), b"")
        + _row(b"bob@example.org")
        + pgwire.encode_raw(ord("C"), b"SELECT 1\0")
        + pgwire.ready_for_query("I")
    )
    assert _types(out) == "2DsDCZ"
    assert b"ann@" not in out and b"bob@" not in out
    assert b"***@example.com" in out and b"***@example.org" in out


def _reports(out: bytes) -> list[object]:
    import json

    from server.gateway.pgwire import ParameterStatus

    found = []
    for raw in pgwire.split_frames(out)[0]:
        msg = pgwire.decode_backend(raw)
        if isinstance(msg, ParameterStatus) and msg.name == "dbaccess.masked_columns":
            found.append(json.loads(msg.value))
    return found


def test_the_masked_columns_of_each_result_are_reported_with_the_query() -> None:
    relay = _relay([])
    relay.from_client(
        Query("select email from customers; select city from customers; "
              "select city, email from customers").encode()
    )  # fmt: skip
    done = pgwire.encode_raw(ord("C"), b"SELECT 1\0")
    out, _ = relay.from_server(
        _fields(("email", 1)) + _row(b"ann@example.com") + done
        + _fields(("city", 2)) + _row(b"Oslo") + done
        + _fields(("city", 2), ("email", 1)) + _row(b"Oslo", b"ann@example.com") + done
        + pgwire.ready_for_query("I")
    )  # fmt: skip
    assert _types(out) == "TDCTDCTDCSZ"
    email = {"position": 0, "name": "email", "method": "partial"}
    first = {"result": 0, "columns": [email]}
    third = {"result": 2, "columns": [{**email, "position": 1}]}
    # One report for the Query, before its ReadyForQuery: each result's columns.
    assert _reports(out) == [{"query": 1, "results": [first, third]}]
    assert b"ann@" not in out
    # The next Query's masked result says whose it is; an unmasked one sends nothing.
    relay.from_client(Query("select city from customers").encode())
    out, _ = relay.from_server(
        _fields(("city", 2)) + _row(b"Oslo") + done + pgwire.ready_for_query("I")
    )
    assert _types(out) == "TDCZ"
    relay.from_client(Query("select email from customers").encode())
    out, _ = relay.from_server(
        _fields(("email", 1)) + _row(b"a@b.c") + done + pgwire.ready_for_query("I")
    )
    assert _reports(out) == [{"query": 3, "results": [first]}]


def test_a_server_cannot_send_the_report() -> None:
    from server.gateway.pgwire import ParameterStatus

    relay = _relay([])
    relay.from_client(Query("select city from customers").encode())
    forged = ParameterStatus("dbaccess.masked_columns", '{"query":1,"results":[]}').encode()
    out, _ = relay.from_server(
        forged + _fields(("city", 2)) + _row(b"Oslo") + pgwire.encode_raw(ord("C"), b"SELECT 1\0")
        + pgwire.ready_for_query("I")
    )  # fmt: skip
    assert _types(out) == "TDCZ"


# -- which errors and notices keep the server's text ------------------------------------

STATUS = ColumnRef("public", "orders", "status", type_oid=25)


class _TwoTables:
    """customers (email masked, city) and orders (status), as a catalog."""

    def __init__(self) -> None:
        from server.gateway.catalog import CatalogSnapshot

        customers, orders = (EMAIL, CITY), (STATUS,)
        self.current = CatalogSnapshot(
            {(OID, 1): EMAIL, (OID, 2): CITY, (OID + 1, 1): STATUS},
            {OID: customers, OID + 1: orders},
            loaded_at=0.0,
        )

    def reload_soon(self) -> None:
        pass

    def reload_missing(self) -> None:
        self.reload_soon()

    def reload_if_old(self) -> None:
        pass


def _two_table_relay() -> Relay:
    relay = Relay()
    MaskingHooks(RULES, _TwoTables(), session_id="s-1").install(relay)  # type: ignore[arg-type]
    return relay


def test_the_catalog_is_reloaded_once_ddl_is_committed() -> None:
    """A column added or a view replaced through the gateway is known at once, not
    at the snapshot's age: once the DDL is committed (ReadyForQuery ``I``), and
    at most once a second per connection."""
    catalog = _TwoTables()
    asked: list[None] = []
    catalog.reload_soon = lambda: asked.append(None)  # type: ignore[method-assign]
    relay = Relay()
    MaskingHooks(RULES, catalog, session_id="s-1").install(relay)  # type: ignore[arg-type]

    def run(sql: str, tag: bytes, status: str) -> None:
        relay.from_client(Query(sql).encode())
        relay.from_server(pgwire.encode_raw(ord("C"), tag + b"\0") + pgwire.ready_for_query(status))

    run("begin", b"BEGIN", "T")
    run("alter table orders add column ssn_x text", b"ALTER TABLE", "T")
    assert asked == []  # not committed: the catalog's connection would not see it
    run("commit", b"COMMIT", "I")
    assert len(asked) == 1
    run("select status from orders", b"SELECT 0", "I")
    run("create view v as select status from orders", b"CREATE VIEW", "I")
    assert len(asked) == 1  # within the second: asked at a later ReadyForQuery


def test_an_old_catalog_is_asked_for_once_a_query_is_answered() -> None:
    """The hooks read the catalog's snapshot and never reload it themselves: each
    ReadyForQuery asks the catalog to reload it if it has grown old."""
    catalog = _TwoTables()
    asked: list[None] = []
    catalog.reload_if_old = lambda: asked.append(None)  # type: ignore[method-assign]
    relay = Relay()
    MaskingHooks(RULES, catalog, session_id="s-1").install(relay)  # type: ignore[arg-type]
    relay.from_client(Query("select status from orders").encode())
    relay.from_server(pgwire.encode_raw(ord("C"), b"SELECT 0\0"))
    assert asked == []
    relay.from_server(pgwire.ready_for_query("I"))
    assert len(asked) == 1


@pytest.mark.parametrize(
    ("sql", "reloads"),
    [
        ("select status::int from orders", 0),
        ("fetch 10 from c", 0),  # what it reads cannot be told, but no name is missing
        ("select status::int from created_since", 1),  # the catalog may not have it yet
    ],
)
def test_only_a_name_no_schema_holds_reloads_the_catalog(sql: str, reloads: int) -> None:
    catalog = _TwoTables()
    asked: list[None] = []
    catalog.reload_soon = lambda: asked.append(None)  # type: ignore[method-assign]
    relay = Relay()
    MaskingHooks(RULES, catalog, session_id="s-1").install(relay)  # type: ignore[arg-type]
    _answer(relay, sql, b"", _error("22P02", BAD_INT))
    assert len(asked) == reloads


def test_connections_that_miss_a_relation_share_the_catalog_s_ask() -> None:
    """The ask to reload for a relation created since is the catalog's to limit
    (``Catalog.reload_missing``), not each connection's: both connections'
    misses reach it, and the hooks ask for nothing more than it does."""
    catalog = _TwoTables()
    missed: list[None] = []
    catalog.reload_missing = lambda: missed.append(None)  # type: ignore[method-assign]
    catalog.reload_soon = lambda: pytest.fail("only the catalog asks")  # type: ignore[method-assign]
    for session in ("s-1", "s-2"):
        relay = Relay()
        MaskingHooks(RULES, catalog, session_id=session).install(relay)  # type: ignore[arg-type]
        _answer(relay, "select status::int from created_since", b"", _error("22P02", BAD_INT))
    assert len(missed) == 2


def _error(code: str, message: str, detail: str | None = None) -> bytes:
    fields = {"S": "ERROR", "V": "ERROR", "C": code, "M": message}
    if detail is not None:
        fields["D"] = detail
    return ErrorResponse(fields).encode()


def _answer(relay: Relay, sql: str, before: bytes, error: bytes) -> dict[str, str]:
    relay.from_client(Query(sql).encode())
    out, _ = relay.from_server(before + error + pgwire.ready_for_query("I"))
    errors = [
        pgwire.decode_backend(m)
        for m in pgwire.split_frames(out)[0]
        if m.type in (ord("E"), ord("N"))
    ]
    assert len(errors) == 1
    return errors[0].fields  # type: ignore[union-attr]


DONE = pgwire.encode_raw(ord("C"), b"SELECT 1\0")
BAD_INT = 'invalid input syntax for type integer: "paid"'


@pytest.mark.parametrize(
    ("sql", "before", "error", "kept"),
    [
        # A statement on a table without masked columns: the server's own text.
        ("select status::int from orders", b"", _error("22P02", BAD_INT), True),
        ("select 1/0", b"", _error("22012", "division by zero"), True),
        # Only the statement that failed counts in a Query of several.
        ("select email from customers; select status::int from orders",
         _fields(("email", 1)) + _row(b"ann@example.com") + DONE, _error("22P02", BAD_INT), True),
        # A relation that does not exist: raised before anything is read.
        ("select * from custmers", b"",
         _error("42P01", 'relation "custmers" does not exist'), True),
        ("select * from app.custmers", b"",
         _error("42P01", 'relation "app.custmers" does not exist'), True),
        # Attacks: the failing statement reads a masked table, wherever it is.
        ("select status from orders; select email::int from customers", DONE,
         _error("22P02", 'invalid input syntax for type integer: "ann@example.com"'), False),
        ("select city from customers", b"",
         _error("22P02", 'invalid input syntax for type integer: "ann@example.com"'), False),
        # A 42P01 quoting a value, not the name the statement wrote.
        ("select x::regclass from newview", b"",
         _error("42P01", 'relation "ann@example.com" does not exist'), False),
        # A missing relation next to a masked table.
        ("select email::regclass from customers, nosuch", b"",
         _error("42P01", 'relation "nosuch" does not exist'), False),
        # What runs cannot be seen.
        ("fetch all from c", b"", _error("22P02", BAD_INT), False),
    ],
)  # fmt: skip
def test_errors_keep_their_text_unless_the_failing_statement_touches_masked_columns(
    sql: str, before: bytes, error: bytes, kept: bool
) -> None:
    sent = pgwire.decode_backend(pgwire.split_frames(error)[0][0]).fields  # type: ignore[union-attr]
    got = _answer(_two_table_relay(), sql, before, error)
    if kept:
        assert got == sent
    else:
        assert "withheld" in got["M"] and got["C"] == sent["C"]
        assert "ann@" not in got["M"] and "paid" not in got["M"]


def test_notices_keep_their_text_on_tables_without_masked_columns() -> None:
    from server.gateway.pgwire import NoticeResponse

    quoted = 'skipping: "paid"'
    notice = NoticeResponse({"S": "NOTICE", "C": "00000", "M": quoted}).encode()
    relay = _two_table_relay()
    relay.from_client(Query("select status from orders").encode())
    out, _ = relay.from_server(notice + pgwire.ready_for_query("I"))
    assert b'"paid"' in out
    relay.from_client(Query("select city from customers").encode())
    out, _ = relay.from_server(notice + pgwire.ready_for_query("I"))
    assert b'"paid"' not in out and b'"***"' in out


def test_a_query_of_several_hides_the_literals_of_its_masked_statements_only() -> None:
    events: list[dict[str, Any]] = []
    relay = Relay()
    MaskingHooks(
        RULES,
        _TwoTables(),  # type: ignore[arg-type]
        session_id="s-1",
        record=recording_to(lambda _sid, _kind, data: events.append(dict(data))),
    ).install(relay)
    relay.from_client(
        Query("select status from orders where status = 'paid' and 7 > 1; "
              "select city from customers where email = 'ann@example.com' and 8 > 1").encode()
    )  # fmt: skip
    relay.from_server(DONE + DONE + pgwire.ready_for_query("I"))
    (event,) = events
    assert "'paid'" in event["text"] and "7 > 1" in event["text"]
    assert "ann@example.com" not in event["text"] and "8 > 1" not in event["text"]
    # One statement: as before, every literal of a masked statement is hidden.
    relay.from_client(Query("select city from customers where email = 'ann@example.com'").encode())
    relay.from_server(DONE + pgwire.ready_for_query("I"))
    assert "ann@example.com" not in events[1]["text"]


@pytest.mark.parametrize(
    ("column", "field", "value"),
    [
        # A computed column: its plan reads the statement's lineage.
        ("upper(city)", ("upper", 0), b"OSLO"),
        # A masked column: masked, and the recording hides the literals of each
        # statement that reads it.
        ("email", ("email", 1), b"a@example.com"),
    ],
)
def test_a_query_of_many_statements_costs_work_in_proportion_to_them(
    monkeypatch: pytest.MonkeyPatch, column: str, field: tuple[str, int], value: bytes
) -> None:
    """Each statement of a Query gets a result of its own, and each result is
    planned: what is read about the whole Query is read once, not once per
    result (thousands of ``select 1;`` in one Query cost the square of their
    number on the event loop, minutes of it, before)."""
    from server.gateway.sqlcheck.model import Statement

    walked = [0]
    walk = Statement.walk

    def counted(self: Statement) -> Any:
        walked[0] += 1
        return walk(self)

    monkeypatch.setattr(Statement, "walk", counted)
    n = 2_000
    events: list[dict[str, Any]] = []
    relay = _relay(events)
    relay.from_client(Query(f"select {column} from customers where id > 1;" * n).encode())
    walked[0] = 0
    one = _fields(field) + _row(value) + pgwire.encode_raw(ord("C"), b"SELECT 1\0")
    out, _ = relay.from_server(one * n + pgwire.ready_for_query("I"))
    assert out.count(b"OSLO" if value == b"OSLO" else b"@example.com") == n
    assert walked[0] <= 10 * n, walked[0]
    assert len(events) == 1


def _ready() -> bytes:
    return pgwire.ready_for_query("I")


def _email_comes_back_masked(relay: Relay) -> None:
    """The next Query's result is taken for its own: its email column is masked."""
    relay.from_client(Query("select email from customers").encode())
    out, _ = relay.from_server(
        _fields(("email", 1))
        + _row(b"ann@example.com")
        + CommandComplete("SELECT 1").encode()
        + _ready()
    )
    assert b"ann@example.com" not in out and b"@example.com" in out


def test_a_sync_read_by_a_copy_is_owed_no_answer() -> None:
    """libpq's COPY FROM STDIN in the extended protocol sends a Sync right after the
    Execute, which the COPY reads and never answers: nothing may wait for it, or
    every later result is taken for the one before it."""
    events: list[dict[str, Any]] = []
    relay = _relay(events)
    copy = Parse("", "copy customers(city) from stdin").encode() + Bind("", "").encode()
    relay.from_client(copy + Describe("P", "").encode() + Execute("", 0).encode() + Sync().encode())
    relay.from_server(
        ParseComplete().encode()
        + BindComplete().encode()
        + NoData().encode()
        + CopyInResponse(0, [0]).encode()
    )
    relay.from_client(CopyData(b"Paris\n").encode() + CopyDone().encode() + Sync().encode())
    relay.from_server(CommandComplete("COPY 1").encode() + _ready())
    assert not relay.busy
    _email_comes_back_masked(relay)
    assert not relay.busy


def test_what_the_server_skips_after_an_error_is_owed_no_answer() -> None:
    """After an error the server skips what comes before the next Sync, a Query
    too: nothing may wait for its answer."""
    relay = _relay([])
    relay.from_client(Parse("", "selec").encode() + Flush().encode())
    relay.from_server(pgwire.error_response("ERROR", "42601", "syntax error"))
    relay.from_client(Query("select 1").encode() + Sync().encode())
    relay.from_server(_ready())
    assert not relay.busy
    _email_comes_back_masked(relay)
