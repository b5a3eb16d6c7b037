"""The masking relay as an attacker meets it, without sockets: sensitive content in
columns no rule names, in COPY rows, notifications, parameter values and reports;
binary results of columns only their text can be masked from."""

from __future__ import annotations

from server.gateway import pgwire
from server.gateway.masking import ColumnRef, MaskingRules
from server.gateway.masking_relay import MaskingHooks
from server.gateway.pgwire import (
    BINARY,
    TEXT,
    Bind,
    CopyData,
    CopyOutResponse,
    DataRow,
    Describe,
    ErrorResponse,
    Execute,
    Field,
    FunctionCall,
    FunctionCallResponse,
    NotificationResponse,
    ParameterStatus,
    Parse,
    Query,
    RawMessage,
    RowDescription,
    Sync,
)
from server.gateway.relay import Relay
from server.policy.model import DetectorAction, DetectorKind, MaskMethod, MaskRule
from tests.fix_relay import StaticCatalog
from tests.fix_relay import row as _row
from tests.fix_relay import types as _types

OID = 16400
INT8, TEXT_OID = 20, 25
ID = ColumnRef("public", "people", "id", type_oid=INT8)
NOTE = ColumnRef("public", "people", "note", type_oid=TEXT_OID)
PHONE = ColumnRef("public", "people", "phone", type_oid=INT8)
SSN = ColumnRef("public", "people", "ssn", type_oid=TEXT_OID)
KEY = b"0123456789abcdef0123456789abcdef"
DETECTORS = {
    DetectorKind.EMAIL: DetectorAction.MASK,
    DetectorKind.CARD: DetectorAction.MASK,
    DetectorKind.SECRET: DetectorAction.BLOCK,
}
RULES = MaskingRules(
    (
        MaskRule(column="public.people.phone", method=MaskMethod.PARTIAL, keep_last=4),
        MaskRule(column="public.people.ssn", method=MaskMethod.REDACT),
    ),
    KEY,
    DETECTORS,
)
DETECTORS_ONLY = MaskingRules((), b"", DETECTORS)
CARD = b"4111111111111111"
EMAIL = b"ada@example.com"
AWS = b"AKIAIOSFODNN7EXAMPLE"


def _relay(rules: MaskingRules = RULES, before: list[bytes] | None = None) -> Relay:
    relay = Relay()
    if before is not None:
        # Stands for the guard, whose hooks are installed first and see what goes upstream.
        def guard(raw: RawMessage, _r: Relay) -> bytes | None:
            before.append(pgwire.encode_raw(raw.type, raw.body))
            return None

        relay.on_client(b"B", guard)
    hooks = MaskingHooks(
        rules,
        StaticCatalog(OID, (ID, NOTE, PHONE, SSN)) if rules.active else None,
        session_id="s-1",
    )  # type: ignore[arg-type]
    hooks.install(relay)
    return relay


_ATT = {"id": (1, INT8), "note": (2, TEXT_OID), "phone": (3, INT8), "ssn": (4, TEXT_OID)}


def _desc(*names: str, fmt: int = TEXT, formats: tuple[int, ...] = ()) -> bytes:
    fields = []
    for i, name in enumerate(names):
        att, oid = _ATT.get(name, (0, TEXT_OID))
        f = formats[i] if formats else fmt
        fields.append(Field(name, OID if att else 0, att, oid, -1, -1, f))
    return RowDescription(fields).encode()


def _end(tag: str = "SELECT 1") -> bytes:
    return pgwire.encode_raw(ord("C"), tag.encode() + b"\0") + pgwire.ready_for_query("I")


def _msgs(wire: bytes) -> list[pgwire.Message]:
    return [pgwire.decode_backend(m) for m in pgwire.split_frames(wire)[0]]


_PARSED_BOUND = pgwire.encode_raw(ord("1"), b"") + pgwire.encode_raw(ord("2"), b"")


def _execute_binary(relay: Relay, sql: str) -> None:
    """Parse, bind for binary results, describe and execute *sql* in the unnamed portal."""
    relay.from_client(
        Parse("", sql).encode()
        + Bind("", "", result_formats=[BINARY]).encode()
        + Describe("P", "").encode()
        + Execute("").encode()
        + Sync().encode()
    )


