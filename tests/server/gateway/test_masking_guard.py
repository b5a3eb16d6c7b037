"""Masking's refusals before execution, as a table of statements and decisions.

``app.people`` and the view ``public.people_v`` over it have masked columns;
``public.people``, ``public.t`` and ``public.log`` do not.  ``public.my_func``
and ``util.fmt`` are functions outside the built-in schemas.
"""

from __future__ import annotations

import pytest

from server.gateway.guardrails import Decision, Outcome
from server.gateway.masking_guard import (
    UNQUALIFIED,
    MaskedSession,
    call_may_have_changed,
    masking_decision,
    may_have_changed,
)
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
    columns: bool = False,
    inference: Outcome = Outcome.BLOCK,
) -> MaskedSession:
    """A masked session; ``columns``: the catalog knows the columns of COLUMNS."""
    return MaskedSession(
        path,
        lambda n: str(n) in HELD,
        lambda n: str(n) in MASKED,
        functions,
        trusted,
        catalog_first,
        columns=(lambda n: COLUMNS.get(str(n), {})) if columns else (lambda _n: {}),
        inference=inference,
    )


def _decision(sql: str, session: MaskedSession) -> Decision:
    return masking_decision(analyze(sql, search_path=(UNQUALIFIED,)), session, sql)


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


COLUMNS = {
    "app.people": {"id": False, "name": False, "ssn": True},
    "public.people": {"id": False, "name": False, "ssn": False},
    "public.t": {"id": False, "a": False, "b": False},
    "public.log": {"line": False},
    "public.people_v": {"id": False, "ssn": True},
}
INFERENCE = "masking.inference"


def _inference_rule(sql: str, *, inference: Outcome = Outcome.BLOCK) -> str | None:
    decision = _decision(sql, _session(columns=True, inference=inference))
    return None if decision.outcome is Outcome.ALLOW else decision.rule


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        # Masked columns in what decides rows, groups or order.
        ("select id from people where ssn like '123%'", INFERENCE),
        ("select id from people where ssn = $1", INFERENCE),
        ("select id from people p where p.ssn > '5'", INFERENCE),
        ('select id from people where "ssn" is not null', INFERENCE),
        ("select p.id from people p join t on t.a = p.ssn", INFERENCE),
        ("select id from people join t using (ssn)", INFERENCE),
        ("select name from people group by ssn, name", INFERENCE),
        ("select id from people order by ssn", INFERENCE),
        ("select id, ssn from people order by 2", INFERENCE),
        ("select ssn as x, id from people order by x", INFERENCE),
        ("select distinct on (ssn) id from people", INFERENCE),
        ("select id from people where id in (select id from people where ssn < '5')", INFERENCE),
        ("select id from t where exists (select 1 from people where ssn = t.b)", INFERENCE),
        ("select id from people_v where ssn = '1'", INFERENCE),
        ("declare c cursor for select id from people where ssn = '1'", INFERENCE),
        ("explain select id from people where ssn = '1'", INFERENCE),
        ("select 1; select id from people where ssn = '1'", INFERENCE),
        # Names that may stand for a masked column count as one.
        ("select id from people p where p::text like '%123%'", INFERENCE),
        ("select * from people order by 3", INFERENCE),
        ("with x as (select ssn as s from people) select 1 from x where s = '1'", INFERENCE),
        # Clear columns, or no masked relation at all.
        ("select id, ssn from people where id = 1 order by name", None),
        ("select id from people where name like 'A%' group by id", None),
        ("select ssn from public.people where ssn like '1%'", None),
        ("select a from t where b = 1 order by a", None),
        ("select id, ssn from people", None),
        ("select count(*) from people", None),
    ],
)
def test_inference(sql: str, rule: str | None) -> None:
    assert _inference_rule(sql) == rule


def test_inference_allow_lets_predicates_through() -> None:
    sql = "select id from people where ssn like '123%'"
    assert _inference_rule(sql, inference=Outcome.ALLOW) is None
    # The other rules still hold.
    assert _inference_rule("insert into t select id from people", inference=Outcome.ALLOW) == WRITE


def test_inference_review_sends_the_statement_for_review() -> None:
    sql = "select id from people where ssn like '123%'"
    session = _session(columns=True, inference=Outcome.REVIEW)
    decision = _decision(sql, session)
    assert (decision.outcome, decision.rule) == (Outcome.REVIEW, INFERENCE)
    # A write that copies masked values is still refused outright.
    copy = "insert into t select ssn from people where ssn like '1%'"
    decision = _decision(copy, session)
    assert (decision.outcome, decision.rule) == (Outcome.BLOCK, WRITE)


