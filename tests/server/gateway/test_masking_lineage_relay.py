"""The masking relay decides computed result columns by their lineage, without
sockets: masked (``***``, or NULL under a ``null`` rule) when a masked column
flows into them, clear when none does, refused when the lineage cannot be
established, for simple Queries and for described prepared statements."""

from __future__ import annotations

import pytest

from server.gateway import pgwire
from server.gateway.masking import ColumnRef, MaskingRules
from server.gateway.masking_relay import MaskingHooks
from server.gateway.pgwire import (
    Bind,
    DataRow,
    Describe,
    ErrorResponse,
    Execute,
    Field,
    Parse,
    Query,
    RowDescription,
    Sync,
)
from server.gateway.relay import Relay
from server.policy.model import MaskMethod, MaskRule
from tests.fix_relay import StaticCatalog
from tests.fix_relay import row as _row
from tests.fix_relay import types as _types

OID = 16500
COLUMNS = (
    ColumnRef("public", "customers", "id", type_oid=23),
    ColumnRef("public", "customers", "email", type_oid=25),
    ColumnRef("public", "customers", "card_number", type_oid=25),
    ColumnRef("public", "customers", "city", type_oid=25),
)
RULES = MaskingRules(
    (
        MaskRule(column="public.customers.email", method=MaskMethod.REDACT),
        MaskRule(column="public.customers.card_number", method=MaskMethod.NULL),
    )
)
SECRET = b"ann@example.com"
CARD = b"4111111111111111"


def _relay(search_path: tuple[str, ...] = ("public",)) -> Relay:
    relay = Relay()
    MaskingHooks(
        RULES,
        StaticCatalog(OID, COLUMNS),  # type: ignore[arg-type]
        session_id="s-1",
        search_path=search_path,
    ).install(relay)
    return relay


def _computed(count: int) -> bytes:
    return RowDescription([Field(f"c{i}", 0, 0, 25, -1, -1, 0) for i in range(count)]).encode()


def _end() -> bytes:
    return pgwire.encode_raw(ord("C"), b"SELECT 1\0") + pgwire.ready_for_query("I")


def _values(out: bytes) -> list[bytes | None]:
    frames = pgwire.split_frames(out)[0]
    rows = [pgwire.decode_backend(f) for f in frames if f.type == ord("D")]
    assert len(rows) == 1 and isinstance(rows[0], DataRow)
    return [None if v is None else bytes(v) for v in rows[0].values]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("select upper(email), upper(city) from customers", [b"***", b"OSLO"]),
        ("select substr(card_number, 1, 4), city || '' from customers", [None, b"OSLO"]),
        # A null rule among the sources: NULL, the stronger of the two.
        ("select email || card_number, 1 from customers", [None, b"OSLO"]),
        ("select row_to_json(c), count(*) from customers c group by c.*", [None, b"OSLO"]),
        ("select x, y from (select email as x, city as y from customers) s", [b"***", b"OSLO"]),
        ("with w as (select email, city from customers) select upper(email), upper(city) from w",
         [b"***", b"OSLO"]),
        ("begin; select upper(email), upper(city) from customers; commit", [b"***", b"OSLO"]),
    ],
)  # fmt: skip
def test_a_simple_query_s_computed_columns_follow_their_sources(
    sql: str, expected: list[bytes | None]
) -> None:
    relay = _relay()
    relay.from_client(Query(sql).encode())
    # A statement before the one that returns rows completes first (BEGIN).
    lead = pgwire.encode_raw(ord("C"), b"BEGIN\0") if sql.startswith("begin;") else b""
    out, _ = relay.from_server(lead + _computed(2) + _row(SECRET + CARD, b"OSLO") + _end())
    # S: the report of the masked columns (dbaccess.masked_columns) ahead of the ReadyForQuery.
    assert _types(out) == "C" * bool(lead) + "TDCSZ"
    assert SECRET not in out and CARD not in out
    assert _values(out) == expected