def _query(relay: Relay, sql: str, server: bytes) -> bytes:
    relay.from_client(Query(sql).encode())
    return relay.from_server(server)[0]


# --------------------------------------------------------------------------- rows


def test_a_card_in_a_column_no_rule_names_is_masked() -> None:
    relay = _relay()
    out = _query(
        relay,
        "select id, note from people",
        _desc("id", "note") + _row(b"1", b"paid with " + CARD + b", thanks") + _end(),
    )
    assert CARD not in out and b"paid with ***, thanks" in out


def test_detectors_run_alongside_rules_and_skip_what_a_rule_masked() -> None:
    relay = _relay()
    out = _query(
        relay,
        "select phone, note from people",
        _desc("phone", "note") + _row(b"4155552671", b"mail " + EMAIL) + _end(),
    )
    rows = [m for m in _msgs(out) if isinstance(m, DataRow)]
    assert rows[0].values == [b"***2671", b"mail ***"]


def test_a_blocked_kind_refuses_the_result_and_drops_the_rest() -> None:
    relay = _relay()
    out = _query(
        relay,
        "select id, note from people",
        _desc("id", "note")
        + _row(b"1", b"fine")
        + _row(b"2", b"key " + AWS)
        + _row(b"3", b"key " + AWS)
        + _end("SELECT 3"),
    )
    assert AWS not in out
    assert _types(out) == "TDEZ"
    err = _msgs(out)[2]
    assert isinstance(err, ErrorResponse) and err.sqlstate == "42501"
    assert "secret detector" in err.fields["M"] and "'note'" in err.fields["M"]


def test_a_number_that_passes_luhn_in_an_integer_column_becomes_null() -> None:
    relay = _relay()
    out = _query(relay, "select id from people", _desc("id") + _row(CARD) + _end())
    rows = [m for m in _msgs(out) if isinstance(m, DataRow)]
    assert rows[0].values == [None]


def test_a_target_with_detectors_and_no_rules_is_screened() -> None:
    relay = _relay(DETECTORS_ONLY)
    out = _query(relay, "select 'x' || 'y'", _desc("?column?") + _row(b"to " + EMAIL) + _end())
    assert EMAIL not in out and b"to ***" in out


def test_detectors_only_rows_of_an_undescribed_portal_are_screened_not_refused() -> None:
    relay = _relay(DETECTORS_ONLY)
    relay.from_client(
        Parse("", "select note from people").encode()
        + Bind("", "").encode()
        + Execute("").encode()
        + Sync().encode()
    )
    out, _ = relay.from_server(_PARSED_BOUND + _row(b"card " + CARD) + _end())
    assert CARD not in out and _types(out) == "12DCZ"


# --------------------------------------------------------------------------- COPY


def test_copy_out_of_clear_columns_is_refused_at_the_first_finding() -> None:
    relay = _relay()
    out = _query(
        relay,
        "COPY (select $$x$$) TO STDOUT",
        CopyOutResponse(0, [0]).encode()
        + CopyData(b"fine\n").encode()
        + CopyData(b"card " + CARD + b"\n").encode()
        + CopyData(b"more " + EMAIL + b"\n").encode()
        + pgwire.encode_raw(ord("c"), b"")
        + _end("COPY 3"),
    )
    assert CARD not in out and EMAIL not in out
    assert _types(out) == "HdEZ"
    err = _msgs(out)[2]
    assert isinstance(err, ErrorResponse) and "COPY row" in err.fields["M"]
    # The next statement is relayed as usual.
    again = _query(relay, "select 1", _desc("x") + _row(b"1") + _end())
    assert _types(again) == "TDCZ"


def test_copy_out_without_findings_passes_untouched() -> None:
    relay = _relay()
    server = (
        CopyOutResponse(0, [0]).encode()
        + CopyData(b"1\tLisbon\n").encode()
        + pgwire.encode_raw(ord("c"), b"")
        + _end("COPY 1")
    )
    assert _query(relay, "COPY (select 1, 'Lisbon') TO STDOUT", server) == server


