"""How ``dbaccess replay`` renders events, without a broker: limit events."""

from __future__ import annotations

from brokercli.commands.replay import event_row, timeline_entry
from server.audit.recording import LIMIT_KIND, LimitHit, limit_event


def _event(hit: LimitHit) -> dict[str, object]:
    return {"seq": 4, "offset_ms": 1500.0, "kind": LIMIT_KIND, "data": limit_event(hit)}


def test_a_cut_result_shows_its_limit_value_scope_and_what_was_delivered() -> None:
    hit = LimitHit(
        limit="max_result_bytes",
        value=1_048_576,
        scope="read",
        action="cut",
        sqlstate="54000",
        message="the result passed max_result_bytes (1048576 bytes)",
        statement="select repeat('x', 1000) from generate_series(1, 10000000)",
        rows=1046,
        bytes=1_047_000,
    )
    at, kind, took, rows, result, detail = event_row(_event(hit))
    assert (at, kind, took, rows, result) == ("+1.500s", "limit", "", 1046, "cut 54000")
    lines = detail.splitlines()
    assert lines[0] == "max_result_bytes = 1048576 (scope read): cut after 1046 rows, 1047000 bytes"
    assert lines[1] == "the result passed max_result_bytes (1048576 bytes)"
    assert "'x'" not in lines[2] and "[redacted]" in lines[2]
    assert timeline_entry(_event(hit))[2] == "1046 rows  cut 54000"


def test_a_refusal_shows_the_limit_without_rows() -> None:
    hit = LimitHit(
        limit="statement_timeout",
        value="5min",
        scope="write",
        action="refused",
        sqlstate="42501",
        message="statement_timeout is set by the scope",
    )
    _at, _kind, _took, rows, result, detail = event_row(_event(hit))
    assert rows is None and result == "refused 42501"
    assert detail.splitlines() == [
        "statement_timeout = 5min (scope write)",
        "statement_timeout is set by the scope",
    ]
