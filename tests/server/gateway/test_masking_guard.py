"""Masking's refusals before execution, as a table of statements and decisions.

``app.people`` and the view ``public.people_v`` over it have masked columns;
``public.people``, ``public.t`` and ``public.log`` do not.  ``public.my_func``
and ``util.fmt`` are functions outside the built-in schemas.
"""

from __future__ import annotations

import pytest

from server.gateway.guardrails import Outcome
from server.gateway.masking_guard import UNQUALIFIED, MaskedSession, masking_decision
from server.gateway.sqlcheck import Name, analyze

HELD = {"app.people", "public.people", "public.t", "public.log", "public.people_v"}
MASKED = {"app.people", "public.people_v"}
FUNCTIONS = frozenset({"my_func", "fmt", "lower_x"})


def _session(
    path: tuple[str, ...] = ("app", "public"),
    *,
    trusted: frozenset[str] = frozenset(),
    functions: frozenset[str] | None = FUNCTIONS,
    catalog_first: bool = True,
) -> MaskedSession:
    return MaskedSession(
        path,
        lambda n: str(n) in HELD,
        lambda n: str(n) in MASKED,
        functions,
        trusted,
        catalog_first,
    )


def _rule(sql: str, session: MaskedSession | None = None) -> str | None:
    decision = masking_decision(analyze(sql, search_path=(UNQUALIFIED,)), session or _session())
    if decision.outcome is Outcome.ALLOW:
        return None
    assert decision.outcome is Outcome.BLOCK
    assert decision.hint
    return decision.rule


WRITE = "masking.write_from_masked"
FUNCTION = "masking.untrusted_function"


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        # Reads alone are the result masking's business.
        ("select ssn from people", None),
        ("select * from app.people", None),
        # Writes that read a masked relation (people is app.people on this path).
        ("insert into t select ssn from people", WRITE),
        ("insert into t select ssn from app.people", WRITE),
        ("insert into t (a) select (select ssn from people limit 1)", WRITE),
        ("update t set a = p.ssn from people p where t.id = p.id", WRITE),
        ("update t set a = (select ssn from people limit 1) where id = 1", WRITE),
        ("update people set name = ssn where id = 1", WRITE),
        (
            "merge into t using people p on t.id = p.id when matched then update set a = p.ssn",
            WRITE,
        ),
        ("insert into people values (1) on conflict (id) do update set name = people.ssn", WRITE),
        ("create table t2 as select * from people", WRITE),
        ("select * into t2 from people", WRITE),
        ("create view v2 as select ssn from people", WRITE),
        ("with x as (insert into t select ssn from people returning 1) select 1", WRITE),
        ("with x as (select ssn from people) insert into t select * from x", WRITE),
        ("explain analyze insert into t select ssn from people", WRITE),
        ("prepare p as insert into t select ssn from people", WRITE),
        ("begin; insert into t select ssn from people; commit", WRITE),
        ("select 1; insert into log select * from public.people_v", WRITE),
        ("delete from t where id in (select id from people)", WRITE),
        # A relation read that the catalog does not hold: cannot tell.
        ("insert into t select * from nowhere", WRITE),
        # Writes that read nothing masked.
        ("insert into t select * from public.people", None),
        ("insert into t values (1)", None),
        ("insert into people values (1)", None),
        ("delete from people where id = 1", None),
        ("copy t from stdin", None),
        ("create table t2 as select 1 as a", None),
        ("update t set a = 1 where id = 1", None),
        # Functions outside the built-in schemas.
        ("select my_func()", FUNCTION),
        ("select public.my_func()", FUNCTION),
        ("select app.anything(ssn) from people", FUNCTION),
        ("select 1 from t where a = any(select fmt(a) from t)", FUNCTION),
        ("prepare q as select my_func()", FUNCTION),
        ("explain select my_func()", FUNCTION),
        # Built-ins: qualified with their schema, or a name no other schema has.
        ("select lower(name), count(*) from people group by 1", None),
        ("select pg_catalog.lower(name) from people", None),
        ("select information_schema._pg_truetypid(a, t) from t a", None),
        ("select now(), coalesce(null, 1)", None),
    ],
)
def test_masking_decision(sql: str, rule: str | None) -> None:
    assert _rule(sql) == rule


def test_the_path_decides_which_people_is_read() -> None:
    sql = "insert into t select ssn from people"
    assert _rule(sql, _session(("public", "app"))) is None
    assert _rule(sql, _session(("app", "public"))) == WRITE
    assert _rule(sql, _session(("alice", "public"))) is None


@pytest.mark.parametrize(
    ("sql", "trusted", "rule"),
    [
        ("select my_func()", frozenset({"my_func"}), None),
        ("select public.my_func()", frozenset({"public.my_func"}), None),
        # A qualified entry trusts the qualified call only: unqualified may resolve elsewhere.
        ("select my_func()", frozenset({"public.my_func"}), FUNCTION),
        ("select util.fmt(1)", frozenset({"util.*"}), None),
        ("select fmt(1)", frozenset({"util.*"}), FUNCTION),
        ("select fmt(1), my_func()", frozenset({"fmt"}), FUNCTION),
    ],
)
def test_trusted_functions(sql: str, trusted: frozenset[str], rule: str | None) -> None:
    assert _rule(sql, _session(trusted=trusted)) == rule


def test_unknown_function_names_refuse_every_unqualified_call() -> None:
    session = _session(functions=None)
    assert _rule("select lower('x')", session) == FUNCTION
    assert _rule("select pg_catalog.lower('x')", session) is None
    assert _rule("select 1", session) is None


def test_a_masked_view_counts() -> None:
    assert _rule("insert into t select * from people_v") == WRITE
    assert Name(("public", "people_v")) != Name(("app", "people_v"))