def test_a_function_call_result_with_a_finding_leaves_as_null() -> None:
    relay = _relay(DETECTORS_ONLY)
    relay.from_client(FunctionCall(954, args=[b"\0\0\0\0"]).encode())  # loread
    out, _ = relay.from_server(
        FunctionCallResponse(b"%PDF ... card " + CARD + b" ...").encode()
        + pgwire.ready_for_query("I")
    )
    assert CARD not in out and _msgs(out)[0] == FunctionCallResponse(None)
    relay.from_client(FunctionCall(954, args=[b"\0\0\0\0"]).encode())
    out, _ = relay.from_server(
        FunctionCallResponse(b"key " + AWS).encode() + pgwire.ready_for_query("I")
    )
    assert AWS not in out and _types(out) == "EZ"


# --------------------------------------------------------------------------- asynchronous


def test_notification_payloads_leave_redacted_in_a_masked_session() -> None:
    relay = _relay()
    out, _ = relay.from_server(
        NotificationResponse(42, "people_changed", "078-05-1120").encode()
        + NotificationResponse(42, "people_changed", "").encode()
    )
    got = _msgs(out)
    assert got == [
        NotificationResponse(42, "people_changed", "***"),
        NotificationResponse(42, "people_changed", ""),
    ]


def test_notification_payloads_are_screened_with_detectors_only() -> None:
    relay = _relay(DETECTORS_ONLY)
    out, _ = relay.from_server(NotificationResponse(7, "c", "row 12 by " + EMAIL.decode()).encode())
    assert _msgs(out) == [NotificationResponse(7, "c", "row 12 by ***")]


def test_notifications_and_parameters_are_not_dropped_with_a_refused_result() -> None:
    relay = _relay()
    out = _query(
        relay,
        # A recursive CTE: where lower(n) comes from cannot be established.
        "with recursive r(n) as (select note from people union all select n from r where false) "
        "select lower(n) from r",
        _desc("lower")
        + _row(b"x")
        + NotificationResponse(9, "c", "payload").encode()
        + ParameterStatus("TimeZone", "Europe/Lisbon").encode()
        + _end(),
    )
    assert _types(out) == "EASZ"
    assert _msgs(out)[1] == NotificationResponse(9, "c", "***")
    assert _msgs(out)[2] == ParameterStatus("TimeZone", "Europe/Lisbon")


def test_a_parameter_set_by_a_function_leaves_redacted() -> None:
    relay = _relay()
    out = _query(
        relay,
        "select set_my_name()",
        _desc("set_my_name")
        + _row(b"")
        + pgwire.encode_raw(ord("C"), b"SELECT 1\0")
        + ParameterStatus("application_name", "Ada Lovelace").encode()
        + pgwire.ready_for_query("I"),
    )
    assert b"Ada Lovelace" not in out
    assert ParameterStatus("application_name", "***") in _msgs(out)


def test_a_parameter_the_client_set_itself_passes() -> None:
    relay = _relay()
    status = ParameterStatus("application_name", "nightly-report").encode()
    out = _query(
        relay,
        "SET application_name = 'nightly-report'",
        pgwire.encode_raw(ord("C"), b"SET\0") + status + pgwire.ready_for_query("I"),
    )
    assert status in out


# --------------------------------------------------------------------------- reports


def test_reports_are_screened_in_every_text_field() -> None:
    relay = _relay(DETECTORS_ONLY)
    out = _query(
        relay,
        "insert into people (note) values ('x')",
        pgwire.notice_response("NOTICE", "00000", "saw " + EMAIL.decode())
        + pgwire.error_response(
            "ERROR", "23514", "check failed", detail="Failing row contains (" + CARD.decode() + ")."
        )
        + pgwire.ready_for_query("I"),
    )
    assert EMAIL not in out and CARD not in out
    assert _types(out) == "NEZ"


# --------------------------------------------------------------------------- binary results


