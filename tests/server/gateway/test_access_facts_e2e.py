"""Access facts through the real gateway: a scripted day, then ``dbaccess audit access``.

A dev broker with the demo's customer masking (e-mail partial, card number
redacted) and a view over the customers.  Several identities read masked and
clear columns -- directly, through a join, a CTE and the view (which
answers for the customers' columns too) --, write, and an agent acting for a
person reads; then the real CLI answers exact
questions with the exact statements, and ``audit verify`` holds the index to
the recordings (an edited index row is found).  A person in the group exempt
from masking reads too: what came back in clear by exemption is said, and
which exemption (``audit access``, ``audit report``).  The day runs on each store
(``broker_store_url``: SQLite and PostgreSQL).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa

from server.demo.provision import DemoTarget
from server.store import tables as t
from server.store.db import Store
from tests.fix_broker import Broker, masked_demo_policy, running_broker

pytestmark = pytest.mark.slow

VIEW = "public.customer_contacts"
# (who, scope, statement)
DAY = [
    ("alice", "read", "select id, email from customers where id = 1"),
    (
        "alice",
        "read",
        "select o.amount, c.email from orders o join customers c"
        " on c.id = o.customer_id where o.id = 1",
    ),
    (
        "bob",
        "read",
        "with x as (select email, city from customers where id < 3) select email, city from x",
    ),
    ("bob", "read", f"select email from {VIEW} limit 1"),
    ("bob", "read", "select count(*) from customers"),
    ("carol", "write", "update orders set status = 'paid' where id = 1"),
    ("agent", "read", "select city from customers where id = 4"),
    # In the group exempt from masking: clear, and said to be by exemption.
    ("dana", "read", "select id, email from customers where id = 2"),
    ("dana", "read", f"select email from {VIEW} limit 1"),
]


@pytest.fixture(scope="module")
def day(
    demo_target: DemoTarget, broker_store_url: str | None
) -> Iterator[tuple[Broker, dict[str, str]]]:
    with psycopg.connect(demo_target.admin_dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE OR REPLACE VIEW {VIEW} AS SELECT id, email, city FROM public.customers"
        )
        conn.execute(f"GRANT SELECT ON {VIEW} TO demo_read")
    try:
        with running_broker(
            demo_target, masked_demo_policy("exempt: {groups: [dba]}"), store_url=broker_store_url
        ) as b:
            tokens = {
                "alice": b.token("alice", "dev"),
                "bob": b.token("bob", "dev"),
                "carol": b.token("carol", "dev"),
                "agent": b.token("helper-bot", "dev", owner="alice"),
                "audra": b.token("audra", "auditor"),
                "dana": b.token("dana", "dev", "dba"),
            }
            for who, scope, sql in DAY:
                res = b.cli("exec", "demo", "--scope", scope, "-c", sql, token=tokens[who])
                assert res.returncode == 0, (who, sql, res.stderr)
            yield b, tokens
    finally:
        with psycopg.connect(demo_target.admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP VIEW IF EXISTS {VIEW}")


def access(b: Broker, token: str, *args: str) -> list[dict[str, object]]:
    res = b.cli("audit", "access", "--since", "1h", *args, "-o", "json", token=token)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert isinstance(data, list)
    return data


def shown(records: list[dict[str, object]]) -> list[tuple[str, str, list[str]]]:
    """Each statement as (identity, command, its columns as relation.column[state]),
    a column it decides rows by as ``filter relation.column``."""
    out = []
    for r in records:
        columns = [
            ("filter " if c["action"] == "filter" else "")
            + f"{c['relation']}.{c['column']}"
            + ("" if c["state"] == "clear" else f"[{c['state']}]")
            for c in r["columns"]  # type: ignore[attr-defined]
        ]
        out.append((str(r["identity"]), str(r["command"]), columns))
    return out


# A column a statement decides rows by is named too ("who looked customers up by id?").
ALICE_ID = (
    "alice",
    "SELECT",
    ["public.customers.id", "public.customers.email[masked]", "filter public.customers.id"],
)
ALICE_JOIN = (
    "alice",
    "SELECT",
    [
        "public.orders.amount",
        "public.customers.email[masked]",
        "filter public.customers.id",
        "filter public.orders.customer_id",
        "filter public.orders.id",
    ],
)
# The CTE's WHERE is its own: unqualified, of the one table it reads.
BOB_CTE = (
    "bob",
    "SELECT",
    ["public.customers.email[masked]", "public.customers.city", "filter public.customers.id"],
)
# A read through the view answers for the base table too: the view's e-mail left
# masked because of the customers' e-mail.
BOB_VIEW = (
    "bob",
    "SELECT",
    ["public.customer_contacts.email[masked]", "public.customers.email[masked]"],
)
BOB_COUNT = ("bob", "SELECT", ["public.customers."])
# A write names the columns it set.
CAROL = ("carol", "UPDATE", ["public.orders.status", "filter public.orders.id"])
AGENT = ("helper-bot", "SELECT", ["public.customers.city", "filter public.customers.id"])
DANA = (
    "dana",
    "SELECT",
    ["public.customers.id", "public.customers.email[exempt]", "filter public.customers.id"],
)
DANA_VIEW = (
    "dana",
    "SELECT",
    ["public.customer_contacts.email[exempt]", "public.customers.email[exempt]"],
)


@pytest.mark.parametrize(
    ("who", "args", "expected"),
    [
        (
            "audra",
            ["--table", "customers", "--column", "email"],
            [DANA_VIEW, DANA, BOB_VIEW, BOB_CTE, ALICE_JOIN, ALICE_ID],
        ),
        ("audra", ["--table", "customer_contacts"], [DANA_VIEW, BOB_VIEW]),
        # In clear: plainly, or by exemption (alice's join filtered by the customers' id).
        (
            "audra",
            ["--table", "public.customers", "--clear-only"],
            [DANA_VIEW, DANA, AGENT, BOB_CTE, ALICE_JOIN, ALICE_ID],
        ),
        ("audra", ["--table", "customers", "--column", "email", "--clear-only"], [DANA_VIEW, DANA]),
        ("audra", ["--writes"], [CAROL]),
        # Who changed orders.status: the columns a write sets are named.
        ("audra", ["--table", "orders", "--column", "status", "--writes"], [CAROL]),
        ("audra", ["--table", "orders", "--column", "amount", "--writes"], []),
        ("audra", ["--kind", "agent"], [AGENT]),
        ("audra", ["--table", "orders"], [CAROL, ALICE_JOIN]),
        (
            "audra",
            [],
            [DANA_VIEW, DANA, AGENT, CAROL, BOB_COUNT, BOB_VIEW, BOB_CTE, ALICE_JOIN, ALICE_ID],
        ),
        # Not an auditor: only their own statements and their agents'.
        ("alice", [], [AGENT, ALICE_JOIN, ALICE_ID]),
        ("bob", ["--identity", "alice"], []),
    ],
)
def test_audit_access_answers_exactly(
    day: tuple[Broker, dict[str, str]], who: str, args: list[str], expected: object
) -> None:
    b, tokens = day
    assert shown(access(b, tokens[who], *args)) == expected


def test_the_facts_say_who_for_whom_and_how_many_rows(day: tuple[Broker, dict[str, str]]) -> None:
    b, tokens = day
    (agent,) = access(b, tokens["audra"], "--kind", "agent")
    assert (agent["identity_kind"], agent["on_behalf_of"], agent["rows"]) == ("agent", "alice", 1)
    (cte,) = access(
        b, tokens["audra"], "--table", "customers", "--identity", "bob", "--column", "city"
    )
    assert (cte["rows"], cte["decision"], cte["target"]) == (2, "allowed", "demo")
    res = b.cli(
        "audit", "access", "--since", "1h", "--summary", "-o", "json", token=tokens["audra"]
    )
    summary = {(s["identity"], s["relation"]): s for s in json.loads(res.stdout)}
    assert {k: (v["statements"], v["clear"], v["masked"]) for k, v in summary.items()} == {
        ("alice", "public.customers"): (2, 2, 2),  # the join's filter on the id is clear
        ("alice", "public.orders"): (1, 1, 0),
        ("bob", "public.customer_contacts"): (1, 0, 1),
        ("bob", "public.customers"): (3, 1, 2),
        ("carol", "public.orders"): (1, 1, 0),
        ("helper-bot", "public.customers"): (1, 1, 0),
        ("dana", "public.customers"): (2, 2, 0),
        ("dana", "public.customer_contacts"): (1, 1, 0),
    }


def test_what_exempted_a_clear_read_is_said(day: tuple[Broker, dict[str, str]]) -> None:
    """By ``audit access`` and by the report's accesses to masked columns in clear."""
    b, tokens = day
    found = access(b, tokens["audra"], "--identity", "dana")
    assert [r["exemption"] for r in found] == ["group dba", "group dba"]
    assert {r["exemption"] for r in access(b, tokens["audra"], "--identity", "bob")} == {None}
    res = b.cli("audit", "report", "--format", "json", "--since", "1h", token=tokens["audra"])
    assert res.returncode == 0, res.stderr
    clear = json.loads(res.stdout)["masked"]["clear_accesses"]
    assert [(x["identity"], x["column"], x["exemption"]) for x in clear] == [
        ("dana", "public.customers.email", "group dba"),
        ("dana", "public.customer_contacts.email", "group dba"),
        ("dana", "public.customers.email", "group dba"),
    ]
    md = b.cli("audit", "report", "--format", "md", "--since", "1h", token=tokens["audra"])
    assert md.returncode == 0, md.stderr
    assert "group dba" in md.stdout


