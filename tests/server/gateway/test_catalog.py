"""The column catalog against a real PostgreSQL, and masking plans built from real RowDescriptions.

Each test creates what it needs in the demo database with the superuser
connection, in a schema of its own that is dropped afterwards.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection, Iterator, Mapping

import psycopg
import pytest

from server.demo.provision import DemoTarget
from server.errors import Unavailable
from server.gateway.catalog import Catalog, build_snapshot
from server.gateway.masking import (
    Action,
    ColumnRef,
    MaskingRules,
    MaskPlan,
    apply_plan,
    plan_for_row_description,
)
from server.gateway.pgwire import DataRow, Field
from server.policy.model import MaskMethod, MaskRule

Conn = psycopg.Connection[tuple[object, ...]]


@pytest.fixture
def schema(admin_conn: Conn) -> Iterator[str]:
    name = f"cat_{secrets.token_hex(4)}"
    admin_conn.execute(f"CREATE SCHEMA {name}")
    admin_conn.execute(
        f"CREATE TABLE {name}.people (id int PRIMARY KEY, email text, card_number text, "
        "city text, score numeric)"
    )
    admin_conn.execute(f"ALTER TABLE {name}.people DROP COLUMN score")
    admin_conn.execute(f"ALTER TABLE {name}.people ADD COLUMN note text")
    admin_conn.execute(
        f"INSERT INTO {name}.people VALUES (1, 'ada@example.com', '4111111111111111', "
        "'Lisbon', 'first'), (2, 'alan@example.org', '5500000000000004', 'Berlin', NULL)"
    )
    admin_conn.execute(
        f"CREATE VIEW {name}.contacts AS SELECT id, upper(email) AS contact FROM {name}.people"
    )
    admin_conn.execute(f"CREATE VIEW {name}.cities AS SELECT id, city FROM {name}.people")
    admin_conn.execute(f"CREATE VIEW {name}.contacts2 AS SELECT * FROM {name}.contacts")
    admin_conn.execute(
        f"CREATE VIEW {name}.as_json AS SELECT row_to_json(p) AS j FROM {name}.people p"
    )
    admin_conn.execute(
        f"CREATE MATERIALIZED VIEW {name}.mv AS SELECT id, card_number FROM {name}.people"
    )
    try:
        yield name
    finally:
        admin_conn.execute(f"DROP SCHEMA {name} CASCADE")


@pytest.fixture
def catalog(demo_target: DemoTarget) -> Catalog:
    return Catalog(demo_target.admin_dsn, miss_interval=0.0)


def oid_of(conn: Conn, relation: str) -> int:
    row = conn.execute("SELECT %s::regclass::oid", (relation,)).fetchone()
    assert row is not None
    return int(str(row[0]))


def test_columns_of_tables_resolve_by_oid_and_attnum(
    catalog: Catalog, schema: str, admin_conn: Conn
) -> None:
    people = oid_of(admin_conn, f"{schema}.people")
    assert catalog.origin(people, 1) == ColumnRef(schema, "people", "id")
    email = catalog.origin(people, 2)
    assert email is not None
    assert (str(email), email.type_oid, email.relkind, email.derived) == (
        f"{schema}.people.email",
        25,
        "r",
        False,
    )
    # The dropped column keeps its attnum; the added one comes after it.
    assert catalog.origin(people, 5) is None
    note = catalog.origin(people, 6)
    assert note is not None and note.column == "note"
    assert [c.column for c in catalog.columns_of(schema, "people")] == [
        "id",
        "email",
        "card_number",
        "city",
        "note",
    ]
    customers = oid_of(admin_conn, "public.customers")
    card = catalog.origin(customers, 5)
    assert card is not None and str(card) == "public.customers.card_number"


def test_views_know_the_base_columns_they_read(
    catalog: Catalog, schema: str, admin_conn: Conn
) -> None:
    def sources(relation: str, attnum: int) -> set[str]:
        ref = catalog.origin(oid_of(admin_conn, f"{schema}.{relation}"), attnum)
        assert ref is not None and ref.derived
        return {str(s) for s in ref.sources}

    people = {f"{schema}.people.{c}" for c in ("id", "email", "card_number", "city", "note")}
    assert sources("contacts", 1) == {f"{schema}.people.id", f"{schema}.people.email"}
    assert sources("contacts", 2) == sources("contacts", 1)
    assert sources("cities", 2) == {f"{schema}.people.id", f"{schema}.people.city"}
    # a view of a view reaches the table; a whole-row reference reads every column
    assert sources("contacts2", 2) == sources("contacts", 1)
    assert sources("as_json", 1) == people
    mv = catalog.origin(oid_of(admin_conn, f"{schema}.mv"), 2)
    assert mv is not None and mv.relkind == "m"
    assert {str(s) for s in mv.sources} == {f"{schema}.people.id", f"{schema}.people.card_number"}


def test_a_new_table_is_found_on_the_first_miss(
    catalog: Catalog, schema: str, admin_conn: Conn
) -> None:
    catalog.snapshot()
    loads = catalog.loads
    admin_conn.execute(f"CREATE TABLE {schema}.later (x text)")
    later = oid_of(admin_conn, f"{schema}.later")
    ref = catalog.origin(later, 1)
    assert ref is not None and str(ref) == f"{schema}.later.x"
    assert catalog.loads == loads + 1


def test_misses_reload_at_most_once_per_interval(demo_target: DemoTarget) -> None:
    now = [1000.0]
    catalog = Catalog(demo_target.admin_dsn, miss_interval=5.0, clock=lambda: now[0])
    catalog.snapshot()
    assert catalog.loads == 1
    for _ in range(10):
        assert catalog.origin(4_000_000_000, 1) is None
    assert catalog.loads == 1
    now[0] += 6
    assert catalog.origin(4_000_000_000, 1) is None
    assert catalog.loads == 2


def test_renames_show_after_invalidate_and_after_max_age(
    demo_target: DemoTarget, schema: str, admin_conn: Conn
) -> None:
    now = [0.0]
    catalog = Catalog(demo_target.admin_dsn, max_age=60, clock=lambda: now[0])
    people = oid_of(admin_conn, f"{schema}.people")
    assert catalog.origin(people, 4) == ColumnRef(schema, "people", "city")
    admin_conn.execute(f"ALTER TABLE {schema}.people RENAME COLUMN city TO town")
    assert catalog.origin(people, 4) == ColumnRef(schema, "people", "city")  # cached
    catalog.invalidate()
    assert catalog.origin(people, 4) == ColumnRef(schema, "people", "town")
    admin_conn.execute(f"ALTER TABLE {schema}.people RENAME COLUMN town TO place")
    now[0] += 59
    assert catalog.origin(people, 4) == ColumnRef(schema, "people", "town")
    now[0] += 2
    assert catalog.origin(people, 4) == ColumnRef(schema, "people", "place")
    assert catalog.loads == 3


def test_a_relation_created_since_the_load_is_known_soon_without_waiting(
    demo_target: DemoTarget, schema: str, admin_conn: Conn
) -> None:
    catalog = Catalog(demo_target.admin_dsn, max_age=3600)
    loaded = catalog.snapshot()
    admin_conn.execute(f"CREATE TABLE {schema}.since_then (id int, secret text)")
    assert not catalog.columns_of(schema, "since_then")  # cached: not yet
    catalog.reload_soon()  # returns at once; a thread of its own reloads
    deadline = time.monotonic() + 10
    while catalog.current is loaded and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [c.column for c in catalog.columns_of(schema, "since_then")] == ["id", "secret"]
    assert catalog.loads == 2


def test_an_unreachable_target_is_unavailable_without_its_dsn() -> None:
    catalog = Catalog("host=127.0.0.1 port=1 user=x password=hunter2 dbname=x", connect_timeout=2)
    with pytest.raises(Unavailable) as caught:
        catalog.snapshot()
    assert "hunter2" not in caught.value.message
    assert catalog.current is None


def test_build_snapshot_survives_view_cycles_and_unknown_references() -> None:
    rows = [
        (1, 1, "s", "t", "a", 25, "r"),
        (2, 1, "s", "v", "a", 25, "v"),
        (3, 1, "s", "w", "a", 25, "v"),
    ]
    # v reads w and t.a; w reads v and an unknown relation
    snapshot = build_snapshot(rows, [(2, 3, 1), (2, 1, 1), (3, 2, 1), (3, 99, 1)], 0.0)
    v = snapshot.origin(2, 1)
    assert v is not None and {str(s) for s in v.sources} == {"s.t.a"}
    assert len(snapshot.columns()) == 3


# --------------------------------------------------------------------------- real results

KEY = b"0123456789abcdef0123456789abcdef"


def rules_for(schema: str) -> MaskingRules:
    return MaskingRules(
        (
            MaskRule(pattern="*email*", method=MaskMethod.PARTIAL, keep_domain=True),
            MaskRule(pattern="card_*", method=MaskMethod.PARTIAL, keep_last=4),
            MaskRule(column=f"{schema}.people.id", method=MaskMethod.HASH),
            MaskRule(column=f"{schema}.cities.id", method=MaskMethod.CLEAR),
        ),
        KEY,
    )


def described(
    conn: Conn, sql: str, *, binary: bool = False
) -> tuple[list[Field], list[list[bytes | None]]]:
    """A statement's RowDescription fields and raw values, as PostgreSQL sent them."""
    cur = conn.execute(sql, binary=binary)
    res = cur.pgresult
    assert res is not None
    fields = [
        Field(
            (res.fname(i) or b"").decode(),
            res.ftable(i),
            res.ftablecol(i),
            res.ftype(i),
            res.fsize(i),
            res.fmod(i),
            res.fformat(i),
        )
        for i in range(res.nfields)
    ]
    rows = [[res.get_value(r, c) for c in range(res.nfields)] for r in range(res.ntuples)]
    return fields, rows


