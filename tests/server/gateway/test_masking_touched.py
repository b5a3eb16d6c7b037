"""Which relations a statement touches, as the masking hooks resolve them with
the session's search_path: the first schema of the path that holds an
unqualified name, never a same-named relation elsewhere."""

from __future__ import annotations

import pytest

from server.gateway.masking_relay import UNQUALIFIED, touched_relations
from server.gateway.sqlcheck import Name, analyze

HELD = {
    ("app", "people"),
    ("public", "people"),
    ("public", "orders"),
    ("pg_catalog", "pg_class"),
    ("app", "pg_class"),
}
APP_FIRST = ("app", "public")


def _touched(sql: str, path: tuple[str, ...]) -> list[str] | None:
    written = analyze(sql, search_path=(UNQUALIFIED,))
    found = touched_relations(written, path, lambda n: (n.parts[0], n.name) in HELD)
    return None if found is None else sorted(str(n) for n in found)


@pytest.mark.parametrize(
    ("sql", "path", "expected"),
    [
        # The first schema of the path that holds the name, and only it.
        ("select * from people", APP_FIRST, ["app.people"]),
        ("select * from people", ("public",), ["public.people"]),
        ("select * from people", ("alice", "public"), ["public.people"]),
        ("select * from orders", APP_FIRST, ["public.orders"]),
        # Written with a schema: that relation, even when the path would pick another.
        ("select * from public.people", APP_FIRST, ["public.people"]),
        # Both, one written with a schema and one without: both are touched.
        (
            "select upper(p.ssn) from public.people a, people p",
            APP_FIRST,
            ["app.people", "public.people"],
        ),
        (
            "select * from app.people join people using (id)",
            ("public",),
            [
                "app.people",
                "public.people",
            ],
        ),
        # Writes count as well.
        ("insert into orders select * from people", APP_FIRST, ["app.people", "public.orders"]),
        # pg_* names: the catalog's unless the path puts another schema first.
        ("select * from pg_class", APP_FIRST, ["pg_catalog.pg_class"]),
        ("select * from pg_class", ("app", "pg_catalog"), ["app.pg_class", "pg_catalog.pg_class"]),
        # Cannot be told: fails closed.
        ("select * from nowhere", APP_FIRST, None),
        ("select * from app.orders", APP_FIRST, None),
        ("execute p", APP_FIRST, None),
        ("fetch all from c", APP_FIRST, None),
        ("select from where", APP_FIRST, None),
        ("select 1", APP_FIRST, []),
    ],
)
def test_touched_relations(sql: str, path: tuple[str, ...], expected: list[str] | None) -> None:
    assert _touched(sql, path) == expected


def test_a_schema_no_database_can_have() -> None:
    assert "\x00" in UNQUALIFIED
    # Never among the names a real search_path resolves to.
    assert Name(("public", "people")).schema != UNQUALIFIED
