"""A broker killed with SIGKILL leaves nothing usable behind once it restarts."""

from __future__ import annotations

import subprocess
import time

import psycopg
import pytest

from tests.fix_broker import Broker
from tests.fix_session import held_session

pytestmark = pytest.mark.slow


def role_exists(conn: psycopg.Connection[tuple[object, ...]], role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def test_sigkill_mid_session_then_restart_revokes_the_role(
    fresh_broker: Broker, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    fresh_broker.start()
    with held_session(fresh_broker) as s:
        res = s.psql("select current_user")
        assert res.returncode == 0, res.stderr
        role = res.stdout.strip()
        psql = subprocess.Popen(
            ["psql", "-XAt", "-c", "select pg_sleep(60)"],
            env=s.env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        fresh_broker.kill()  # SIGKILL: no clean-up code runs
        _out, _err = psql.communicate(timeout=20)
        assert psql.returncode != 0, "the client must be disconnected"
        # Until the broker is back, VALID UNTIL is what stops new logins; the role is still there.
        valid_until = admin_conn.execute(
            "SELECT rolvaliduntil FROM pg_roles WHERE rolname = %s", (role,)
        ).fetchone()
        assert valid_until is not None and valid_until[0] is not None
        fresh_broker.start()
        deadline = time.monotonic() + 20
        while role_exists(admin_conn, role) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not role_exists(admin_conn, role)
        sessions = fresh_broker.cli("sessions", "-o", "json")
        assert '"orphaned"' in sessions.stdout


def test_a_second_broker_does_not_reap_the_first_brokers_live_session(
    broker: Broker, fresh_broker: Broker, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    # Two brokers on one target, each with its own store (reaper interval 1 s):
    # neither may revoke a role it does not know.
    fresh_broker.start()
    with held_session(broker) as s:
        role = s.psql("select current_user").stdout.strip()
        time.sleep(3.5)
        res = s.psql("select 1")
        assert res.returncode == 0, res.stderr
        assert role_exists(admin_conn, role)
