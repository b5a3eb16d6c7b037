"""Result limits without sockets: server bytes in, what the client and the server
get out, when the statement is cancelled, and what is recorded."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.gateway import pgwire
from server.gateway import relay as relay_module
from server.gateway.masking import ColumnRef, MaskingRules
from server.gateway.masking_relay import MaskingHooks
from server.gateway.pgwire import (
    Bind,
    BindComplete,
    CommandComplete,
    CopyData,
    CopyDone,
    CopyOutResponse,
    DataRow,
    Execute,
    Field,
    Flush,
    NotificationResponse,
    Parse,
    ParseComplete,
    PortalSuspended,
    Query,
    RawMessage,
    RowDescription,
    Sync,
)
from server.gateway.relay import Relay
from server.gateway.result_limit import Caps, ResultLimit, size_text
from server.policy.model import MaskMethod, MaskRule
from tests.fix_relay import StaticCatalog, recording_to, types

# The walks the relay uses, before any test switches them to the Python ones.
NATIVE_SCAN = relay_module._scan
NATIVE_RUN = relay_module._run


@pytest.fixture(params=["native", "python"], autouse=True)
def walks(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Every test runs with the C header walks and with their Python fallbacks."""
    if request.param == "python":
        monkeypatch.setattr(relay_module, "_scan", relay_module._scan_py)
        monkeypatch.setattr(relay_module, "_run", relay_module._run_py)
    elif relay_module._scan is relay_module._scan_py:
        pytest.skip("the C core was not built")
    yield request.param


class Recorded(list[tuple[str, str, dict[str, object]]]):
    def __call__(self, session_id: str, kind: str, data: dict[str, object]) -> None:
        self.append((session_id, kind, data))


def limited(rows: int | None = 3, nbytes: int | None = None) -> tuple[Relay, ResultLimit, Recorded]:
    relay = Relay()
    recorded = Recorded()
    limit = ResultLimit(Caps(rows, nbytes, "read"), session_id="s-1", record=recording_to(recorded))
    limit.install(relay)
    return relay, limit, recorded


def wire(*msgs: pgwire.Message) -> bytes:
    return b"".join(m.encode() for m in msgs)


def row(i: int, width: int = 1) -> bytes:
    return DataRow([str(i).encode().rjust(width, b"x")]).encode()


def rows(n: int, start: int = 1, width: int = 1) -> bytes:
    return b"".join(row(i, width) for i in range(start, start + n))


T = RowDescription([Field("n", 0, 0, 25, -1, -1, 0)]).encode()


def tag(text: str) -> bytes:
    return CommandComplete(text).encode()


def z(status: str = "I") -> bytes:
    return pgwire.ready_for_query(status)


def cancelled() -> bytes:
    return pgwire.error_response("ERROR", "57014", "canceling statement due to user request")


def errors(data: bytes) -> list[dict[str, str]]:
    found = []
    for msg in pgwire.split_frames(data)[0]:
        if msg.type == ord("E"):
            decoded = pgwire.decode_backend(msg)
            assert isinstance(decoded, pgwire.ErrorResponse)
            found.append(decoded.fields)
    return found


def status(data: bytes) -> str:
    last = pgwire.split_frames(data)[0][-1]
    assert last.type == ord("Z")
    return chr(last.body[0])


# --- under the limit: untouched ---------------------------------------------------------


def test_results_within_the_limits_pass_byte_for_byte() -> None:
    relay, _limit, recorded = limited(rows=3, nbytes=1000)
    up, back = relay.from_client(Query("select 1; select 2").encode())
    assert back == b""
    server = T + rows(3) + tag("SELECT 3") + T + rows(3) + tag("SELECT 3") + z()
    out, up = relay.from_server(server)
    assert out == server and up == b""
    assert not relay.cancel_wanted and not relay.holding and recorded == []


def test_each_statement_of_a_query_has_its_own_budget_even_in_one_chunk() -> None:
    relay, _limit, _ = limited(rows=3)
    relay.from_client(Query("select 1; select 2; select 3").encode())
    server = T + rows(3) + tag("SELECT 3") + T + rows(2) + tag("SELECT 2") + T + rows(3)
    out, _ = relay.from_server(server)
    assert out == server
    out, _ = relay.from_server(tag("SELECT 3") + z())
    assert types(out) == "CZ"