def plan_of(
    catalog: Catalog,
    schema: str,
    fields: list[Field],
    lineage: Mapping[int, Collection[ColumnRef]] | None = None,
) -> MaskPlan:
    return plan_for_row_description(fields, catalog.origin, rules_for(schema), lambda: lineage)


def actions(plan: MaskPlan) -> list[str]:
    return [
        f"{f.name}:{f.action.value}" + (f":{f.method}" if f.action is Action.MASK else "")
        for f in plan.fields
    ]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        pytest.param(
            "SELECT id, email, city FROM {s}.people",
            ["id:mask:hash", "email:mask:partial", "city:clear"],
            id="plain",
        ),
        pytest.param(
            "SELECT e FROM (SELECT email AS e FROM {s}.people) sub",
            ["e:mask:partial"],
            id="renamed-in-a-subquery",
        ),
        pytest.param(
            "WITH x AS (SELECT card_number AS c FROM {s}.people) SELECT c FROM x",
            ["c:mask:partial"],
            id="through-a-cte",
        ),
        pytest.param(
            "SELECT p.email FROM {s}.people p JOIN public.orders o ON o.customer_id = p.id",
            ["email:mask:partial"],
            id="join",
        ),
        pytest.param("SELECT lower(email) FROM {s}.people", ["lower:block"], id="expression"),
        pytest.param(
            "SELECT email FROM {s}.people UNION ALL SELECT 'x'", ["email:block"], id="union"
        ),
        pytest.param("SELECT p FROM {s}.people p", ["p:block"], id="whole-row"),
        pytest.param("SELECT to_jsonb(p.*) FROM {s}.people p", ["to_jsonb:block"], id="json"),
        pytest.param(
            "SELECT id, contact FROM {s}.contacts", ["id:block", "contact:block"], id="view"
        ),
        pytest.param(
            # id is hashed in the table, so city could be computed from it: only the
            # vouched column is clear.
            "SELECT id, city FROM {s}.cities",
            ["id:clear", "city:block"],
            id="view-one-column-vouched",
        ),
        pytest.param("SELECT * FROM {s}.mv", ["id:block", "card_number:mask:partial"], id="mv"),
    ],
)
def test_real_result_shapes(
    catalog: Catalog, schema: str, admin_conn: Conn, sql: str, expected: list[str]
) -> None:
    fields, _rows = described(admin_conn, sql.format(s=schema))
    assert actions(plan_of(catalog, schema, fields)) == expected


