"""The guard decides statements that differ only in their numbers from one cached
decision (kept by the analysis's literal-insensitive shape), and that cache never
lets through what a fresh, exact analysis of the text refuses.

Each case warms a guard with one text, then sends a variant with other numbers
(same order, reverse order, all equal) and compares what the guard does with
what a guard that never saw the first text does: forwarded or refused, and
under which rule.  The texts come from the analysis tables and from generated
reads with numbers where they could change a verdict (comparisons of
constants, ordinals in ORDER BY / GROUP BY, function arguments, casts to OID
types, LIMIT), in a plain session and in one where masking applies (whose
check keeps decisions by shape only for statements that read no masked
columns)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.gateway import pgwire
from server.gateway.catalog import CatalogSnapshot
from server.gateway.guardrails import Decision, GuardrailRules, Outcome
from server.gateway.masking import ColumnRef, MaskingRules
from server.gateway.masking_relay import pre_execution_check
from server.gateway.pgwire import Query
from server.gateway.pinning import LimitPins
from server.gateway.relay import Relay
from server.gateway.sqlcheck import cache as sqlcheck_cache
from server.gateway.sqlcheck import cache_clear
from server.gateway.statements import StatementGuard
from server.policy.model import MaskMethod, MaskRule, default_limits
from tests.fix_relay import FACTS
from tests.server.gateway.test_sqlcheck import SHAPED, _with_other_numbers


def _guard(preset: str) -> tuple[StatementGuard, Relay]:
    relay = Relay()
    guard = StatementGuard(
        GuardrailRules.preset(preset),
        FACTS,
        approvals=None,
        audit=None,
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


# -- masking's check before execution ------------------------------------------------

_PEOPLE = tuple(
    ColumnRef("public", "people", c, type_oid=25) for c in ("id", "name", "ssn", "email")
)
_ORDERS = tuple(ColumnRef("public", "orders", c, type_oid=23) for c in ("id", "total"))
_MASKING = MaskingRules(
    (
        MaskRule(column="public.people.ssn", method=MaskMethod.REDACT),
        MaskRule(column="public.people.email", method=MaskMethod.PARTIAL, keep_domain=True),
    )
)


class _Catalog:
    def __init__(self) -> None:
        relations = {16400: _PEOPLE, 16500: _ORDERS}
        self.current = CatalogSnapshot(
            {(oid, i + 1): c for oid, cols in relations.items() for i, c in enumerate(cols)},
            relations,
            loaded_at=0.0,
            functions=frozenset(),
        )

    def reload_soon(self) -> None:
        pass

    def reload_missing(self) -> None:
        self.reload_soon()

    def reload_if_old(self) -> None:
        pass


def _check(
    catalog: _Catalog | None = None, search_path: tuple[str, ...] = ("public",)
) -> Callable[[str], Decision]:
    """Masking's check before execution of one connection to ``catalog`` (the one
    above unless given), whose session has ``search_path``."""
    return pre_execution_check(
        _MASKING,
        catalog or _Catalog(),  # type: ignore[arg-type]
        search_path,
        frozenset(),
        Outcome.BLOCK,
    )


def _masked_guard() -> Relay:
    relay = Relay()
    check = _check()
    StatementGuard(
        GuardrailRules.preset("read"), FACTS, approvals=None, audit=None, masking=check
    ).install(relay)
    return relay


_MASKED_READS = [
    "SELECT name, ssn FROM people ORDER BY {0}",
    "SELECT name, ssn FROM people ORDER BY {0} LIMIT {1}",
    "SELECT id, email FROM people GROUP BY {0}, {1}",
    "SELECT (ARRAY[name, ssn])[{0}] FROM people",
    "SELECT name FROM people WHERE id = {0} AND {1} < {2}",
    "SELECT total FROM orders WHERE id = {0} ORDER BY {1}",
    "SELECT o.total FROM orders o WHERE o.id > {0}",
    "SELECT total, {0} FROM orders LIMIT {1}",
    "SELECT ssn FROM people LIMIT {0}",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    template=st.sampled_from(_MASKED_READS),
    first=st.lists(st.integers(min_value=1, max_value=4), min_size=3, max_size=3),
    second=st.lists(st.integers(min_value=1, max_value=4), min_size=3, max_size=3),
)
def test_a_masked_sessions_cached_path_never_allows_what_exact_analysis_refuses(
    template: str, first: list[int], second: list[int]
) -> None:
    warm = template.format(*first)
    sql = template.format(*second)
    cache_clear()
    relay = _masked_guard()
    _verdict(relay, warm)
    got = _verdict(relay, sql)
    cache_clear()
    assert got == _verdict(_masked_guard(), sql), (warm, sql)


def test_ordering_by_a_masked_column_is_refused_after_ordering_by_a_clear_one() -> None:
    cache_clear()
    relay = _masked_guard()
    assert _verdict(relay, "SELECT name, ssn FROM people ORDER BY 1") == "forwarded"
    assert _verdict(relay, "SELECT name, ssn FROM people ORDER BY 2") != "forwarded"


def _counted_check(
    monkeypatch: pytest.MonkeyPatch,
    catalog: _Catalog | None = None,
    search_path: tuple[str, ...] = ("public",),
) -> tuple[Callable[[str], Decision], list[str]]:
    """Masking's check before execution of one connection (see ``_check``), and the
    texts it decided (rather than took from what it kept)."""
    from server.gateway import masking_relay

    decided: list[str] = []
    decide = masking_relay.masking_decision

    def counted(analysis: object, session: object, sql: str) -> object:
        decided.append(sql)
        return decide(analysis, session, sql)  # type: ignore[arg-type]

    monkeypatch.setattr(masking_relay, "masking_decision", counted)
    return _check(catalog, search_path), decided


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT name FROM people WHERE id = $1",  # no shape: parsed again for each execution
        "SELECT name, ssn FROM people WHERE id = $1 ORDER BY 2",  # reads a masked column
        "SELECT ssn FROM people WHERE ssn = $1",  # a predicate on one: refused
        "SELECT total FROM orders WHERE id = $1",
    ],
)
def test_a_text_parsed_again_is_decided_once_and_as_afresh(
    sql: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_clear()
    check, decided = _counted_check(monkeypatch)
    first = check(sql)
    assert [check(sql) for _ in range(3)] == [first] * 3
    assert decided == [sql]
    fresh, _ = _counted_check(monkeypatch)
    cache_clear()
    assert fresh(sql) == first


def test_a_text_naming_a_relation_the_catalog_does_not_hold_is_decided_each_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The next snapshot may hold it: nothing decided without it is kept."""
    cache_clear()
    check, decided = _counted_check(monkeypatch)
    sql = "SELECT secret FROM created_since WHERE id = $1"
    assert check(sql) == check(sql)
    assert decided == [sql, sql]