@pytest.mark.parametrize(
    ("sql", "width"),
    [
        # Recursive CTE, EXPLAIN: no lineage.
        ("with recursive r(e) as (select email from customers union all "
         "select e from r where false) select e || '' from r", 1),
        ("explain select upper(email) from customers", 1),
        # A RowDescription of another width than the text's is not the text's.
        ("select upper(city) from customers", 2),
        # A relation the catalog does not know.
        ("select upper(email) from customers, nosuch", 1),
    ],
)  # fmt: skip
def test_what_the_lineage_cannot_establish_is_refused(sql: str, width: int) -> None:
    relay = _relay()
    relay.from_client(Query(sql).encode())
    out, _ = relay.from_server(_computed(width) + _row(*[SECRET] * width) + _end())
    assert _types(out) == "EZ" and SECRET not in out
    err = pgwire.decode_backend(pgwire.split_frames(out)[0][0])
    assert isinstance(err, ErrorResponse) and err.sqlstate == "42501"
    assert "may derive from masked data" in err.fields["M"]


def test_a_described_prepared_statement_s_lineage_masks_its_executions() -> None:
    relay = _relay()
    relay.from_client(
        Parse("st", "select upper(email), upper(city) from customers where id = $1").encode()
        + Describe("S", "st").encode()
        + Sync().encode()
    )
    relay.from_server(
        pgwire.encode_raw(ord("1"), b"")
        + pgwire.encode_raw(ord("t"), b"\0\1\0\0\0\x17")
        + _computed(2)
        + pgwire.ready_for_query("I")
    )
    relay.from_client(
        Bind("p", "st", [], [b"1"]).encode() + Execute("p").encode() + Sync().encode()
    )
    out, _ = relay.from_server(pgwire.encode_raw(ord("2"), b"") + _row(SECRET, b"OSLO") + _end())
    assert SECRET not in out
    assert _values(out) == [b"***", b"OSLO"]


def test_the_session_s_search_path_resolves_the_relation() -> None:
    # customers is public's; a path without public does not find it.
    relay = _relay(search_path=("app",))
    relay.from_client(Query("select upper(email) from customers").encode())
    out, _ = relay.from_server(_computed(1) + _row(SECRET) + _end())
    assert _types(out) == "EZ" and SECRET not in out


def test_each_result_of_a_query_of_several_follows_its_own_statement() -> None:
    """The result of the statement running now (after those completed) is decided
    by that statement's own text: a clear computation next to a masked one stays
    clear, and the masked one is masked."""
    relay = _relay()
    relay.from_client(
        Query("select upper(city) from customers; select upper(email) from customers").encode()
    )
    done = pgwire.encode_raw(ord("C"), b"SELECT 1\0")
    out, _ = relay.from_server(
        _computed(1) + _row(b"OSLO") + done + _computed(1) + _row(SECRET) + _end()
    )
    assert _types(out) == "TDCTDCSZ"
    assert SECRET not in out and b"OSLO" in out and b"***" in out


# Reads whose numbers could choose which column a result column comes from, or
# which statement of a Query is running: a plan kept for one text must be the
# plan a fresh connection makes for another of the same shape.
_SHAPED = [
    "select (array[email, city])[{0}] from customers",
    "select case when id > {0} then email else city end from customers",
    "select coalesce(nullif(city, '{0}'), email) from customers where id = {1}",
    "select substr(email, {0}, {1}) from customers",
    "select city from customers where id = {0}; select (array[city, email])[{1}] from customers",
    "select {0} + id, city from customers limit {1}",
]


@pytest.mark.parametrize("template", _SHAPED)
@pytest.mark.parametrize(("warm", "then"), [((1, 2), (2, 1)), ((2, 1), (1, 2)), ((1, 1), (2, 2))])
def test_a_kept_result_plan_is_the_plan_a_fresh_connection_makes(
    template: str, warm: tuple[int, int], then: tuple[int, int]
) -> None:
    def answer(relay: Relay, sql: str) -> bytes:
        relay.from_client(Query(sql).encode())
        statements = sql.count(";") + 1
        lead = pgwire.encode_raw(ord("C"), b"SELECT 1\0") * (statements - 1)
        width = 2 if "limit" in sql else 1
        out, _ = relay.from_server(lead + _computed(width) + _row(*[SECRET] * width) + _end())
        # The report of masked columns names the Query by its number on the connection.
        return b"".join(f.wire for f in pgwire.split_frames(out)[0] if f.type != ord("S"))

    kept = _relay()
    answer(kept, template.format(*warm))
    sql = template.format(*then)
    assert answer(kept, sql) == answer(_relay(), sql)
