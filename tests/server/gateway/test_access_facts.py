"""A statement's access facts from the analysis and the masking plans (no I/O)."""

from __future__ import annotations

import copy
import gc
import json
import logging
import weakref
from dataclasses import replace
from typing import Any

import pytest

from server.audit.access import SessionFacts, column_rows
from server.audit.canonical import ENCODER
from server.gateway import access_facts as access_facts_module
from server.gateway import access_facts as made
from server.gateway.access_facts import REREAD_MAX, AccessContext
from server.gateway.catalog import build_snapshot
from server.gateway.masking import NO_MASKING, Action, MaskingRules, MaskPlan, exempted
from server.gateway.masking.plans import FieldPlan
from server.gateway.sqlcheck import analyze
from server.policy.model import MaskingPolicy, MaskMethod, MaskRule

CTX = AccessContext(SessionFacts("demo", "alice", "user"), ("dba_s1", "public"), "dba_s1", "r-1")


def access_facts(*args: Any, **kwargs: Any) -> Any:
    """The statement's facts in full, as the first of their kind in a batch is recorded."""
    facts = made.access_facts(*args, **kwargs)
    return None if facts is None else facts.full()


def plan(*fields: tuple[str, str]) -> MaskPlan:
    """A result plan: (source, action) per column."""
    return MaskPlan(
        tuple(FieldPlan(f"c{i}", Action(a), source=s) for i, (s, a) in enumerate(fields))
    )


def guarded(sql: str) -> object:
    """The guard's analysis of ``sql``: the session's search path."""
    return analyze(sql, search_path=CTX.search_path)


def relations(sql: str, *plans: MaskPlan, decision: str = "allowed") -> object:
    facts = access_facts(
        CTX, sql, guarded(sql), plans, None, rows=1, tag="SELECT 1", decision=decision
    )
    if facts is None:
        return None
    return [
        (r["schema"], r["table"], r["action"], r["columns"], r["masked"])
        for r in facts["relations"]
    ]


@pytest.mark.parametrize(
    ("sql", "plans", "expected"),
    [
        # The session role's own schema ($user) is left out of an unqualified name.
        ("select count(*) from customers", (), [("public", "customers", "read", [], [])]),
        ("select id from sales.orders", (), [("sales", "orders", "read", [], [])]),
        (
            "select c.email, o.amount from customers c join orders o on o.customer_id = c.id",
            (plan(("public.customers.email", "mask"), ("public.orders.amount", "clear")),),
            [
                ("public", "customers", "read", ["email"], ["email"]),
                ("public", "orders", "read", ["amount"], []),
                # The join's columns decide which rows come back.
                ("public", "orders", "filter", ["customer_id"], []),
                ("public", "customers", "filter", ["id"], []),
            ],
        ),
        # A computed column names the masked columns it is derived from.
        (
            "with x as (select email, city from customers) select upper(email), city from x",
            (
                plan(
                    ("derived from public.customers.email", "mask"),
                    ("public.customers.city", "clear"),
                ),
            ),
            [("public", "customers", "read", ["email", "city"], ["email"])],
        ),
        # A write names the columns it sets.
        (
            "update orders set status = 'paid' where id = 1",
            (),
            [
                ("public", "orders", "write", ["status"], []),
                ("public", "orders", "filter", ["id"], []),
            ],
        ),
        (
            "insert into orders (id, status) values (1, 'new') on conflict (id) "
            "do update set amount = 0",
            (),
            [
                ("public", "orders", "write", ["id", "status", "amount"], []),
                ("public", "orders", "filter", ["id"], []),  # the conflict's target
            ],
        ),
        (
            "with moved as (update customers set city = 'x' returning id) "
            "insert into orders (id) select id from moved",
            (),
            [
                ("public", "customers", "write", ["city"], []),
                ("public", "orders", "write", ["id"], []),
            ],
        ),
        # Without a catalog, an INSERT without a column list names no column.
        ("insert into orders values (1)", (), [("public", "orders", "write", [], [])]),
        (
            "delete from orders where id = 1",
            (),
            [("public", "orders", "write", [], []), ("public", "orders", "filter", ["id"], [])],
        ),
        # Only what runs now: not a PREPARE's body, not what a plain EXPLAIN plans.
        ("prepare p as select * from customers", (), None),
        ("explain select * from customers", (), None),
    ],
)
def test_relations_and_columns(sql: str, plans: tuple[MaskPlan, ...], expected: object) -> None:
    assert relations(sql, *plans) == expected


