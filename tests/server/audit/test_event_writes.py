"""The recorder's store writes in a process of their own (server/audit/event_writes.py):
the same rows as the writer thread's, failures as loud, and no child left behind."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from server.audit import access, event_writes
from server.audit.access import RelationAccess, SessionFacts, access_event
from server.audit.recording import (
    Recorder,
    StatementParts,
    TwoStep,
    load_events,
    statement_made,
    verify_recordings,
)
from server.store.db import Store

START = {"identity": "alice", "groups": ["dev"], "target": "demo", "scope": "read"}
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def store(sqlite_store: Store) -> Store:
    return sqlite_store


RELATION = RelationAccess("public", "customers", "read", ("id", "email"), frozenset({"email"}))
ALICE = SessionFacts("demo", "alice", "user")
# As the gateway makes them: one template per shape and session, made once.
TEMPLATE = access.facts_template(ALICE, command="SELECT", relations=[RELATION.to_json()])


def _facts(rows: int) -> dict[str, object]:
    return access_event(ALICE, command="SELECT", relations=[RELATION], rows=rows)


def _resolved(store: Store, sid: str) -> list[tuple[int, str, dict[str, object]]]:
    """The recording's events, their access facts made whole (``access.FactsReader``)."""
    reader = access.FactsReader()
    out = []
    for e in load_events(store, sid):
        data = dict(e.data)
        facts = reader.facts(sid, e.kind, data)
        if facts is not None:
            data[access.FACTS] = dict(facts)
        out.append((e.seq, e.kind, data))
    return out


def _referring(store: Store, sid: str) -> int:
    """How many of the recording's statements hold their facts as a reference (the
    key alone, or the key with their own values)."""
    said = [e.data.get(access.FACTS) for e in load_events(store, sid)]
    return sum(isinstance(f, str) or access.SAME_AS in (f or {}) for f in said)


class Failures:
    """A recorder's ``on_failure``: what it reported, and an event set at the first."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.called = threading.Event()

    def __call__(self, session_id: str, reason: str) -> None:
        self.seen.append((session_id, reason))
        self.called.set()


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _child(recorder: Recorder) -> int:
    process = recorder._process
    assert process is not None
    pid = process.pid
    assert pid is not None
    return pid


def test_a_store_only_this_process_can_open_is_written_by_the_thread(tmp_path: Path) -> None:
    for url, apart in (
        ("sqlite://", False),
        ("sqlite:///:memory:", False),
        (f"sqlite:///{tmp_path / 'store.db'}", True),
    ):
        store = Store.open(url)
        try:
            assert event_writes.shareable(store) is apart
            recorder = Recorder(store, write_process=True)
            assert (recorder._process is not None) is apart
            recorder.stop()
        finally:
            store.close()


def _as_is(parts: StatementParts) -> StatementParts:
    return parts


# A statement event made in two steps (``recording.TwoStep``), its parts as given:
# the second step runs in the writer process when there is one.
STATEMENT = TwoStep(_as_is, statement_made)


def _parts(i: int, *, touches: bool = False, facts: bool = True) -> StatementParts:
    sql = f"select {i}, 'a{i}' from customers; select email from customers where id = {i}"
    return (
        sql,
        touches,
        (False, True) if touches else None,  # the second statement reads a masked column
        [sql.index(";") + 1, len(sql)] if touches else None,
        (str(i).encode(), None, b"\x00"),
        (0, 0, 1),
        1_500_000,
        i,
        f"SELECT {i}",
        None,
        "allowed",
        [{"column": "email", "method": "partial"}] if touches else [],
        TEMPLATE.facts(i, "allowed", None, None) if facts else None,
    )


def test_statements_made_in_the_writer_process_are_those_the_thread_makes(
    any_store: Store,
) -> None:
    """The second step of a statement's event runs in the writer process when there is
    one: the same texts (redacted alike), numbers and index rows as the thread's."""
    by_thread = Recorder(any_store, flush_interval=0.01)
    by_process = Recorder(any_store, flush_interval=0.01, write_process=True)
    try:
        for recorder, sid in ((by_thread, "s-thread"), (by_process, "s-process")):
            recorder.open(sid, START)
            for i in range(300):
                parts = _parts(i, touches=i % 3 == 0, facts=i % 5 != 0)
                assert recorder.record(sid, "statement", parts, STATEMENT)
            assert recorder.record(sid, "notice", {"message": "hello"})
            assert recorder.close(sid, {"reason": "done"}).status == "closed"
        assert _child(by_process) > 0
    finally:
        by_thread.stop()
        by_process.stop()

    def stored(sid: str) -> list[tuple[int, str, dict[str, object]]]:
        # The start is told from each event's own time, which differs between the two.
        return [
            (seq, kind, {k: v for k, v in data.items() if k != "started_at"})
            for seq, kind, data in _resolved(any_store, sid)
        ]

    assert stored("s-process") == stored("s-thread")
    # The process refers to the first facts of their kind in a batch; the thread says
    # them in full each time.
    assert _referring(any_store, "s-process") > 0
    assert _referring(any_store, "s-thread") == 0
    masked = stored("s-process")[1][2]
    assert masked["text"] == (
        "select 0, 'a0' from customers; select email from customers where id = [redacted]"
    )
    assert masked["params"] == ["[redacted]", None, "[redacted]"]
    assert [e[2].get("access") for e in stored("s-process")[1:4]] == [None, _facts(1), _facts(2)]
    assert len(stored("s-process")) == 303
    assert verify_recordings(any_store).ok
    assert access.verify_index(any_store) == []


