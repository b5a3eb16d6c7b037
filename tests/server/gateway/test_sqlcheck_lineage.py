"""sqlcheck.result_lineage: which base columns each result column of a statement
may be computed from, over a small fixed catalog; None where it cannot tell.

Expected sources are written ``table.column`` for ``public`` and
``schema.table.column`` otherwise; each row of a table is one result column.
"""

from __future__ import annotations

import pytest

from server.gateway.sqlcheck import Lineage, Name, result_lineage

CUSTOMERS = ("id", "full_name", "email", "phone", "card_number", "city", "created_at")
CATALOG: dict[tuple[str, ...], tuple[str, ...]] = {
    ("public", "customers"): CUSTOMERS,
    ("public", "orders"): ("id", "customer_id", "total", "note"),
    ("public", "a"): ("k", "x", "m"),
    ("public", "b"): ("y", "k", "m"),
    ("public", "c3"): ("m", "z"),
    ("public", "customer_emails"): ("id", "email"),  # a view: its own columns
    ("public", "Mixed"): ("Email", "email"),
    ("app", "people"): ("id", "ssn"),
    ("app", "customers"): ("id", "email"),
    ("pg_catalog", "pg_class"): ("oid", "relname"),
}
ALL = frozenset(f"customers.{c}" for c in CUSTOMERS)


def _columns(name: Name) -> tuple[str, ...] | None:
    return CATALOG.get(name.parts)


def _shown(lineage: Lineage | None) -> list[set[str]] | None:
    if lineage is None:
        return None
    return [
        {(f"{n.name}.{c}" if n.schema == "public" else f"{n}.{c}") for n, c in sources}
        for sources in lineage
    ]


def _lineage(sql: str, path: tuple[str, ...] = ("public",)) -> list[set[str]] | None:
    return _shown(result_lineage(sql, path, _columns))