def _attribute_rule(sql: str, trusted: frozenset[str] = frozenset()) -> str | None:
    decision = _decision(sql, _session(trusted=trusted, columns=True, inference=Outcome.ALLOW))
    return None if decision.outcome is Outcome.ALLOW else decision.rule


@pytest.mark.parametrize(
    ("sql", "trusted", "rule"),
    [
        # Attribute notation: t.my_func is my_func(t), which the analysis reads as a column.
        ("select t.my_func from t", frozenset(), FUNCTION),
        ("select (t).my_func from t", frozenset(), FUNCTION),
        ('select t."my_func" from t', frozenset(), FUNCTION),
        ("select x.fmt from (select 1 as a) x", frozenset(), FUNCTION),
        ("select t.my_func from t", frozenset({"my_func"}), None),
        # Columns, relations and schemas after a dot are what they seem.
        ("select t.a, p.name from t, people p", frozenset(), None),
        ("select * from public.t", frozenset(), None),
        ("select pg_catalog.lower(t.b) from t", frozenset(), None),
    ],
)
def test_attribute_notation_calls(sql: str, trusted: frozenset[str], rule: str | None) -> None:
    assert _attribute_rule(sql, trusted) == rule


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        # An UPDATE of a masked relation runs when what it assigns is clear.
        ("update people set name = 'x' where id = 1", None),
        ("update people set name = upper(name), id = $1 where id = 1", None),
        ("update people set name = default where id = 1", None),
        ("update people set name = t.a from t where t.id = people.id", None),
        ("update people set name = 'x' returning id, name", None),
        ("insert into people values (1) on conflict (id) do update set name = excluded.name", None),
        ("insert into people values (1) on conflict do nothing", None),
        # ... and not when a masked column, or something that may hold one, is copied.
        ("update people set name = ssn where id = 1", WRITE),
        ("update people p set name = p.ssn || ''", WRITE),
        ("update people p set name = p::text", WRITE),
        ("update people p set name = row_to_json(p)::text", WRITE),
        ("update people set (name, id) = (select ssn, 1)", WRITE),
        ("update people set name = x.v from (select 'a' as v) x", WRITE),
        ('update people set name = "default"', WRITE),
        ("update people set name = 'x' returning ssn", WRITE),
        ("update people set name = 'x' returning *", WRITE),
        ("update people set name = (select ssn from people p2 limit 1)", WRITE),
        ("insert into people values (1) on conflict (id) do update set name = people.ssn", WRITE),
        (
            "merge into people using t on t.id = people.id when matched then update set name = t.a",
            WRITE,
        ),
        # A nested write's RETURNING feeds the statement around it.
        (
            "with d as (delete from people where id = 1 returning ssn) "
            "insert into log select ssn from d",
            WRITE,
        ),
        ("with d as (delete from people returning *) insert into log select d::text from d", WRITE),
        (
            "with d as (insert into people (id) values (1) returning ssn) "
            "insert into log select ssn from d",
            WRITE,
        ),
        (
            "with d as (update people set name = 'x' returning ssn) "
            "insert into log select ssn from d",
            WRITE,
        ),
        (
            "with d as (delete from people where id = 1 returning id) "
            "insert into log select id::text from d",
            None,
        ),
        # At the top, a DELETE's RETURNING goes to the client, where it is masked.
        ("delete from people where id = 1 returning ssn", None),
    ],
)
def test_writes_to_a_masked_relation(sql: str, rule: str | None) -> None:
    assert _attribute_rule(sql) == rule


def test_a_cut_text_counts_the_target_as_read() -> None:
    long = "update people set name = 'x' where id in (" + ", ".join(["1"] * 1200) + ")"
    assert _attribute_rule(long) == WRITE


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        # The planner's statistics hold values of the columns.
        ("select histogram_bounds from pg_stats where tablename = 'people'", "masking.statistics"),
        ("select * from pg_catalog.pg_stats", "masking.statistics"),
        ("select most_common_vals from pg_stats_ext", "masking.statistics"),
        ("select 1 where exists (select 1 from pg_stats_ext_exprs)", "masking.statistics"),
        ("select * from pg_statistic", "masking.statistics"),
        ("with s as (select * from pg_stats) select count(*) from s", "masking.statistics"),
        ("select relname from pg_class", None),
        # Functions that run a query given as text.
        ("select query_to_xml('select ssn from people', true, false, '')", "masking.dynamic_sql"),
        ("select table_to_xml('people', true, false, '')", "masking.dynamic_sql"),
        (
            "select * from ts_stat('select to_tsvector(''simple'', ssn) from people')",
            "masking.dynamic_sql",
        ),
        ("select pg_catalog.ts_rewrite('a'::tsquery, 'select t, s from x')", "masking.dynamic_sql"),
    ],
)
def test_statistics_and_dynamic_sql(sql: str, rule: str | None) -> None:
    assert _attribute_rule(sql) == rule