def _describe_statement(relay: Relay) -> None:
    relay.from_client(
        Parse("st", "select id, phone from people").encode()
        + Describe("S", "st").encode()
        + Sync().encode()
    )
    relay.from_server(
        pgwire.encode_raw(ord("1"), b"")
        + pgwire.encode_raw(ord("t"), b"\0\0")
        + _desc("id", "phone")
        + pgwire.ready_for_query("I")
    )


def test_a_described_statement_is_bound_with_text_for_columns_masked_from_text() -> None:
    upstream: list[bytes] = []
    relay = _relay(before=upstream)
    _describe_statement(relay)
    sent, _ = relay.from_client(
        Bind("p", "st", result_formats=[BINARY]).encode()
        + Describe("P", "p").encode()
        + Execute("p").encode()
        + Sync().encode()
    )
    bind = next(m for m in pgwire.split_frames(sent)[0] if m.type == ord("B"))
    assert pgwire.decode_frontend(bind) == Bind("p", "st", result_formats=[BINARY, TEXT])
    # The guard registered before saw the Bind that went upstream.
    assert upstream == [pgwire.encode_raw(bind.type, bind.body)]
    seven = (7).to_bytes(8, "big")
    out, _ = relay.from_server(
        pgwire.encode_raw(ord("2"), b"")
        + _desc("id", "phone", formats=(BINARY, TEXT))
        + _row(seven, b"4155552671")
        + _end()
    )
    msgs = _msgs(out)
    desc = next(m for m in msgs if isinstance(m, RowDescription))
    # What the client asked for: binary everywhere; phone announced as text.
    assert [(f.type_oid, f.format) for f in desc.fields] == [(INT8, BINARY), (TEXT_OID, BINARY)]
    row = next(m for m in msgs if isinstance(m, DataRow))
    assert row.values == [seven, b"***2671"]
    assert b"4155552671" not in out


def test_an_execute_of_a_described_statement_without_portal_describe_is_masked() -> None:
    relay = _relay()
    _describe_statement(relay)
    relay.from_client(
        Bind("", "st", result_formats=[BINARY]).encode() + Execute("").encode() + Sync().encode()
    )
    out, _ = relay.from_server(
        pgwire.encode_raw(ord("2"), b"") + _row((7).to_bytes(8, "big"), b"4155552671") + _end()
    )
    assert b"4155552671" not in out and b"***2671" in out


def test_binary_bound_before_the_shape_was_known_is_refused_not_nulled() -> None:
    relay = _relay()
    _execute_binary(relay, "select id, phone from people")
    out, _ = relay.from_server(
        _PARSED_BOUND
        + _desc("id", "phone", fmt=BINARY)
        + _row((7).to_bytes(8, "big"), (4155552671).to_bytes(8, "big"))
        + _end()
    )
    assert _types(out) == "12EZ"
    err = _msgs(out)[2]
    assert isinstance(err, ErrorResponse) and "'phone'" in err.fields["M"]
    assert "text format" in err.fields["H"]
    assert (4155552671).to_bytes(8, "big") not in out


def test_a_statement_described_after_its_binary_bind_is_refused_at_execute() -> None:
    relay = _relay()
    relay.from_client(
        Parse("st", "select id, phone from people").encode()
        + Bind("p", "st", result_formats=[BINARY]).encode()
        + Describe("S", "st").encode()
        + Execute("p").encode()
        + Sync().encode()
    )
    out, _ = relay.from_server(
        _PARSED_BOUND
        + pgwire.encode_raw(ord("t"), b"\0\0")
        + _desc("id", "phone")
        + _row((7).to_bytes(8, "big"), (4155552671).to_bytes(8, "big"))
        + _end()
    )
    assert _types(out) == "12tTEZ"
    assert (4155552671).to_bytes(8, "big") not in out


def test_redact_needs_no_text_and_binary_passes() -> None:
    relay = _relay()
    _execute_binary(relay, "select ssn from people")
    out, _ = relay.from_server(
        _PARSED_BOUND + _desc("ssn", fmt=BINARY) + _row(b"078-05-1120") + _end()
    )
    assert _types(out) == "12TDCZ" and b"078-05-1120" not in out
