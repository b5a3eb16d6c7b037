"""Session recordings on a real SQLite store: order, digests in the chain, tampering, failures."""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from server.audit import access, chain
from server.audit.access import RelationAccess, SessionFacts, access_event
from server.audit.recording import (
    LIMIT_KIND,
    RECORDED_TEXT_MAX,
    LimitHit,
    Recorder,
    SessionEvent,
    canonical_line,
    check_recording,
    limit_event,
    load_events,
    record_limit,
    recording_digest,
    recording_info,
    redact_params,
    redact_statement,
    statement_event,
    stored_events,
    stored_form,
    verify_recordings,
)
from server.policy.model import RecordingFailure
from server.store import tables as t
from server.store.db import Store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def store(sqlite_store: Store, db_path: Path) -> Store:
    assert str(db_path) == sqlite_store.engine.url.database  # the file raw() opens
    return sqlite_store


@pytest.fixture
def recorder(store: Store) -> Iterator[Recorder]:
    r = Recorder(store, flush_interval=0.05)
    try:
        yield r
    finally:
        r.stop()


def raw(db_path: Path) -> sqlite3.Connection:
    """A connection behind the store's back, as someone editing the file would have."""
    return sqlite3.connect(db_path, isolation_level=None, timeout=30)


START = {"identity": "alice", "groups": ["dev"], "target": "demo", "scope": "read"}


def record_session(recorder: Recorder, session_id: str, statements: int = 3) -> None:
    recorder.open(session_id, START)
    for i in range(statements):
        recorder.record(
            session_id,
            "statement",
            statement_event(
                f"select {i}",
                started_at=datetime(2026, 1, 1, tzinfo=UTC),
                duration_ms=1.5,
                rows=1,
                tag="SELECT 1",
            ),
        )
    recorder.record(session_id, "notice", {"severity": "NOTICE", "message": "hello"})


# --------------------------------------------------------------------------- recording


def test_a_recording_keeps_order_and_its_digest_goes_into_the_chain(
    store: Store, recorder: Recorder
) -> None:
    record_session(recorder, "s-aaa")
    closed = recorder.close("s-aaa", {"reason": "client ended the session"})
    events = load_events(store, "s-aaa")
    assert [e.seq for e in events] == list(range(1, 7))
    assert [e.kind for e in events] == [
        "session.start",
        "statement",
        "statement",
        "statement",
        "notice",
        "session.end",
    ]
    assert events[0].data == START
    assert events[1].data["text"] == "select 0"
    assert all(a.ts <= b.ts for a, b in itertools.pairwise(events))
    assert closed.status == "closed" and closed.events == 6 and closed.dropped == 0
    assert closed.digest == recording_digest(events)
    info = recording_info(store, "s-aaa")
    assert info is not None and info.digest == closed.digest and info.audit_seq == closed.audit_seq
    audit = [e for e in chain.events(store) if e.kind == "recording.closed"]
    assert [(e.session_id, e.data["digest"], e.seq) for e in audit] == [
        ("s-aaa", closed.digest, closed.audit_seq)
    ]
    assert chain.verify(store).ok
    result = verify_recordings(store)
    assert result.ok and result.recordings == 1 and result.problems == ()