E = {"customers.email"}
CARD = {"customers.card_number"}
CITY = {"customers.city"}
NONE: set[str] = set()


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        # Expressions, casts, functions, CASE, aggregates, windows.
        ("select email from customers", [E]),
        ("select upper(email), city from customers", [E, CITY]),
        ("select email || '' as e, id::text from customers", [E, {"customers.id"}]),
        ("select substr(card_number, 1, 4) from customers", [CARD]),
        ("select cast(card_number as int) + 1 from customers", [CARD]),
        ("select case when city = 'x' then email else 'n' end from customers", [CITY | E]),
        ("select coalesce(null, email, city) from customers", [E | CITY]),
        ("select format('%s-%s', full_name, email) from customers", [{"customers.full_name"} | E]),
        ("select count(*), max(card_number) from customers", [NONE, CARD]),
        ("select count(*) from customers where email like 'a%'", [NONE]),
        ("select array_agg(email), string_agg(city, ',') from customers", [E, CITY]),
        ("select json_agg(email order by id) from customers", [E | {"customers.id"}]),
        ("select string_agg(city, ',' order by email) from customers", [CITY | E]),
        ("select row_number() over (order by email) from customers", [E]),
        ("select sum(total) over (partition by customer_id) from orders",
         [{"orders.total", "orders.customer_id"}]),
        ("select city, count(*) from customers group by city having count(*) > 1",
         [CITY, NONE]),
        ("select 1, 'x', now(), $1", [NONE, NONE, NONE, NONE]),
        ("select user, current_role, current_user, session_user", [NONE] * 4),
        ("select email collate \"C\" from customers", [E]),
        ("select extract(year from created_at) from customers", [{"customers.created_at"}]),
        # Whole rows and JSON forms.
        ("select c from customers c", [ALL]),
        ("select row_to_json(c) from customers c", [ALL]),
        ("select to_jsonb(c.*) from customers c", [ALL]),
        ("select (c).email from customers c", [ALL]),
        ("select row_to_json((c).*) from customers c", [ALL]),
        ("select customers from customers", [ALL]),
        ("select row(id, email) from customers", [{"customers.id"} | E]),
        # * and t.*, in PostgreSQL's order.
        ("select * from orders", [{f"orders.{c}"} for c in ("id", "customer_id", "total", "note")]),
        ("table orders", [{f"orders.{c}"} for c in ("id", "customer_id", "total", "note")]),
        ("select o.*, c.city from orders o join customers c on c.id = o.customer_id",
         [{f"orders.{c}"} for c in ("id", "customer_id", "total", "note")] + [CITY]),
        ("select * from a join b using (k)",
         [{"a.k", "b.k"}, {"a.x"}, {"a.m"}, {"b.y"}, {"b.m"}]),
        ("select * from a natural join b",
         [{"a.k", "b.k"}, {"a.m", "b.m"}, {"a.x"}, {"b.y"}]),
        ("select * from a join b using (m, k)",
         [{"a.m", "b.m"}, {"a.k", "b.k"}, {"a.x"}, {"b.y"}]),
        ("select a.*, b.* from a join b using (k)",
         [{"a.k"}, {"a.x"}, {"a.m"}, {"b.y"}, {"b.k"}, {"b.m"}]),
        ("select * from a join b using (k, m) join c3 using (m)",
         [{"a.m", "b.m", "c3.m"}, {"a.k", "b.k"}, {"a.x"}, {"b.y"}, {"c3.z"}]),
        ("select", []),
        # A comma binds looser than JOIN: a, (b JOIN c3 USING (m)).
        ("select * from a, b join c3 using (m)",
         [{"a.k"}, {"a.x"}, {"a.m"}, {"b.m", "c3.m"}, {"b.y"}, {"b.k"}, {"c3.z"}]),
        ("select * from a cross join b",
         [{"a.k"}, {"a.x"}, {"a.m"}, {"b.y"}, {"b.k"}, {"b.m"}]),
        ("select k from a join b using (k)", [{"a.k", "b.k"}]),
        # Ambiguous or correlated names: every candidate.
        ("select m from a, b", [{"a.m", "b.m"}]),
        ("select (select max(total) from orders o where o.customer_id = c.id) from customers c",
         [{"orders.total"}]),
        ("select (select email) from customers", [E]),
        ("select (select id from orders where orders.id = customers.id) from customers",
         [{"orders.id", "customers.id"}]),
        # Subqueries in FROM, renamed columns, LATERAL, scalar subqueries.
        ("select x from (select email as x from customers) s", [E]),
        ("select s.z from (select email, city from customers) s(y, z)", [CITY]),
        ("select y from (select email, city from customers) s(y)", [E]),
        ("select * from (select email, 1 from customers) s", [E, NONE]),
        ("select (select email from customers limit 1)", [E]),
        ("select array(select card_number from customers)", [CARD]),
        ("select exists(select 1 from customers where email = 'x')", [NONE]),
        ("select id in (select id from customers) from orders", [{"orders.id", "customers.id"}]),
        ("select l.e from customers c, lateral (select c.email as e) l", [E]),
        ("select l.* from customers c cross join lateral (select upper(c.email)) l", [E]),
        ("select u from customers c, lateral unnest(array[c.email]) u", [E]),
        ("select g, upper(email) from generate_series(1, 3) g, customers", [NONE, E]),
        ("select g.g from generate_series(1, 3) g", [NONE]),
        ("select id from (select id, email from customers) customers", [{"customers.id"}]),
        # CTEs: a CTE hides a table of its name.
        ("with x as (select email from customers) select upper(email) from x", [E]),
        ("with x(e) as (select email from customers) select e from x", [E]),
        ("with customers as (select 'x' as email) select upper(email) from customers", [NONE]),
        ("with customers as (select email from public.customers) "
         "select upper(email) from customers", [E]),
        ("with x as (select email from customers), y as (select email from x) select * from y",
         [E]),
        ("with d as (delete from orders returning note) select note from d", [{"orders.note"}]),
        # Set operations: each branch.
        ("select email from customers union select city from customers", [E | CITY]),
        ("select city, 1 from customers union all select 'x', 2 except select email, 3 "
         "from customers", [CITY | E, NONE]),
        ("(select email from customers) union (select 'x')", [E]),
        # VALUES.
        ("values (1, 'a'), (2, 'b')", [NONE, NONE]),
        ("select * from (values (1, 'a')) v(a, b)", [NONE, NONE]),
        ("select column2 from (values (1, (select email from customers limit 1))) v",
         [E]),
        # Views are relations: their columns are followed by the caller.
        ("select upper(email) from customer_emails", [{"customer_emails.email"}]),
        # Names: quoting, schemas, search_path.
        ('select upper("Email") from "Mixed"', [{'"Mixed".Email'.replace('"Mixed"', "Mixed")}]),
        ("select upper(ssn) from people", None),
        ("select upper(ssn) from app.people", [{"app.people.ssn"}]),
        ("select public.customers.email || '' from customers", [E]),
        ("select relname from pg_class", [{"pg_catalog.pg_class.relname"}]),
        # DML RETURNING: the target's columns hold what is written.
        ("insert into customers (full_name) values ('x') returning upper(email), id",
         [E, {"customers.id"}]),
        ("insert into orders (note) select email from customers returning note",
         [{"orders.note"} | E]),
        ("update orders set note = c.email from customers c returning note",
         [{"orders.note"} | E]),
        ("update orders set total = 1 returning total", [{"orders.total"}]),
        ("update orders o set total = 1 from customers c where c.id = o.customer_id "
         "returning c.email, o.id", [E, {"orders.id"}]),
        ("delete from orders using customers returning *",
         [{f"orders.{c}"} for c in ("id", "customer_id", "total", "note")]
         + [{f"customers.{c}"} for c in CUSTOMERS]),
        ("delete from orders", []),
        # A CTE does not hide the table a DML statement writes.
        ("with customers as (select 'x' as email) delete from customers returning upper(email)",
         [E]),
        ("with orders as (select 1 as note) update orders set total = 1 returning note",
         [{"orders.note"}]),
        ("with x as (select email from customers) insert into orders (note) select email from x "
         "returning note", [{"orders.note"} | E]),
        # Transaction control around the statement, cursors.
        ("begin; select upper(email) from customers; commit", [E]),
        ("declare cur cursor with hold for select upper(email) from customers", [E]),
    ],
)  # fmt: skip
def test_sources_of_each_result_column(sql: str, expected: list[set[str]] | None) -> None:
    assert _lineage(sql) == expected


