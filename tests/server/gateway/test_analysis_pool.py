"""The analysis worker processes, without sockets: answers, a worker past its
allowance or crashing (killed, replaced, the call fails and the statement is
refused with 54000), message order through a relay whose long statements are
read in a worker, and shutdown with a call under way."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from functools import partial

import pytest

from server.gateway import analysis_pool, pgwire, sqlcheck
from server.gateway.analysis_limits import AnalysisLimits
from server.gateway.analysis_pool import AnalysisPool, OverBudget, WorkerFailed, offloading
from server.gateway.guardrails import GuardrailRules
from server.gateway.relay import Relay
from server.gateway.server import _relay_off_loop
from server.gateway.statements import SessionFacts, StatementGuard


@pytest.fixture(scope="module")
def pool() -> Iterator[AnalysisPool]:
    workers = AnalysisPool(2)
    workers.start()
    yield workers
    workers.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie until its parent reaps it: not running.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def test_a_call_runs_in_another_process(pool: AnalysisPool) -> None:
    assert pool.call(1.0, os.getpid) in pool.pids()
    assert pool.call(1.0, os.getpid) != os.getpid()


def test_workers_run_at_a_lower_priority(pool: AnalysisPool) -> None:
    assert pool.call(1.0, os.nice, 0) == min(os.nice(0) + analysis_pool.WORKER_NICENESS, 19)


def test_fork_is_refused() -> None:
    with pytest.raises(ValueError, match="never fork"):
        AnalysisPool(1, start_method="fork")


def test_an_exception_in_the_call_fails_it_and_keeps_the_worker(pool: AnalysisPool) -> None:
    before = pool.pids()
    with pytest.raises(WorkerFailed, match="ValueError"):
        pool.call(1.0, int, "not a number")
    assert sorted(pool.pids()) == sorted(before)
    assert pool.call(1.0, int, "7") == 7


def test_a_call_past_its_allowance_kills_its_worker_and_the_pool_recovers(
    pool: AnalysisPool,
) -> None:
    budget = 0.1
    allowance = budget * analysis_pool.WALL_FACTOR + analysis_pool.WALL_SLACK
    before = set(pool.pids())
    started = time.monotonic()
    with pytest.raises(OverBudget):
        pool.call(budget, time.sleep, 30)
    assert time.monotonic() - started < allowance + 2
    gone = before - set(pool.pids())
    assert len(gone) == 1 and not _alive(gone.pop())
    assert pool.call(1.0, int, "3") == 3
    assert len(pool.pids()) <= pool.size


def test_a_worker_that_dies_fails_the_call_clearly_and_is_replaced(pool: AnalysisPool) -> None:
    replaced = pool.replaced
    with pytest.raises(WorkerFailed, match="SIGABRT"):
        pool.call(1.0, os.abort)
    assert pool.replaced == replaced + 1
    pids = {pool.call(1.0, os.getpid) for _ in range(4)}
    assert all(_alive(pid) for pid in pids)


def test_analysis_in_a_worker_is_the_same_and_fills_the_brokers_cache(pool: AnalysisPool) -> None:
    sqlcheck.cache_clear()
    sql = "select a, b from t where c in (" + ", ".join(f"'v{i}'" for i in range(400)) + ")"
    assert analysis_pool.PROCESS_MIN_CHARS < len(sql) <= 16_384
    inline = sqlcheck.analyze(sql)
    sqlcheck.cache_clear()
    with offloading(pool):
        assert analysis_pool.offload(sql) is pool
        assert analysis_pool.offload("select 1") is None  # short: read here
        offloaded = analysis_pool.analyze(sql)
    assert offloaded == inline
    assert sqlcheck.analysis_cached(sql) == inline  # the next time, no worker


def test_an_analysis_of_thousands_of_statements_comes_back_whole(pool: AnalysisPool) -> None:
    sql = "select 1;" * 3000 + "select 2"
    with offloading(pool):
        found = analysis_pool.analyze(sql)
    assert len(found.statements) == 3001
    assert [s.index for s in found.statements] == list(range(3001))
    assert found.statements[-1].text == "select 2"


def test_without_a_pool_at_hand_analysis_stays_in_this_thread() -> None:
    sql = "select " + " + ".join(["1"] * 2000)
    assert analysis_pool.offload(sql) is None
    assert not analysis_pool.analyze(sql).unknown


# -- through the guard ------------------------------------------------------------


def _guarded(limits: AnalysisLimits | None = None) -> Relay:
    relay = Relay()
    StatementGuard(
        GuardrailRules.preset("write"),
        SessionFacts(
            session_id="s-test",
            identity="alice",
            groups=frozenset(),
            target="t",
            scope="write",
            reason="test",
            ttl=timedelta(hours=1),
        ),
        approvals=None,
        audit=None,
        limits=limits,
    ).install(relay)
    return relay


def _queries(wire: bytes) -> list[str]:
    msgs, _ = pgwire.split_frames(wire)
    found = []
    for msg in msgs:
        decoded = pgwire.decode_frontend(msg)
        assert isinstance(decoded, pgwire.Query)
        found.append(decoded.query)
    return found


def test_messages_keep_their_order_when_long_ones_are_read_in_a_worker(
    pool: AnalysisPool,
) -> None:
    long_one = "select 1 where 1 in (" + ", ".join(["1"] * 3000) + ")"
    sent = ["select 1", long_one, "select 2", long_one.replace("select 1", "select 3"), "select 4"]
    wire = b"".join(pgwire.Query(q).encode() for q in sent)
    relay = _guarded()
    up, back = _relay_off_loop(
        pool, relay, partial(relay.from_client, wire), gone=lambda: False, may_block=True
    )
    assert back == b""
    assert _queries(up) == sent


class _DeadPool:
    """A pool whose worker always dies (the guard sees what a crash gives)."""

    def call(self, budget: float, fn: object, /, *args: object) -> object:
        raise WorkerFailed("the analysis process ended by SIGKILL")


class _SlowPool:
    def call(self, budget: float, fn: object, /, *args: object) -> object:
        raise OverBudget("no answer within 2.5s")


@pytest.mark.parametrize(
    ("fake", "rule", "says"),
    [
        (_DeadPool(), "gateway.analysis_failed", "ended by SIGKILL"),
        (_SlowPool(), "gateway.analysis_budget", "gateway_analysis_cpu_budget"),
    ],
)
def test_a_statement_whose_worker_fails_is_refused_with_54000_and_the_next_runs(
    fake: object, rule: str, says: str
) -> None:
    sqlcheck.cache_clear()
    relay = _guarded()
    long_one = "select 1 where 1 in (" + ", ".join(["2"] * 3000) + ")"
    wire = pgwire.Query(long_one).encode() + pgwire.Query("select 5").encode()
    with offloading(fake):  # type: ignore[arg-type]
        up, _back = relay.from_client(wire)
    forwarded = _queries(up)
    assert forwarded[0] != long_one  # replaced by what PostgreSQL refuses
    assert forwarded[1] == "select 5"
    # The server's error for the replacement is swapped for the gateway's.
    server_error = pgwire.error_response("ERROR", "42601", "syntax error")
    ready = pgwire.ready_for_query("I")
    to_client, _ = relay.from_server(server_error + ready)
    msgs, _ = pgwire.split_frames(to_client)
    error = pgwire.decode_backend(msgs[0])
    assert isinstance(error, pgwire.ErrorResponse)
    assert error.fields["C"] == "54000"
    assert rule in error.fields["M"] and says in error.fields["M"]
    assert error.fields.get("H")
    assert sqlcheck.analysis_cached(long_one) is None  # not kept: it may be fine


def test_close_ends_a_call_under_way_at_once_and_refuses_later_ones() -> None:
    workers = AnalysisPool(1)
    workers.start()
    pids = workers.pids()
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            workers.call(60.0, time.sleep, 60)
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=run)
    caller.start()
    time.sleep(0.3)
    started = time.monotonic()
    workers.close()
    caller.join(5)
    assert not caller.is_alive()
    assert time.monotonic() - started < 3
    assert outcome and isinstance(outcome[0], WorkerFailed)
    assert not any(_alive(pid) for pid in pids)
    with pytest.raises(WorkerFailed, match="stopping"):
        workers.call(1.0, int, "1")


def test_a_long_statement_s_result_lineage_is_read_ahead_in_a_worker(
    pool: AnalysisPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.gateway import masking_relay
    from tests.server.gateway import test_masking_lineage_relay as lineage

    ids = ", ".join(str(i) for i in range(1500))
    sql = f"select upper(email), upper(city) from customers where id in ({ids})"
    assert len(sql) > analysis_pool.PROCESS_MIN_CHARS
    relay = lineage._relay()
    with offloading(pool):
        relay.from_client(pgwire.Query(sql).encode())

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a long text was parsed on the event loop")

    # The result comes on the event loop: the lineage read ahead decides it.
    monkeypatch.setattr(masking_relay, "result_lineage", never)
    out, _ = relay.from_server(
        lineage._computed(2) + lineage._row(lineage.SECRET, b"OSLO") + lineage._end()
    )
    assert lineage.SECRET not in out
    assert lineage._values(out) == [b"***", b"OSLO"]


def test_a_long_query_s_recorded_text_is_redacted_off_the_event_loop(
    pool: AnalysisPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.audit import recording
    from server.audit.recording import Build, event_data
    from server.gateway import masking_relay
    from tests.fix_relay import StaticCatalog
    from tests.server.gateway import test_masking_relay as masked

    queued: list[tuple[object, Build | None]] = []

    def record(_sid: str, _kind: str, data: object, build: Build | None = None, /) -> None:
        queued.append((data, build))  # as the recorder queues it, for its writer thread

    relay = Relay()
    masking_relay.MaskingHooks(
        masked.RULES,
        StaticCatalog(masked.OID, (masked.EMAIL, masked.CITY)),  # type: ignore[arg-type]
        session_id="s-1",
        record=record,
    ).install(relay)
    emails = ", ".join(f"'user{i}@example.com'" for i in range(200))
    sql = f"select email, city from customers where email in ({emails})"
    assert len(sql) > analysis_pool.PROCESS_MIN_CHARS
    with offloading(pool):
        relay.from_client(pgwire.Query(sql).encode())

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a long text was redacted on the event loop")

    # What redacts a statement's recorded text (the recorder's writer makes the event).
    monkeypatch.setattr(recording, "recorded_text", never)
    relay.from_server(
        masked._fields(("email", 1), ("city", 2))
        + pgwire.encode_raw(ord("C"), b"SELECT 0\0")
        + pgwire.ready_for_query("I")
    )
    monkeypatch.undo()
    # The recorder's writer makes the event: the text is redacted there.
    (data, build), *_ = queued
    event = event_data(data, build, time.time_ns())
    assert event is not None
    text = str(event["text"])
    # It touches a masked column: every literal is hidden.
    assert "user1@example.com" not in text and "[redacted]" in text


@pytest.mark.parametrize("extended", [False, True])
def test_a_long_statement_s_access_facts_come_from_the_guard_s_analysis(
    pool: AnalysisPool, monkeypatch: pytest.MonkeyPatch, extended: bool
) -> None:
    """The guard read the long text in a worker; the recording's access facts are
    made from that analysis, handed over through the relay, and the writer
    thread never reads the text again (which would hold the interpreter lock,
    and stall every connection, for as long as the worker took)."""
    from server.audit.access import FACTS
    from server.audit.access import SessionFacts as Who
    from server.audit.recording import Build, event_data
    from server.gateway import access_facts, masking_relay
    from tests.fix_relay import StaticCatalog
    from tests.server.gateway import test_masking_relay as masked

    queued: list[tuple[object, Build | None]] = []

    def record(_sid: str, _kind: str, data: object, build: Build | None = None, /) -> None:
        queued.append((data, build))

    relay = _guarded()
    masking_relay.MaskingHooks(
        masked.RULES,
        StaticCatalog(masked.OID, (masked.EMAIL, masked.CITY)),  # type: ignore[arg-type]
        session_id="s-1",
        record=record,
        access=access_facts.AccessContext(Who("t", "alice", "user"), ("public",), "dba_s1"),
    ).install(relay)
    ids = ", ".join(str(i) for i in range(1500))
    sql = f"select email, city from customers where id in ({ids})"
    assert len(sql) > access_facts.REREAD_MAX
    if extended:
        sent = (
            pgwire.Parse("s1", sql).encode()
            + pgwire.Bind("p1", "s1").encode()
            + pgwire.Describe("P", "p1").encode()
            + pgwire.Execute("p1").encode()
            + pgwire.Sync().encode()
        )
        answered = pgwire.encode_raw(ord("1"), b"") + pgwire.encode_raw(ord("2"), b"")
    else:
        sent, answered = pgwire.Query(sql).encode(), b""
    with offloading(pool):
        relay.from_client(sent)
    relay.from_server(
        answered
        + masked._fields(("email", 1), ("city", 2))
        + pgwire.encode_raw(ord("C"), b"SELECT 0\0")
        + pgwire.ready_for_query("I")
    )

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a long text was analysed again on the writer thread")

    monkeypatch.setattr(access_facts, "analyze", never)
    (data, build), *_ = queued
    event = event_data(data, build, time.time_ns())
    assert event is not None
    relation, filtered = event[FACTS]["relations"]
    assert (relation["schema"], relation["table"], relation["action"]) == (
        "public",
        "customers",
        "read",
    )
    assert relation["columns"] == ["email", "city"] and relation["masked"] == ["email"]
    # The WHERE's column, from the same analysis.
    assert (filtered["table"], filtered["action"], filtered["columns"]) == (
        "customers",
        "filter",
        ["id"],
    )
    # A Query's is taken when it is recorded; a Parse's stays for other Parses of its text.
    assert list(relay.analysed) == ([sql] if extended else []) and not relay.queried