def test_events_of_many_sessions_and_threads_interleave_without_losing_order(
    store: Store, recorder: Recorder
) -> None:
    sessions = [f"s-{i:03d}" for i in range(8)]
    for session_id in sessions:
        recorder.open(session_id, START)

    def work(session_id: str) -> None:
        for i in range(200):
            assert recorder.record(session_id, "statement", {"text": f"select {i}"})

    threads = [threading.Thread(target=work, args=(s,)) for s in sessions for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for session_id in sessions:
        closed = recorder.close(session_id, {})
        assert closed.events == 402
        assert [e.seq for e in load_events(store, session_id)] == list(range(1, 403))
    assert verify_recordings(store).ok


def test_recording_does_not_wait_for_the_store(
    store: Store, recorder: Recorder, db_path: Path
) -> None:
    recorder.open("s-busy", START)
    assert recorder.flush(10)
    blocker = raw(db_path)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        # The store is locked: events are accepted all the same, and wait in memory.
        for i in range(100):
            assert recorder.record("s-busy", "statement", {"text": f"select {i}"})
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert recorder.flush(30)
    assert len(load_events(store, "s-busy")) == 101


def test_a_flush_does_not_wait_for_a_batch_to_gather(store: Store) -> None:
    """Closing a session flushes its recording: that must not wait out the writer's
    gathering, whether the flush came before the writer started waiting or after."""
    recorder = Recorder(store, flush_interval=3600)
    try:
        recorder.open("s-quick", START)
        assert recorder.flush(30)
        for i in range(3):
            assert recorder.record("s-quick", "statement", {"text": f"select {i}"})
            assert recorder.flush(30)
        assert recorder.close("s-quick", {}).events == 5
    finally:
        recorder.stop()


def test_a_closed_recording_accepts_no_more_events(recorder: Recorder, store: Store) -> None:
    record_session(recorder, "s-done", 1)
    recorder.close("s-done", {})
    assert not recorder.record("s-done", "statement", {"text": "late"})
    again = recorder.close("s-done", {})
    assert again.events == 4
    # Neither changed the closed recording, nor chained a second digest.
    assert verify_recordings(store).ok
    assert sum(e.kind == "recording.closed" for e in chain.events(store)) == 1
    # Nor does a recorder of a restarted broker reopen it.
    other = Recorder(store)
    try:
        assert not other.record("s-done", "statement", {"text": "later"})
        assert other.close("s-done", {}).digest == again.digest
    finally:
        other.stop()
    assert len(load_events(store, "s-done")) == 4


def test_a_restarted_broker_continues_a_recording(store: Store) -> None:
    first = Recorder(store)
    record_session(first, "s-cont", 2)
    first.stop()
    second = Recorder(store)
    try:
        closed = second.close("s-cont", {"reason": "broker restarted; credential revoked"})
    finally:
        second.stop()
    events = load_events(store, "s-cont")
    assert [e.seq for e in events] == list(range(1, 6))
    assert events[-1].kind == "session.end"
    assert closed.digest == recording_digest(events)
    assert verify_recordings(store).ok


def test_closing_a_session_that_was_never_recorded(store: Store, recorder: Recorder) -> None:
    closed = recorder.close("s-none", {"reason": "reaped"})
    assert closed.status == "closed" and closed.events == 1
    assert verify_recordings(store).ok


def test_closing_reads_no_event_back_and_the_digest_state_does_not_grow(
    store: Store, recorder: Recorder
) -> None:
    """The digest is taken as events are written: closing a recording costs the
    same however long it is (bench/recording.py times one of 1,000,000)."""
    recorder.open("s-long", START)
    for i in range(1500):
        assert recorder.record("s-long", "statement", {"text": f"select {i}"})
    assert recorder.flush(30)
    state = recorder._sessions["s-long"]
    # A hash object, counters and flags: no events, nothing that grows with them.
    containers = (list, tuple, dict, set, deque, bytes, bytearray)
    assert [name for name, value in vars(state).items() if isinstance(value, containers)] == []
    assert state.written == 1501 and state.digest is not None
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", seen)
    try:
        closed = recorder.close("s-long", {"reason": "done"})
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", seen)
    reads = [s for s in statements if "session_events" in s and "INSERT" not in s.upper()]
    assert reads == []
    assert any("INSERT INTO session_events" in s for s in statements)  # session.end
    events = load_events(store, "s-long")
    assert closed.events == len(events) == 1502
    assert closed.digest == recording_digest(events)
    assert verify_recordings(store).ok


def test_event_data_is_made_on_the_writer_thread_and_stored_redacted(
    store: Store, recorder: Recorder, db_path: Path
) -> None:
    """The data path queues the raw text; the writer redacts it before anything is stored."""
    made_on: list[str] = []

    def build(text: str, ts_ns: int) -> dict[str, object]:
        made_on.append(threading.current_thread().name)
        started = datetime.fromtimestamp(ts_ns / 1e9, UTC)
        return statement_event(text, started_at=started, duration_ms=1.0, all_literals=True)

    recorder.open("s-raw", START)
    assert recorder.record(
        "s-raw", "statement", "select * from people where ssn = '123-45-6789'", build
    )
    recorder.close("s-raw", {})
    assert made_on == ["dbaccess-recorder"]
    events = load_events(store, "s-raw")
    assert events[1].data["text"] == "select * from people where ssn = '[redacted]'"
    with raw(db_path) as conn:
        stored = conn.execute("SELECT group_concat(data) FROM session_events").fetchone()[0]
    assert "123-45-6789" not in stored
    assert verify_recordings(store).ok


# --------------------------------------------------------------------------- failures


def test_a_store_that_refuses_events_fails_the_recording_closed(
    store: Store, db_path: Path
) -> None:
    failures: list[tuple[str, str]] = []
    called = threading.Event()

    def on_failure(session_id: str, reason: str) -> None:
        failures.append((session_id, reason))
        called.set()

    recorder = Recorder(store, on_failure=on_failure, flush_interval=0.01)
    try:
        recorder.open("s-fail", START)
        recorder.open("s-keep", START, failure=RecordingFailure.CONTINUE)
        assert recorder.flush(10)
        with raw(db_path) as conn:
            conn.execute("ALTER TABLE session_events RENAME TO session_events_gone")
        assert recorder.record("s-fail", "statement", {"text": "select 1"})
        assert recorder.record("s-keep", "statement", {"text": "select 1"})
        recorder.flush(10)
        assert called.wait(10)
        assert failures == [("s-fail", "the store refused the recording: OperationalError")]
        # fail closed: nothing more is accepted for it; the other session goes on unrecorded
        assert not recorder.record("s-fail", "statement", {"text": "select 2"})
        assert recorder.record("s-keep", "statement", {"text": "select 2"})
        recorder.flush(10)
        with raw(db_path) as conn:
            conn.execute("ALTER TABLE session_events_gone RENAME TO session_events")
        failed = recorder.close("s-fail", {})
        kept = recorder.close("s-keep", {})
    finally:
        recorder.stop()
    # the statement whose write failed, the one refused after, and session.end
    assert failed.status == "failed" and failed.dropped == 3
    assert kept.status == "closed" and kept.dropped == 2
    audit = {e.session_id: e.data for e in chain.events(store) if e.kind == "recording.closed"}
    assert audit["s-fail"]["status"] == "failed"
    assert audit["s-fail"]["problem"] == "the store refused the recording: OperationalError"
    assert audit["s-keep"]["dropped"] == 2
    # What was kept still verifies: the digest covers exactly the stored events.
    assert verify_recordings(store).ok


def test_an_event_that_cannot_be_made_fails_the_recording_closed(store: Store) -> None:
    """Made on the writer or not, an event that cannot be recorded is never lost quietly."""
    failures: list[tuple[str, str]] = []
    called = threading.Event()

    def on_failure(session_id: str, reason: str) -> None:
        failures.append((session_id, reason))
        called.set()

    def broken(_fields: object, _ts_ns: int) -> dict[str, object]:
        raise ValueError("cannot make this one")

    recorder = Recorder(store, on_failure=on_failure, flush_interval=0.01)
    try:
        recorder.open("s-bad", START)
        assert recorder.record("s-bad", "statement", "select 1", broken)  # made later
        assert called.wait(10)
        assert failures == [("s-bad", "an event could not be recorded: ValueError")]
        assert not recorder.record("s-bad", "statement", {"text": "select 2"})
        closed = recorder.close("s-bad", {})
    finally:
        recorder.stop()
    # the event that could not be made, the one refused after, and session.end
    assert closed.status == "failed" and closed.dropped == 3 and closed.events == 1
    assert verify_recordings(store).ok


def _facts(rows: int) -> dict[str, object]:
    relation = RelationAccess("public", "customers", "read", ("id", "email"), frozenset({"email"}))
    return access_event(
        SessionFacts("demo", "alice", "user"), command="SELECT", relations=[relation], rows=rows
    )


@pytest.mark.parametrize("write_process", [False, True], ids=["thread", "process"])
def test_the_text_stored_is_the_text_the_digest_covers(
    any_store: Store, write_process: bool
) -> None:
    """Each event's data is serialized once: the store keeps the canonical JSON text
    the writer hashed, so the chained digest holds over the stored texts themselves
    (written by the writer thread, or by its process: server/audit/event_writes.py)."""
    recorder = Recorder(any_store, flush_interval=0.01, write_process=write_process)
    try:
        recorder.open("s-text", START)
        odd = "select 'é', \"x\", '\\n'\n\t-- \u2028 \U0001f600"
        assert recorder.record(
            "s-text", "statement", {"text": odd, "rows": 1, "z": [1.5, None], "access": _facts(1)}
        )
        # Not JSON's own types: kept as JSON gives them back, and stored so.
        assert recorder.record("s-text", "notice", {"keys": {2: "b", 10: "a"}, "t": (1, 2)})
        closed = recorder.close("s-text", {"reason": "done"})
    finally:
        recorder.stop()
    assert closed.status == "closed" and closed.digest is not None
    se = t.session_events.c
    with any_store.tx() as conn:
        texts = dict(
            conn.execute(
                sa.select(se.seq, sa.cast(se.data, sa.Text)).where(se.session_id == "s-text")
            ).all()
        )
    events = load_events(any_store, "s-text")
    assert [e.seq for e in events] == sorted(texts) == [1, 2, 3, 4]
    digest = hashlib.sha256()
    for event in events:
        text = texts[event.seq]
        line = (
            f'{{"data":{text},"kind":{json.dumps(event.kind)},"seq":{event.seq},'
            f'"ts":"{event.ts.astimezone(UTC).isoformat(timespec="microseconds")}"}}\n'
        )
        assert line.encode() == canonical_line(event)
        digest.update(line.encode())
    assert digest.hexdigest() == closed.digest
    assert events[1].data["text"] == odd
    assert events[2].data == {"keys": {"2": "b", "10": "a"}, "t": [1, 2]}
    assert verify_recordings(any_store).ok
    assert access.verify_index(any_store) == []


@pytest.mark.parametrize("write_process", [False, True], ids=["thread", "process"])
def test_a_batch_whose_index_the_store_refuses_fails_the_recording_and_leaves_nothing(
    any_store: Store, write_process: bool
) -> None:
    """The events and their access index are written in one transaction: when the
    index cannot be written, neither are the events, and the recording fails loudly."""
    failures: list[tuple[str, str]] = []
    called = threading.Event()

    def on_failure(session_id: str, reason: str) -> None:
        failures.append((session_id, reason))
        called.set()

    def rename(old: str, new: str) -> None:
        with any_store.tx() as conn:
            conn.exec_driver_sql(f"ALTER TABLE {old} RENAME TO {new}")

    recorder = Recorder(
        any_store, on_failure=on_failure, flush_interval=0.01, write_process=write_process
    )
    try:
        recorder.open("s-idx", START)
        assert recorder.record("s-idx", "statement", {"text": "select 1", "access": _facts(1)})
        assert recorder.flush(10)
        rename("access_events", "access_events_gone")
        try:
            assert recorder.record("s-idx", "statement", {"text": "select 2", "access": _facts(2)})
            assert recorder.record("s-idx", "notice", {"message": "same batch"})
            assert recorder.flush(10)
            assert called.wait(10)
        finally:
            rename("access_events_gone", "access_events")
        assert not recorder.record("s-idx", "statement", {"text": "select 3"})
        failed = recorder.close("s-idx", {})
    finally:
        recorder.stop()
    [(session_id, reason)] = failures
    assert session_id == "s-idx"
    assert reason in (
        "the store refused the recording: OperationalError",  # SQLite: no such table
        "the store refused the recording: ProgrammingError",  # PostgreSQL: undefined table
    )
    # The batch, the one refused after and session.end
    assert failed.status == "failed" and failed.events == 2 and failed.dropped == 4
    assert [e.data.get("text") for e in load_events(any_store, "s-idx")] == [None, "select 1"]
    with any_store.tx() as conn:
        indexed = conn.execute(sa.select(t.access_events.c.seq)).scalars().all()
    assert indexed == [2]
    assert verify_recordings(any_store).ok
    assert access.verify_index(any_store) == []


def test_a_writer_that_fails_unexpectedly_fails_the_recordings_and_goes_on(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.audit import recording

    failures: list[tuple[str, str]] = []
    called = threading.Event()

    def on_failure(session_id: str, reason: str) -> None:
        failures.append((session_id, reason))
        called.set()

    def broken(*_parts: object) -> bytes:
        raise RuntimeError("a bug in the writer")

    recorder = Recorder(store, on_failure=on_failure, flush_interval=0.01)
    try:
        recorder.open("s-hit", START)
        assert recorder.flush(10)
        with monkeypatch.context() as patched:
            patched.setattr(recording, "_line", broken)  # the writer's hashing
            assert recorder.record("s-hit", "statement", {"text": "select 1"})
            assert recorder.flush(10)
        assert called.wait(10)
        assert failures == [("s-hit", "the recorder failed: RuntimeError")]
        recorder.open("s-next", START)  # the writer is still there
        assert recorder.record("s-next", "statement", {"text": "select 2"})
        assert recorder.close("s-next", {}).status == "closed"
        failed = recorder.close("s-hit", {})
    finally:
        recorder.stop()
    assert failed.status == "failed" and failed.dropped == 2 and failed.events == 1
    assert verify_recordings(store).ok


def test_a_full_queue_refuses_events_and_fails_the_recording(store: Store) -> None:
    failures: list[str] = []
    called = threading.Event()

    def on_failure(session_id: str, _reason: str) -> None:
        failures.append(session_id)
        called.set()

    # The writer lets a batch gather for a long time: the queue only fills.
    recorder = Recorder(
        store, on_failure=on_failure, max_queue=3, batch_size=100, flush_interval=30
    )
    try:
        recorder.open("s-full", START)  # 1 queued
        assert recorder.record("s-full", "statement", {})  # 2
        assert recorder.record("s-full", "statement", {})  # 3
        assert not recorder.record("s-full", "statement", {})  # refused
        assert called.wait(10)
        assert failures == ["s-full"]
    finally:
        recorder.stop()


def test_a_failure_callback_may_close_the_recording_it_reports(store: Store, db_path: Path) -> None:
    closed: list[str] = []
    done = threading.Event()
    holder: list[Recorder] = []

    def end_session(session_id: str, _reason: str) -> None:
        closed.append(holder[0].close(session_id, {"reason": "recording failed"}).status)
        done.set()

    recorder = Recorder(store, on_failure=end_session, flush_interval=0.01)
    holder.append(recorder)
    try:
        recorder.open("s-cb", START)
        recorder.flush(10)
        with raw(db_path) as conn:
            conn.execute("ALTER TABLE session_events RENAME TO gone")
        recorder.record("s-cb", "statement", {})
        assert done.wait(60)
        assert closed == ["failed"]
    finally:
        recorder.stop()


# --------------------------------------------------------------------------- tampering


def tamper_cases() -> list[tuple[str, str, str]]:
    return [
        (
            "edit-an-event",
            "UPDATE session_events SET data = json_set(data, '$.text', 'select 42') "
            "WHERE session_id = 's-t' AND seq = 2",
            "the events do not match the digest in the audit log",
        ),
        (
            "delete-an-event",
            "DELETE FROM session_events WHERE session_id = 's-t' AND seq = 3",
            "the events do not match the digest in the audit log",
        ),
        (
            "reorder-events",
            "UPDATE session_events SET seq = -2 WHERE session_id = 's-t' AND seq = 2;"
            "UPDATE session_events SET seq = 2 WHERE session_id = 's-t' AND seq = 3;"
            "UPDATE session_events SET seq = 3 WHERE session_id = 's-t' AND seq = -2;",
            "the events do not match the digest in the audit log",
        ),
        (
            "shift-a-timestamp",
            "UPDATE session_events SET ts = '2020-01-01 00:00:00.000000' "
            "WHERE session_id = 's-t' AND seq = 4",
            "the events do not match the digest in the audit log",
        ),
        (
            "swap-two-events",
            "UPDATE session_events SET seq = -4 WHERE session_id = 's-t' AND seq = 4;"
            "UPDATE session_events SET seq = 4 WHERE session_id = 's-t' AND seq = 2;"
            "UPDATE session_events SET seq = 2 WHERE session_id = 's-t' AND seq = -4;",
            "the events do not match the digest in the audit log",
        ),
        (
            "edit-a-limit-event",
            "UPDATE session_events SET data = json_set(data, '$.value', 100000) "
            "WHERE session_id = 's-t' AND kind = 'limit'",
            "the events do not match the digest in the audit log",
        ),
        (
            "add-an-event",
            "INSERT INTO session_events (session_id, seq, ts, kind, data) "
            "SELECT session_id, seq + 1, ts, 'notice', '{}' FROM session_events "
            "WHERE session_id = 's-t' ORDER BY seq DESC LIMIT 1",
            "the events do not match the digest in the audit log",
        ),
        (
            "delete-every-event",
            "DELETE FROM session_events WHERE session_id = 's-t'",
            "the recording's events are gone",
        ),
        (
            "rewrite-the-digest",
            "UPDATE session_recordings SET digest = 'f00d' WHERE session_id = 's-t'",
            "the recording's digest was changed",
        ),
        (
            "delete-the-recording",
            "DELETE FROM session_recordings WHERE session_id = 's-t'",
            "the recording is gone",
        ),
    ]


@pytest.mark.parametrize(
    ("sql", "problem"), [pytest.param(s, p, id=i) for i, s, p in tamper_cases()]
)
def test_a_changed_recording_is_detected(
    store: Store, recorder: Recorder, db_path: Path, sql: str, problem: str
) -> None:
    record_session(recorder, "s-t")
    record_limit(recorder.record, "s-t", CUT)  # seq 6, before session.end
    recorder.close("s-t", {})
    record_session(recorder, "s-other")
    recorder.close("s-other", {})
    assert verify_recordings(store).ok
    with raw(db_path) as conn:
        conn.executescript(sql)
    result = verify_recordings(store)
    assert not result.ok
    assert [(p.session_id, p.problem) for p in result.problems] == [("s-t", problem)]
    assert result.problems[0].audit_seq is not None
    assert chain.verify(store).ok  # the chain itself is intact: the recording is what changed


def test_rewriting_the_chained_digest_breaks_the_chain(
    store: Store, recorder: Recorder, db_path: Path
) -> None:
    record_session(recorder, "s-t")
    recorder.close("s-t", {})
    with raw(db_path) as conn:
        conn.execute("UPDATE session_events SET data = '{}' WHERE seq = 2")
        digest = recording_digest(load_events(store, "s-t"))
        conn.execute(
            "UPDATE audit_events SET data = json_set(data, '$.digest', ?) "
            "WHERE kind = 'recording.closed'",
            (digest,),
        )
        conn.execute("UPDATE session_recordings SET digest = ?", (digest,))
    assert verify_recordings(store).ok  # consistent again...
    assert not chain.verify(store).ok  # ...but only by editing the chain, which shows


def test_a_closed_recording_missing_from_the_chain_is_reported(
    store: Store, recorder: Recorder, db_path: Path
) -> None:
    record_session(recorder, "s-t")
    recorder.close("s-t", {})
    with raw(db_path) as conn:
        conn.execute("DELETE FROM audit_events WHERE kind = 'recording.closed'")
    result = verify_recordings(store)
    assert [(p.session_id, p.problem) for p in result.problems] == [
        ("s-t", "closed, but the audit log has no digest for it")
    ]


def test_a_recording_is_read_back_a_chunk_at_a_time(store: Store, recorder: Recorder) -> None:
    record_session(recorder, "s-chunks", 6)
    closed = recorder.close("s-chunks", {})
    events = load_events(store, "s-chunks")
    assert list(stored_events(store, "s-chunks", chunk=2)) == events
    assert list(stored_events(store, "s-chunks", chunk=len(events))) == events
    assert (
        check_recording(
            "s-chunks", 1, str(closed.digest), stored_events(store, "s-chunks", chunk=3)
        )
        is None
    )


def test_check_recording_is_pure() -> None:
    ts = datetime(2026, 1, 1, tzinfo=UTC)
    events = [SessionEvent("s", i, ts, "statement", {"i": i}) for i in (1, 2)]
    good = recording_digest(events)
    assert check_recording("s", 7, good, events) is None
    problem = check_recording("s", 7, good, list(reversed(events)))
    assert problem is not None and problem.problem == "events are out of order"
    assert check_recording("s", 7, good, events[:1]) is not None


# --------------------------------------------------------------------------- redaction


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        pytest.param(
            "ALTER ROLE app PASSWORD 'hunter2'",
            "ALTER ROLE app PASSWORD '[redacted]'",
            id="alter-role",
        ),
        pytest.param(
            "create user bob with encrypted password 'it''s' valid until '2030-01-01'",
            "create user bob with encrypted password '[redacted]' valid until '2030-01-01'",
            id="create-user-quote-inside",
        ),
        pytest.param(
            "ALTER USER x PASSWORD E'a\\'b'",
            "ALTER USER x PASSWORD '[redacted]'",
            id="escape-string",
        ),
        pytest.param(
            "ALTER ROLE x PASSWORD $p$hunter2$p$",
            "ALTER ROLE x PASSWORD '[redacted]'",
            id="dollar-quoted",
        ),
        pytest.param(
            "ALTER ROLE x /* set it */ PASSWORD\n  'hunter2'",
            "ALTER ROLE x /* set it */ PASSWORD\n  '[redacted]'",
            id="comment-and-newline",
        ),
        pytest.param(
            "ALTER ROLE \"PASSWORD\" VALID UNTIL 'infinity'",
            "ALTER ROLE \"PASSWORD\" VALID UNTIL 'infinity'",
            id="identifier-named-password",
        ),
        pytest.param(
            "-- 'PASSWORD' in a comment\nSELECT 'password'",
            "-- 'PASSWORD' in a comment\nSELECT 'password'",
            id="word-only-in-comment-and-string",
        ),
        pytest.param(
            "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password 'secret')",
            "CREATE USER MAPPING FOR bob SERVER s OPTIONS (user 'bob', password '[redacted]')",
            id="user-mapping",
        ),
        pytest.param(
            "SELECT dblink_connect('host=db user=u password=s3cret dbname=x')",
            "SELECT dblink_connect('host=db user=u password=[redacted] dbname=x')",
            id="connection-string",
        ),
        pytest.param(
            "SELECT dblink('postgresql://u:s3cret@db/x', 'select 1')",
            "SELECT dblink('postgresql://u:[redacted]@db/x', 'select 1')",
            id="uri",
        ),
        pytest.param(
            "SELECT 'a;b' AS x, $$it's$$ FROM t -- done",
            "SELECT 'a;b' AS x, $$it's$$ FROM t -- done",
            id="untouched",
        ),
    ],
)
def test_redact_statement_secrets(sql: str, expected: str) -> None:
    assert redact_statement(sql) == expected


