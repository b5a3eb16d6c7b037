"""Append-only, hash-chained audit log.

Each event stores the SHA-256 of the previous event (``prev_hash``) and its own
``hash`` = SHA-256(prev_hash || canonical JSON of the event's fields).  Editing,
deleting or reordering any stored event breaks the chain at that point, which
``verify`` reports as the first bad sequence number.  The genesis ``prev_hash``
is 64 zeros.  Callers must not put secrets into ``data``: ``append`` strips keys
that look like secrets as a last line of defence.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from server.store import tables as t
from server.store.db import Store, _aware, utcnow

GENESIS = "0" * 64
_SECRET_KEYS = ("password", "token", "ticket", "secret", "dsn")


@dataclass(frozen=True)
class AuditEvent:
    seq: int
    ts: datetime
    kind: str
    identity: str | None
    target: str | None
    session_id: str | None
    data: Mapping[str, Any]
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts.isoformat(),
            "kind": self.kind,
            "identity": self.identity,
            "target": self.target,
            "session_id": self.session_id,
            "data": dict(self.data),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    events: int
    first_bad_seq: int | None
    problem: str | None


def _redact(data: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if any(s in key.lower() for s in _SECRET_KEYS):
            out[key] = "[redacted]"
        elif isinstance(value, Mapping):
            out[key] = _redact(value)
        else:
            out[key] = value
    return out


def event_hash(
    prev_hash: str,
    seq: int,
    ts: datetime,
    kind: str,
    identity: str | None,
    target: str | None,
    session_id: str | None,
    data: Mapping[str, Any],
) -> str:
    body = json.dumps(
        {
            "seq": seq,
            "ts": ts.astimezone(UTC).isoformat(timespec="microseconds"),
            "kind": kind,
            "identity": identity,
            "target": target,
            "session_id": session_id,
            "data": data,
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(prev_hash.encode() + body.encode()).hexdigest()


def append(
    store: Store,
    kind: str,
    *,
    identity: str | None = None,
    target: str | None = None,
    session_id: str | None = None,
    data: Mapping[str, Any] | None = None,
) -> AuditEvent:
    clean = _redact(data or {})
    # Round-trip through JSON so the hash covers exactly what the store returns.
    clean = json.loads(json.dumps(clean, default=str))
    with store.audit_lock, store.tx() as conn:
        store.lock_audit_chain(conn)
        last = conn.execute(
            sa.select(t.audit_events.c.seq, t.audit_events.c.hash)
            .order_by(t.audit_events.c.seq.desc())
            .limit(1)
        ).first()
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        ts = utcnow()
        digest = event_hash(prev, seq, ts, kind, identity, target, session_id, clean)
        conn.execute(
            t.audit_events.insert().values(
                seq=seq,
                ts=ts,
                kind=kind,
                identity=identity,
                target=target,
                session_id=session_id,
                data=clean,
                prev_hash=prev,
                hash=digest,
            )
        )
    return AuditEvent(seq, ts, kind, identity, target, session_id, clean, prev, digest)


def row_event(row: sa.Row[Any]) -> AuditEvent:
    m = row._mapping
    ts = _aware(m["ts"])
    assert ts is not None
    return AuditEvent(
        seq=m["seq"],
        ts=ts,
        kind=m["kind"],
        identity=m["identity"],
        target=m["target"],
        session_id=m["session_id"],
        data=m["data"],
        prev_hash=m["prev_hash"],
        hash=m["hash"],
    )


def events(
    store: Store,
    *,
    identity: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    limit: int | None = None,
) -> list[AuditEvent]:
    q = t.audit_events.select().order_by(t.audit_events.c.seq)
    if identity:
        q = q.where(t.audit_events.c.identity == identity)
    if target:
        q = q.where(t.audit_events.c.target == target)
    if since:
        q = q.where(t.audit_events.c.ts >= since)
    if limit:
        q = q.limit(limit)
    with store.read() as conn:
        return [row_event(r) for r in conn.execute(q)]


def verify_events(evs: Iterable[AuditEvent]) -> VerifyResult:
    """Check a full, ordered event list; pure, so it is testable without a store."""
    prev = GENESIS
    expected_seq = 1
    count = 0
    for ev in evs:
        count += 1
        if ev.seq != expected_seq:
            return VerifyResult(
                False, count, ev.seq, f"expected event {expected_seq}, found {ev.seq}"
            )
        if ev.prev_hash != prev:
            return VerifyResult(False, count, ev.seq, "previous-hash link does not match")
        digest = event_hash(
            prev, ev.seq, ev.ts, ev.kind, ev.identity, ev.target, ev.session_id, ev.data
        )
        if digest != ev.hash:
            return VerifyResult(False, count, ev.seq, "content does not match its hash")
        prev = ev.hash
        expected_seq += 1
    return VerifyResult(True, count, None, None)


def verify(store: Store) -> VerifyResult:
    return verify_events(events(store))