def test_a_result_at_the_limit_passes_over_many_chunks() -> None:
    relay, _limit, _ = limited(rows=None, nbytes=10 * len(row(1, 2)))
    relay.from_client(Query("select").encode())
    assert relay.from_server(T + rows(4, width=2))[0] == T + rows(4, width=2)
    assert relay.from_server(rows(6, 5, width=2))[0] == rows(6, 5, width=2)
    assert types(relay.from_server(tag("SELECT 10") + z())[0]) == "CZ"


# --- the cut, simple protocol -------------------------------------------------------------


def test_a_finished_result_over_the_row_limit_is_cut_and_the_next_statement_waits() -> None:
    relay, limit, recorded = limited(rows=3)
    relay.from_client(Query("select * from t where a = 'secret'").encode())
    out, up = relay.from_server(T + rows(5) + tag("SELECT 5") + z())
    assert types(out) == "TDDDEZ" and up == b""
    assert out.startswith(T + rows(3))
    [error] = errors(out)
    assert error["C"] == "54000"
    assert error["M"] == (
        "dbaccess: the result passed max_result_rows (3 rows) and was cut after 3 rows "
        f"({size_text(len(rows(3)))})"
    )
    assert "max_result_rows" in error["H"] and "scope read" in error["H"]
    assert "LIMIT" in error["H"]
    assert error["D"] == (
        "the server had finished the statement (SELECT 5) before the gateway stopped it"
    )
    assert status(out) == "I"
    # The cancel is asked for; the client's next statement waits until it went out.
    assert relay.cancel_wanted and relay.holding and relay.busy
    up, back = relay.from_client(Query("select 1").encode())
    assert up == b"" and back == b""
    up, back = relay.cancel_done()
    assert up == Query("select 1").encode() and back == b""
    assert not relay.holding
    out, _ = relay.from_server(T + rows(1) + tag("SELECT 1") + z())
    assert types(out) == "TDCZ"
    [(session, kind, data)] = recorded
    assert (session, kind) == ("s-1", "limit")
    assert data["limit"] == "max_result_rows" and data["value"] == 3
    assert data["action"] == "cut" and data["sqlstate"] == "54000"
    assert data["rows"] == 3 and data["bytes"] == len(rows(3))
    assert data["completed"] == "SELECT 5"
    assert data["statement"] == "select * from t where a = '[redacted]'"
    assert limit.cuts == 1


def test_a_streaming_result_is_cut_in_the_chunk_that_overspends_and_the_rest_dropped() -> None:
    relay, _limit, recorded = limited(rows=None, nbytes=5 * len(row(1, 100)))
    relay.from_client(Query("select repeat('x', 100) from generate_series(1, 1e7)").encode())
    out, _ = relay.from_server(T + rows(3, width=100))
    assert out == T + rows(3, width=100)
    out, _ = relay.from_server(rows(4, 4, width=100))
    assert out == rows(2, 4, width=100)
    assert relay.cancel_wanted
    for _ in range(3):
        assert relay.from_server(rows(50, width=100)) == (b"", b"")
    # The cancel lands: the server's 57014 and ReadyForQuery become the client's
    # 54000 and ReadyForQuery.
    out, _ = relay.from_server(rows(2, width=100) + cancelled() + z())
    assert types(out) == "EZ"
    [error] = errors(out)
    assert error["C"] == "54000" and "max_result_bytes (" in error["M"] and "D" not in error
    assert "cut after 5 rows" in error["M"]
    assert recorded[0][2]["bytes"] == 5 * len(row(1, 100))
    assert "completed" not in recorded[0][2]
    assert relay.holding  # until the cancel is done
    assert relay.cancel_done() == (b"", b"")
    assert not relay.holding and not relay.busy


def _feed_in_pieces(relay: Relay, data: bytes, piece: int = 65536) -> bytes:
    return b"".join(relay.from_server(data[i : i + piece])[0] for i in range(0, len(data), piece))


