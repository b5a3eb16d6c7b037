"""Pipelines that describe one statement or portal and then run another under
the same name, through the real tunnel: the answer to a Describe describes what
it was sent for, never what the client parsed or bound since, so the rows of
the new one are masked or refused, never clear.  The same holds where the
server did not do what the client asked: a Parse of a name already taken, or
a Close and a Parse skipped after an error (``server.gateway.connection``).

``customers.email`` and ``customers.card_number`` are masked.  Each pipeline is
sent in one write, so the client's later messages reach the gateway before the
server's answer to the Describe.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest

from server.demo.provision import DemoTarget
from server.gateway import pgwire
from server.gateway.pgwire import Bind, Close, Describe, Execute, Message, Parse, Query, Sync
from tests.fix_broker import Broker, masked_demo_policy, running_broker
from tests.fix_pgwire import RawClient, rows_and_error
from tests.fix_session import HeldSession, held_session

pytestmark = pytest.mark.slow

CLEAR = "select id::text as a, city as b from customers order by id limit 3"
MASKED = "select email as a, card_number as b from customers order by id limit 3"
# Computed from masked columns: masked by the statement's lineage, as the
# RowDescription gives these columns no origin.
COMPUTED = (
    "select email as a, card_number as b from customers union all "
    "select email, card_number from customers limit 3"
)
# Of the same width, computed from nothing masked.
HARMLESS = "select 'x'::text as a, 'y'::text as b union all select 'x', 'y' order by 1 limit 3"
LONG = "n" * 63
# Run the statement named "s" through the unnamed portal, describing its rows.
RUN_S = (Bind("", "s"), Describe("P", ""), Execute(""), Sync())
CLEAR_EMAIL = re.compile(r"[^*\s]@")
CARD = re.compile(r"\d{12,}")


@pytest.fixture(scope="module")
def broker(demo_target: DemoTarget) -> Iterator[Broker]:
    with running_broker(demo_target, masked_demo_policy()) as b:
        yield b


@pytest.fixture(scope="module")
def session(broker: Broker) -> Iterator[HeldSession]:
    with held_session(broker, "--scope", "read") as s:
        yield s


@pytest.fixture(scope="module")
def writer(broker: Broker) -> Iterator[HeldSession]:
    with held_session(broker, "--scope", "write") as s:
        yield s


def _run(session: HeldSession, messages: list[Message], syncs: int) -> list[list[str | None]]:
    """Send the pipeline in one write; every DataRow value of its answers."""
    client = RawClient(session.port, session.database, session.ticket)
    try:
        client.send(*messages)
        got = []
        for _ in range(syncs):
            got.extend(client.until_ready())
        rows, _error = rows_and_error(got)
        # The connection is still usable afterwards.
        assert client.query("select 1")[0] == [["1"]]
        return rows
    finally:
        client.close()


def _no_clear_values(rows: list[list[str | None]]) -> None:
    for row in rows:
        for value in row:
            assert value is None or not CLEAR_EMAIL.search(value), rows
            assert value is None or not CARD.search(value), rows


PIPELINES = {
    "unnamed statement parsed again after its Describe": (
        [Parse("", CLEAR), Describe("S", ""), Parse("", MASKED), Bind("", ""), Execute(""), Sync()],
        1,
    ),
    "named statement closed and parsed again": (
        [
            Parse("s", CLEAR),
            Describe("S", "s"),
            Close("S", "s"),
            Parse("s", MASKED),
            Bind("", "s"),
            Execute(""),
            Sync(),
        ],
        1,
    ),
    "named statement parsed again across syncs": (
        [
            Parse("s", CLEAR),
            Describe("S", "s"),
            Sync(),
            Close("S", "s"),
            Sync(),
            Parse("s", MASKED),
            Sync(),
            Bind("", "s"),
            Execute(""),
            Sync(),
        ],
        4,
    ),
    "named portal closed and bound again": (
        [
            Query("begin"),
            Parse("c", CLEAR),
            Parse("m", MASKED),
            Bind("p", "c"),
            Describe("P", "p"),
            Close("P", "p"),
            Bind("p", "m"),
            Execute("p"),
            Sync(),
        ],
        2,
    ),
    "unnamed portal bound again after its Describe": (
        [
            Parse("c", CLEAR),
            Parse("m", MASKED),
            Bind("", "c"),
            Describe("P", ""),
            Bind("", "m"),
            Execute(""),
            Sync(),
        ],
        1,
    ),
    # The server keeps a statement whose name a later Parse asks for again
    # (42P05, prepared statement already exists): its rows are masked by its
    # own text's lineage, not by the refused one's.
    "named statement parsed again while it exists": (
        [
            Parse("s", COMPUTED),
            Sync(),
            Parse("s", HARMLESS),
            Sync(),
            *RUN_S,
        ],
        3,
    ),
    # After an error the server skips every message up to the Sync: the Close
    # and the Parse after the failing Bind never happen.
    "close and parse skipped after an error": (
        [
            Parse("s", COMPUTED),
            Sync(),
            Bind("", "no_such_statement"),
            Close("S", "s"),
            Parse("s", HARMLESS),
            Sync(),
            *RUN_S,
        ],
        3,
    ),
    # A CloseComplete for a name the gateway did not hold must not confirm the
    # failing Parse after it.
    "a Close of an unknown name before a name parsed again": (
        [
            Parse("s", COMPUTED),
            Sync(),
            Parse("s", HARMLESS),
            Sync(),
            Close("S", "zz"),
            Parse("s", HARMLESS),
            Sync(),
            *RUN_S,
        ],
        4,
    ),
    # The server keys names by their first 63 bytes: closing the second closes
    # the first.
    "names that differ after 63 bytes": (
        [
            Parse(LONG + "1", HARMLESS),
            Sync(),
            Close("S", LONG + "2"),
            Sync(),
            Parse(LONG + "2", COMPUTED),
            Sync(),
            Bind("", LONG + "1"),
            Describe("P", ""),
            Execute(""),
            Sync(),
        ],
        4,
    ),
    # SQL deallocates the name and prepares it again.
    "a name deallocated and prepared again in SQL": (
        [
            Parse("s", HARMLESS),
            Sync(),
            Query("deallocate s"),
            Query(f"prepare s as {COMPUTED}"),
            *RUN_S,
        ],
        4,
    ),
    # SQL closes a portal and declares a cursor of the same name.
    "a portal closed and declared again in SQL": (
        [
            Query("begin"),
            Parse("h", HARMLESS),
            Bind("p", "h"),
            Sync(),
            Query("close p"),
            Query(f"declare p cursor for {COMPUTED}"),
            Describe("P", "p"),
            Execute("p"),
            Sync(),
        ],
        5,
    ),
    # A Query the server skips after an error sends no ReadyForQuery.
    "a query skipped after an error": (
        [
            Parse("s", COMPUTED),
            Sync(),
            Execute("nope"),
            Query("select 1"),
            Sync(),
            Parse("s", HARMLESS),
            Sync(),
            Parse("zz", HARMLESS),
            Sync(),
            *RUN_S,
        ],
        5,
    ),
    # A failed Parse makes the server skip a Query sent before the Sync: masking's
    # own queue must skip it too, or the next results are planned with the
    # wrong text.
    "a query skipped after a failed parse": (
        [
            Parse("", "selec"),
            Query("select 1"),
            Sync(),
            Query("select 2"),
            Parse("m", COMPUTED),
            Bind("", "m"),
            Describe("P", ""),
            Execute(""),
            Sync(),
        ],
        3,
    ),
    # A Close skipped after an error is undone, but not over what SQL has since
    # prepared under that name.
    "a skipped close, then the name deallocated and prepared again in SQL": (
        [
            Parse("x", HARMLESS),
            Sync(),
            Bind("", "nope"),
            Close("S", "x"),
            Sync(),
            Query(f"deallocate x; prepare x as {COMPUTED}"),
            Bind("", "x"),
            Describe("P", ""),
            Execute(""),
            Sync(),
        ],
        4,
    ),
}


@pytest.mark.parametrize("name", list(PIPELINES))
def test_a_describe_answers_for_what_it_was_sent_for(session: HeldSession, name: str) -> None:
    messages, syncs = PIPELINES[name]
    rows = _run(session, messages, syncs)
    _no_clear_values(rows)


def test_a_pipeline_that_describes_what_it_runs_is_masked(session: HeldSession) -> None:
    rows = _run(
        session,
        [Parse("m", MASKED), Describe("S", "m"), Bind("", "m"), Execute(""), Sync()],
        1,
    )
    assert len(rows) == 3, rows
    assert all(str(a).startswith("***@") and b == "***" for a, b in rows), rows


def test_a_name_parsed_again_while_taken_runs_what_the_server_kept(session: HeldSession) -> None:
    """The server keeps the statement a second Parse of its name cannot replace
    (42P05, its own error), and that is what the name runs: masked as itself."""
    client = RawClient(session.port, session.database, session.ticket)
    try:
        client.send(Parse("s", COMPUTED), Sync(), Parse("s", HARMLESS), Sync())
        client.until_ready()
        _rows, error = rows_and_error(client.until_ready())
        assert error is not None and error["C"] == "42P05", error
        client.send(Bind("", "s"), Describe("P", ""), Execute(""), Sync())
        rows, error = rows_and_error(client.until_ready())
        assert error is None and len(rows) == 3, (rows, error)
        assert all(str(a).startswith("***") and b == "***" for a, b in rows), rows
    finally:
        client.close()


# Refused after it ran: the rows of a portal that was never described.
UNDESCRIBED = (Parse("", MASKED), Bind("", ""), Execute(""))


def _errors_until_closed(client: RawClient) -> list[dict[str, str]]:
    """The fields of every ErrorResponse the gateway sends until it closes the connection."""
    errors: list[dict[str, str]] = []
    while data := client.sock.recv(65536):
        client.parser.feed(data)
        for raw in client.parser.messages():
            if raw.type == ord("E"):
                errors.append(dict(pgwire.decode_backend(raw).fields))  # type: ignore[attr-defined]
    return errors


def test_a_write_that_ran_after_a_refused_result_closes_the_connection(
    writer: HeldSession,
) -> None:
    """The server had no error where masking refused a result, so it ran the UPDATE
    sent after it in the pipeline and committed it at the Sync.  The client must not
    take it for a statement the server skipped: the connection ends with 40003
    (statement_completion_unknown), naming what ran."""
    last = _last_error_after_a_refusal(writer, "update customers set city = city where id = -1")
    assert (last["S"], last["C"]) == ("FATAL", "40003"), last
    assert "(UPDATE 0)" in last["M"] and "skipped" in last["M"]


def test_a_read_that_ran_after_a_refused_result_keeps_the_connection(
    writer: HeldSession,
) -> None:
    """A later statement that only read changed nothing the client could take for
    undone: the refusal stays a plain error, and the connection goes on."""
    client = RawClient(writer.port, writer.database, writer.ticket)
    try:
        client.send(*UNDESCRIBED, Parse("r", CLEAR), Bind("pr", "r"), Execute("pr"), Sync())
        rows, error = rows_and_error(client.until_ready())
        assert error is not None and error["C"] == "42501", error
        assert rows == []
        assert client.query("select 1")[0] == [["1"]]
    finally:
        client.close()


def test_a_sequence_advanced_after_a_refused_result_closes_the_connection(
    writer: HeldSession, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    """A SELECT that calls nextval is no read: the sequence moved on and stays moved
    (no rollback undoes it), so the client is told as for a write."""
    found = admin_conn.execute("select pg_get_serial_sequence('public.customers', 'id')")
    seq = str(found.fetchone()[0])  # type: ignore[index]
    last_value = f"select last_value from {seq}"
    before = admin_conn.execute(last_value).fetchone()
    last = _last_error_after_a_refusal(writer, f"select nextval('{seq}')")
    assert (last["S"], last["C"]) == ("FATAL", "40003"), last
    after = admin_conn.execute(last_value).fetchone()
    assert before is not None and after is not None and after[0] == before[0] + 1  # type: ignore[operator]


def _last_error_after_a_refusal(session: HeldSession, later: str) -> dict[str, str]:
    """The last error of a pipeline whose first result masking refuses, ``later``
    run after it in the same pipeline, read until the gateway closes the connection."""
    client = RawClient(session.port, session.database, session.ticket)
    try:
        client.send(*UNDESCRIBED, Parse("l", later), Bind("pl", "l"), Execute("pl"), Sync())
        errors = _errors_until_closed(client)
    finally:
        client.close()
    assert errors
    return errors[-1]


def test_a_relation_named_with_its_database_is_masked_alike(session: HeldSession) -> None:
    """``db.public.customers`` is ``public.customers`` to PostgreSQL: filtering on a
    masked column through it is refused as through the plain name."""
    client = RawClient(session.port, session.database, session.ticket)
    try:
        for name in ("customers", f'"{session.database}".public.customers'):
            rows, error = client.query(f"select id from {name} where email like 'a%' order by id")
            assert error is not None and error["C"] == "42501", (name, rows)
            assert rows == []
    finally:
        client.close()