def test_redact_statement_masked_literals() -> None:
    sql = "UPDATE customers SET email = 'ada@example.com' WHERE id = 7 AND city = 'Lisbon'"
    assert redact_statement(sql, literals=["ada@example.com"]) == (
        "UPDATE customers SET email = '[redacted]' WHERE id = 7 AND city = 'Lisbon'"
    )
    assert redact_statement(sql, all_literals=True) == (
        "UPDATE customers SET email = '[redacted]' WHERE id = [redacted] AND city = '[redacted]'"
    )
    assert redact_statement("SELECT t1.x2 FROM t1", all_literals=True) == "SELECT t1.x2 FROM t1"


def test_redact_params() -> None:
    params: list[bytes | None] = [b"ada@example.com", None, b"\x00\x00\x00\x07", b"pwd=x"]
    assert redact_params(params, [0, 0, 1, 0], masked=[0]) == [
        "[redacted]",
        None,
        "<binary 4 bytes>",
        "pwd=[redacted]",
    ]
    assert redact_params([b"a", b"b"], [1]) == ["<binary 1 bytes>", "<binary 1 bytes>"]


def test_statement_event_redacts_its_text() -> None:
    event = statement_event(
        "ALTER ROLE x PASSWORD 'p'",
        started_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        duration_ms=2.25,
        tag="ALTER ROLE",
        decision="allowed",
        masked_fields=[{"field": "email", "method": "partial"}],
    )
    assert event == {
        "text": "ALTER ROLE x PASSWORD '[redacted]'",
        "params": None,
        "started_at": "2026-01-02T03:04:05.000000+00:00",
        "duration_ms": 2.25,
        "rows": None,
        "tag": "ALTER ROLE",
        "sqlstate": None,
        "decision": "allowed",
        "masked": [{"field": "email", "method": "partial"}],
    }