def test_a_row_over_the_byte_limit_is_cut_on_its_length_word_and_its_body_never_held() -> None:
    relay, _limit, recorded = limited(rows=None, nbytes=1 << 20)
    relay.from_client(Query("select repeat('x', 50000000)").encode())
    huge = DataRow([b"x" * 5_000_000]).encode()
    # The header and the start of the body: the cut starts at once.
    out, up = relay.from_server(T + huge[:1000])
    assert out == T and up == b""
    assert relay.cancel_wanted and relay.cutting
    # The rest is discarded as it arrives: nothing of it is kept.
    for i in range(1000, len(huge), 65536):
        assert relay.from_server(huge[i : i + 65536]) == (b"", b"")
        assert relay._server_partial is None
    out = _feed_in_pieces(relay, cancelled() + z(), 3)
    assert types(out) == "EZ"
    [error] = errors(out)
    assert error["C"] == "54000" and "max_result_bytes (1MB)" in error["M"]
    assert "cut after 0 rows" in error["M"]
    assert recorded[0][2]["bytes"] == 0
    relay.cancel_done()
    # The connection goes on.
    relay.from_client(Query("select 1").encode())
    assert relay.from_server(T + rows(1) + tag("SELECT 1") + z())[0] == (
        T + rows(1) + tag("SELECT 1") + z()
    )


def test_large_rows_after_the_cut_are_discarded_without_being_gathered() -> None:
    relay, _limit, _ = limited(rows=2)
    relay.from_client(Query("select").encode())
    big = DataRow([b"y" * 300_000]).encode()
    out, _ = relay.from_server(T + rows(3))
    assert types(out) == "TDD" and relay.cutting
    for _ in range(3):
        for i in range(0, len(big), 65536):
            assert relay.from_server(big[i : i + 65536]) == (b"", b"")
            assert relay._server_partial is None
    out = _feed_in_pieces(relay, cancelled() + z())
    assert types(out) == "EZ" and errors(out)[0]["C"] == "54000"


def test_a_large_row_within_the_budget_passes_whole_in_pieces() -> None:
    big = DataRow([b"z" * 300_000]).encode()
    relay, _limit, _ = limited(rows=None, nbytes=len(big) + 10)
    relay.from_client(Query("select").encode())
    server = T + big + tag("SELECT 1") + z()
    assert _feed_in_pieces(relay, server, 7000) == server
    assert not relay.busy


def test_a_huge_error_is_clipped_on_its_length_word_and_its_sqlstate_kept() -> None:
    relay, _limit, _ = limited(rows=3)
    relay.from_client(Query("select repeat('x', 50000000)::int").encode())
    value = "x" * 5_000_000
    huge = pgwire.error_response(
        "ERROR", "22P02", f'invalid input syntax for type integer: "{value}"'
    )
    notice = pgwire.notice_response("NOTICE", "00000", "n" * 100_000)
    out = []
    for i in range(0, len(huge), 65536):
        out.append(relay.from_server(huge[i : i + 65536])[0])
        assert relay._server_partial is None or relay._server_partial.have <= 70_000
    out.append(relay.from_server(z())[0])
    got = b"".join(out)
    assert types(got) == "EZ"
    [error] = errors(got)
    assert error["C"] == "22P02" and error["S"] == "ERROR"
    assert error["M"].startswith("invalid input syntax for type integer")
    assert error["M"].endswith("... [clipped by dbaccess]")
    assert len(error["M"].encode()) <= relay_module.FIELD_MAX
    # Whole in one chunk, the same.
    relay.from_client(Query("select").encode())
    whole, _ = relay.from_server(notice + huge + z())
    assert types(whole) == "NEZ" and len(whole) < 3 * relay_module.FIELD_MAX + 100
    assert errors(whole) == [error]


def test_a_cancelled_statement_in_a_transaction_block_leaves_it_aborted() -> None:
    relay, _limit, _ = limited(rows=2)
    relay.from_client(Query("select big").encode())
    out, up = relay.from_server(T + rows(5) + cancelled() + z("E"))
    assert types(out) == "TDDEZ" and status(out) == "E" and up == b""


def test_a_finished_statement_in_a_transaction_block_is_aborted_upstream_too() -> None:
    relay, _limit, _ = limited(rows=2)
    relay.from_client(Query("select small_but_over").encode())
    out, up = relay.from_server(T + rows(3) + tag("SELECT 3") + z("T"))
    # The client is told the transaction is aborted, and the server is made to agree.
    assert types(out) == "TDDEZ" and status(out) == "E"
    assert up == Query("dbaccess_result_limit").encode()
    relay.cancel_done()
    assert relay.holding  # until the failing query is answered
    up, _ = relay.from_client(Query("commit").encode())
    assert up == b""
    refusal = pgwire.error_response("ERROR", "42601", 'syntax error at or near "dbaccess"')
    out, up = relay.from_server(refusal + z("E"))
    assert out == b"" and up == Query("commit").encode()
    assert not relay.holding
    out, _ = relay.from_server(tag("ROLLBACK") + z())
    assert types(out) == "CZ" and relay.ready == relay.asked == 2


