"""sqlcheck.result_lineage against PostgreSQL itself: for each statement the
server describes (Parse + Describe, nothing runs), the lineage must have as
many result columns as the server's RowDescription, and every column the
server gives an origin (table OID, attnum) must count that origin among its
sources.  That pins ``*`` and ``t.*`` expansion, USING/NATURAL joins, alias
column lists and subqueries to the positions PostgreSQL really uses.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from server.demo.provision import DemoTarget
from server.gateway.sqlcheck import Name, result_lineage
from server.pgcluster import LocalCluster

pytestmark = pytest.mark.slow

COLUMNS_SQL = """
SELECT n.nspname, c.relname, a.attname, c.oid, a.attnum
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.oid, a.attnum
"""


@pytest.fixture(scope="module")
def server(
    pg_cluster: LocalCluster, demo_target: DemoTarget
) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    dsn = pg_cluster.dsn(dbname=demo_target.database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP VIEW IF EXISTS lineage_live_view")
        conn.execute("CREATE VIEW lineage_live_view AS SELECT id, upper(email) AS e FROM customers")
        yield conn
        conn.execute("DROP VIEW IF EXISTS lineage_live_view")


STATEMENTS = [
    "select * from customers",
    "select * from orders o join customers c on c.id = o.customer_id",
    "select * from orders join customers using (id)",
    "select * from orders natural join customers",
    "select * from customers natural join orders",
    "select * from customers left join orders using (id, created_at)",
    "select * from customers c full join orders o using (created_at)",
    "select o.*, c.* from orders o join customers c using (id)",
    "select c.*, o.* from orders o, customers c",
    "select * from orders, customers join orders o2 using (id)",
    "select * from customers c(a, b, e)",
    "select e, b from customers c(a, b, e)",
    "select * from (select email, city as town from customers) s",
    "select * from (select email, city from customers) s(x)",
    "select s.* from (select id, email from customers) s(k)",
    "select x, upper(x) from (select email as x from customers) s",
    "with w as (select id, card_number from customers) select * from w",
    "with w(a) as (select id, card_number from customers) select w.* from w",
    "select l.* from customers c cross join lateral (select c.email, c.city) l",
    "select * from customers c, lateral (select c.email as e2) l",
    "select c, c.email, (c).city from customers c",
    "select email, upper(email), count(*) over () from customers",
    "select email from customers union select city from customers",
    "select * from (values (1, 'a')) v(n, s)",
    "select *, email from customers",
    "select id, * from orders",
    "select * from lineage_live_view",
    "select v.e, c.email from lineage_live_view v join customers c using (id)",
    "insert into orders (customer_id, amount, status, created_at) "
    "values (1, 1, 'paid', now()) returning *",
    "update orders set amount = 2 from customers c where c.id = orders.customer_id "
    "returning orders.*, c.email",
    "delete from orders using customers where false returning *",
    "table customers",
    "select * from customers c join orders o using (id) join orders o2 using (customer_id)",
    "with a as (select * from customers), b as (select * from a) select b.* from b",
    "select * from customers c(x), lateral (select x) l(y)",
    "select * from (select * from orders) o(order_id, id) join customers using (id)",
]


@pytest.mark.parametrize("sql", STATEMENTS)
def test_lineage_has_the_server_s_width_and_origins(
    server: psycopg.Connection[tuple[object, ...]], sql: str
) -> None:
    names: dict[tuple[str, str], list[str]] = {}
    origin: dict[tuple[int, int], tuple[Name, str]] = {}
    for schema, table, column, oid, attnum in server.execute(COLUMNS_SQL):
        names.setdefault((str(schema), str(table)), []).append(str(column))
        origin[(int(str(oid)), int(str(attnum)))] = (Name((str(schema), str(table))), str(column))
    lineage = result_lineage(sql, ("public",), lambda n: names.get(n.parts))  # type: ignore[arg-type]
    assert lineage is not None
    pgconn = server.pgconn
    prepared = pgconn.prepare(b"", sql.encode())
    assert prepared.error_message == b"", prepared.error_message
    described = pgconn.describe_prepared(b"")
    assert len(lineage) == described.nfields
    for i in range(described.nfields):
        table, attnum = described.ftable(i), described.ftablecol(i)
        if table and attnum > 0:
            assert origin[(table, attnum)] in lineage[i], (i, described.fname(i))


# FROM items and ways to join them, combined: every statement PostgreSQL
# accepts must come out with its width and origins.
ITEMS = [
    "customers c",
    "orders o",
    "customers c(cid, cname)",
    "(select id, email, city from customers) s",
    "(select id, customer_id as cid, amount from orders) s(id)",
    "lineage_live_view v",
    "(values (1, 'x')) w(id, city)",
]
JOINS = [
    "{a}, {b}",
    "{a} cross join {b}",
    "{a} join {b} on true",
    "{a} join {b} using (id)",
    "{a} left join {b} using (id)",
    "{a} full join {b} using (id)",
    "{a} natural join {b}",
    "{a} natural left join {b}",
]
SELECTS = ["*", "{x}.*, 1", "*, {y}.*", "{y}.*"]


def _combined() -> list[str]:
    out: list[str] = []
    for i, a in enumerate(ITEMS):
        for b in ITEMS[i + 1 :]:
            x, y = a.split()[-1].split("(")[0], b.split()[-1].split("(")[0]
            for join in JOINS:
                from_ = join.format(a=a, b=b)
                for select in SELECTS:
                    out.append(f"select {select.format(x=x, y=y)} from {from_}")
    return out


def test_combined_joins_have_the_server_s_width_and_origins(
    server: psycopg.Connection[tuple[object, ...]],
) -> None:
    names: dict[tuple[str, str], list[str]] = {}
    origin: dict[tuple[int, int], tuple[Name, str]] = {}
    for schema, table, column, oid, attnum in server.execute(COLUMNS_SQL):
        names.setdefault((str(schema), str(table)), []).append(str(column))
        origin[(int(str(oid)), int(str(attnum)))] = (Name((str(schema), str(table))), str(column))
    pgconn = server.pgconn
    accepted = established = 0
    for sql in _combined():
        if pgconn.prepare(b"", sql.encode()).error_message:
            continue  # refused by PostgreSQL itself (no column id on a side, ...)
        accepted += 1
        described = pgconn.describe_prepared(b"")
        lineage = result_lineage(sql, ("public",), lambda n: names.get(n.parts))  # type: ignore[arg-type]
        if lineage is None:
            continue  # refused by the gateway: fail closed is always allowed
        established += 1
        assert len(lineage) == described.nfields, sql
        for i in range(described.nfields):
            table, attnum = described.ftable(i), described.ftablecol(i)
            if table and attnum > 0:
                assert origin[(table, attnum)] in lineage[i], (sql, i)
    assert accepted > 300, accepted
    assert established > accepted * 9 // 10, (established, accepted)
