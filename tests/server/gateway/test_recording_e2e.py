"""What the gateway records besides statements, read back with ``dbaccess replay``:
Bind parameters (hidden where they may go to masked columns), the notices the
client was sent, and each connection's open and close with its address."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from server.demo.provision import DemoTarget
from server.pgcluster import LocalCluster
from tests.fix_broker import Broker, demo_policy, running_broker
from tests.fix_session import held_session

pytestmark = pytest.mark.slow

MASKING = """\
    masking:
      rules:
        - column: public.customers.email
          method: partial
          keep: domain
      trusted_functions: [recording_e2e_notice]
"""
HIDDEN_EMAIL = "recorded-param@example.org"


def _policy() -> str:
    return demo_policy(target=MASKING)


@pytest.fixture(scope="module")
def recording_broker(pg_cluster: LocalCluster, demo_target: DemoTarget) -> Iterator[Broker]:
    dsn = pg_cluster.dsn(dbname=demo_target.database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION public.recording_e2e_notice(x text) RETURNS int "
            "LANGUAGE plpgsql AS $$ BEGIN RAISE NOTICE 'hello from %', x; RETURN 1; END $$"
        )
    with running_broker(demo_target, _policy()) as b:
        yield b
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP FUNCTION IF EXISTS public.recording_e2e_notice(text)")


def _events(broker: Broker, session_id: str, until: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        res = broker.cli("replay", session_id, "--output", "json")
        assert res.returncode == 0, res.stderr
        events: list[dict[str, Any]] = json.loads(res.stdout)["events"]
        if events[-1]["kind"] == "session.end" and len(events) >= until:
            return events
        if time.monotonic() > deadline:
            return events
        time.sleep(0.5)


def test_params_notices_and_connections_are_recorded(recording_broker: Broker) -> None:
    with held_session(recording_broker, "--scope", "read") as s:
        with psycopg.connect(s.dsn(), autocommit=True, application_name="recording-e2e") as conn:
            assert conn.execute("select %s::text || '!'", ("plain-param",)).fetchone() == (
                "plain-param!",
            )
            rows = conn.execute(
                "select city from customers where city = %s", (HIDDEN_EMAIL,)
            ).fetchall()
            assert rows == []
            notices: list[str] = []
            conn.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
            conn.execute("select recording_e2e_notice(%s)", ("the client",))
            assert notices == ["hello from the client"]
        session_id = s.session_id
    events = _events(recording_broker, session_id, 8)
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "session.start" and kinds[-1] == "session.end"

    opened = [e["data"] for e in events if e["kind"] == "connection.open"]
    closed = [e["data"] for e in events if e["kind"] == "connection.close"]
    assert opened and closed, kinds
    mine = [d for d in opened if d.get("application_name") == "recording-e2e"]
    assert len(mine) == 1, opened
    assert mine[0]["client_addr"] == "127.0.0.1" and isinstance(mine[0]["client_port"], int)
    assert mine[0] in closed  # the same connection, closed before the session ended
    assert kinds.index("connection.open") < kinds.index("statement")

    statements = [e["data"] for e in events if e["kind"] == "statement"]
    plain = next(d for d in statements if "|| '!'" in d["text"])
    assert plain["params"] == ["plain-param"]
    # Which parameter goes where cannot be told: with masked columns read, all are hidden.
    masked = next(d for d in statements if "where city" in d["text"])
    assert masked["params"] == ["[redacted]"]
    assert HIDDEN_EMAIL not in json.dumps(events)

    notice = next(e["data"] for e in events if e["kind"] == "notice")
    assert notice["message"] == "hello from the client"
    assert notice["severity"] == "NOTICE"

    shown = recording_broker.cli("replay", session_id)
    assert shown.returncode == 0, shown.stderr
    port = mine[0]["client_port"]
    for text in (
        "params: plain-param",
        "params: [redacted]",
        "NOTICE: hello from the client",
        f"from 127.0.0.1:{port} (recording-e2e)",
    ):
        assert text in shown.stdout, shown.stdout


def test_each_connection_is_closed_once_in_the_recording(recording_broker: Broker) -> None:
    """However a connection ends (the client's Terminate, a dropped socket, the
    gateway refusing it), its recording has one connection.close."""
    with held_session(recording_broker, "--scope", "read") as s:
        with psycopg.connect(s.dsn(), autocommit=True, application_name="close-polite") as conn:
            conn.execute("select 1")
        dropped = psycopg.connect(s.dsn(), autocommit=True, application_name="close-dropped")
        dropped.execute("select 1")
        socket.socket(fileno=dropped.pgconn.socket).close()
        with contextlib.suppress(psycopg.Error):
            dropped.close()
        refused = psycopg.connect(s.dsn(), autocommit=True, application_name="close-refused")
        with pytest.raises(psycopg.Error):
            refused.execute("set role postgres")
        with contextlib.suppress(psycopg.Error):
            refused.close()
        time.sleep(1)
        session_id = s.session_id
    events = _events(recording_broker, session_id, 8)
    opened = [e["data"] for e in events if e["kind"] == "connection.open"]
    closed = [e["data"] for e in events if e["kind"] == "connection.close"]
    names = sorted(d["application_name"] for d in opened)
    assert names == ["close-dropped", "close-polite", "close-refused"], opened
    assert sorted(d["application_name"] for d in closed) == names, closed