def test_statements_already_in_flight_behind_it_are_not_cancelled() -> None:
    relay, _limit, recorded = limited(rows=2)
    relay.from_client(Query("select big").encode() + Query("select 1").encode())
    out, _ = relay.from_server(T + rows(3))
    assert types(out) == "TDD"
    # A cancel could land on "select 1": the gateway only discards.
    assert not relay.cancel_wanted
    out, _ = relay.from_server(rows(100) + tag("SELECT 103") + z("T"))
    assert types(out) == "EZ" and status(out) == "T"  # nothing aborted it: said as it is
    assert not relay.holding
    out, _ = relay.from_server(T + rows(1) + tag("SELECT 1") + z("T"))
    assert types(out) == "TDCZ"
    assert len(recorded) == 1


def test_notifications_and_notices_still_reach_the_client_during_a_cut() -> None:
    relay, _limit, _ = limited(rows=1)
    relay.from_client(Query("select").encode())
    note = NotificationResponse(7, "jobs", "done").encode()
    out, _ = relay.from_server(T + rows(3) + note + rows(3))
    assert types(out) == "TDA"
    out, _ = relay.from_server(cancelled() + z())
    assert types(out) == "EZ"


def test_copy_to_stdout_is_cut_by_its_copy_data() -> None:
    relay, _limit, recorded = limited(rows=3)
    relay.from_client(Query("copy (select 1) to stdout").encode())
    head = CopyOutResponse(0, []).encode()
    data = b"".join(CopyData(f"{i}\n".encode()).encode() for i in range(5))
    out, _ = relay.from_server(head + data + CopyDone().encode() + tag("COPY 5") + z())
    assert types(out) == "HdddEZ"
    assert errors(out)[0]["C"] == "54000"
    assert recorded[0][2]["rows"] == 3


# --- the cut, extended protocol ---------------------------------------------------------


def extended(portal: str = "", max_rows: int = 0, sync: bool = True) -> bytes:
    msgs: list[pgwire.Message] = [
        Parse("", "select * from t"),
        Bind(portal, ""),
        Execute(portal, max_rows),
    ]
    msgs.append(Sync() if sync else Flush())
    return wire(*msgs)


def test_an_execute_over_the_limit_is_cut_and_the_pipeline_ends_in_one_error() -> None:
    relay, _limit, recorded = limited(rows=3)
    relay.from_client(extended())
    answers = ParseComplete().encode() + BindComplete().encode()
    out, _ = relay.from_server(answers + rows(4) + tag("SELECT 4") + z())
    assert types(out) == "12DDDEZ"
    assert relay.cancel_wanted
    relay.cancel_done()
    assert recorded[0][2]["statement"] == "select * from t"


def test_a_suspended_portal_keeps_counting_when_it_is_resumed() -> None:
    relay, _limit, _ = limited(rows=3)
    relay.from_client(wire(Query("begin")))
    relay.from_server(tag("BEGIN") + z("T"))
    relay.from_client(extended("c", 2))
    answers = ParseComplete().encode() + BindComplete().encode()
    out, _ = relay.from_server(answers + rows(2) + PortalSuspended().encode() + z("T"))
    assert types(out) == "12DDsZ"
    # Resumed after the Sync: one more row fits, the second does not.
    relay.from_client(wire(Execute("c", 2), Sync()))
    out, up = relay.from_server(rows(2, 3) + PortalSuspended().encode() + z("T"))
    assert types(out) == "DEZ" and status(out) == "E"
    assert up == Query("dbaccess_result_limit").encode()
    assert "cut after 3 rows" in errors(out)[0]["M"]


def test_a_portal_bound_again_starts_from_nothing() -> None:
    relay, _limit, _ = limited(rows=3)
    relay.from_client(extended("c", 2))
    relay.from_server(ParseComplete().encode() + BindComplete().encode() + rows(2))
    relay.from_server(PortalSuspended().encode() + z("T"))
    relay.from_client(wire(Bind("c", ""), Execute("c", 0), Sync()))
    out, _ = relay.from_server(BindComplete().encode() + rows(3) + tag("SELECT 3") + z("T"))
    assert types(out) == "2DDDCZ"


