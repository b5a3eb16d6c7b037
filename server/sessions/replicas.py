"""This broker among the replicas on its store: its lease, and what wakes it.

:class:`Membership` registers the process as a replica (its host, pid and
role) with a heartbeat lease of ``lease`` seconds and, on a thread of its own,
renews the lease every third of that.  A replica whose lease has run out is
dead: the others' reapers claim its sessions and revoke their roles
(:meth:`~server.sessions.service.SessionService.reap`), so a replica's sessions
outlive it by at most ``lease`` plus one reaper interval.  Replicas of this
very host (same host name and PID namespace) whose process is gone are marked
dead at once, so that a broker restarted after a crash ends what its previous
life left behind without waiting for its lease to run out.

The same thread wakes :meth:`~server.sessions.service.SessionService.sync_live`
when another replica has ended a session this one holds: at once on a
PostgreSQL ``NOTIFY`` (on ``SESSIONS_CHANNEL``, with this replica's id as its
payload; a connection of its own ``LISTEN``s), and every ``poll`` seconds in
any case, so a lost notification or a SQLite store costs at most that long.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

from server.sessions.service import SESSIONS_CHANNEL, SessionService
from server.store.db import utcnow

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 15.0
DEFAULT_POLL_SECONDS = 1.0


def host_key() -> str:
    """This host and PID namespace: where a replica's PID means this process table."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}"[:255]


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


class Membership:
    """Registers this replica, keeps its lease and wakes its session sync."""

    def __init__(
        self,
        service: SessionService,
        *,
        role: str = "all",
        api_url: str | None = None,
        lease: float = DEFAULT_LEASE_SECONDS,
        poll: float = DEFAULT_POLL_SECONDS,
    ) -> None:
        self.service = service
        self.store = service.store
        self.role = role
        self.api_url = api_url
        self.lease = lease
        self.poll = poll
        self.host = host_key()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: Any = None

    @property
    def replica_id(self) -> str:
        return self.service.replica_id

    def join(self) -> None:
        """Register (before the start-up reaper runs) and mark this host's dead replicas."""
        self.store.register_replica(
            self.replica_id,
            host=self.host,
            pid=os.getpid(),
            role=self.role,
            api_url=self.api_url,
            lease=self.lease,
        )
        self.mark_dead_here()

    def mark_dead_here(self) -> list[str]:
        """End the lease of every replica of this host whose process is gone."""
        dead = [
            r.id
            for r in self.store.replicas(alive_at=utcnow())
            if r.host == self.host and r.id != self.replica_id and _process_gone(r.pid)
        ]
        for replica_id in dead:
            self.store.end_replica(replica_id)
        return dead

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dbaccess-replica", daemon=True)
        self._thread.start()

    def leave(self) -> None:
        """Stop the thread and end this replica's lease (after its sessions ended)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._close_listener()
        try:
            self.store.end_replica(self.replica_id)
        except Exception as exc:
            log.warning("could not end this replica's lease: %s", exc)

    # -- the thread ----------------------------------------------------------------
    def _run(self) -> None:
        next_beat = time.monotonic() + self.lease / 3
        while not self._stop.is_set():
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.lease / 3
                self._beat()
            self._wait()
            if self._stop.is_set():
                return
            try:
                released = self.service.sync_live()
            except Exception as exc:
                log.warning("checking this replica's sessions in the store failed: %s", exc)
                continue
            if released:
                log.info("sessions ended through another replica: %s", ", ".join(released))

    def _beat(self) -> None:
        try:
            if not self.store.heartbeat(self.replica_id, self.lease):
                log.error(
                    "this replica's lease had run out (the store was out of reach for over "
                    "%gs): other replicas may have ended its sessions",
                    self.lease,
                )
            self.mark_dead_here()
        except Exception as exc:
            log.warning("renewing this replica's lease failed: %s", exc)

    def _wait(self) -> None:
        """Until a notification for this replica comes, or ``poll`` seconds pass."""
        listener = self._listen()
        if listener is None:
            self._stop.wait(self.poll)
            return
        try:
            for note in listener.notifies(timeout=self.poll, stop_after=1):
                if note.payload == self.replica_id:
                    return
        except Exception as exc:
            log.warning("listening for other replicas failed (polling meanwhile): %s", exc)
            self._close_listener()
            self._stop.wait(self.poll)

    def _listen(self) -> Any:
        if self._listener is not None or self.store.engine.dialect.name != "postgresql":
            return self._listener
        import psycopg

        dsn = self.store.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        try:
            conn = psycopg.connect(
                dsn, autocommit=True, connect_timeout=5, application_name="dbaccess-replica"
            )
            conn.execute(f"LISTEN {SESSIONS_CHANNEL}")
        except psycopg.Error as exc:
            log.warning("cannot listen for other replicas (polling meanwhile): %s", exc)
            return None
        self._listener = conn
        return conn

    def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
