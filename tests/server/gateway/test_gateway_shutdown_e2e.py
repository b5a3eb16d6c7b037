"""Graceful shutdown: on SIGINT the gateway stops accepting, lets a statement
in flight finish, then disconnects its client with 57P01 and the session's
role is revoked; an idle connection is told at once."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from tests.fix_broker import Broker
from tests.fix_session import held_session

pytestmark = pytest.mark.slow


def test_sigint_lets_the_statement_in_flight_finish(
    fresh_broker: Broker, admin_conn: psycopg.Connection[Any]
) -> None:
    fresh_broker.start("--shutdown-grace", "10")
    assert fresh_broker.proc is not None
    with held_session(fresh_broker) as s:
        busy = psycopg.connect(s.dsn(), autocommit=True)
        idle = psycopg.connect(s.dsn(), autocommit=True)
        role = busy.execute("select current_user").fetchone()[0]  # type: ignore[index]
        outcome: list[object] = []

        def run() -> None:
            try:
                outcome.append(busy.execute("select pg_sleep(2), 'done'").fetchone())
            except psycopg.Error as exc:
                outcome.append(exc)

        worker = threading.Thread(target=run)
        started = time.monotonic()
        worker.start()
        time.sleep(0.5)
        fresh_broker.proc.send_signal(2)  # SIGINT, as Ctrl-C
        time.sleep(0.5)
        # No new connections while draining.
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(s.dsn(), connect_timeout=5)
        # The idle connection was closed at once, with the reason.
        with pytest.raises(psycopg.OperationalError, match="the broker is shutting down"):
            idle.execute("select 1")
        worker.join(15)
        assert outcome == [("", "done")], outcome
        assert time.monotonic() - started >= 2
        # Then the busy one is disconnected with the same message.
        with pytest.raises(psycopg.OperationalError, match="the broker is shutting down"):
            busy.execute("select 1")
        assert fresh_broker.proc.wait(30) == 0
        busy.close()
        idle.close()
    gone = admin_conn.execute("select count(*) from pg_roles where rolname = %s", (role,))
    assert gone.fetchone() == (0,)
    assert "letting statements in flight finish" in fresh_broker.log()


def test_the_grace_period_is_a_deadline(
    fresh_broker: Broker, admin_conn: psycopg.Connection[Any]
) -> None:
    fresh_broker.start("--shutdown-grace", "1")
    assert fresh_broker.proc is not None
    with held_session(fresh_broker) as s:
        conn = psycopg.connect(s.dsn(), autocommit=True)
        role = conn.execute("select current_user").fetchone()[0]  # type: ignore[index]
        outcome: list[object] = []

        def run() -> None:
            try:
                conn.execute("select pg_sleep(60)")
                outcome.append("finished")
            except psycopg.Error as exc:
                outcome.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(0.5)
        started = time.monotonic()
        fresh_broker.proc.send_signal(15)  # SIGTERM
        worker.join(30)
        assert time.monotonic() - started < 20
        assert len(outcome) == 1 and isinstance(outcome[0], psycopg.OperationalError)
        assert "the broker is shutting down" in str(outcome[0])
        assert fresh_broker.proc.wait(30) == 0
        conn.close()
    gone = admin_conn.execute("select count(*) from pg_roles where rolname = %s", (role,))
    assert gone.fetchone() == (0,)
