"""The guard with masking's check before execution: a refusal replaces the
message with one PostgreSQL rejects and swaps its error; a check that fails
refuses too."""

from __future__ import annotations

import pytest

from server.gateway import pgwire
from server.gateway.guardrails import ALLOWED, Decision, GuardrailRules, Outcome
from server.gateway.pgwire import Parse, Query
from server.gateway.relay import Relay
from server.gateway.statements import StatementGuard
from tests.fix_relay import FACTS

LEAK = "insert into t select ssn from people"
BOOM = "select 'boom'"
REFUSED = Decision(Outcome.BLOCK, "masking.write_from_masked", "it copies", "do not", 0)


def _check(sql: str) -> Decision:
    if sql == BOOM:
        raise RuntimeError("a bug")
    return REFUSED if sql == LEAK else ALLOWED


def _guarded() -> Relay:
    relay = Relay()
    StatementGuard(
        GuardrailRules.preset("write"), FACTS, approvals=None, audit=None, masking=_check
    ).install(relay)
    return relay


def _swapped_error(relay: Relay) -> dict[str, str]:
    server_error = pgwire.error_response("ERROR", "42601", "syntax error")
    back, _ = relay.from_server(server_error + pgwire.ready_for_query("I"))
    msgs = pgwire.split_frames(back)[0]
    decoded = pgwire.decode_backend(msgs[0])
    assert isinstance(decoded, pgwire.ErrorResponse)
    return dict(decoded.fields)


@pytest.mark.parametrize(
    ("sql", "rule"), [(LEAK, "masking.write_from_masked"), (BOOM, "masking.check_failed")]
)
def test_a_refused_query_never_reaches_the_server(sql: str, rule: str) -> None:
    relay = _guarded()
    up, _ = relay.from_client(Query(sql).encode())
    assert sql.encode() not in up
    error = _swapped_error(relay)
    assert error["C"] == "42501" and rule in error["M"]


def test_a_refused_parse_never_reaches_the_server() -> None:
    relay = _guarded()
    up, _ = relay.from_client(Parse("s1", LEAK).encode())
    assert LEAK.encode() not in up


def test_what_the_check_allows_goes_through() -> None:
    relay = _guarded()
    data = Query("select 1").encode()
    up, _ = relay.from_client(data)
    assert up == data


def test_a_refusal_goes_to_the_audit_writer_not_the_store() -> None:
    """The guard appends nothing itself (an append takes the chain's lock, across
    replicas): it hands the event to the shell's audit writer and goes on."""
    audited: list[tuple[str, dict[str, object]]] = []
    relay = Relay()
    StatementGuard(
        GuardrailRules.preset("write"),
        FACTS,
        approvals=None,
        audit=lambda kind, **fields: audited.append((kind, fields)),
        masking=_check,
    ).install(relay)
    relay.from_client(Query(LEAK).encode())
    ((kind, fields),) = audited
    assert kind == "statement.blocked"
    assert fields["session_id"] == FACTS.session_id and fields["identity"] == FACTS.identity
    data = fields["data"]
    assert isinstance(data, dict) and data["rule"] == "masking.write_from_masked"