def test_a_statement_that_did_not_run_has_no_facts() -> None:
    assert relations("select 1 from customers", decision="blocked") is None


def test_the_facts_name_who_and_the_approval() -> None:
    sql = "select 1 from customers"
    facts = access_facts(
        CTX, sql, guarded(sql), (), None, rows=3, tag="SELECT 3", decision="allowed"
    )
    assert facts is not None
    assert {k: facts[k] for k in ("identity", "identity_kind", "target", "rows", "approval")} == {
        "identity": "alice",
        "identity_kind": "user",
        "target": "demo",
        "rows": 3,
        "approval": "r-1",
    }
    assert facts["command"] == "SELECT"


def test_a_statement_review_is_the_approval_it_ran_under() -> None:
    facts = access_facts(
        CTX,
        "select 1 from customers",
        guarded("select 1 from customers"),
        (),
        None,
        rows=1,
        tag="SELECT 1",
        decision="allowed",
        approval="r-review",
    )
    assert facts is not None and facts["approval"] == "r-review"


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("the text was analysed again")


def test_the_guard_s_analysis_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """The facts come from the analysis the guard made (it names the relations,
    whatever the text says); the text is never read again."""
    made = guarded("select 1 from orders")
    monkeypatch.setattr(access_facts_module, "analyze", _never)
    facts = access_facts(
        CTX, "select 1 from customers", made, (), None, rows=1, tag="SELECT 1", decision="allowed"
    )
    assert facts is not None
    assert [r["table"] for r in facts["relations"]] == ["orders"]


def test_a_short_text_whose_analysis_went_missing_is_analysed_again() -> None:
    facts = access_facts(
        CTX, "select 1 from customers", None, (), None, rows=1, tag="SELECT 1", decision="allowed"
    )
    assert facts is not None
    assert [r["table"] for r in facts["relations"]] == ["customers"]