def _snapshot(*people: str) -> CatalogSnapshot:
    relations = {
        16400: tuple(ColumnRef("public", "people", c, type_oid=25) for c in people),
        16500: _ORDERS,
    }
    return CatalogSnapshot(
        {(oid, i + 1): c for oid, cols in relations.items() for i, c in enumerate(cols)},
        relations,
        loaded_at=0.0,
        functions=frozenset(),
    )


def test_what_the_check_read_of_a_relation_is_read_again_from_a_new_snapshot() -> None:
    """The check keeps what a snapshot says of a relation (its columns, which are
    masked) for as long as that snapshot is the catalog's: a column added since,
    and masked, is seen once the catalog reloads."""
    cache_clear()
    catalog = _Catalog()
    catalog.current = _snapshot("id", "name")
    check = _check(catalog)
    copy = "INSERT INTO orders (total) SELECT id FROM people WHERE id > 7"
    assert check(copy).outcome is Outcome.ALLOW
    assert check(copy.replace("7", "8")).outcome is Outcome.ALLOW
    catalog.current = _snapshot("id", "name", "ssn")
    refused = check(copy.replace("7", "9"))
    assert (refused.outcome, refused.rule) == (Outcome.BLOCK, "masking.write_from_masked")


def test_a_schema_of_the_path_without_the_relation_does_not_make_it_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A session's path starts with its role's own schema (``"$user"``), which holds
    nothing: looking there first is how PostgreSQL finds ``public.orders``, not a
    relation the catalog does not hold, so the decision is kept for the shape."""
    cache_clear()
    catalog = _Catalog()
    reloads: list[None] = []
    catalog.reload_soon = lambda: reloads.append(None)  # type: ignore[method-assign]
    check, decided = _counted_check(monkeypatch, catalog, ("dba_alice_1", "public"))
    texts = [f"SELECT total FROM orders WHERE id = {n}" for n in range(5)]
    assert {check(sql).outcome for sql in texts} == {Outcome.ALLOW}
    assert decided == texts[:1] and reloads == []


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id FROM people WHERE ssn LIKE '1%'",
        "SELECT id FROM public.people WHERE ssn LIKE '1%'",
        # The database's name before the schema: the same relation to PostgreSQL.
        "SELECT id FROM postgres.public.people WHERE ssn LIKE '1%'",
        "SELECT id FROM \"postgres\".public.people p WHERE p.ssn LIKE '1%'",
        "SELECT upper(ssn) FROM demo.public.people",
    ],
)
def test_a_masked_column_is_refused_however_its_relation_is_named(sql: str) -> None:
    """A name with the database before the schema was taken for a relation no
    schema holds: nothing masked read, so filtering on the masked column passed,
    and the rows' clear ids told which of them matched."""
    cache_clear()
    assert _check()(sql).outcome is Outcome.BLOCK
