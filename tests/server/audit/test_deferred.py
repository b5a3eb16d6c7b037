"""The audit writer: the gateway's audit events appended in order off the data
path, waited for where they must be read, bounded, and never lost silently."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from server.audit import chain, deferred
from server.audit.deferred import AuditWriter
from server.store.db import Store


def _kinds(store: Store) -> list[str]:
    return [e.kind for e in sorted(chain.events(store, limit=1000), key=lambda e: e.seq)]


def test_events_are_appended_in_order_on_a_thread_of_their_own(any_store: Store) -> None:
    writer = AuditWriter(any_store)
    appended_on: set[str] = set()
    real = chain.append

    def watching(*args: Any, **kwargs: Any) -> chain.AuditEvent:
        appended_on.add(threading.current_thread().name)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(deferred.chain, "append", watching)
        for i in range(20):
            writer.append(f"statement.blocked.{i}", identity="alice", session_id="s-1")
        assert writer.flush(10)
    assert _kinds(any_store) == [f"statement.blocked.{i}" for i in range(20)]
    assert appended_on == {"dbaccess-audit"}
    assert chain.verify(any_store).ok
    writer.stop()


def test_append_never_waits_for_the_store(any_store: Store) -> None:
    """While the chain's lock is held (another replica's append, say), the data
    path still queues and goes on."""
    writer = AuditWriter(any_store)
    with any_store.audit_lock:
        writer.append("statement.blocked", identity="alice")  # returns at once
        assert not writer.flush(0.2)  # the writer waits for the lock, not the caller
    assert writer.flush(10)
    assert _kinds(any_store) == ["statement.blocked"]
    writer.stop()


def test_a_full_queue_drops_and_says_so(any_store: Store, caplog: pytest.LogCaptureFixture) -> None:
    writer = AuditWriter(any_store, max_queued=3)
    with any_store.audit_lock, caplog.at_level(logging.ERROR):
        for i in range(10):
            writer.append(f"e{i}")
    assert writer.flush(10)
    # One was taken by the thread (waiting on the lock) and three queued behind it.
    assert len(_kinds(any_store)) + writer.dropped == 10
    assert writer.dropped >= 6
    assert "audit queue full" in caplog.text
    writer.stop()


def test_a_failed_append_is_logged_and_the_next_ones_go_on(
    any_store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = chain.append

    def failing(store: Store, kind: str, **kwargs: Any) -> chain.AuditEvent:
        if kind == "bad":
            raise RuntimeError("the store went away")
        return real(store, kind, **kwargs)

    monkeypatch.setattr(deferred.chain, "append", failing)
    writer = AuditWriter(any_store)
    with caplog.at_level(logging.ERROR):
        writer.append("bad")
        writer.append("good")
        assert writer.flush(10)
    assert _kinds(any_store) == ["good"]
    assert "recording bad failed" in caplog.text
    writer.stop()


def test_stop_drains_and_later_events_are_appended_at_once(any_store: Store) -> None:
    writer = AuditWriter(any_store)
    for i in range(5):
        writer.append(f"e{i}")
    writer.stop()
    assert _kinds(any_store) == [f"e{i}" for i in range(5)]
    writer.append("late")  # a connection still closing while the broker stops
    assert _kinds(any_store)[-1] == "late"