def test_verify_holds_the_index_to_the_recordings(day: tuple[Broker, dict[str, str]]) -> None:
    b, tokens = day
    assert b.cli("audit", "verify", token=tokens["audra"]).returncode == 0
    store = Store.open(b.store_url or f"sqlite:///{b.data_dir / 'store.db'}")
    try:
        e, c = t.access_events.c, t.access_shape_columns.c
        with store.tx() as conn:
            shape = conn.execute(
                sa.select(e.shape_id)
                .where(
                    e.identity == "alice",
                    e.shape_id.in_(
                        sa.select(c.shape_id).where(c.column_name == "email", c.state == "masked")
                    ),
                )
                .order_by(e.id)
                .limit(1)
            ).scalar_one()
            # The index is edited to say alice's e-mail came back in clear.
            conn.execute(
                t.access_shape_columns.update()
                .where(c.shape_id == shape, c.column_name == "email")
                .values(state="clear")
            )
    finally:
        store.close()
    res = b.cli("audit", "verify", token=tokens["audra"])
    assert res.returncode == 8
    assert "the access index's columns differ from the event" in res.stderr


def test_a_dev_broker_told_to_records_statements_without_access_facts(
    demo_target: DemoTarget,
) -> None:
    """``dbaccess-server dev --no-access-events`` (what bench/gateway_throughput.py
    measures the facts' cost against): the statement is recorded, without facts."""
    with running_broker(demo_target, masked_demo_policy(), "--no-access-events") as b:
        alice, audra = b.token("alice", "dev"), b.token("audra", "auditor")
        sql = "select id, email from customers where id = 1"
        res = b.cli("exec", "demo", "--scope", "read", "-c", sql, token=alice)
        assert res.returncode == 0, res.stderr
        assert access(b, audra) == []
        assert b.cli("audit", "verify", token=audra).returncode == 0
        store = Store.open(f"sqlite:///{b.data_dir / 'store.db'}")
        try:
            se = t.session_events.c
            with store.tx() as conn:
                events = conn.execute(sa.select(se.data).where(se.kind == "statement")).all()
                indexed = conn.execute(sa.select(sa.func.count()).select_from(t.access_events))
                assert indexed.scalar_one() == 0
        finally:
            store.close()
        statements = [json.loads(e.data) if isinstance(e.data, str) else e.data for e in events]
        assert [s["text"] for s in statements if "customers" in s["text"]]
        assert all("access" not in s for s in statements)