@pytest.mark.parametrize(
    "data",
    [
        {"text": "select 1", "rows": 1, "params": ["1", None], "masked": [{"column": "c"}]},
        {"nested": {"deep": [1, 2.5, True, None, {"x": "y"}]}},
        {"tuple": (1, 2)},
        {"when": datetime(2026, 11, 22, tzinfo=UTC)},
        {"nan": float("nan"), "inf": float("inf")},
        {"keys": {1: "one", None: "none"}},
        {"bytes": b"raw"},
    ],
)
def test_events_are_stored_as_json_gives_them_back(data: dict[str, object]) -> None:
    kept, text = stored_form(data)
    expected = json.loads(json.dumps(data, default=str))
    assert json.dumps(kept, sort_keys=True) == json.dumps(expected, sort_keys=True)
    _stored_text_reads_back_as_itself(kept, text)


def _stored_text_reads_back_as_itself(kept: Mapping[str, object], text: str) -> None:
    # The text is the canonical JSON of the data kept, and what a reader of the store
    # makes of it has that text again: the digest holds over what is read back.
    assert text == json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    back = json.loads(text)
    assert json.dumps(back, sort_keys=True, separators=(",", ":")) == text
    assert json.dumps(back, sort_keys=True) == json.dumps(kept, sort_keys=True)


_JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.datetimes(timezones=st.just(UTC)),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4)
        | st.dictionaries(st.integers(-20, 20) | st.none() | st.booleans(), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6), _JSONISH, max_size=6))
def test_the_stored_text_of_any_data_reads_back_as_itself(data: dict[str, object]) -> None:
    """Whatever a builder makes (tuples, numbers as keys, NaN, times), the text stored
    is the canonical JSON of what is kept, and reading it back gives that text again."""
    kept, text = stored_form(data)
    _stored_text_reads_back_as_itself(kept, text)


def test_redaction_is_cached_per_text_and_literals() -> None:
    sql = "UPDATE people SET ssn = '123-45-6789' WHERE name = 'ada'"
    assert redact_statement(sql) == sql
    assert redact_statement(sql, literals=["123-45-6789"]) == (
        "UPDATE people SET ssn = '[redacted]' WHERE name = 'ada'"
    )
    assert redact_statement(sql) == sql  # the cached entry for other literals is not reused
    assert redact_statement(sql, all_literals=True) == (
        "UPDATE people SET ssn = '[redacted]' WHERE name = '[redacted]'"
    )


# Pieces a statement text is made of where redaction has something to decide.
_PIECES = st.sampled_from(
    [
        "password", "PassWord", "pwd", "secret=", "token:", "api_key =", "://u:",
        "p@h/", "@", "'", "''", "E'", "\\", "$$", "$t$", "--", "/*", "*/", "\n",
        " ", "=", ":", "x", "1", '"', ";", "é", "\u017f", "pa\u017f\u017fword=",
    ]
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.lists(_PIECES, max_size=24).map("".join))
def test_a_text_without_secrets_is_left_as_the_full_scan_leaves_it(sql: str) -> None:
    """Redaction without literals to hide skips the token-by-token scan when the
    whole text holds nothing to redact: the result is the scan's, always."""
    from server.audit.recording import _redact_statement

    assert redact_statement(sql) == _redact_statement(sql, frozenset(), False)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=1, max_value=2**40),
    st.datetimes(timezones=st.just(UTC)),
    st.text(min_size=1),
    st.dictionaries(st.text(), _JSON, max_size=6),
)
def test_the_canonical_line_is_the_sorted_compact_json_of_the_event(
    seq: int, ts: datetime, kind: str, data: dict[str, object]
) -> None:
    """Recordings closed before the line was put together from its parts verify the same."""
    event = SessionEvent("s", seq, ts, kind, data)
    whole = json.dumps(event.canonical(), sort_keys=True, separators=(",", ":"), default=str)
    assert canonical_line(event) == whole.encode() + b"\n"


