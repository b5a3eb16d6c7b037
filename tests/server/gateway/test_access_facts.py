"""A statement's access facts from the analysis and the masking plans (no I/O)."""

from __future__ import annotations

import pytest

from server.audit.access import SessionFacts
from server.gateway.access_facts import AccessContext, access_facts
from server.gateway.masking import Action, MaskPlan
from server.gateway.masking.plans import FieldPlan

CTX = AccessContext(SessionFacts("demo", "alice", "user"), ("dba_s1", "public"), "dba_s1", "r-1")


def plan(*fields: tuple[str, str]) -> MaskPlan:
    """A result plan: (source, action) per column."""
    return MaskPlan(
        tuple(FieldPlan(f"c{i}", Action(a), source=s) for i, (s, a) in enumerate(fields))
    )


def relations(sql: str, *plans: MaskPlan, decision: str = "allowed") -> object:
    facts = access_facts(CTX, sql, plans, None, rows=1, tag="SELECT 1", decision=decision)
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
        (
            "update orders set status = 'paid' where id = 1",
            (),
            [("public", "orders", "write", [], [])],
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
    facts = access_facts(
        CTX, "select 1 from customers", (), None, rows=3, tag="SELECT 3", decision="allowed"
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
        (),
        None,
        rows=1,
        tag="SELECT 1",
        decision="allowed",
        approval="r-review",
    )
    assert facts is not None and facts["approval"] == "r-review"
