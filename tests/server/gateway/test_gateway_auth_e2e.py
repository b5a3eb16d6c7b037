"""The gateway's doors, tried as an attacker and as a user would meet them:
wrong tickets, the ticket of an ended or expired session, an admin kill, and
many connections on one live session."""

from __future__ import annotations

import subprocess
import time

import psycopg
import pytest

from tests.fix_broker import Broker
from tests.fix_pgwire import login_error
from tests.fix_session import held_session

pytestmark = pytest.mark.slow


def test_a_live_ticket_works_for_many_connections(broker: Broker) -> None:
    with held_session(broker) as s:
        for _ in range(3):
            res = s.psql("select current_user")
            assert res.returncode == 0, res.stderr
            assert res.stdout.startswith("dba_dev_")
        conns = [psycopg.connect(s.dsn()) for _ in range(4)]
        try:
            assert {c.execute("select 1").fetchone() for c in conns} == {(1,)}
        finally:
            for c in conns:
                c.close()


def test_wrong_ticket_is_refused_with_a_clear_error(broker: Broker) -> None:
    with held_session(broker) as s:
        res = s.psql("select 1", password="dbt_not-a-real-ticket")
        assert res.returncode != 0
        assert "invalid session ticket" in res.stderr
        assert "dbaccess connect" in res.stderr  # the hint
        fields = login_error(s.port, s.database, "dbt_not-a-real-ticket")
        assert fields["C"] == "28P01"
        assert fields["S"] == "FATAL"
        assert "H" in fields


def test_the_ticket_dies_with_its_session(broker: Broker) -> None:
    with held_session(broker) as s:
        assert s.psql("select 1").returncode == 0
        ticket = s.ticket
        assert s.end() == 0
    # A second session's tunnel, used with the first session's ticket.
    with held_session(broker) as other:
        other.ticket = ticket
        res = other.psql("select 1")
        assert res.returncode != 0
        assert "has ended" in res.stderr


def test_an_expired_session_is_refused(broker: Broker) -> None:
    with held_session(broker, "--ttl", "2s") as s:
        assert s.psql("select 1").returncode == 0
        ticket = s.ticket
        time.sleep(3.5)
    # The expired session's own tunnel closes with it (its CLI exits 8), so
    # its ticket is tried through a live session's tunnel.
    with held_session(broker) as other:
        other.ticket = ticket
        res = other.psql("select 1")
        assert res.returncode != 0
        assert "has ended" in res.stderr or "expired" in res.stderr


def test_an_open_connection_is_cut_at_the_deadline(broker: Broker) -> None:
    with held_session(broker, "--ttl", "3s") as s:
        res = s.psql("select pg_sleep(20)", timeout=30)
        assert res.returncode != 0
        assert "deadline" in res.stderr or "expired" in res.stderr


def test_admin_kill_disconnects_the_client_with_a_clear_error(broker: Broker) -> None:
    with held_session(broker) as s:
        psql = subprocess.Popen(
            ["psql", "-XAt", "-c", "select pg_sleep(30)"],
            env=s.env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.5)
        killed = broker.cli("kill", s.session_id)
        assert killed.returncode == 0, killed.stderr
        _out, err = psql.communicate(timeout=20)
        assert psql.returncode != 0
        assert "ended by an administrator" in err or "session has ended" in err
        # The held tunnel notices the kill and closes (exit 8) ...
        assert s.proc.wait(30) == 8
        ticket = s.ticket
    # ... and the killed session's ticket is refused through any other tunnel.
    with held_session(broker) as other:
        other.ticket = ticket
        after = other.psql("select 1")
        assert after.returncode != 0
        assert "has ended" in after.stderr


def test_startup_options_are_refused(broker: Broker) -> None:
    with held_session(broker) as s:
        with pytest.raises(psycopg.OperationalError) as err:
            psycopg.connect(s.dsn(), options="-c search_path=evil")
        assert "startup parameter 'options' is not allowed" in str(err.value)
        with pytest.raises(psycopg.OperationalError) as err2:
            psycopg.connect(s.dsn(), replication="database")
        assert "not allowed" in str(err2.value)
