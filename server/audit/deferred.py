"""Audit events decided on the gateway's data path, appended to the chain on a thread of their own.

A statement the guard refuses, holds for review or lets run under an approval
is an audit event (``server.audit.chain``).  Appending one takes the chain's
lock, in the process and, on a PostgreSQL store, across the replicas, and
writes a row: milliseconds, or as long as another replica holds the lock.
The guard decides on the event loop (or an analysis thread that holds a
connection), so it does not append: it hands an ``AuditEntry`` to
``AuditWriter.append``, which queues it and returns, and the writer's thread
appends the entries in order.

What waits for them: ending a session flushes the queue before the session's
own end is appended (the chain keeps a session's refusals before its end),
reads of the audit log through the API flush it first (what was decided is
what is read), and stopping the broker drains it.  A queue past its bound
drops what comes, counting and logging it: the refused statement is still in
the session's recording, and a client flooding refusals cannot grow the
broker's memory or stall it.  An append that fails is logged, as it was when
the guard appended itself: the refusal stands either way.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from server.audit import chain
from server.store.db import Store

log = logging.getLogger(__name__)

MAX_QUEUED: Final = 10_000


@dataclass(frozen=True, slots=True)
class _Entry:
    """One event for the chain, as ``chain.append`` takes it."""

    kind: str
    identity: str | None
    target: str | None
    session_id: str | None
    data: Mapping[str, Any]


class AuditWriter:
    """Appends queued audit events to the store's chain, in order, on one thread."""

    def __init__(self, store: Store, *, max_queued: int = MAX_QUEUED) -> None:
        self.store = store
        self.max_queued = max_queued
        self.dropped = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[_Entry] = deque()
        self._queued = 0  # entries ever queued
        self._done = 0  # ... and appended (or failed)
        self._stopping = False
        self._thread: threading.Thread | None = None

    def append(
        self,
        kind: str,
        *,
        identity: str | None = None,
        target: str | None = None,
        session_id: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue the event (``chain.append``'s arguments); never waits for the
        store (its thread starts with the first event).  After ``stop`` (the
        broker is going) it is appended here."""
        entry = _Entry(kind, identity, target, session_id, data or {})
        with self._lock:
            if self._stopping:
                running = False
            elif len(self._queue) >= self.max_queued:
                self.dropped += 1
                log.error(
                    "audit queue full: %s of session %s not appended (%d dropped so far)",
                    entry.kind,
                    entry.session_id,
                    self.dropped,
                )
                return
            else:
                running = True
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="dbaccess-audit", daemon=True
                    )
                    self._thread.start()
                self._queue.append(entry)
                self._queued += 1
                self._wake.notify_all()
        if not running:
            self._append(entry)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every entry queued so far is appended; False on timeout."""
        with self._lock:
            target = self._queued
            return self._wake.wait_for(
                lambda: self._done >= target or self._thread is None, timeout
            )

    def stop(self, timeout: float = 10.0) -> None:
        """Append what is queued, then end the thread."""
        self.flush(timeout)
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            self._thread = None
            self._wake.notify_all()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._wake.wait_for(lambda: self._queue or self._stopping)
                if not self._queue:
                    return
                entry = self._queue.popleft()
            self._append(entry)
            with self._lock:
                self._done += 1
                self._wake.notify_all()

    def _append(self, entry: _Entry) -> None:
        try:
            chain.append(
                self.store,
                entry.kind,
                identity=entry.identity,
                target=entry.target,
                session_id=entry.session_id,
                data=entry.data,
            )
        except Exception:  # the decision stands when its audit write fails
            log.exception("recording %s failed", entry.kind)