def test_an_event_the_writer_process_cannot_make_is_lost_loudly_and_no_other(
    store: Store,
) -> None:
    """An event whose data cannot be made fails its recording as on the thread; the
    batch's other events are written, numbered without a gap, and the recording
    still verifies."""
    failures = Failures()
    recorder = Recorder(store, on_failure=failures, flush_interval=5.0, write_process=True)
    try:
        for sid in ("s-bad", "s-good"):
            recorder.open(sid, START)
        assert recorder.flush(10)
        assert recorder.record("s-bad", "statement", _parts(1), STATEMENT)
        assert recorder.record("s-good", "statement", _parts(2), STATEMENT)
        # Parts the second step cannot read: it fails in the process, then on the thread.
        assert recorder.record("s-bad", "statement", ("select 3",), STATEMENT)
        assert recorder.record("s-good", "statement", _parts(4), STATEMENT)
        assert recorder.flush(10)
        assert failures.called.wait(10)
        bad, good = recorder.close("s-bad", {}), recorder.close("s-good", {})
    finally:
        recorder.stop()
    assert failures.seen == [("s-bad", "an event could not be recorded: ValueError")]
    assert (bad.status, bad.events, bad.dropped) == ("failed", 2, 2)  # and its session.end
    assert (good.status, good.events, good.dropped) == ("closed", 4, 0)
    assert [e.data.get("rows") for e in load_events(store, "s-good")] == [None, 2, 4, None]
    assert [e.seq for e in load_events(store, "s-bad")] == [1, 2]
    assert verify_recordings(store).ok


def test_the_process_writes_what_the_thread_writes(any_store: Store) -> None:
    """The same events through each writer: the same texts, numbers and index rows."""
    by_thread = Recorder(any_store, flush_interval=0.01)
    by_process = Recorder(any_store, flush_interval=0.01, write_process=True)
    try:
        for recorder, sid in ((by_thread, "s-thread"), (by_process, "s-process")):
            recorder.open(sid, START)
            for i in range(300):  # more than one batch of the bulk writer's rows
                assert recorder.record(
                    sid, "statement", {"text": f"select {i}", "access": _facts(i)}
                )
            assert recorder.record(sid, "notice", {"message": "hello"})
            assert recorder.close(sid, {"reason": "done"}).status == "closed"
        assert _child(by_process) > 0
    finally:
        by_thread.stop()
        by_process.stop()

    def stored(sid: str) -> list[tuple[int, str, object]]:
        return [(seq, kind, data.get("access")) for seq, kind, data in _resolved(any_store, sid)]

    assert stored("s-process") == stored("s-thread")
    assert len(stored("s-process")) == 303
    found = access.find(any_store, access.AccessQuery(limit=1_000))
    indexed = {
        sid: sorted((r.seq, r.rows, r.columns) for r in found if r.session_id == sid)
        for sid in ("s-thread", "s-process")
    }
    assert indexed["s-process"] == indexed["s-thread"]
    assert len(indexed["s-process"]) == 300
    assert verify_recordings(any_store).ok
    assert access.verify_index(any_store) == []


