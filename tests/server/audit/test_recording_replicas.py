"""Recordings written by several replicas of one store: one writer at a time.

Two recorders on one store stand for two broker replicas: ``a`` opened the
recording, ``b`` takes the session over (as a survivor does when ``a``'s lease
has run out) while ``a`` is in fact still alive and recording.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from server.audit import chain
from server.audit.recording import (
    Recorder,
    SessionEvent,
    check_recording,
    load_events,
    recording_digest,
    verify_recordings,
)
from server.store.db import Store


@pytest.mark.parametrize("write_process", [False, True], ids=["thread", "process"])
def test_a_replica_taken_for_dead_cannot_write_into_the_recording_it_lost(
    any_store: Store, write_process: bool
) -> None:
    failures: list[str] = []
    a = Recorder(
        any_store,
        writer="r-a",
        on_failure=lambda _sid, why: failures.append(why),
        write_process=write_process,
    )
    b = Recorder(any_store, writer="r-b", write_process=write_process)
    try:
        a.open("s-1", {"identity": "alice"})
        assert a.record("s-1", "statement", {"n": 1})
        assert a.flush(10)
        assert b.record("s-1", "statement", {"n": 2})  # b takes the recording over
        assert b.flush(10)
        assert a.record("s-1", "statement", {"n": 3})  # queued: a does not know yet
        assert a.flush(10)
        deadline = time.monotonic() + 10  # reported on a thread of its own
        while not failures and time.monotonic() < deadline:
            time.sleep(0.01)
        assert failures == ["another broker replica took the session over"]
        assert not a.record("s-1", "statement", {"n": 4}), "its recording failed, loudly"
        assert a.close("s-1", {"status": "ended"}).status == "taken over"
        closed = b.close("s-1", {"status": "orphaned"})
    finally:
        a.stop()
        b.stop()
    assert closed.status == "closed"
    events = load_events(any_store, "s-1")
    assert [(e.seq, e.kind, e.data.get("n")) for e in events] == [
        (1, "session.start", None),
        (2, "statement", 1),
        (3, "statement", 2),
        (4, "session.end", None),
    ]
    assert closed.digest == recording_digest(events)
    assert [e.kind for e in chain.events(any_store)].count("recording.closed") == 1
    assert verify_recordings(any_store).ok


def _events(*seqs: int) -> list[SessionEvent]:
    when = datetime(2026, 1, 2, tzinfo=UTC)
    return [SessionEvent("s-9", seq, when, "statement", {"n": seq}) for seq in seqs]


@pytest.mark.parametrize(
    ("seqs", "dropped", "problem"),
    [
        ((1, 2, 3), 0, None),
        ((1, 3), 0, "event 2 of the recording was never written"),
        ((2, 3), 0, "event 1 of the recording was never written"),
        ((1, 3), 1, None),  # lost events are in the chain: the gap is accounted for
        ((1, 3, 2), 0, "events are out of order"),
    ],
)
def test_a_recording_that_misses_an_event_it_did_not_report_lost_fails_verification(
    seqs: tuple[int, ...], dropped: int, problem: str | None
) -> None:
    events = _events(*seqs)
    found = check_recording("s-9", 7, recording_digest(events), events, dropped=dropped)
    assert (found.problem if found else None) == problem
