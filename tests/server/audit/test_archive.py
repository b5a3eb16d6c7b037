"""Archival to a real local S3 endpoint (moto_server): upload, read back, digests, outages.

The pure pieces (keys, deterministic bodies, retry delays, when an audit
segment is cut) are tables; the archiver runs against a real store (SQLite, and
PostgreSQL where the store matters) and a real S3-compatible server.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from server.audit import chain
from server.audit.archive import (
    ArchiveConfig,
    Archiver,
    Pending,
    check_bucket,
    check_endpoint,
    decode_recording,
    pack,
    recording_key,
    retry_delay,
    segment_end,
    segment_key,
    sha256,
)
from server.audit.recording import (
    Recorder,
    load_events,
    recording_digest,
    recording_info,
    verify_recordings,
)
from server.errors import Unavailable
from server.store import tables as t
from server.store.db import Store
from tests.fix_s3 import S3Server, s3_client

T0 = datetime(2026, 11, 22, 23, 59, 30, tzinfo=UTC)


# --------------------------------------------------------------------------
# Pure pieces


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", "recordings/2026/11/22/prod-db/S1.jsonl.gz"),
        ("dbaccess/eu", "dbaccess/eu/recordings/2026/11/22/prod-db/S1.jsonl.gz"),
    ],
)
def test_recording_key_layout_is_date_target_session(prefix: str, expected: str) -> None:
    assert recording_key(prefix, T0, "prod-db", "S1") == expected


def test_segment_key_sorts_by_sequence() -> None:
    assert segment_key("", T0, 1, 250) == "audit/2026/11/22/000000000001-000000000250.jsonl.gz"
    assert segment_key("p", T0, 9, 10) < segment_key("p", T0, 10, 11)


def test_pack_is_deterministic_and_round_trips() -> None:
    lines = [b'{"a":1}\n', b'{"b":2}\n']
    assert pack(lines) == pack(lines)
    assert gzip.decompress(pack(lines)) == b"".join(lines)


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(0, 2.0), (1, 2.0), (2, 4.0), (3, 8.0), (6, 60.0), (100, 60.0)],
)
def test_retry_delay_doubles_up_to_the_cap(failures: int, expected: float) -> None:
    assert retry_delay(failures, 2.0, 60.0) == expected


def _pending(*kinds: str, age: timedelta = timedelta(0)) -> list[Pending]:
    return [Pending(i + 1, T0 - age, kind) for i, kind in enumerate(kinds)]


@pytest.mark.parametrize(
    ("pending", "final", "expected"),
    [
        ([], True, None),
        (_pending("session.started"), False, None),
        (_pending("session.started"), True, 1),
        (_pending("session.started", age=timedelta(hours=2)), False, 1),
        (_pending("a", "b", "c", "d", "e"), False, 3),  # max_events=3: exactly three
        (_pending("audit.archived", "recording.archived"), True, None),
        (_pending("audit.archived", "session.ended"), True, 2),
    ],
)
def test_segment_end(pending: list[Pending], final: bool, expected: int | None) -> None:
    got = segment_end(pending, now=T0, max_age=timedelta(hours=1), max_events=3, final=final)
    assert got == expected


@pytest.mark.parametrize("name", ["ab", "Upper", "a..b", "-lead", "a" * 64, "under_score"])
def test_bad_bucket_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not an S3 bucket name"):
        check_bucket(name)


@pytest.mark.parametrize("url", ["s3.example.com", "ftp://h", "http://h/?x=1"])
def test_bad_endpoints_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        check_endpoint(url)


def test_a_damaged_body_is_not_a_recording() -> None:
    with pytest.raises(ValueError, match="not an archived recording"):
        decode_recording("S1", b"not gzip")


# --------------------------------------------------------------------------
# Against a real store and a real S3 endpoint


def _factory(config: ArchiveConfig) -> Any:
    return s3_client(config.endpoint_url)


@pytest.fixture
def store(sqlite_store: Store) -> Store:
    return sqlite_store


def _config(tmp_path: Path, bucket: str, endpoint: str, **kw: Any) -> ArchiveConfig:
    return ArchiveConfig(
        bucket=bucket,
        prefix="rec",
        endpoint_url=endpoint,
        spool_dir=tmp_path / "spool",
        server_side_encryption="AES256",
        **kw,
    )


def _record_session(store: Store, session_id: str, statements: int = 3) -> str:
    recorder = Recorder(store, flush_interval=0.01)
    try:
        recorder.open(session_id, {"identity": "alice", "target": "demo", "scope": "read"})
        for n in range(statements):
            recorder.record(session_id, "statement", {"sql": f"select {n}", "rows": 1})
        closed = recorder.close(session_id, {"status": "ended", "reason": "done"})
    finally:
        recorder.stop()
    assert closed.digest is not None
    return closed.digest


def _chain_events(store: Store, kind: str) -> list[chain.AuditEvent]:
    return [e for e in chain.events(store) if e.kind == kind]


def test_a_closed_recording_is_uploaded_chained_pruned_and_read_back(
    store: Store, tmp_path: Path, s3_server: S3Server, archive_bucket: str
) -> None:
    digest = _record_session(store, "S1")
    archiver = Archiver(
        store, _config(tmp_path, archive_bucket, s3_server.endpoint), client_factory=_factory
    )
    report = archiver.run_once()
    assert report.problem is None and report.uploaded == 1

    (key,) = s3_server.keys(archive_bucket)
    assert key.startswith("rec/recordings/") and key.endswith("/unknown/S1.jsonl.gz")
    body = s3_server.get(archive_bucket, key)
    head = s3_server.client().head_object(Bucket=archive_bucket, Key=key)
    assert head["ServerSideEncryption"] == "AES256"
    assert head["Metadata"]["sha256"] == sha256(body)

    (archived,) = _chain_events(store, "recording.archived")
    assert archived.session_id == "S1"
    assert archived.data["sha256"] == sha256(body) and archived.data["key"] == key
    info = recording_info(store, "S1")
    assert info is not None and info.archived_at is not None and info.pruned_at is not None
    assert load_events(store, "S1") == []  # removed locally only after the upload

    events, problem = archiver.recording_events("S1")
    assert problem is None
    assert recording_digest(events) == digest
    assert [e.kind for e in events] == ["session.start", *["statement"] * 3, "session.end"]
    assert verify_recordings(store, archiver.recording_events).ok
    # Nothing is archived twice.
    assert archiver.run_once().uploaded == 0


def test_keep_local_leaves_the_events_in_the_store(
    store: Store, tmp_path: Path, s3_server: S3Server, archive_bucket: str
) -> None:
    _record_session(store, "S2")
    config = _config(tmp_path, archive_bucket, s3_server.endpoint, keep_local=True)
    Archiver(store, config, client_factory=_factory).run_once()
    assert len(load_events(store, "S2")) == 5
    info = recording_info(store, "S2")
    assert info is not None and info.archived_at is not None and info.pruned_at is None


def test_a_changed_archived_object_is_detected(
    store: Store, tmp_path: Path, s3_server: S3Server, archive_bucket: str
) -> None:
    _record_session(store, "S3")
    archiver = Archiver(
        store, _config(tmp_path, archive_bucket, s3_server.endpoint), client_factory=_factory
    )
    archiver.run_once()
    (key,) = s3_server.keys(archive_bucket)
    events = decode_recording("S3", s3_server.get(archive_bucket, key))
    forged = [e.data for e in events]
    forged[1] = {"sql": "select 'nothing to see'", "rows": 1}
    lines = (
        json.dumps({**e.canonical(), "data": data}, sort_keys=True, separators=(",", ":")).encode()
        + b"\n"
        for e, data in zip(events, forged, strict=True)
    )
    s3_server.client().put_object(Bucket=archive_bucket, Key=key, Body=pack(lines))

    _events, problem = archiver.recording_events("S3")
    assert problem == "the archived copy does not match the SHA-256 in the audit log"
    result = verify_recordings(store, archiver.recording_events)
    assert not result.ok and result.problems[0].session_id == "S3"


def test_a_pruned_recording_without_an_archive_is_reported_not_passed(
    store: Store, tmp_path: Path, s3_server: S3Server, archive_bucket: str
) -> None:
    _record_session(store, "S4")
    Archiver(
        store, _config(tmp_path, archive_bucket, s3_server.endpoint), client_factory=_factory
    ).run_once()
    result = verify_recordings(store)
    assert not result.ok
    assert "no archive configured" in result.problems[0].problem


def test_an_outage_loses_nothing_and_recovers(
    store: Store, tmp_path: Path, s3_server: S3Server, archive_bucket: str
) -> None:
    digests = {sid: _record_session(store, sid) for sid in ("O1", "O2")}
    s3_server.stop()
    try:
        archiver = Archiver(
            store, _config(tmp_path, archive_bucket, s3_server.endpoint), client_factory=_factory
        )
        down = archiver.run_once()
        assert down.problem is not None and "upload of s3://" in down.problem
        assert down.spooled == 2 and down.uploaded == 0
        assert archiver.failures == 1
        # Still all here: nothing was removed before an upload succeeded.
        assert all(len(load_events(store, sid)) == 5 for sid in digests)
        assert len(list((tmp_path / "spool").glob("*.json"))) == 2
        # Closed while S3 is down, and the broker restarts (a new archiver, same spool).
        digests["O3"] = _record_session(store, "O3")
        with pytest.raises(Unavailable, match="cannot read"):
            archiver.fetch("rec/anything")
    finally:
        s3_server.start()

    again = Archiver(
        store, _config(tmp_path, archive_bucket, s3_server.endpoint), client_factory=_factory
    )
    up = again.run_once()
    assert up.problem is None and up.uploaded == 3
    assert list((tmp_path / "spool").glob("*.json")) == []
    for sid, digest in digests.items():
        events, problem = again.recording_events(sid)
        assert problem is None and recording_digest(events) == digest
    assert verify_recordings(store, again.recording_events).ok


def test_a_damaged_spool_file_is_set_aside_and_spooled_again(
    store: Store, tmp_path: Path, s3_server: S3Server, archive_bucket: str
) -> None:
    digest = _record_session(store, "D1")
    config = _config(tmp_path, archive_bucket, s3_server.endpoint)
    archiver = Archiver(store, config, client_factory=_factory)
    archiver._spool_recordings()
    (body,) = (tmp_path / "spool").glob("*.gz")
    body.write_bytes(b"damaged")
    assert archiver.run_once().uploaded == 0  # set aside, not uploaded
    assert list((tmp_path / "spool").glob("*.bad"))
    assert archiver.run_once().uploaded == 1  # spooled again from the store
    events, problem = archiver.recording_events("D1")
    assert problem is None and recording_digest(events) == digest


def test_audit_segments_cover_the_chain_in_order(
    store: Store, tmp_path: Path, s3_server: S3Server, archive_bucket: str
) -> None:
    for n in range(7):
        chain.append(store, "session.started", identity="alice", data={"n": n})
    config = _config(tmp_path, archive_bucket, s3_server.endpoint, audit_segment_events=4)
    archiver = Archiver(store, config, client_factory=_factory)
    assert archiver.run_once().uploaded == 1  # four events: one full segment
    assert archiver.run_once(final=True).uploaded == 1  # the rest, at shutdown
    segments = _chain_events(store, "audit.archived")
    assert [(s.data["first_seq"], s.data["last_seq"]) for s in segments] == [(1, 4), (5, 8)]

    archived: list[dict[str, Any]] = []
    for segment in segments:
        body = s3_server.get(archive_bucket, segment.data["key"])
        assert sha256(body) == segment.data["sha256"]
        archived += [json.loads(line) for line in gzip.decompress(body).splitlines()]
    local = [e.to_json() for e in chain.events(store)][: len(archived)]
    assert archived == local
    # Only the archiver's own marker events remain: no segment of just those.
    assert archiver.run_once(final=True).uploaded == 0


def test_a_recording_whose_row_lies_about_its_key_is_read_by_the_chain(
    store: Store, tmp_path: Path, s3_server: S3Server, archive_bucket: str
) -> None:
    digest = _record_session(store, "K1")
    archiver = Archiver(
        store, _config(tmp_path, archive_bucket, s3_server.endpoint), client_factory=_factory
    )
    archiver.run_once()
    with store.tx() as conn:
        conn.execute(
            sa.update(t.session_recordings)
            .where(t.session_recordings.c.session_id == "K1")
            .values(archive_key="rec/elsewhere.jsonl.gz")
        )
    events, problem = archiver.recording_events("K1")
    assert problem is None and recording_digest(events) == digest