def test_a_long_text_whose_analysis_went_missing_is_not_read_on_the_writer_thread(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Reading it would hold the interpreter lock on the recorder's writer thread
    for as long as a worker process took: the facts are left out, and said so."""
    ids = ",".join(str(i) for i in range(REREAD_MAX))
    sql = f"select 1 from customers where id in ({ids})"
    monkeypatch.setattr(access_facts_module, "analyze", _never)
    with caplog.at_level(logging.WARNING):
        facts = access_facts(CTX, sql, None, (), None, rows=1, tag="SELECT 1", decision="allowed")
    assert facts is None
    assert "no access facts" in caplog.text


SNAPSHOT = build_snapshot(
    [
        (1, 1, "public", "customers", "id", 23, "r"),
        (1, 2, "public", "customers", "email", 25, "r"),
        (1, 3, "public", "customers", "city", 25, "r"),
        (2, 1, "public", "contacts", "id", 23, "v"),
        (2, 2, "public", "contacts", "email", 25, "v"),
    ],
    [(2, 1, 1), (2, 1, 2), (2, 1, 3)],
    0.0,
)
MASKING = MaskingRules.for_session(
    MaskingPolicy(rules=(MaskRule(column="public.customers.email", method=MaskMethod.REDACT),)),
    "read",
    (),
)


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        # The masked view column stands for what masked it, the clear one for the rest.
        (
            MASKING,
            [
                ("contacts", "read", ["id", "email"], ["email"]),
                ("customers", "read", ["city", "id", "email"], ["email"]),
            ],
        ),
        # Rules that tell none apart: every column the view reads.
        (
            NO_MASKING,
            [
                ("contacts", "read", ["id", "email"], ["email"]),
                ("customers", "read", ["city", "email", "id"], ["city", "email", "id"]),
            ],
        ),
    ],
)
def test_a_read_through_a_view_names_the_base_columns_too(
    rules: MaskingRules, expected: object
) -> None:
    """The catalog knows which base columns a view reads, not which feeds which view
    column: a view column read stands for those of them in its state."""
    ctx = replace(CTX, rules=rules)
    sql = "select id, email from contacts"
    facts = access_facts(
        ctx,
        sql,
        guarded(sql),
        (plan(("public.contacts.id", "clear"), ("derived from public.contacts.email", "mask")),),
        SNAPSHOT,
        rows=1,
        tag="SELECT 1",
        decision="allowed",
    )
    assert facts is not None
    assert [
        (r["table"], r["action"], r["columns"], r["masked"]) for r in facts["relations"]
    ] == expected


def test_an_exempt_session_s_clear_columns_are_marked_exempt() -> None:
    """Columns the rules it is exempt from would mask (``exempted``), and the exemption."""
    ctx = replace(CTX, rules=MASKING, exemption="group dba")
    shadow = plan(
        ("public.contacts.id", "clear"),
        ("derived from public.contacts.email", "mask"),
        ("public.customers.email", "mask"),
    )
    sql = "select c.id, c.email, u.email from contacts c, customers u"
    facts = access_facts(
        ctx,
        sql,
        guarded(sql),
        (exempted(shadow),),
        SNAPSHOT,
        rows=1,
        tag="SELECT 1",
        decision="allowed",
    )
    assert facts is not None and facts["exemption"] == "group dba"
    assert [(r["table"], r["columns"], r["masked"], r["exempt"]) for r in facts["relations"]] == [
        ("contacts", ["id", "email"], [], ["email"]),
        ("customers", ["city", "id", "email"], [], ["email"]),
    ]


# The writer makes the facts of a statement shape once (``_MADE``, by the identity of
# the analysis's shape, the context, the plans and the catalog) and each statement's
# from them: what differs between statements must never come from another's.
SHAPED = (
    "select id, email from customers where id = 1",
    "select id, email from customers where id = 2",
)


def _shape_facts(
    sql: str, plans: tuple[MaskPlan, ...], *, ctx: AccessContext = CTX, **kwargs: object
) -> dict[str, object]:
    arguments: dict[str, object] = {"rows": 1, "tag": "SELECT 1", "decision": "allowed"}
    arguments.update(kwargs)
    facts = access_facts(ctx, sql, guarded(sql), plans, None, **arguments)  # type: ignore[arg-type]
    assert facts is not None
    return facts


# SHAPED's WHERE: the id decides which customer comes back.
FILTER_ID = ("customers", ["id"], [])


def _columns(facts: dict[str, object]) -> list[tuple[object, object, object]]:
    return [(r["table"], r["columns"], r["masked"]) for r in facts["relations"]]  # type: ignore[attr-defined,index]


def test_statements_of_one_shape_share_an_analysis() -> None:
    one, two = (guarded(sql) for sql in SHAPED)
    assert one is not two and one.shape is not None and one.shape is two.shape  # type: ignore[attr-defined]


def test_one_shape_masked_in_one_result_and_clear_in_another_keeps_each_outcome() -> None:
    masked = plan(("public.customers.id", "clear"), ("public.customers.email", "mask"))
    clear = plan(("public.customers.id", "clear"), ("public.customers.email", "clear"))
    first = _shape_facts(SHAPED[0], (masked,))
    second = _shape_facts(SHAPED[1], (clear,))
    again = _shape_facts(SHAPED[1], (masked,))
    assert (
        _columns(first) == _columns(again) == [("customers", ["id", "email"], ["email"]), FILTER_ID]
    )
    assert _columns(second) == [("customers", ["id", "email"], []), FILTER_ID]


def test_one_shape_keeps_each_statement_s_rows_decision_and_approval() -> None:
    shown = plan(("public.customers.id", "clear"), ("public.customers.email", "mask"))
    made = [
        _shape_facts(SHAPED[0], (shown,), rows=1),
        _shape_facts(SHAPED[1], (shown,), rows=7, approval="r-review"),
        _shape_facts(SHAPED[0], (shown,), rows=None, decision="allowed"),
        _shape_facts(SHAPED[1], (shown,), rows=0),
    ]
    assert [(f["rows"], f["approval"], f["decision"]) for f in made] == [
        (1, "r-1", "allowed"),
        (7, "r-review", "allowed"),
        (None, "r-1", "allowed"),
        (0, "r-1", "allowed"),
    ]
    # Each one's text (what the recording keeps and its digest covers) says the same.
    for facts in made:
        assert facts.text == ENCODER.encode(json.loads(json.dumps(facts)))  # type: ignore[attr-defined]


def test_one_shape_in_two_sessions_names_each_session() -> None:
    bob = replace(CTX, session=SessionFacts("demo", "bob", "agent", "carol"), approval=None)
    alice_facts = _shape_facts(SHAPED[0], ())
    bob_facts = _shape_facts(SHAPED[1], (), ctx=bob)
    assert (alice_facts["identity"], alice_facts["on_behalf_of"], alice_facts["approval"]) == (
        "alice",
        None,
        "r-1",
    )
    assert (bob_facts["identity"], bob_facts["identity_kind"], bob_facts["on_behalf_of"]) == (
        "bob",
        "agent",
        "carol",
    )
    assert bob_facts["approval"] is None


@pytest.mark.parametrize("derive", ["replace", "copy"])
def test_a_context_made_from_another_never_takes_its_last_facts(derive: str) -> None:
    """Each connection keeps the template of its last statement: a context made from
    another one (``replace``, a copy) whose last is warm must name its own session."""
    alice = AccessContext(SessionFacts("demo", "alice", "user"), CTX.search_path, "dba_s1")
    assert _shape_facts(SHAPED[0], (), ctx=alice)["identity"] == "alice"
    bob = (
        replace(alice, session=SessionFacts("demo", "bob", "agent"))
        if derive == "replace"
        else copy.copy(alice)
    )
    object.__setattr__(bob, "session", SessionFacts("demo", "bob", "agent"))
    assert _shape_facts(SHAPED[1], (), ctx=bob)["identity"] == "bob"
    assert _shape_facts(SHAPED[0], (), ctx=alice)["identity"] == "alice"


def test_a_connection_s_last_facts_do_not_keep_a_catalog_snapshot_alive() -> None:
    """The shared caches hold connections' contexts, and a busy client can have the
    catalog reloaded every second: the snapshot a context last read must not
    live on through it."""
    ctx = AccessContext(SessionFacts("demo", "alice", "user"), CTX.search_path, "dba_s1")
    snapshot = build_snapshot(
        [
            (1, 1, "public", "customers", "id", 23, "r"),
            (1, 2, "public", "customers", "email", 25, "r"),
        ],
        [],
        0.0,
    )
    sql = SHAPED[0]
    first = access_facts(
        ctx, sql, guarded(sql), (), snapshot, rows=1, tag="SELECT 1", decision="allowed"
    )
    assert first is not None and ctx.last
    gone = weakref.ref(snapshot)
    del snapshot
    access_facts_module._MADE.clear()  # the shared cache keeps a few snapshots by design
    gc.collect()
    assert gone() is None
    # A later statement under no snapshot is not taken for one under the one gone.
    again = access_facts(
        ctx, sql, guarded(sql), (), None, rows=1, tag="SELECT 1", decision="allowed"
    )
    assert again is not None


def test_one_shape_under_two_catalogs_reads_each_catalog() -> None:
    """A view's base columns come from the catalog snapshot the statement ran under."""
    sql = "select email from contacts where id = 1"
    shown = plan(("public.contacts.email", "mask"))
    ctx = replace(CTX, rules=MASKING)
    with_view = access_facts(
        ctx, sql, guarded(sql), (shown,), SNAPSHOT, rows=1, tag="SELECT 1", decision="allowed"
    )
    without = access_facts(
        ctx, sql, guarded(sql), (shown,), None, rows=1, tag="SELECT 1", decision="allowed"
    )
    assert with_view is not None and without is not None
    assert [(r["table"], r["action"]) for r in with_view["relations"]] == [
        ("contacts", "read"),
        ("contacts", "filter"),
        ("customers", "read"),
    ]
    assert [(r["table"], r["action"]) for r in without["relations"]] == [
        ("contacts", "read"),
        ("contacts", "filter"),
    ]


def test_a_kept_shape_is_never_taken_for_another_of_the_same_ids() -> None:
    """The shapes are kept by the identity of what they are made of; an object gone and
    another made at its address must not find the facts of the first."""
    clear = plan(("public.customers.id", "clear"), ("public.customers.email", "clear"))
    masked = plan(("public.customers.id", "clear"), ("public.customers.email", "mask"))
    analysis = guarded(SHAPED[0])
    _shape_facts(SHAPED[0], (clear,))
    # The entry of the clear plan, filed as if it were the masked plan's.
    known = access_facts_module._made_for(None)
    first = analysis.shape  # type: ignore[attr-defined]
    stale = next(v for k, v in known.items() if v[0] == (first, CTX, clear))
    known[(id(first), id(CTX), id(masked))] = stale
    assert _columns(_shape_facts(SHAPED[1], (masked,))) == [
        ("customers", ["id", "email"], ["email"]),
        FILTER_ID,
    ]


def test_texts_without_a_shape_in_common_share_the_facts_they_have_in_common() -> None:
    """Strings differ (no shape in common): relations made again, but the same ones
    are the same list (what the index rows are made from once), others are not."""
    texts = [f"select id from customers where city = '{c}'" for c in "xy"]
    one, two = (_shape_facts(sql, ()) for sql in texts)
    other = _shape_facts("select id from orders where status = 'x'", ())
    assert one["relations"] is two["relations"] and one == two
    assert other["relations"] == [
        {
            "schema": "public",
            "table": "orders",
            "action": "read",
            "columns": [],
            "masked": [],
            "exempt": [],
        },
        {
            "schema": "public",
            "table": "orders",
            "action": "filter",
            "columns": ["status"],
            "masked": [],
            "exempt": [],
        },
    ]
    bob = replace(CTX, session=SessionFacts("demo", "bob", "user"))
    assert _shape_facts(texts[0], (), ctx=bob)["identity"] == "bob"


def test_an_insert_without_a_column_list_writes_every_column_the_catalog_holds() -> None:
    sql = "insert into customers values (1, 'a@example.com', 'Paris')"
    facts = access_facts(
        CTX, sql, guarded(sql), (), SNAPSHOT, rows=1, tag="INSERT 0 1", decision="allowed"
    )
    assert facts is not None
    assert [(r["action"], r["columns"]) for r in facts["relations"]] == [
        ("write", ["id", "email", "city"])
    ]


def _filters(facts: object) -> list[tuple[object, object, object, object]]:
    return [
        (r["table"], r["columns"], r["masked"], r["exempt"])
        for r in facts["relations"]  # type: ignore[index]
        if r["action"] == "filter"
    ]


@pytest.mark.parametrize(
    ("sql", "snapshot", "expected"),
    [
        # A column a statement only filters by was still read: its values decided
        # which rows came back ("who looked customers up by e-mail?").
        (
            "select id from customers where email = 'a@example.com'",
            None,
            [("customers", ["email"], [], [])],
        ),
        # A CTE's alias says no table: the catalog tells which relation read has it.
        (
            "with x as (select * from customers) select id from x where x.email = 'a'",
            SNAPSHOT,
            [("customers", ["email"], [], [])],
        ),
        # ... and without a catalog, nothing is claimed.
        ("with x as (select * from customers) select id from x where x.email = 'a'", None, []),
        # Joined, grouped and sorted by.
        (
            "select count(*) from customers c join orders o on o.customer_id = c.id "
            "group by c.city order by c.city",
            None,
            [("orders", ["customer_id"], [], []), ("customers", ["id", "city"], [], [])],
        ),
    ],
)
def test_the_columns_a_statement_decides_rows_by_are_facts_too(
    sql: str, snapshot: object, expected: object
) -> None:
    facts = access_facts(
        CTX,
        sql,
        guarded(sql),
        (),
        snapshot,
        rows=1,
        tag="SELECT 1",
        decision="allowed",  # type: ignore[arg-type]
    )
    assert facts is not None
    assert _filters(facts) == expected


def test_an_exempt_session_s_filter_on_a_masked_column_is_marked_exempt() -> None:
    ctx = replace(CTX, rules=MASKING, exemption="group dba")
    sql = "select id from customers where email like '%@example.com'"
    facts = access_facts(
        ctx, sql, guarded(sql), (), SNAPSHOT, rows=1, tag="SELECT 1", decision="allowed"
    )
    assert _filters(facts) == [("customers", ["email"], [], ["email"])]
    rows = column_rows(facts)  # type: ignore[arg-type]
    assert [(r.table, r.column, r.action, r.state) for r in rows if r.action == "filter"] == [
        ("customers", "email", "filter", "exempt")
    ]