# --------------------------------------------------------------------------- limits

CUT = LimitHit(
    limit="max_result_rows",
    value=1000,
    scope="read",
    action="cut",
    sqlstate="54000",
    message="the result passed max_result_rows (1000)",
    statement="select * from customers where email = 'a@example.com' and id > 42",
    rows=1000,
    bytes=81_000,
)


def test_a_limit_event_names_the_limit_and_hides_every_literal() -> None:
    data = limit_event(CUT)
    assert data == {
        "limit": "max_result_rows",
        "value": 1000,
        "scope": "read",
        "action": "cut",
        "sqlstate": "54000",
        "message": "the result passed max_result_rows (1000)",
        "statement": "select * from customers where email = '[redacted]' and id > [redacted]",
        "rows": 1000,
        "bytes": 81_000,
    }
    refused = limit_event(
        LimitHit(
            limit="statement_timeout",
            value="5min",
            scope="write",
            action="refused",
            sqlstate="42501",
        )
    )
    assert refused["statement"] is None and "rows" not in refused and "bytes" not in refused


def test_a_limit_event_keeps_a_long_statement_cut_as_a_statement_event_does() -> None:
    # Redaction runs on the gateway's event loop: a refused statement of the size
    # the gateway still reads (256 kB) is redacted no further than a recorded one.
    sql = "set statement_timeout = 0; select " + ", ".join(["'secret'"] * 40_000)
    data = limit_event(
        LimitHit(
            limit="statement_timeout",
            value="5min",
            scope="read",
            action="refused",
            sqlstate="42501",
            statement=sql,
        )
    )
    assert len(sql) > RECORDED_TEXT_MAX
    kept = redact_statement(sql[:RECORDED_TEXT_MAX], all_literals=True) + "…"
    assert data["statement"] == kept and "secret" not in kept


def test_limit_events_are_recorded_in_order_and_a_failing_recorder_never_raises(
    store: Store, recorder: Recorder
) -> None:
    recorder.open("s-lim", START)
    record_limit(recorder.record, "s-lim", CUT)
    record_limit(None, "s-lim", CUT)  # no recorder: nothing, no error

    def broken(session_id: str, kind: str, data: dict[str, object]) -> None:
        raise RuntimeError("store down")

    record_limit(broken, "s-lim", CUT)
    recorder.close("s-lim", {})
    events = load_events(store, "s-lim")
    assert [e.kind for e in events] == ["session.start", LIMIT_KIND, "session.end"]
    assert events[1].data == limit_event(CUT)
