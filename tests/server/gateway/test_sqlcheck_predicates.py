"""``predicate_columns``: the columns a statement filters, joins, groups or sorts on."""

from __future__ import annotations

import pytest

from server.gateway.sqlcheck import ANY_COLUMN, predicate_columns


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("select id from people", set()),
        ("select count(*) from people", set()),
        ("select id from people where ssn like '1%'", {"ssn"}),
        ("select id from people p where p.SSN = $1", {"ssn"}),
        ('select id from people where "SSN" = 1', {"SSN"}),
        ("select id from people having max(score) > 1", {"score"}),
        ("select a.id from a join b on a.k = b.k", {"k"}),
        ("select id from a join b using (k)", {"k"}),
        ("select id from people group by city order by name", {"city", "name"}),
        ("select id, ssn from people order by 2", {"ssn"}),
        ("select ssn as x from people order by x", {"ssn", "x"}),
        ("select id from people order by 5", {ANY_COLUMN}),
        ("select * from people order by 1", {ANY_COLUMN}),
        ("select distinct on (ssn) id from people", {"ssn"}),
        # A window's ORDER BY has no select list to point into: any column.
        (
            "select rank() over (partition by ssn order by id) from people",
            {"ssn", "id", ANY_COLUMN},
        ),
        ("select id from a union select ssn from b order by 1", {"id", "ssn", ANY_COLUMN}),
        ("select 1 where exists (select 1 from people where ssn = '1')", {"ssn"}),
        ("select id from people p where p::text like '%1%'", {"p"}),
        ("delete from people where ssn = '1'", {"ssn"}),
        ("declare c cursor for select id from people where ssn = '1'", {"ssn"}),
        ("prepare q (text) as select id from people where ssn = $1", {"ssn"}),
        ("explain select id from people order by ssn", {"ssn"}),
        ("copy (select id from people where ssn = '1') to stdout", {"ssn"}),
        ("select 1; select id from people where ssn = '1'", {"ssn"}),
        # Cannot be read: None, which the caller refuses.
        ("show search_path", None),
        ("select from where", None),
        ("select 'unterminated", None),
    ],
)
def test_predicate_columns(sql: str, expected: set[str] | None) -> None:
    found = predicate_columns(sql)
    assert (None if found is None else set(found)) == expected


def test_a_text_over_the_limit_is_not_read() -> None:
    assert predicate_columns("select 1 where a = 1", max_len=5) is None
