"""What one statement may cost the gateway, without sockets: a text over the
size limit is refused before anything decodes or parses it, an analysis past
its CPU budget fails closed, both with 54000 and a hint naming the setting;
the refusal is recorded in the audit log and as a ``limit`` event."""

from __future__ import annotations

from typing import Any

import pytest

from server.gateway import analysis_limits, analysis_pool, pgwire, sqlcheck
from server.gateway.analysis_limits import AnalysisLimits, oversize, statement_size
from server.gateway.guardrails import GuardrailRules, Outcome
from server.gateway.masking_relay import MaskingHooks
from server.gateway.pgwire import Parse, Query
from server.gateway.relay import Relay
from server.gateway.statements import StatementGuard
from tests.fix_relay import FACTS, recording_to


@pytest.mark.parametrize(
    ("message", "size"),
    [
        (Query("select 1"), 8),
        (Query(""), 0),
        (Parse("", "select 1"), 8),
        (Parse("named", "select 'é'"), 11),
        (Parse("s", "select $1", [23, 25]), 9),
    ],
)
def test_statement_size_is_the_text_in_bytes(message: Query | Parse, size: int) -> None:
    raw = pgwire.split_frames(message.encode())[0][0]
    assert statement_size(raw.type, raw.body) == size


@pytest.mark.parametrize(("kind", "body"), [(b"Q", b"no terminator"), (b"P", b"name only")])
def test_a_malformed_body_counts_whole(kind: bytes, body: bytes) -> None:
    assert statement_size(kind[0], body) == len(body)


def test_size_boundary() -> None:
    limits = AnalysisLimits(max_statement_size=100)
    assert oversize(100, limits) is None
    refusal = oversize(101, limits)
    assert refusal is not None and refusal.outcome is Outcome.BLOCK
    assert refusal.rule == analysis_limits.TOO_LARGE
    assert "101 bytes" in refusal.message and "100 bytes" in refusal.message
    assert "gateway_max_statement_size" in refusal.hint


def test_limits_must_be_above_zero() -> None:
    with pytest.raises(ValueError):
        AnalysisLimits(max_statement_size=0)
    with pytest.raises(ValueError):
        AnalysisLimits(cpu_budget=0.0)


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, session_id: str, kind: str, data: dict[str, Any]) -> None:
        self.events.append((session_id, kind, data))


def _guarded(limits: AnalysisLimits, recorder: _Recorder, *, masked: bool = False) -> Relay:
    relay = Relay()
    StatementGuard(
        GuardrailRules.preset("write"),
        FACTS,
        approvals=None,
        audit=None,
        limits=limits,
        record=recording_to(recorder),
    ).install(relay)
    if masked:
        # The masking hooks run before the guard on a client message, as in a
        # session of a target with masking rules; they record the statement.
        from tests.fix_relay import StaticCatalog
        from tests.server.gateway import test_masking_relay as masking

        MaskingHooks(
            masking.RULES,
            StaticCatalog(masking.OID, (masking.EMAIL, masking.CITY)),  # type: ignore[arg-type]
            session_id=FACTS.session_id,
            record=recording_to(recorder),
            limits=limits,
        ).install(relay)
    return relay


def _swapped_error(relay: Relay) -> dict[str, str]:
    server_error = pgwire.error_response("ERROR", "42601", "syntax error")
    back, _ = relay.from_server(server_error + pgwire.ready_for_query("I"))
    decoded = pgwire.decode_backend(pgwire.split_frames(back)[0][0])
    assert isinstance(decoded, pgwire.ErrorResponse)
    return dict(decoded.fields)


@pytest.mark.parametrize(
    "wire",
    [
        Query("select '" + "x" * 5000 + "'").encode(),
        Parse("big", "select '" + "x" * 5000 + "'").encode(),
        # Not even UTF-8: nothing reads it.
        b"Q" + (4 + 5001).to_bytes(4, "big") + b"\xff" * 5000 + b"\0",
    ],
    ids=["query", "parse", "undecodable"],
)
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "masked"])
def test_an_oversize_statement_is_refused_unread_with_54000(
    wire: bytes, masked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing decodes or analyses it, the masking hooks (which see it before the
    guard) included: a text of megabytes would hold the interpreter lock."""

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("an oversize statement was decoded or analysed")

    monkeypatch.setattr(pgwire, "decode_frontend", never)
    monkeypatch.setattr(analysis_pool, "analyze", never)
    recorder = _Recorder()
    relay = _guarded(AnalysisLimits(max_statement_size=4096), recorder, masked=masked)
    up, back = relay.from_client(wire)
    assert b"xxxx" not in up and b"\xff\xff" not in up and back == b""
    monkeypatch.undo()
    error = _swapped_error(relay)
    assert error["C"] == "54000"
    assert "gateway_max_statement_size" in error["M"] and "4096 bytes" in error["M"]
    assert "gateway_max_statement_size" in error["H"]
    limit_events = [e for e in recorder.events if e[1] == "limit"]
    ((session, kind, data),) = limit_events
    assert (session, kind) == (FACTS.session_id, "limit")
    assert data["limit"] == "gateway_max_statement_size" and data["value"] == 4096
    assert data["action"] == "refused" and data["sqlstate"] == "54000"
    statements = [e[2] for e in recorder.events if e[1] == "statement"]
    if masked and wire[:1] == b"Q":
        # Recorded as refused, with the beginning of its text only.
        ((recorded),) = statements
        assert recorded["decision"] == "blocked" and recorded["sqlstate"] == "54000"
        assert len(recorded["text"]) <= analysis_limits.OVERSIZE_HEAD + 1
    else:
        assert statements == []


def test_the_next_statement_after_an_oversize_one_is_judged_as_usual() -> None:
    relay = _guarded(AnalysisLimits(max_statement_size=4096), _Recorder())
    relay.from_client(Query("select '" + "x" * 5000 + "'").encode())
    _swapped_error(relay)
    up, _ = relay.from_client(Query("select 1").encode())
    assert up == Query("select 1").encode()


def test_an_analysis_past_its_cpu_budget_fails_closed_with_54000(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sqlcheck.cache_clear()
    recorder = _Recorder()
    relay = _guarded(AnalysisLimits(cpu_budget=1e-9), recorder)
    up, _ = relay.from_client(Query("select a, b from t where id = 1").encode())
    assert b"from t" not in up
    error = _swapped_error(relay)
    assert error["C"] == "54000" and "gateway_analysis_cpu_budget" in error["M"]
    assert "gateway_analysis_cpu_budget" in error["H"]
    ((_, kind, data),) = recorder.events
    assert kind == "limit" and data["limit"] == "gateway_analysis_cpu_budget"


def test_over_budget_is_not_cached() -> None:
    sqlcheck.cache_clear()
    sql = "select a from t where id = 2"
    assert sqlcheck.analyze(sql, time_budget=1e-9).over_budget
    assert not sqlcheck.analyze(sql).over_budget
