"""Archival end to end: a real broker, the real CLI, a real local S3 endpoint (moto_server).

A session the CLI runs is recorded, archived when it ends, removed from the
broker's store, and still replayed and verified through ``dbaccess replay`` and
``dbaccess audit verify``.  With S3 down, sessions end and the broker stops
and restarts without losing anything: the spool holds the objects until S3 is
back.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from server.audit import chain
from server.audit.recording import load_events, recording_info
from server.store.db import Store
from tests.fix_broker import Broker
from tests.fix_s3 import CREDENTIALS, S3Server

pytestmark = pytest.mark.slow


@pytest.fixture
def archiving_broker(
    fresh_broker: Broker, s3_server: S3Server, archive_bucket: str
) -> Iterator[Broker]:
    fresh_broker.server_env.update(
        CREDENTIALS,
        DBACCESS_SERVER_ARCHIVE_BUCKET=archive_bucket,
        DBACCESS_SERVER_ARCHIVE_ENDPOINT_URL=s3_server.endpoint,
        DBACCESS_SERVER_ARCHIVE_PREFIX="e2e",
        DBACCESS_SERVER_ARCHIVE_INTERVAL="1s",
        DBACCESS_SERVER_ARCHIVE_RETRY_MAX="2s",
    )
    fresh_broker.start()
    yield fresh_broker


def open_store(broker: Broker) -> Store:
    return Store.open(f"sqlite:///{broker.data_dir / 'store.db'}")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def run_session(broker: Broker, reason: str) -> str:
    ran = broker.cli("exec", "demo", "-c", "select 41 + 1 as answer", "--reason", reason)
    assert ran.returncode == 0, ran.stderr
    listed = broker.cli("sessions", "--output", "json", "--limit", "1")
    session_id: str = json.loads(listed.stdout)[0]["id"]
    return session_id


def archived(broker: Broker, session_id: str) -> bool:
    store = open_store(broker)
    try:
        info = recording_info(store, session_id)
        return info is not None and info.pruned_at is not None
    finally:
        store.close()


def replayed(broker: Broker, session_id: str) -> dict[str, Any]:
    res = broker.cli("replay", session_id, "--output", "json")
    assert res.returncode == 0, res.stderr
    data: dict[str, Any] = json.loads(res.stdout)
    return data


def test_an_ended_session_is_archived_and_replayed_from_s3(
    archiving_broker: Broker, s3_server: S3Server, archive_bucket: str
) -> None:
    broker = archiving_broker
    session_id = run_session(broker, "archive e2e")
    wait_for("the recording to be archived", lambda: archived(broker, session_id))

    store = open_store(broker)
    try:
        assert load_events(store, session_id) == []  # gone locally...
        (event,) = [e for e in chain.events(store) if e.kind == "recording.archived"]
    finally:
        store.close()
    key = event.data["key"]
    assert key.startswith("e2e/recordings/") and key.endswith(f"/demo/{session_id}.jsonl.gz")
    assert key in s3_server.keys(archive_bucket)

    data = replayed(broker, session_id)  # ...and replayed from the archive
    assert data["verified"] is True
    assert data["recording"]["archive"]["local_copy"] is False
    kinds = [e["kind"] for e in data["events"]]
    assert kinds[0] == "session.start" and kinds[-1] == "session.end"
    assert data["events"][0]["data"]["reason"] == "archive e2e"
    shown = broker.cli("replay", session_id)
    assert shown.returncode == 0, shown.stderr
    assert f"archived to s3://{archive_bucket}/{key}, read from there" in shown.stdout
    verify = broker.cli("audit", "verify")
    assert verify.returncode == 0, verify.stderr

    # The same broker without its archive settings cannot read it, and says so.
    assert broker.stop() == 0
    for name in [n for n in broker.server_env if n.startswith("DBACCESS_SERVER_ARCHIVE_")]:
        del broker.server_env[name]
    broker.start()
    unreadable = broker.cli("replay", session_id)
    assert unreadable.returncode == 7, unreadable.stderr
    assert "archived and removed from this broker's store" in unreadable.stderr
    unverifiable = broker.cli("audit", "verify")
    assert unverifiable.returncode == 8
    assert "no archive configured" in unverifiable.stderr


def test_an_s3_outage_loses_nothing_across_a_broker_restart(
    archiving_broker: Broker, s3_server: S3Server, archive_bucket: str
) -> None:
    broker = archiving_broker
    s3_server.stop()
    try:
        first = run_session(broker, "during the outage")
        wait_for(
            "the recording to be spooled",
            lambda: list((broker.data_dir / "archive-spool").glob("*recording*.json")),
        )
        # Still readable from the store while it waits.
        assert replayed(broker, first)["verified"] is True
        assert broker.stop() == 0  # the last audit segment is spooled too
        spooled = sorted(p.name for p in (broker.data_dir / "archive-spool").glob("*.json"))
        assert any("-audit-" in name for name in spooled), spooled
        assert not archived(broker, first)
    finally:
        s3_server.start()

    broker.start()
    second = run_session(broker, "after the outage")
    for session_id in (first, second):
        wait_for("the recordings to be archived", lambda s=session_id: archived(broker, s))
    wait_for(
        "the spool to drain",
        lambda: not list((broker.data_dir / "archive-spool").glob("*.json")),
    )
    for session_id, reason in ((first, "during the outage"), (second, "after the outage")):
        data = replayed(broker, session_id)
        assert data["verified"] is True
        assert data["events"][0]["data"]["reason"] == reason

    # The audit segment spooled at shutdown is in the bucket, byte for byte the chain.
    store = open_store(broker)
    try:
        segments = [e for e in chain.events(store) if e.kind == "audit.archived"]
        local = {e.seq: e.to_json() for e in chain.events(store)}
    finally:
        store.close()
    assert segments, "no audit segment was archived"
    for segment in segments:
        body = s3_server.get(archive_bucket, segment.data["key"])
        for line in gzip.decompress(body).splitlines():
            event = json.loads(line)
            assert local[event["seq"]] == event
    verify = broker.cli("audit", "verify")
    assert verify.returncode == 0, verify.stderr