def test_the_transaction_end_forgets_suspended_portals() -> None:
    relay, limit, _ = limited(rows=3)
    relay.from_client(extended("c", 2))
    relay.from_server(ParseComplete().encode() + BindComplete().encode() + rows(2))
    relay.from_server(PortalSuspended().encode() + z("T"))
    assert limit.suspended == {b"c": (2, len(rows(2)))}
    relay.from_client(wire(Query("commit")))
    relay.from_server(tag("COMMIT") + z("I"))
    assert limit.suspended == {}


def test_a_pipeline_not_yet_synced_is_made_to_skip_to_the_clients_sync() -> None:
    relay, _limit, _ = limited(rows=2)
    relay.from_client(extended(sync=False))
    answers = ParseComplete().encode() + BindComplete().encode()
    out, up = relay.from_server(answers + rows(3))
    assert types(out) == "12DD"
    # A Bind that cannot succeed follows the Execute: the server skips to the Sync.
    assert up == Bind("dbaccess: result limit", "dbaccess: result limit").encode()
    assert relay.cancel_wanted
    out, _ = relay.from_server(rows(5) + tag("SELECT 8"))
    assert out == b""
    failed = pgwire.error_response("ERROR", "26000", "prepared statement does not exist")
    out, _ = relay.from_server(failed)
    assert types(out) == "E" and errors(out)[0]["C"] == "54000"
    up, _ = relay.from_client(Sync().encode())
    assert up == b""  # the cancel is not out yet
    up, back = relay.cancel_done()
    assert up == Sync().encode() and back == b""
    out, _ = relay.from_server(z())
    assert types(out) == "Z" and relay.ready == relay.asked == 1 and not relay.busy


# --- masking's run hooks count too ------------------------------------------------------


def test_rows_taken_by_a_run_hook_spend_the_budget_and_the_one_over_is_cut() -> None:
    relay = Relay()
    seen: list[int] = []

    def per_row(raw: RawMessage, r: Relay) -> bytes | None:
        seen.append(1)
        return None

    def run(buf: bytes, pos: int, r: Relay) -> tuple[int, bytes] | None:
        stop = relay_module._run(buf, pos)[0]
        return stop, buf[pos:stop]

    relay.on_server(b"D", per_row)
    relay.on_server_run(b"D", run)
    ResultLimit(Caps(5, None, "read")).install(relay)
    relay.from_client(Query("select").encode())
    out, _ = relay.from_server(T + rows(3))
    assert out == T + rows(3) and seen == []  # one run, within the budget
    out, _ = relay.from_server(rows(4, 4))
    # The run would overspend: its rows go one by one, and the third is cut.
    assert out == rows(2, 4) and len(seen) == 2
    out, _ = relay.from_server(cancelled() + z())
    assert types(out) == "EZ"


def test_walks_agree() -> None:
    data = T + rows(3) + CopyData(b"x\n").encode() + tag("SELECT 3") + z() + row(9)[:4]
    flags = bytes(256)
    assert relay_module._scan_py(data, flags) == (
        len(data) - 4,
        1,
        0,
        4,
        len(rows(3)) + len(CopyData(b"x\n").encode()),
    )
    if NATIVE_SCAN is not relay_module._scan_py:
        assert NATIVE_SCAN(data, flags) == relay_module._scan_py(data, flags)
        assert NATIVE_RUN(data, len(T)) == relay_module._run_py(data, len(T))


# --- wherever the server's bytes are split, and with masking ------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=0, max_value=12),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=8),
    st.booleans(),
)
def test_where_the_chunks_end_changes_nothing(n: int, splits: list[int], by_bytes: bool) -> None:
    one = len(row(1, 20))
    server = T + rows(n, width=20) + tag(f"SELECT {n}") + z()

    def feed(cuts: list[int]) -> bytes:
        relay, _limit, _ = limited(None, 5 * one) if by_bytes else limited(5, None)
        relay.from_client(Query("select").encode())
        out, last = [], 0
        for cut in [*sorted({c % (len(server) + 1) for c in cuts}), len(server)]:
            out.append(relay.from_server(server[last:cut])[0])
            last = cut
        relay.cancel_done()
        assert not relay.busy
        return b"".join(out)

    whole = feed([])
    assert feed(splits) == whole
    assert types(whole) == ("TDDDDDEZ" if n > 5 else "T" + "D" * n + "CZ")


OID = 16400
COLUMNS = (
    ColumnRef("public", "customers", "email", type_oid=25),
    ColumnRef("public", "customers", "city", type_oid=25),
)