def test_a_writer_process_that_died_is_replaced_and_one_that_dies_mid_batch_fails_loudly(
    store: Store, tmp_path: Path
) -> None:
    failures = Failures()
    recorder = Recorder(store, on_failure=failures, flush_interval=0.01, write_process=True)
    try:
        recorder.open("s-1", START)
        assert recorder.record("s-1", "statement", {"text": "select 1"})
        assert recorder.flush(10)
        first = _child(recorder)
        # Between batches: nothing was in its hands, the next batch has a child of its own.
        os.kill(first, signal.SIGKILL)
        assert _wait_gone(first)
        assert recorder.record("s-1", "statement", {"text": "select 2"})
        assert recorder.flush(10)
        second = _child(recorder)
        assert second != first and not failures.seen
        # During a batch (the child waits for the store's write lock, which this holds):
        # whether the batch was written cannot be known, so the recording fails.
        lock = sqlite3.connect(tmp_path / "store.db", isolation_level=None, timeout=30)
        try:
            lock.execute("BEGIN IMMEDIATE")
            assert recorder.record("s-1", "statement", {"text": "select 3"})
            deadline = time.monotonic() + 10
            while recorder.queue_depth() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)  # the batch reaches the child, which waits for the lock
            os.kill(second, signal.SIGKILL)
            assert failures.called.wait(10)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert failures.seen == [("s-1", "the recording's writer process failed")]
        assert not recorder.record("s-1", "statement", {"text": "select 4"})
        recorder.open("s-2", START)
        assert recorder.record("s-2", "statement", {"text": "select 5"})
        kept = recorder.close("s-2", {})
        failed = recorder.close("s-1", {})
    finally:
        recorder.stop()
    assert kept.status == "closed" and kept.events == 3
    # the statement the dead child took with it, the one refused after, session.end
    assert failed.status == "failed" and failed.events == 3 and failed.dropped == 3
    assert verify_recordings(store).ok


def test_the_writer_process_ignores_ctrl_c_and_ends_with_the_recorder(store: Store) -> None:
    """A Ctrl-C reaches the broker's whole process group: the child still writes what
    the stopping broker records, and ends when the recorder stops."""
    recorder = Recorder(store, flush_interval=0.01, write_process=True)
    try:
        recorder.open("s-1", START)
        assert recorder.flush(10)
        pid = _child(recorder)
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
        assert recorder.record("s-1", "statement", {"text": "select 1"})
        assert recorder.close("s-1", {}).status == "closed"
        assert _child(recorder) == pid
    finally:
        recorder.stop()
    assert _wait_gone(pid)
    assert verify_recordings(store).ok


def test_the_writer_process_ends_when_the_broker_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves the recorder no chance to stop its child: the child ends on
    its own when its input closes with the broker's death."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from server.audit.recording import Recorder
        from server.store.db import Store
        store = Store.open("sqlite:///{tmp_path / "store.db"}")
        recorder = Recorder(store, flush_interval=0.01, write_process=True)
        recorder.open("s-1", {{"identity": "alice"}})
        assert recorder.flush(10)
        print(recorder._process.pid, flush=True)
        time.sleep(60)
        """
    )
    broker = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert broker.stdout is not None
        child = int(broker.stdout.readline())
        assert not _gone(child)
        broker.kill()
        broker.wait(10)
        assert _wait_gone(child), "the writer process outlived its broker"
    finally:
        if broker.poll() is None:
            broker.kill()
            broker.wait()
        if broker.stdout is not None:
            broker.stdout.close()


def test_a_writer_process_that_cannot_start_leaves_the_writes_to_the_thread(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing was handed to a child that never started: nothing is lost, and the
    recorder writes from its own thread from then on, saying why."""
    monkeypatch.setattr(event_writes, "CHILD_MODULE", "server.audit.no_such_module")
    failures = Failures()
    recorder = Recorder(store, on_failure=failures, flush_interval=0.01, write_process=True)
    try:
        recorder.open("s-1", START)
        assert recorder.record("s-1", "statement", {"text": "select 1", "access": _facts(1)})
        closed = recorder.close("s-1", {})
        assert recorder._process is None
    finally:
        recorder.stop()
    assert not failures.seen
    assert closed.status == "closed" and closed.events == 3
    assert "the recording's writer process could not start" in caplog.text
    assert verify_recordings(store).ok
    assert access.verify_index(store) == []