def test_a_trusted_entry_does_not_trust_dynamic_sql() -> None:
    sql = "select query_to_xml('select ssn from people', true, false, '')"
    assert _attribute_rule(sql, frozenset({"query_to_xml"})) == "masking.dynamic_sql"


COMPUTED = "masking.computed"


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        # A masked column may be selected, passed through untouched...
        ("select ssn from people", None),
        ("select id, ssn as s from people where id = 1", None),
        ("select (ssn) from people", None),
        ("select * from people", None),
        ("select p.* from people p", None),
        ("select x from (select ssn as x from people) s", None),
        ("with c as (select ssn from people) select ssn from c", None),
        ("select ssn from people union all select name from people", None),
        ("select s.x from (select ssn as x, id from people) s where s.id = 3", None),
        ("select id, name from people order by name", None),
        ("select count(*) from people", None),
        ("select count(*) from people where name like 'A%'", None),
        ("begin; select ssn from people; commit", None),
        ("update people set name = 'x' where id = 1", None),
        ("select upper(b) from t where a = 1", None),
        ("select ascii(ssn) from public.people", None),
        # ...not computed with: its value would show in errors, row counts,
        # timing or locks, whatever the output is masked to.
        ("select upper(ssn) from people", COMPUTED),
        ("select ssn || '' from people", COMPUTED),
        ("select ssn::int from people", COMPUTED),
        ("select cast(ssn as regtype) from people", COMPUTED),
        ("select current_setting(ssn) from people where id = 1", COMPUTED),
        ("select 1/(case when ssn like '1%' then 0 else 1 end) from people", COMPUTED),
        ("select pg_sleep(case when ssn like '1%' then 2 else 0 end) from people", COMPUTED),
        ("select count(ssn) from people", COMPUTED),
        ("select min(ssn) from people", COMPUTED),
        ("select (select ssn from people limit 1)", COMPUTED),
        ("select p.ssn = 'x' from people p", COMPUTED),
        ("select pg_advisory_lock(ascii(substr(ssn, 1, 1))) from people", COMPUTED),
        ("select id from people p, generate_series(1, ascii(substr(p.ssn, 1, 1)))", COMPUTED),
        (
            "select count(*) from (select id, generate_series(1, ascii(ssn)) from people) s",
            COMPUTED,
        ),
        (
            "select count(*) from (select 1 from generate_series(1, 200)"
            " limit (select ascii(ssn) from people where id = 1)) s",
            COMPUTED,
        ),
        ("select x from (select upper(ssn) as x from people) s", COMPUTED),
        ("select upper(x) from (select ssn as x from people) s", COMPUTED),
        ("with c as (select ssn as x from people) select length(x) from c", COMPUTED),
        ("select id from people_v where id = 1 and length(ssn) > 0", INFERENCE),
        ("select length(ssn) from people_v", COMPUTED),
        ("update people set name = upper(ssn) where id = 1", WRITE),
        ("explain analyze select upper(ssn) from people", COMPUTED),
        ("prepare q as select upper(ssn) from people", COMPUTED),
        # Rows compared with each other, or with a constant, tell about them.
        ("select ssn from people union select '123'", INFERENCE),
        ("select ssn from people intersect select '123'", INFERENCE),
        ("select distinct ssn from people", INFERENCE),
        # Derived columns keep their lineage: an alias named like a clear
        # column is still the masked one.
        ("select id from (select id, ssn as name from people) s where name like '1%'", INFERENCE),
        ("select id from (select id, ssn as name from people) s where s.name like '1%'", INFERENCE),
        (
            "with s as (select id, ssn as name from people) select id from s where name = '1'",
            INFERENCE,
        ),
        ("select id from (select id, substr(ssn, 1, 1) as name from people) s", COMPUTED),
        ("select id from (select id, ssn as name from people) s order by name", INFERENCE),
        ("select id from (select id, ssn as name from people) s group by 1, name", INFERENCE),
        (
            "select s.id from (select id, ssn as name from people) s join t on t.b = s.name",
            INFERENCE,
        ),
        # A NATURAL join compares every shared column; t.f may be f(t).
        ("select p.id from people p natural join people_v", INFERENCE),
        ("select p.pg_column_size from people p", COMPUTED),
        ("select app.people.ssn from app.people", None),
        ("table people", None),
        ("select ssn from people where id = 1 limit all", None),
        ("select ssn from people where id = 1 fetch first 1 rows only", None),
        # What cannot be read is refused.
        ("select nosuch from people", COMPUTED),
        ("with recursive r as (select ssn from people) select ssn from r", COMPUTED),
    ],
)
def test_computed(sql: str, rule: str | None) -> None:
    assert _inference_rule(sql) == rule