def test_search_path_takes_the_first_schema_that_holds_the_name() -> None:
    assert _lineage("select upper(ssn) from people", ("app", "public")) == [{"app.people.ssn"}]
    assert _lineage("select upper(email) from customers", ("app", "public")) == [
        {"app.customers.email"}
    ]
    assert _lineage("select upper(email) from customers", ("public", "app")) == [E]
    assert _lineage("select upper(email) from app.customers", ("public", "app")) == [
        {"app.customers.email"}
    ]
    assert _lineage("select upper(ssn) from people", ("$user", "public")) is None


@pytest.mark.parametrize(
    "sql",
    [
        "select upper(email) from nosuch",
        "select nosuch from customers",
        'select "EMAIL" from customers',
        'select "user" from customers',
        'select upper(email) from "Customers"',
        "select x.email from customers c",
        "select * from generate_series(1, 3) g",
        "select * from customers, generate_series(1, 3) g",
        "select * from a join generate_series(1, 2) g(k) using (k)",
        "select (c).* from customers c",
        "with recursive r(n) as (select 1 union all select n + 1 from r) select n from r",
        "select 1; select 2",
        "select email from customers; select 1",
        "explain select email from customers",
        "explain analyze select upper(email) from customers",
        "merge into orders o using customers c on o.id = c.id when matched then do nothing",
        "show search_path",
        "execute p",
        "fetch 10 from cur",
        "copy customers to stdout",
        "select email from customers union select id, city from customers",
        "values (1), (1, 2)",
        "select * from (select email from customers) s(a, b)",
        "select email from other_db.public.customers",
        # PostgreSQL refuses a table referenced by its name when it has an alias.
        "select public.customers.email from customers c",
        "select nosuch.customers.email from customers",
        "select * from rows from (generate_series(1, 2))",
        "select * from a left join (b join c3 using (m)) on true",
        "select * from a join b using (k, k)",
        # PostgreSQL refuses it: m is on the left twice.
        "select * from a join b using (k) join c3 using (m)",
        "select (c).*, 1 from customers c",
        "",
        "select 'unterminated",
        "select \x00",
    ],
)
def test_what_cannot_be_established_is_none(sql: str) -> None:
    assert _lineage(sql) is None


def test_too_long_a_text_is_none() -> None:
    sql = "select email from customers where id in (" + ", ".join(["1"] * 200) + ")"
    assert result_lineage(sql, ("public",), _columns, max_len=100) is None
    assert _lineage(sql) == [E]


def test_a_lookup_that_fails_gives_none() -> None:
    def broken(name: Name) -> tuple[str, ...] | None:
        raise KeyError(name)

    assert result_lineage("select upper(email) from customers", ("public",), broken) is None