def test_lineage_settles_what_origins_cannot(
    catalog: Catalog, schema: str, admin_conn: Conn
) -> None:
    email = ColumnRef(schema, "people", "email")
    fields, _ = described(admin_conn, f"SELECT lower(email), 1 AS one, now() FROM {schema}.people")
    plan = plan_of(catalog, schema, fields, {0: {email}, 1: set(), 2: set()})
    assert actions(plan) == ["lower:mask:redact", "one:clear", "now:clear"]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_real_rows_are_masked_in_both_formats(
    catalog: Catalog, schema: str, admin_conn: Conn, binary: bool
) -> None:
    fields, rows = described(
        admin_conn,
        f"SELECT id, email, card_number, city FROM {schema}.people ORDER BY id",
        binary=binary,
    )
    plan = plan_of(catalog, schema, fields)
    formats = [f.format for f in fields]
    sent = plan.row_description(fields)
    assert sent[0].type_oid == 25  # the hashed int is announced as text
    masked = [DataRow(list(row)).encode()[5:] for row in rows]
    out = [apply_plan(plan, body, formats) for body in masked]
    email_card_city = [
        [b"***@example.com", b"***1111", b"Lisbon"],
        [b"***@example.org", b"***0004", b"Berlin"],
    ]
    for body, expected in zip(out, email_card_city, strict=True):
        values = _values(body)
        assert values[1:] == expected
        if binary:
            assert values[0] is None  # a binary int cannot be hashed from its text
        else:
            assert values[0] is not None and len(values[0]) == 16
    # and the upstream formats ask for the hashed int as text
    assert plan.upstream_formats(formats)[0] == 0