def test_a_writer_process_that_ends_after_committing_keeps_what_it_wrote(
    any_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ended between its commit and its answer: the events are in the store, so they
    are in the digest too, and the recording goes on (nothing is reported lost)."""
    store = any_store
    monkeypatch.setattr(event_writes, "CHILD_MODULE", "tests.fix_writer_child")
    failures = Failures()
    recorder = Recorder(store, on_failure=failures, flush_interval=0.01, write_process=True)
    try:
        recorder.open("s-1", START)
        assert recorder.flush(10)  # the first batch, answered
        first = _child(recorder)
        assert recorder.record("s-1", "statement", {"text": "select 1"})
        assert recorder.flush(10)  # committed, then the child ended
        assert _wait_gone(first)
        assert recorder.record("s-1", "statement", {"text": "select 2"})
        closed = recorder.close("s-1", {})
    finally:
        recorder.stop()
    assert not failures.seen
    assert closed.status == "closed" and closed.events == 4 and closed.dropped == 0
    assert [e.data.get("text") for e in load_events(store, "s-1")] == [
        None,
        "select 1",
        "select 2",
        None,
    ]
    assert verify_recordings(store).ok


def test_a_writer_process_that_ends_after_committing_what_it_made_keeps_it(
    any_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ended between its commit and its answer, with statements whose texts it made:
    the texts are in the store only, and the recording's digest is taken from there."""
    store = any_store
    monkeypatch.setattr(event_writes, "CHILD_MODULE", "tests.fix_writer_child")
    failures = Failures()
    recorder = Recorder(store, on_failure=failures, flush_interval=0.01, write_process=True)
    try:
        recorder.open("s-1", START)
        assert recorder.flush(10)  # the first batch, answered
        first = _child(recorder)
        for i in (1, 2):
            assert recorder.record("s-1", "statement", _parts(i, touches=True), STATEMENT)
        assert recorder.flush(10)  # committed, then the child ended
        assert _wait_gone(first)
        assert recorder.record("s-1", "statement", _parts(3), STATEMENT)
        closed = recorder.close("s-1", {})
    finally:
        recorder.stop()
    assert not failures.seen
    assert closed.status == "closed" and closed.events == 5 and closed.dropped == 0
    assert [e.data.get("rows") for e in load_events(store, "s-1")] == [None, 1, 2, 3, None]
    assert verify_recordings(store).ok


def test_a_stopping_recorder_does_not_wait_for_a_child_stuck_in_the_store(
    store: Store, tmp_path: Path
) -> None:
    failures = Failures()
    recorder = Recorder(store, on_failure=failures, flush_interval=0.01, write_process=True)
    recorder.open("s-1", START)
    assert recorder.flush(10)
    lock = sqlite3.connect(tmp_path / "store.db", isolation_level=None, timeout=30)
    try:
        lock.execute("BEGIN IMMEDIATE")
        assert recorder.record("s-1", "statement", {"text": "select 1"})
        time.sleep(0.3)  # the batch reaches the child, which waits for the lock
        started = time.monotonic()
        recorder.stop(timeout=1)
        assert time.monotonic() - started < 10
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    # Killed with the batch: the store says it was not written, and that is reported.
    assert failures.called.wait(30)
    assert failures.seen == [("s-1", "the recording's writer process failed")]


def test_the_writer_process_is_never_one_the_working_directory_holds(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m`` would look in the working directory first: a module there of the
    same name is not run (it would be handed the store's URL)."""
    fake = tmp_path / "cwd" / "server" / "audit"
    fake.mkdir(parents=True)
    marker = tmp_path / "ran"
    for package in (fake.parent, fake):
        (package / "__init__.py").write_text("")
    (fake / "event_writes.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.chdir(tmp_path / "cwd")
    recorder = Recorder(store, flush_interval=0.01, write_process=True)
    try:
        recorder.open("s-1", START)
        assert recorder.record("s-1", "statement", {"text": "select 1"})
        assert recorder.close("s-1", {}).status == "closed"
        assert recorder._process is not None and recorder._process.pid is not None
    finally:
        recorder.stop()
    assert not marker.exists()
