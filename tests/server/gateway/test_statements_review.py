"""A reviewed statement's approval is looked up in the store, never on the shell's loop.

The shell's event loop serves every connection, so the guard must not wait on
the store there (a PostgreSQL store across the network, a SQLite write lock):
where the relay may not block, the statement and everything after it are held
and offered again off the loop (``Relay.release_off_loop``), where the lookup
runs.  These tests drive the relay without sockets, with an approval service
that fails the test when it is asked where waiting is not allowed.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest
import sqlalchemy as sa

from server.approvals.service import Approvals
from server.gateway import pgwire
from server.gateway.guardrails import GuardrailRules, statement_sha256
from server.gateway.masking import ColumnRef, MaskingRules
from server.gateway.masking_relay import MaskingHooks
from server.gateway.pgwire import Bind, Execute, Field, Parse, Query, RowDescription, Sync
from server.gateway.relay import Relay
from server.gateway.result_limit import Caps, ResultLimit
from server.gateway.server import ClientConnection, Gateway
from server.gateway.session import UpstreamPhase
from server.gateway.statements import StatementGuard
from server.policy.model import MaskMethod, MaskRule
from tests.fix_relay import FACTS, StaticCatalog, recording_to, row, types
from tests.fix_shell import StandInTransport, connection

REVIEWED = "update accounts set balance = 0 where id = 7"


@dataclass
class _Request:
    id: str


@dataclass
class FakeApprovals:
    """The approval service's two calls the guard makes, each checked to run where the
    relay may block; ``approved`` holds the hashes an approver has approved."""

    relay: Relay | None = None
    approved: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)

    def _where(self, call: str) -> None:
        assert self.relay is not None and self.relay.may_block, f"{call} on the loop"
        self.calls.append(call)

    def use_statement(self, *, sha256: str, **_: Any) -> _Request | None:
        self._where("use_statement")
        if sha256 in self.approved:
            self.approved.discard(sha256)
            return _Request("req-approved")
        return None

    def request_statement(self, **_: Any) -> tuple[_Request, bool]:
        self._where("request_statement")
        return _Request("req-1"), True


def _guarded(approvals: FakeApprovals) -> Relay:
    relay = Relay()
    relay.may_block = False  # as the shell drives it, on its loop
    approvals.relay = relay
    StatementGuard(
        GuardrailRules.preset("write", production=True),
        FACTS,
        approvals=cast(Approvals, approvals),
        audit=None,
    ).install(relay)
    return relay


def _off_loop(relay: Relay) -> tuple[bytes, bytes]:
    assert relay.off_loop_wanted and relay.holding
    relay.may_block = True
    try:
        return relay.release_off_loop()
    finally:
        relay.may_block = False


def test_an_unapproved_query_waits_off_the_loop_then_is_refused_naming_its_review() -> None:
    approvals = FakeApprovals()
    relay = _guarded(approvals)
    # The reviewed Query and a select after it, in one chunk: both held.
    up, back = relay.from_client(Query(REVIEWED).encode() + Query("select 1").encode())
    assert (up, back) == (b"", b"") and approvals.calls == []
    assert relay.busy
    # More from the client while it waits is held behind it, in order.
    assert relay.from_client(Query("select 2").encode()) == (b"", b"")
    up, back = _off_loop(relay)
    assert approvals.calls == ["use_statement", "request_statement"]
    sent = [pgwire.decode_frontend(m) for m in pgwire.split_frames(up)[0]]
    assert isinstance(sent[0], Query) and sent[0].query != REVIEWED  # the stand-in
    assert [m.query for m in sent[1:] if isinstance(m, Query)] == ["select 1", "select 2"]
    assert not relay.holding and not relay.off_loop_wanted
    server_error = pgwire.error_response("ERROR", "42601", "syntax error")
    back, _ = relay.from_server(server_error + pgwire.ready_for_query("I"))
    error = pgwire.decode_backend(pgwire.split_frames(back)[0][0])
    assert isinstance(error, pgwire.ErrorResponse)
    assert "req-1" in dict(error.fields)["M"]


def test_an_approved_query_runs_as_sent_once_looked_up_off_the_loop() -> None:
    approvals = FakeApprovals(approved={statement_sha256(REVIEWED, (), ())})
    relay = _guarded(approvals)
    assert relay.from_client(Query(REVIEWED).encode()) == (b"", b"")
    up, back = _off_loop(relay)
    assert up == Query(REVIEWED).encode() and back == b""
    assert approvals.calls == ["use_statement"]
    assert relay.reviewed == {REVIEWED: "req-approved"}
    assert relay.asked == 1  # counted once, when it went


@pytest.mark.parametrize("approved", [False, True])
def test_a_bind_of_a_reviewed_statement_waits_off_the_loop(approved: bool) -> None:
    sql = "update accounts set balance = 0 where id = $1"
    approvals = FakeApprovals()
    if approved:
        approvals.approved.add(statement_sha256(sql, [b"7"], [0]))
    relay = _guarded(approvals)
    parse = Parse("", sql, [23]).encode()
    pipeline = Bind("", "", [0], [b"7"]).encode() + Execute("", 0).encode() + Sync().encode()
    up, _ = relay.from_client(parse + pipeline)
    # The Parse goes (a review waits for the Bind's values); the Bind is held.
    assert types(up) == "P" and approvals.calls == []
    up, _ = _off_loop(relay)
    assert types(up) == "BES"
    bind = pgwire.decode_frontend(pgwire.split_frames(up)[0][0])
    assert isinstance(bind, Bind)
    assert (bind.statement == "") is approved  # else the name no statement has
    asked = ["use_statement"] if approved else ["use_statement", "request_statement"]
    assert approvals.calls == asked


def _relaying(
    approvals: FakeApprovals, caps: Caps | None = None, gateway: Gateway | None = None
) -> tuple[ClientConnection, StandInTransport, StandInTransport]:
    """A shell's connection (of ``gateway``) relaying with the guard (and a result
    limit): the connection, the client's transport and the target's."""

    def setup(relay: Relay, live: object) -> None:
        approvals.relay = relay
        StatementGuard(
            GuardrailRules.preset("write", production=True),
            FACTS,
            approvals=cast(Approvals, approvals),
            audit=None,
        ).install(relay)
        if caps is not None:
            ResultLimit(caps).install(relay)

    if gateway is not None:
        gateway.relay_setup.clear()  # each connection its own approvals
    conn, client = connection([setup], gateway)
    upstream = StandInTransport()
    conn.upstream = SimpleNamespace(transport=upstream)  # type: ignore[assignment]
    conn.live = SimpleNamespace(  # type: ignore[assignment]
        id="s-test", upstream=SimpleNamespace(host="127.0.0.1", port=1)
    )
    conn.login = SimpleNamespace(  # type: ignore[assignment]
        phase=UpstreamPhase.READY, backend_key=None, parameters=[], handle=lambda raw: b""
    )
    conn.upstream_data(pgwire.ready_for_query("I"))  # login done: relaying
    assert conn.relay is not None and not conn.relay.may_block
    return conn, client, upstream


def test_the_shell_looks_the_approval_up_on_a_thread_while_its_loop_serves_others() -> None:
    """Through the asyncio shell: while the store is slow to answer, the loop goes on."""
    answer = threading.Event()
    loop_thread: list[int] = []

    class SlowStore(FakeApprovals):
        def use_statement(self, *, sha256: str, **kw: Any) -> _Request | None:
            assert threading.get_ident() not in loop_thread
            answer.wait(10)
            return super().use_statement(sha256=sha256, **kw)

    approvals = SlowStore()

    async def run() -> None:
        loop_thread.append(threading.get_ident())
        conn, client, upstream = _relaying(approvals)
        conn.data_received(Query(REVIEWED).encode() * 2 + Query("select 1").encode())
        # The loop is free while the store has not answered.
        await asyncio.sleep(0.2)
        assert bytes(upstream.written) == b"" and approvals.calls == []
        answer.set()
        for _ in range(500):
            if types(bytes(upstream.written)) == "QQQ":
                break
            await asyncio.sleep(0.01)
        sent = [pgwire.decode_frontend(m) for m in pgwire.split_frames(upstream.written)[0]]
        # Both refused (their stand-ins), each in a turn of its own, then the select.
        assert [m.query for m in sent if isinstance(m, Query)][1:] == [sent[0].query, "select 1"]
        assert isinstance(sent[0], Query) and sent[0].query != REVIEWED
        assert approvals.calls == ["use_statement", "request_statement"] * 2
        assert not client.closed and not conn.relay.holding  # type: ignore[union-attr]
        conn.gateway.analysis.shutdown(wait=True)
        conn.gateway.waits.shutdown(wait=True)

    asyncio.run(run())


def test_the_hooks_chained_before_the_guard_see_a_held_statement_once() -> None:
    """Masking's hooks (the recording's too) run before the guard's and keep a queue of
    the statements sent: had they seen the held statement twice, every later
    result would be read as the one before it (its masking plan, its recording)."""
    events: list[dict[str, Any]] = []
    approvals = FakeApprovals()
    relay = _guarded(approvals)
    MaskingHooks(
        MaskingRules((MaskRule(column="public.customers.email", method=MaskMethod.PARTIAL),)),
        StaticCatalog(16400, (ColumnRef("public", "customers", "email", type_oid=25),)),  # type: ignore[arg-type]
        session_id="s-1",
        record=recording_to(lambda _sid, _kind, data: events.append(dict(data))),
    ).install(relay)
    assert relay.from_client(Query(REVIEWED).encode()) == (b"", b"")
    _off_loop(relay)  # refused: the stand-in fails upstream
    relay.from_server(pgwire.error_response("ERROR", "42703", "no") + pgwire.ready_for_query("I"))
    relay.from_client(Query("select lower(email) from customers").encode())
    out, _ = relay.from_server(
        RowDescription([Field("lower", 0, 0, 25, -1, -1, 0)]).encode()
        + row(b"ann@example.com")
        + pgwire.encode_raw(ord("C"), b"SELECT 1\0")
        + pgwire.ready_for_query("I")
    )
    assert types(out) == "TDCSZ" and b"ann@" not in out  # masked, as in any session
    assert [e["text"].split()[0] for e in events] == ["update", "select"]


def test_a_statement_held_for_its_review_waits_for_a_cut_and_its_cancel() -> None:
    """A cut's end releases the reviewed statement (its gate holds it again), and a
    second cut, whose cancel must be out before anything the client sent after
    it runs, starts in the same chunk: the lookup off the loop sends nothing."""
    approvals = FakeApprovals()
    relay = _guarded(approvals)
    ResultLimit(Caps(1, None, "read")).install(relay)
    relay.from_client(Query("select a").encode() + Query("select b").encode())
    result = RowDescription([Field("a", 0, 0, 25, -1, -1, 0)]).encode()
    done = pgwire.encode_raw(ord("C"), b"SELECT 2\0") + pgwire.ready_for_query("I")
    relay.from_server(result + row(b"1") + row(b"2"))  # the first cut: no cancel
    assert relay.cutting and not relay.cancel_wanted
    assert relay.from_client(Query(REVIEWED).encode()) == (b"", b"")  # held
    relay.from_server(done + result + row(b"1") + row(b"2"))
    assert relay.off_loop_wanted and relay.cancel_wanted  # the second cut cancels
    assert _off_loop(relay) == (b"", b"")  # held until the cancel is out and the cut over
    assert approvals.calls == []
    relay.cancel_wanted = False
    assert relay.cancel_done() == (b"", b"")
    relay.from_server(done)
    up, _ = _off_loop(relay)
    assert types(up) == "Q" and approvals.calls == ["use_statement", "request_statement"]


def test_the_shell_sends_a_cuts_cancel_before_a_held_statement_is_looked_up() -> None:
    """A cut's end releases the reviewed statement, and the next result, whole in the
    same chunk, is cut and cancelled: the cancel goes out (here there is no
    target to cancel on) and the statement then runs, the connection not stuck."""
    approvals = FakeApprovals()

    async def run() -> None:
        conn, client, upstream = _relaying(approvals, Caps(1, None, "read"))
        conn.data_received(Query("select a").encode() + Query("select b").encode())
        result = RowDescription([Field("a", 0, 0, 25, -1, -1, 0)]).encode()
        done = pgwire.encode_raw(ord("C"), b"SELECT 2\0") + pgwire.ready_for_query("I")
        conn.upstream_data(result + row(b"1") + row(b"2"))  # the first cut: no cancel
        conn.data_received(Query(REVIEWED).encode())  # held by the cut
        upstream.written.clear()
        conn.upstream_data(done + result + row(b"1") + row(b"2") + done)
        for _ in range(500):
            if upstream.written:
                break
            await asyncio.sleep(0.01)
        assert types(bytes(upstream.written)) == "Q"  # the refused statement's stand-in
        assert approvals.calls == ["use_statement", "request_statement"]
        assert not client.closed
        conn.gateway.analysis.shutdown(wait=True)
        conn.gateway.waits.shutdown(wait=True)

    asyncio.run(run())


def test_a_store_that_fails_the_lookup_refuses_the_statement_with_a_hint() -> None:
    """The store fails the lookup (down, or a SQLite write lock not had in time): the
    statement does not run, no review is opened on a store that just failed,
    the client gets the refusal with a hint, and what it sent after goes on."""
    audited: list[str] = []

    class DownStore(FakeApprovals):
        def use_statement(self, *, sha256: str, **_: Any) -> _Request | None:
            self._where("use_statement")
            raise sa.exc.OperationalError("update", {}, Exception("database is locked"))

    approvals = DownStore()
    relay = Relay()
    relay.may_block = False
    approvals.relay = relay
    StatementGuard(
        GuardrailRules.preset("write", production=True),
        FACTS,
        approvals=cast(Approvals, approvals),
        audit=lambda kind, **_: audited.append(kind),
    ).install(relay)
    relay.from_client(Query(REVIEWED).encode() + Query("select 1").encode())
    up, _ = _off_loop(relay)
    sent = [pgwire.decode_frontend(m) for m in pgwire.split_frames(up)[0]]
    assert [m.query for m in sent if isinstance(m, Query)][1:] == ["select 1"]
    assert sent[0] != Query(REVIEWED)  # the stand-in
    assert approvals.calls == ["use_statement"] and audited == ["statement.blocked"]
    back, _ = relay.from_server(
        pgwire.error_response("ERROR", "42703", "no") + pgwire.ready_for_query("I")
    )
    error = pgwire.decode_backend(pgwire.split_frames(back)[0][0])
    assert isinstance(error, pgwire.ErrorResponse) and error.sqlstate == "42501"
    assert "try again" in dict(error.fields)["H"]


def test_an_approval_of_an_execute_holds_for_the_statement_it_was_prepared_as() -> None:
    """``EXECUTE p`` is judged as what ``p`` runs, so its review is of that too: an
    approval given for one ``p`` runs no other statement prepared under its name."""
    requested: list[str] = []

    class Reviews(FakeApprovals):
        def request_statement(self, **kw: Any) -> tuple[_Request, bool]:
            requested.append(kw["statement"])
            return super().request_statement(**kw)

    approvals = Reviews()
    relay = _guarded(approvals)
    prepare = f"PREPARE p AS {REVIEWED}"
    relay.from_client(Query(prepare).encode() + Query("EXECUTE p").encode())
    relay.from_server(pgwire.encode_raw(ord("C"), b"PREPARE\0") + pgwire.ready_for_query("I"))
    up, _ = _off_loop(relay)
    assert up != Query("EXECUTE p").encode()  # refused, held for review
    assert requested == [f"EXECUTE p\n-- prepared before: {prepare}"]
    relay.from_server(pgwire.error_response("ERROR", "42703", "no") + pgwire.ready_for_query("I"))
    approvals.approved.add(statement_sha256(requested[0], (), ()))
    # Another statement prepared under the name: the approval is not for it.
    other = "PREPARE p AS update accounts set balance = 0 where id > 0"
    relay.from_client(Query("DEALLOCATE p").encode() + Query(other).encode())
    relay.from_server(
        (pgwire.encode_raw(ord("C"), b"DEALLOCATE\0") + pgwire.ready_for_query("I")) * 2
    )
    relay.from_client(Query("EXECUTE p").encode())
    up, _ = _off_loop(relay)
    assert up != Query("EXECUTE p").encode()
    assert requested[-1] == f"EXECUTE p\n-- prepared before: {other}"
    relay.from_server(pgwire.error_response("ERROR", "42703", "no") + pgwire.ready_for_query("I"))
    # The one it was given for runs, once (a trailing semicolon is no other text).
    relay.from_client(Query("DEALLOCATE p").encode() + Query(prepare).encode())
    relay.from_server(
        (pgwire.encode_raw(ord("C"), b"DEALLOCATE\0") + pgwire.ready_for_query("I")) * 2
    )
    relay.from_client(Query("EXECUTE p ;").encode())
    up, _ = _off_loop(relay)
    assert up == Query("EXECUTE p ;").encode()


def test_one_approval_runs_one_of_the_same_statement_pipelined_several_times() -> None:
    """Binds and a Query of the approved statement in one chunk, all held: each is
    looked up on its own off the loop, and only the first runs under the approval."""
    sql = "update accounts set balance = 0 where id = $1"
    approvals = FakeApprovals(approved={statement_sha256(sql, [b"7"], [0])})
    relay = _guarded(approvals)
    bind = Bind("", "", [0], [b"7"]).encode() + Execute("", 0).encode()
    pipeline = Parse("", sql, [23]).encode() + bind + bind + Sync().encode()
    up, _ = relay.from_client(pipeline + Query(REVIEWED).encode())
    assert types(up) == "P"
    turns = []
    while relay.off_loop_wanted:
        turns.append(_off_loop(relay)[0])
    assert [types(turn) for turn in turns] == ["BE", "BES", "Q"]  # one lookup a turn
    sent = [pgwire.decode_frontend(m) for m in pgwire.split_frames(b"".join(turns))[0]]
    binds = [m.statement for m in sent if isinstance(m, Bind)]
    assert binds[0] == "" and binds[1] != ""  # the second names no statement: refused
    assert isinstance(sent[-1], Query) and sent[-1].query != REVIEWED
    assert approvals.calls.count("use_statement") == 3
    assert relay.asked == 2  # the Sync and the Query, each counted once


def test_lookups_waiting_on_a_slow_store_hold_up_no_other_sessions_analysis() -> None:
    """Two sessions' reviews wait on a store that does not answer: a third session's
    long statement (analysed off the loop too) is relayed meanwhile, since the
    threads that wait on the store are not the ones that analyse."""
    answer = threading.Event()

    class SlowStore(FakeApprovals):
        def use_statement(self, *, sha256: str, **kw: Any) -> _Request | None:
            answer.wait(10)
            return super().use_statement(sha256=sha256, **kw)

    async def run() -> None:
        gateway = Gateway(SimpleNamespace(recorder=SimpleNamespace(record=lambda *a: None)))  # type: ignore[arg-type]
        waiting = [_relaying(SlowStore(), gateway=gateway) for _ in range(2)]
        for conn, _client, _upstream in waiting:
            conn.data_received(Query(REVIEWED).encode())
        other, _client, upstream = _relaying(FakeApprovals(), gateway=gateway)
        long = "select 1 /* " + "x" * 2000 + " */"
        other.data_received(Query(long).encode())
        try:
            for _ in range(200):
                if upstream.written:
                    break
                await asyncio.sleep(0.01)
            assert bytes(upstream.written) == Query(long).encode()
        finally:
            answer.set()
            gateway.analysis.shutdown(wait=True)
            gateway.waits.shutdown(wait=True)

    asyncio.run(run())


def test_each_turn_off_the_loop_waits_on_the_store_once() -> None:
    """Reviewed statements pipelined in one chunk: each turn off the loop looks one up
    and holds the next for another turn, so one client cannot keep a thread that
    waits on the store for as long as it goes on pipelining."""
    approvals = FakeApprovals()
    relay = _guarded(approvals)
    relay.from_client(Query(REVIEWED).encode() + Query("select 1").encode() * 2 * 2)
    relay.from_client(Query(REVIEWED).encode() + Query("select 2").encode())
    up, _ = _off_loop(relay)
    assert types(up) == "QQQQQ" and approvals.calls == ["use_statement", "request_statement"]
    assert relay.off_loop_wanted  # the next reviewed one: its own turn
    up, _ = _off_loop(relay)
    assert types(up) == "QQ" and len(approvals.calls) == 4
    assert not relay.holding and relay.asked == 7


def test_a_connection_closed_while_its_turn_waits_looks_nothing_up() -> None:
    """The client goes while its reviewed statement waits for a thread (others' turns
    ahead of it on a slow store): its turn neither uses up an approval for a
    statement that will never run nor opens a review."""
    approvals = FakeApprovals(approved={statement_sha256(REVIEWED, (), ())})
    busy = threading.Event()

    async def run() -> None:
        conn, _client, upstream = _relaying(approvals)
        waits = conn.gateway.waits
        conn.gateway.waits = ThreadPoolExecutor(1)  # one thread, and another's turn in it
        conn.gateway.waits.submit(busy.wait, 10)
        conn.data_received(Query(REVIEWED).encode())
        conn.connection_lost(None)
        busy.set()
        conn.gateway.waits.shutdown(wait=True)
        assert approvals.calls == [] and approvals.approved and upstream.written == b""
        conn.gateway.analysis.shutdown(wait=True)
        waits.shutdown(wait=True)

    asyncio.run(run())


def test_a_long_chunk_analysed_off_the_loop_leaves_its_lookups_to_turns_of_their_own() -> None:
    """Over 1 kB in one chunk goes to an analysis thread; the reviewed statements in
    it still wait on the store in the threads for that, one per turn, so that
    no client holds an analysis thread on the store by sending long chunks."""
    where: list[str] = []

    class Store(FakeApprovals):
        def use_statement(self, *, sha256: str, **kw: Any) -> _Request | None:
            where.append(threading.current_thread().name)
            return super().use_statement(sha256=sha256, **kw)

    approvals = Store()

    async def run() -> None:
        conn, _client, upstream = _relaying(approvals)
        pad = Query("select 1 /* " + "x" * 1200 + " */").encode()
        conn.data_received(pad + Query(REVIEWED).encode() * 2 + Query("select 2").encode())
        for _ in range(500):
            if types(bytes(upstream.written)) == "QQQQ":
                break
            await asyncio.sleep(0.01)
        assert types(bytes(upstream.written)) == "QQQQ"
        assert len(where) == 2 and all(w.startswith("dbaccess-store-wait") for w in where)
        conn.gateway.analysis.shutdown(wait=True)
        conn.gateway.waits.shutdown(wait=True)

    asyncio.run(run())


def test_a_reviewed_statement_is_not_run_under_a_name_parsed_again() -> None:
    """Parse the reviewed statement, then a harmless one under the same name: the
    server refuses the second (42P05) and keeps the first, so a Bind of that name
    runs the update.  The guard judges it as the update, not as the select."""
    sql = "update accounts set balance = 0 where id = $1"
    approvals = FakeApprovals()
    relay = _guarded(approvals)
    up, _ = relay.from_client(Parse("s", sql, [23]).encode() + Sync().encode())
    assert types(up) == "PS"
    relay.from_server(pgwire.ParseComplete().encode() + pgwire.ready_for_query("I"))
    up, _ = relay.from_client(Parse("s", "select $1::int", [23]).encode() + Sync().encode())
    assert types(up) == "PS"
    taken = pgwire.error_response("ERROR", "42P05", 'prepared statement "s" already exists')
    relay.from_server(taken + pgwire.ready_for_query("I"))
    bind = Bind("", "s", [0], [b"7"]).encode()
    up, _ = relay.from_client(bind + Execute("", 0).encode() + Sync().encode())
    assert up == b""  # held: the update needs its review, looked up off the loop
    up, _ = _off_loop(relay)
    assert approvals.calls == ["use_statement", "request_statement"]
    sent = pgwire.decode_frontend(pgwire.split_frames(up)[0][0])
    assert isinstance(sent, Bind) and sent.statement != "s"  # a name no statement has


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        (
            'prepare "dbaccess: refused statement" as update accounts set balance = 0 where id = 7',
            "guardrails.reserved_name",
        ),
        (
            'prepare "dbaccess: result limit"(int) as delete from accounts where id = $1',
            "guardrails.reserved_name",
        ),
        # Spelled in escapes the analysis does not read: refused all the same.
        ('prepare U&"d\\0062access: refused statement" as select 1', "guardrails."),
    ],
)
def test_sql_may_not_name_the_gateways_own_statements(sql: str, rule: str) -> None:
    """The gateway's stand-ins bind statements of these names, which must never
    exist: a statement prepared under one would run in place of a refusal."""
    approvals = FakeApprovals()
    relay = _guarded(approvals)
    up, _ = relay.from_client(Query(sql).encode())
    sent = pgwire.decode_frontend(pgwire.split_frames(up)[0][0])
    assert isinstance(sent, Query) and sent.query != sql  # the stand-in
    server_error = pgwire.error_response("ERROR", "42601", "syntax error")
    back, _ = relay.from_server(server_error + pgwire.ready_for_query("I"))
    error = pgwire.decode_backend(pgwire.split_frames(back)[0][0])
    assert isinstance(error, pgwire.ErrorResponse)
    assert rule in dict(error.fields)["M"]