def test_computed_follows_the_inference_setting() -> None:
    sql = "select upper(ssn) from people"
    assert _inference_rule(sql, inference=Outcome.ALLOW) is None
    session = _session(columns=True, inference=Outcome.REVIEW)
    decision = _decision(sql, session)
    assert (decision.outcome, decision.rule) == (Outcome.REVIEW, COMPUTED)
    assert decision.hint is not None and "select the masked column itself" in decision.hint


def test_computed_resolves_names_with_the_session_path() -> None:
    sql = "select upper(ssn) from people"
    for path, rule in ((("app", "public"), COMPUTED), (("public", "app"), None)):
        decision = _decision(sql, _session(path, columns=True))
        assert (None if decision.outcome is Outcome.ALLOW else decision.rule) == rule


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        # The conflict target picks the row that holds a guessed value.
        ("insert into people (id, ssn) values (9, '123') on conflict (ssn) do nothing", INFERENCE),
        (
            "insert into people (id, ssn) values (9, '123') on conflict (ssn) "
            "do update set name = 'x' returning id",
            INFERENCE,
        ),
        (
            "insert into people (id) values (9) on conflict on constraint people_pkey do nothing",
            INFERENCE,
        ),
        ("insert into t (id) values (9) on conflict (a) do nothing", None),
    ],
)
def test_a_conflict_target_is_a_predicate(sql: str, rule: str | None) -> None:
    assert _inference_rule(sql) == rule


@pytest.mark.parametrize(
    ("sql", "functions", "changed"),
    [
        ("select city from customers", None, False),
        ("select count(*), pg_catalog.lower('x') from customers", frozenset(), False),
        ("select pg_catalog.lower('x')", None, False),
        ("select lower('x')", frozenset(), False),
        # Which names are built-in is not known: taken for the built-in.
        ("select lower('x')", None, False),
        ("select lower('x')", frozenset({"lower"}), True),  # a public.lower may win
        ("select app.touch(1)", frozenset(), True),
        ("select nextval('s')", frozenset(), True),
        ("select pg_catalog.setval('s', 1)", frozenset(), True),
        ("select pg_try_advisory_lock(1)", frozenset(), True),
        ("select set_config('search_path', 'x', false)", frozenset(), True),
        ("select 1 where exists (select nextval('s'))", frozenset(), True),
        ("with w as (delete from t returning id) select * from w", frozenset(), True),
        ("update customers set city = 'x'", frozenset(), True),
        ("begin", frozenset(), True),  # not a read: what cannot be told counts
        ("select loread(lo_open(16400, 262144), 10)", frozenset(), False),
        ("select lo_export(16400, '/tmp/x')", frozenset(), True),
        ("select pg_read_file('postmaster.pid')", frozenset(), False),
        ("select query_to_xml('select nextval(''s'')', true, false, '')", frozenset(), True),
        ("select * from pg_logical_slot_get_changes('s', null, null)", frozenset(), True),
        ("copy customers to '/tmp/x'", frozenset(), True),
        ("copy (select 1) to program 'cat'", frozenset(), True),
        ("copy customers to stdout", frozenset(), False),
    ],
)
def test_what_may_have_changed_something(
    sql: str, functions: frozenset[str] | None, changed: bool
) -> None:
    (statement,) = analyze(sql, search_path=(UNQUALIFIED,)).statements
    assert may_have_changed(statement, functions) is changed


@pytest.mark.parametrize(
    ("oid", "changed"),
    [
        (954, False),  # loread
        (952, False),  # lo_open
        (956, False),  # lo_lseek
        (955, True),  # lowrite
        (964, True),  # lo_unlink
        (765, True),  # lo_export: a file on the server
        (4242, True),  # a function the gateway does not know by its OID
    ],
)
def test_what_a_function_call_may_have_changed(oid: int, changed: bool) -> None:
    assert call_may_have_changed(oid) is changed
