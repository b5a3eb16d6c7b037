"""``dbaccess replay`` and ``dbaccess audit verify`` against a real broker and its store.

Sessions the CLI starts are recorded by the broker itself (start and end).  For
a recording with statements, notices and masking the test writes one into the
broker's store through the recorder API, for a session of the CLI's identity,
as the gateway will once it records statements.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from server.audit.recording import Recorder, redact_params, statement_event
from server.store.db import SessionRecord, Store, new_id
from tests.fix_broker import Broker

pytestmark = pytest.mark.slow


@pytest.fixture
def store(broker: Broker) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{broker.data_dir / 'store.db'}")
    try:
        yield s
    finally:
        s.close()


def recorded_session(store: Store, identity: str = "dev") -> str:
    """A finished session of ``identity`` with a recording the gateway could have made.

    Owned and written as the running broker's own replica, as its gateway would: a
    session nobody live owns, with its recording left open, is one the broker's
    reaper rightly takes over and closes itself (its owner died)."""
    session_id = new_id("s-")
    start = datetime.now(UTC)
    (replica,) = store.replicas(alive_at=start)
    store.insert_session(
        SessionRecord(
            id=session_id,
            identity=identity,
            groups=("dev",),
            target="demo",
            scope="read",
            reason="INC-42",
            db_user=f"dba_{identity}_x",
            status="ended",
            created_at=start,
            expires_at=start + timedelta(minutes=30),
            ended_at=start + timedelta(minutes=1),
            end_reason="client ended the session",
            revocation={"ok": True},
            owner=replica.id,
        ),
        ticket_hash=new_id("h-") * 4,
    )
    recorder = Recorder(store, writer=replica.id)
    try:
        recorder.open(
            session_id,
            {
                "identity": identity,
                "groups": ["dev"],
                "target": "demo",
                "scope": "read",
                "reason": "INC-42",
                "db_user": f"dba_{identity}_x",
                "client": {"command": "connect", "os_user": "ada", "hostname": "laptop"},
            },
        )
        recorder.record(
            session_id,
            "connection.open",
            {"address": "127.0.0.1:50432", "application_name": "psql"},
        )
        recorder.record(
            session_id,
            "statement",
            statement_event(
                "SELECT id, email, card_number FROM customers LIMIT 3",
                started_at=start,
                duration_ms=12.5,
                rows=3,
                tag="SELECT 3",
                decision="allowed",
                masked_fields=[
                    {"field": "email", "action": "mask", "method": "partial"},
                    {"field": "card_number", "action": "mask", "method": "partial"},
                ],
            ),
        )
        recorder.record(
            session_id,
            "statement",
            statement_event(
                "ALTER ROLE app PASSWORD 'hunter2'",
                started_at=start,
                duration_ms=0.4,
                sqlstate="42501",
                decision="allowed",
            ),
        )
        recorder.record(
            session_id,
            "statement",
            statement_event(
                "SELECT * FROM customers WHERE email = $1",
                params=redact_params([b"ada@example.com"], masked=[0]),
                started_at=start,
                duration_ms=0.2,
                decision="blocked: a computed column of masked data",
            ),
        )
        recorder.record(session_id, "notice", {"severity": "NOTICE", "message": "all good"})
        recorder.close(
            session_id,
            {"status": "ended", "reason": "client ended the session", "revocation": {"ok": True}},
        )
    finally:
        recorder.stop()
    return session_id


def test_replay_shows_a_recording_as_a_timeline(broker: Broker, store: Store) -> None:
    session_id = recorded_session(store)
    res = broker.cli("replay", session_id)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"session {session_id}: dev on demo (read)" in out
    assert "recording closed: 7 events" in out and "matches the audit log" in out
    for text in (
        "+0.",
        "session.start",
        "INC-42",
        "connection.open",
        "SELECT 3",
        "12.5 ms",
        "masked: email (partial), card_number (partial)",
        "ERROR 42501",
        "PASSWORD '[redacted]'",
        "blocked: a computed column of masked data",
        "params: [redacted]",
        "NOTICE: all good",
        "session.end",
        "credential revoked",
    ):
        assert text in out, text
    assert "hunter2" not in out and "ada@example.com" not in out


def test_replay_json_is_the_whole_recording(broker: Broker, store: Store) -> None:
    session_id = recorded_session(store)
    res = broker.cli("replay", session_id, "--output", "json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["verified"] is True and data["problem"] is None
    assert data["session"]["id"] == session_id
    assert data["recording"]["status"] == "closed"
    events = data["events"]
    assert [e["seq"] for e in events] == list(range(1, 8))
    assert events[0]["kind"] == "session.start" and events[-1]["kind"] == "session.end"
    assert all(e["offset_ms"] >= 0 for e in events)
    assert events[2]["data"]["masked"][0]["field"] == "email"
    csv = broker.cli("replay", session_id, "--output", "csv")
    assert csv.returncode == 0, csv.stderr
    assert csv.stdout.splitlines()[0] == "at,event,took,rows,result,detail"


def test_a_session_the_cli_starts_is_recorded_from_start_to_end(broker: Broker) -> None:
    ran = broker.cli("exec", "demo", "-c", "select 1", "--reason", "replay e2e")
    assert ran.returncode == 0, ran.stderr
    listed = broker.cli("sessions", "--output", "json", "--limit", "1")
    session_id = json.loads(listed.stdout)[0]["id"]
    res = broker.cli("replay", session_id, "--output", "json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    kinds = [e["kind"] for e in data["events"]]
    assert kinds[0] == "session.start" and kinds[-1] == "session.end"
    start, end = data["events"][0]["data"], data["events"][-1]["data"]
    assert (start["identity"], start["target"], start["reason"]) == ("dev", "demo", "replay e2e")
    assert start["client"]["command"] == "exec"
    assert end["revocation"]["ok"] is True
    assert data["verified"] is True


def test_a_tampered_recording_fails_replay_and_audit_verify(broker: Broker, store: Store) -> None:
    session_id = recorded_session(store)
    assert broker.cli("audit", "verify").returncode == 0
    with sqlite3.connect(broker.data_dir / "store.db") as db:
        db.execute(
            "UPDATE session_events SET data = json_set(data, '$.text', 'SELECT 1') "
            "WHERE session_id = ? AND seq = 3",
            (session_id,),
        )
    res = broker.cli("replay", session_id)
    assert res.returncode == 8
    assert "SELECT 1" in res.stdout  # shown all the same...
    assert "does not match the audit log" in res.stderr  # ...with the warning
    verify = broker.cli("audit", "verify")
    assert verify.returncode == 8
    assert f"recording of session {session_id}" in verify.stderr
    # put it back so the module's other tests see an intact log
    with sqlite3.connect(broker.data_dir / "store.db") as db:
        db.execute(
            "UPDATE session_events SET data = json_set(data, '$.text', "
            "'SELECT id, email, card_number FROM customers LIMIT 3') "
            "WHERE session_id = ? AND seq = 3",
            (session_id,),
        )
    ok = broker.cli("audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert "recordings match their digests" in ok.stderr


def test_only_the_owner_admins_and_auditors_may_replay(broker: Broker, store: Store) -> None:
    session_id = recorded_session(store)
    mallory = broker.token("mallory", "dev")
    refused = broker.cli("replay", session_id, token=mallory)
    assert refused.returncode == 6
    assert "unknown session" in refused.stderr
    auditor = broker.token("audrey", "auditor")
    allowed = broker.cli("replay", session_id, "--output", "json", token=auditor)
    assert allowed.returncode == 0, allowed.stderr
    own = recorded_session(store, identity="mallory")
    assert broker.cli("replay", own, token=mallory).returncode == 0


def test_replay_of_an_unknown_session(broker: Broker) -> None:
    res = broker.cli("replay", "s-000000000000")
    assert res.returncode == 6
    assert "unknown session" in res.stderr