def test_a_masked_result_is_cut_after_masking_and_the_error_keeps_its_text() -> None:
    relay = Relay()
    recorded = Recorded()
    rules = MaskingRules((MaskRule(column="public.customers.email", method=MaskMethod.REDACT),))
    MaskingHooks(
        rules,
        StaticCatalog(OID, COLUMNS),  # type: ignore[arg-type]
        session_id="s-1",
        record=recording_to(recorded),
    ).install(relay)
    ResultLimit(Caps(2, None, "read"), session_id="s-1", record=recording_to(recorded)).install(
        relay
    )
    relay.from_client(Query("select email, city from customers").encode())
    described = RowDescription(
        [Field(c.column, OID, i + 1, 25, -1, -1, 0) for i, c in enumerate(COLUMNS)]
    ).encode()
    server = described + b"".join(
        DataRow([f"u{i}@example.com".encode(), b"Paris"]).encode() for i in range(4)
    )
    out, _ = relay.from_server(server + cancelled() + z())
    # (S: masking's report of the masked columns)
    assert types(out) == "TDDESZ"
    assert b"example.com" not in out
    [error] = errors(out)
    assert error["C"] == "54000" and "max_result_rows" in error["M"]
    kinds = [kind for _session, kind, _data in recorded]
    assert kinds == ["limit", "statement"]
    assert recorded[1][2]["sqlstate"] == "54000"


_FRAME = st.one_of(
    st.builds(lambda n: row(n, 3), st.integers(min_value=0, max_value=999)),
    st.just(z()),
    st.just(tag("SELECT 1")),
    st.just(CopyData(b"a\tb\n").encode()),
    st.binary(max_size=12),  # anything: bad length words, a message cut short
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_FRAME, max_size=12), st.booleans(), st.integers(min_value=0, max_value=200))
def test_the_c_walks_give_what_the_python_walks_give(
    frames: list[bytes], flagged: bool, pos: int
) -> None:
    if NATIVE_SCAN is relay_module._scan_py:
        pytest.skip("the C core was not built")
    data = b"".join(frames)
    hooked = bytes(1 if t in b"CZ" else 0 for t in range(256)) if flagged else None
    assert NATIVE_SCAN(data, hooked) == relay_module._scan_py(data, hooked)
    pos = min(pos, len(data))
    assert NATIVE_RUN(data, pos) == relay_module._run_py(data, pos)


# --- with the row budget's EXPLAIN waiting behind the cut ------------------------------------


def test_a_cut_ends_before_the_row_budgets_explain_goes() -> None:
    from server.gateway.guardrails import GuardrailRules
    from server.gateway.row_budget import explain_sql
    from server.gateway.statements import StatementGuard
    from tests.fix_relay import FACTS

    relay = Relay()
    rules = GuardrailRules.preset("write")
    rules = GuardrailRules(
        **{
            **{n: getattr(rules, n) for n in rules.__dataclass_fields__ if not n.startswith("_")},
            "max_rows_by_explain": 3,
        }
    )
    StatementGuard(rules, FACTS, approvals=None, audit=None).install(relay)
    ResultLimit(Caps(2, None, "write")).install(relay)
    delete = "delete from t where id = 1"
    up, _ = relay.from_client(Query("select * from t").encode() + Query(delete).encode())
    # The select goes; the delete waits for its EXPLAIN, which waits for the select.
    assert up == Query("select * from t").encode() + Flush().encode() and relay.holding
    out, up = relay.from_server(T + rows(4))
    assert types(out) == "TDD" and up == b""
    assert relay.cancel_wanted  # the delete is held, not sent: the cancel can only hit the select
    out, up = relay.from_server(tag("SELECT 4") + z())
    assert types(out) == "EZ" and errors(out)[0]["C"] == "54000"
    assert up == b""  # the EXPLAIN waits for the cancel too
    up, _ = relay.cancel_done()
    assert up == Query(explain_sql(delete)).encode()
    scan = {"Parent Relationship": "Outer", "Plan Rows": 1}
    plan = json.dumps([{"Plan": {"Node Type": "ModifyTable", "Plans": [scan]}}])
    explained = T + DataRow([plan.encode()]).encode() + tag("EXPLAIN") + z()
    out, up = relay.from_server(explained)
    assert out == b"" and up == Query(delete).encode()
    out, _ = relay.from_server(tag("DELETE 1") + z())
    assert types(out) == "CZ" and not relay.busy