def _values(body: bytes) -> list[bytes | None]:
    from server.gateway.pgwire import decode_backend
    from server.gateway.pgwire.framing import RawMessage

    row = decode_backend(RawMessage(ord("D"), body))
    assert isinstance(row, DataRow)
    return row.values


def test_a_snapshot_older_than_its_max_age_is_reloaded_for_its_readers() -> None:
    """The event loop reads ``current`` and never reloads it itself: a long-lived
    connection asks, and an old snapshot is reloaded (asked once per miss
    interval, however many statements ask)."""
    from server.gateway.catalog import CatalogSnapshot

    now = [0.0]
    catalog = Catalog("host=unused", max_age=300.0, miss_interval=5.0, clock=lambda: now[0])
    asked: list[float] = []
    catalog.reload_soon = lambda: asked.append(now[0])  # type: ignore[method-assign]
    catalog.reload_if_old()  # nothing loaded yet: the login's snapshot() loads it
    catalog.current = CatalogSnapshot({}, {}, loaded_at=0.0)
    for now[0] in (1.0, 299.0, 300.0, 301.0, 304.0, 305.5, 305.6):
        catalog.reload_if_old()
    assert asked == [300.0, 305.5]


def test_readers_that_miss_a_relation_ask_for_one_reload_together() -> None:
    """Statements on any number of connections that meet a relation the snapshot
    does not hold ask for a reload once per miss interval, together, and
    together with the asks of an old snapshot."""
    from server.gateway.catalog import CatalogSnapshot

    now = [0.0]
    catalog = Catalog("host=unused", max_age=300.0, miss_interval=1.0, clock=lambda: now[0])
    asked: list[float] = []
    catalog.reload_soon = lambda: asked.append(now[0])  # type: ignore[method-assign]
    catalog.current = CatalogSnapshot({}, {}, loaded_at=0.0)
    for now[0] in (10.0, 10.0, 10.5, 11.0, 11.2):
        catalog.reload_missing()
    now[0] = 300.5
    catalog.reload_if_old()
    catalog.reload_missing()  # asked half a second ago, for its age
    assert asked == [10.0, 11.0, 300.5]
