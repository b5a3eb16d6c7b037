"""The guard decides statements that differ only in their numbers from one cached
decision (kept by the analysis's literal-insensitive shape), and that cache never
lets through what a fresh, exact analysis of the text refuses.

Each case warms a guard with one text, then sends a variant with other numbers
(same order, reverse order, all equal) and compares what the guard does with
what a guard that never saw the first text does: forwarded or refused, and
under which rule.  The texts come from the analysis tables and from generated
reads with numbers where they could change a verdict (comparisons of
constants, ordinals in ORDER BY / GROUP BY, function arguments, casts to OID
types, LIMIT)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.gateway import pgwire
from server.gateway.guardrails import GuardrailRules
from server.gateway.pgwire import Query
from server.gateway.pinning import LimitPins
from server.gateway.relay import Relay
from server.gateway.sqlcheck import cache as sqlcheck_cache
from server.gateway.sqlcheck import cache_clear
from server.gateway.statements import StatementGuard
from server.policy.model import default_limits
from tests.fix_relay import FACTS
from tests.server.gateway.test_sqlcheck import SHAPED, _with_other_numbers


def _guard(preset: str) -> tuple[StatementGuard, Relay]:
    relay = Relay()
    guard = StatementGuard(
        GuardrailRules.preset(preset),
        FACTS,
        approvals=None,
        store=None,
        pins=LimitPins.of(default_limits(preset), "demo", preset),
    )
    guard.install(relay)
    return guard, relay


def _verdict(relay: Relay, sql: str) -> str:
    """``forwarded``, or the rule of the refusal the client sees."""
    wire = Query(sql).encode()
    up, back = relay.from_client(wire)
    if up == wire and not back:
        relay.from_server(pgwire.ready_for_query("I"))  # its answer, so the next one is next
        return "forwarded"
    answer, _ = relay.from_server(
        pgwire.error_response("ERROR", "42703", "column does not exist")
        + pgwire.ready_for_query("I")
    )
    error = pgwire.decode_backend(pgwire.split_frames(back + answer)[0][0])
    assert isinstance(error, pgwire.ErrorResponse)
    return dict(error.fields)["M"].split(":")[0]


def _fresh(preset: str, sql: str) -> str:
    cache_clear()
    return _verdict(_guard(preset)[1], sql)


def _warmed(preset: str, warm: str, sql: str) -> tuple[str, StatementGuard]:
    cache_clear()
    guard, relay = _guard(preset)
    _verdict(relay, warm)
    return _verdict(relay, sql), guard


@pytest.mark.parametrize("preset", ["read", "write"])
@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("sql", SHAPED)
def test_a_decision_kept_by_shape_is_the_fresh_decision(
    sql: str, descending: bool, preset: str
) -> None:
    variant = _with_other_numbers(sql, descending=descending)
    assert _warmed(preset, sql, variant)[0] == _fresh(preset, variant)


def test_texts_of_one_shape_share_one_decision() -> None:
    cache_clear()
    guard, relay = _guard("read")
    for aid in (1, 4711, 99, 123456):
        sql = f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"
        assert _verdict(relay, sql) == "forwarded"
    assert len(guard._decisions) == 1
    assert len(sqlcheck_cache._SHAPES._data) == 1


# Reads whose numbers sit where a value could matter to someone's verdict.
_NUMBER = st.integers(min_value=0, max_value=99_999)
_PIECES = [
    "SELECT a FROM t WHERE {0} < {1}",
    "SELECT a FROM t WHERE a = {0} OR {1} = {2}",
    "SELECT a, b FROM t ORDER BY {0}",
    "SELECT a, count(*) FROM t GROUP BY {0}",
    "SELECT a FROM t LIMIT {0} OFFSET {1}",
    "SELECT pg_sleep({0})",
    "SELECT pg_terminate_backend({0})",
    "SELECT pg_cancel_backend({0})",
    "SELECT lo_get({0})",
    "SELECT {0}::regclass",
    "SELECT {0}::oid::regproc",
    "SELECT * FROM generate_series({0}, {1})",
    "SELECT pg_read_file('x', {0}, {1})",
    "SELECT a FROM t WHERE a IN ({0}, {1}, {2}) AND b > {0}",
    "SELECT a FROM t FOR UPDATE SKIP LOCKED LIMIT {0}",
    "SELECT setseed(0.{0})",
    "SELECT pg_advisory_lock({0})",
    "SELECT pg_try_advisory_lock({0}, {1})",
    "SELECT a FROM t t1 JOIN u ON t1.a = u.b + {0} WHERE {1} = {1}",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    template=st.sampled_from(_PIECES),
    first=st.lists(_NUMBER, min_size=3, max_size=3),
    second=st.lists(_NUMBER, min_size=3, max_size=3),
    preset=st.sampled_from(["read", "write"]),
)
def test_the_cached_path_never_allows_what_exact_analysis_refuses(
    template: str, first: list[int], second: list[int], preset: str
) -> None:
    warm = template.format(*first)
    sql = template.format(*second)
    got, _guard_used = _warmed(preset, warm, sql)
    assert got == _fresh(preset, sql), (warm, sql)
