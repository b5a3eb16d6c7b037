"""Archival of closed session recordings and audit-log segments to S3-compatible storage.

What is archived.  Every closed (or failed) recording becomes one object, the
gzip of its events in canonical form (:func:`~server.audit.recording.canonical_line`,
the lines the recording's digest is taken over), under
``<prefix>/recordings/YYYY/MM/DD/<target>/<session>.jsonl.gz`` (the date the
recording closed).  The audit log is archived in segments: the events after
the last archived one, cut when ``audit_segment_events`` have gathered, when
the oldest has waited ``audit_segment_age``, or when the broker stops, under
``<prefix>/audit/YYYY/MM/DD/<first seq>-<last seq>.jsonl.gz``.  The gzip is
deterministic (no name, no time), so the same content always gives the same
bytes and the same SHA-256, and an upload repeated after a crash overwrites an
object with itself.

Nothing is lost while S3 is unreachable.  An object is first written to the
local spool (``spool_dir``; the body, then a small JSON description, each
written to a temporary file, fsynced and renamed into place), and only then
uploaded.  A failed upload leaves the spool as it is and the worker tries again
after a delay that doubles up to ``retry_max`` (botocore's own retries handle
the short blips within one attempt).  The store stays the source of truth
until the upload succeeded: a recording's events are deleted locally (unless
``keep_local``) only after the object is in the bucket and its
``recording.archived`` event, holding the object's key and SHA-256, is in the
hash chain; a recording closed while the broker was down is spooled on the
next pass, because "closed and not archived" is read from the store each time.

Reading back.  :meth:`Archiver.recording_events` fetches a recording's object,
checks its SHA-256 against the one the audit chain holds (not the one the
recording's row caches), unpacks it and hands back the events, so ``dbaccess
replay`` and ``dbaccess audit verify`` treat an archived recording like a local
one: the events are then checked against the ``recording.closed`` digest as
usual.

Server-side encryption settings (``server_side_encryption``, ``kms_key_id``)
are passed with every upload.  AWS credentials come from boto3's usual chain
(environment, profile, instance or task role); none are in dbaccess's files.
The boto3 client is created on first use, so a broker without archival never
imports boto3.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import sqlalchemy as sa

from server.audit import chain
from server.audit.recording import SessionEvent, canonical_line, load_events
from server.errors import Unavailable
from server.store import tables as t
from server.store.db import Store, _aware, utcnow

log = logging.getLogger(__name__)

SSE_MODES: Final = ("AES256", "aws:kms", "aws:kms:dsse")
DEFAULT_AUDIT_SEGMENT_EVENTS: Final = 10_000
RECORDING: Final = "recording"
AUDIT: Final = "audit"
# Events the archiver itself appends: a segment made only of these would make
# the next one, forever.
_OWN_EVENTS: Final = frozenset({"recording.archived", "audit.archived"})
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def check_bucket(text: str) -> str:
    """An S3 bucket name (3-63 lower-case letters, digits, dots, hyphens), or ValueError."""
    if not _BUCKET.fullmatch(text) or ".." in text:
        raise ValueError(f"{text!r} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
    return text


def check_endpoint(text: str) -> str:
    """An http(s) endpoint URL for an S3-compatible service, or ValueError."""
    url = urlsplit(text)
    if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        raise ValueError(f"{text!r} is not an http(s) URL such as https://s3.example.com:9000")
    return text.rstrip("/")


@dataclass(frozen=True, kw_only=True)
class ArchiveConfig:
    """The ``archive:`` mapping of the broker's config file."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    server_side_encryption: str | None = None
    kms_key_id: str | None = None
    spool_dir: Path | None = None
    keep_local: bool = False
    interval: timedelta = timedelta(seconds=30)
    retry_max: timedelta = timedelta(minutes=5)
    audit_segment_age: timedelta = timedelta(hours=1)
    audit_segment_events: int = DEFAULT_AUDIT_SEGMENT_EVENTS

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


# --------------------------------------------------------------------------
# Pure pieces: keys, bodies, timing


def _key(prefix: str, *parts: str) -> str:
    return "/".join(part for part in (prefix, *parts) if part)


def recording_key(prefix: str, closed_at: datetime, target: str, session_id: str) -> str:
    day = closed_at.strftime("%Y/%m/%d")
    return _key(prefix, "recordings", day, target, f"{session_id}.jsonl.gz")


def segment_key(prefix: str, first_ts: datetime, first_seq: int, last_seq: int) -> str:
    day = first_ts.strftime("%Y/%m/%d")
    return _key(prefix, "audit", day, f"{first_seq:012d}-{last_seq:012d}.jsonl.gz")


def pack(lines: Iterable[bytes]) -> bytes:
    """Deterministic gzip of ``lines``: no file name and a zero time stamp in the header."""
    return gzip.compress(b"".join(lines), compresslevel=6, mtime=0)


def sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def decode_recording(session_id: str, body: bytes) -> list[SessionEvent]:
    """The events of an archived recording (ValueError when the body is not one)."""
    try:
        text = gzip.decompress(body).decode()
        events = []
        for line in text.splitlines():
            item = json.loads(line)
            ts = datetime.fromisoformat(item["ts"])
            seq, kind, data = int(item["seq"]), item["kind"], item["data"]
            events.append(SessionEvent(session_id, seq, ts, kind, data))
    except (OSError, EOFError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not an archived recording: {exc}") from None
    return events


def retry_delay(failures: int, base: float, cap: float) -> float:
    """Seconds to wait after ``failures`` failed passes in a row: doubling, at most ``cap``."""
    if failures <= 0:
        return base
    return float(min(cap, base * 2 ** min(failures - 1, 30)))


@dataclass(frozen=True)
class Pending:
    """An audit event not yet in an archived segment (what :func:`segment_end` looks at)."""

    seq: int
    ts: datetime
    kind: str


def segment_end(
    pending: Sequence[Pending], *, now: datetime, max_age: timedelta, max_events: int, final: bool
) -> int | None:
    """The last sequence number of the next segment to archive, or None for "not yet".

    A segment is cut when ``max_events`` have gathered (then exactly that many),
    when the oldest pending event is ``max_age`` old, or on the final pass at
    shutdown.  Pending events that are all the archiver's own records make no
    segment: they wait for the next real event.
    """
    if not pending or all(p.kind in _OWN_EVENTS for p in pending):
        return None
    if len(pending) >= max_events:
        return pending[max_events - 1].seq
    if final or now - pending[0].ts >= max_age:
        return pending[-1].seq
    return None


# --------------------------------------------------------------------------
# The spool


@dataclass(frozen=True)
class SpoolEntry:
    """One object waiting for upload: ``<name>.gz`` holds the body, ``<name>.json`` this."""

    name: str
    kind: str
    key: str
    sha256: str
    size: int
    events: int
    session_id: str | None = None
    target: str | None = None
    first_seq: int | None = None
    last_seq: int | None = None


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class Spool:
    """A directory of objects waiting for upload, oldest first."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def put(self, entry: SpoolEntry, body: bytes) -> None:
        _write_atomically(self.dir / f"{entry.name}.gz", body)
        # The description last: an entry without one is an unfinished write.
        _write_atomically(self.dir / f"{entry.name}.json", json.dumps(asdict(entry)).encode())
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def entries(self) -> list[SpoolEntry]:
        found = []
        for meta in sorted(self.dir.glob("*.json")):
            try:
                found.append(SpoolEntry(**json.loads(meta.read_text())))
            except (OSError, ValueError, TypeError) as exc:
                log.error("archive spool: unreadable %s (%s); moved aside", meta, exc)
                meta.rename(meta.with_suffix(".bad"))
        return found

    def body(self, entry: SpoolEntry) -> bytes:
        return (self.dir / f"{entry.name}.gz").read_bytes()

    def remove(self, entry: SpoolEntry) -> None:
        for suffix in (".json", ".gz"):
            (self.dir / f"{entry.name}{suffix}").unlink(missing_ok=True)

    def set_aside(self, entry: SpoolEntry) -> None:
        for suffix in (".json", ".gz"):
            path = self.dir / f"{entry.name}{suffix}"
            if path.exists():
                path.rename(path.with_name(path.name + ".bad"))


# --------------------------------------------------------------------------
# The archiver


@dataclass(frozen=True)
class PassReport:
    spooled: int
    uploaded: int
    problem: str | None


def _s3_client(config: ArchiveConfig) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=config.endpoint_url,
        region_name=config.region,
        config=Config(
            connect_timeout=5,
            read_timeout=30,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    )


class Archiver:
    """Spools and uploads closed recordings and audit segments on a thread of its own."""

    def __init__(
        self,
        store: Store,
        config: ArchiveConfig,
        *,
        client_factory: Callable[[ArchiveConfig], Any] = _s3_client,
    ) -> None:
        if config.spool_dir is None:
            raise ValueError("the archive needs a spool directory")
        self.store = store
        self.config = config
        self.spool = Spool(config.spool_dir)
        self._client_factory = client_factory
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._pass_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0
        self.last_problem: str | None = None

    # -- S3 ----------------------------------------------------------------------
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                self._client = self._client_factory(self.config)
            return self._client

    def _put(self, entry: SpoolEntry, body: bytes) -> None:
        extra: dict[str, Any] = {}
        if self.config.server_side_encryption:
            extra["ServerSideEncryption"] = self.config.server_side_encryption
        if self.config.kms_key_id:
            extra["SSEKMSKeyId"] = self.config.kms_key_id
        metadata = {"sha256": entry.sha256, "kind": entry.kind, "events": str(entry.events)}
        if entry.session_id:
            metadata["session"] = entry.session_id
        self.client().put_object(
            Bucket=self.config.bucket,
            Key=entry.key,
            Body=body,
            ContentType="application/gzip",
            Metadata=metadata,
            **extra,
        )

    def fetch(self, key: str) -> bytes:
        """An object's bytes; Unavailable when the archive cannot be read."""
        try:
            answer = self.client().get_object(Bucket=self.config.bucket, Key=key)
            body: bytes = answer["Body"].read()
        except Exception as exc:
            raise Unavailable(
                f"cannot read {self.config.url(key)}: {_why(exc)}",
                hint="check that the S3 endpoint is reachable and the broker may read the bucket",
            ) from None
        return body

    # -- the worker ----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dbaccess-archiver", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Ask for a pass now (a recording closed)."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> PassReport:
        """End the worker, then spool what is left (the last audit segment) and, when the
        archive answered lately, upload it; what cannot be uploaded stays spooled."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return self.run_once(final=True, upload=self.failures == 0)

    def _run(self) -> None:
        base = self.config.interval.total_seconds()
        cap = max(base, self.config.retry_max.total_seconds())
        while not self._stop.is_set():
            report = self.run_once()
            delay = retry_delay(self.failures, base, cap) if report.problem else base
            self._wake.wait(delay)
            self._wake.clear()

    def run_once(self, *, final: bool = False, upload: bool = True) -> PassReport:
        """One pass: spool what is due, then upload the spool, oldest first."""
        with self._pass_lock:
            try:
                spooled = self._spool_recordings() + self._spool_audit(final)
            except Exception as exc:
                log.exception("archive: spooling failed")
                return PassReport(0, 0, f"spooling failed: {_why(exc)}")
            uploaded, problem = self._upload_spool() if upload else (0, None)
            if problem is None:
                self.failures = 0
            else:
                self.failures += 1
                if problem != self.last_problem:
                    log.warning("archive: %s (kept in %s, will retry)", problem, self.spool.dir)
            self.last_problem = problem
            return PassReport(spooled, uploaded, problem)

    # -- spooling ------------------------------------------------------------------
    def _spool_recordings(self) -> int:
        spooled = {e.session_id for e in self.spool.entries() if e.kind == RECORDING}
        rec, sess = t.session_recordings, t.sessions
        with self.store.tx() as conn:
            rows = conn.execute(
                sa.select(rec.c.session_id, rec.c.closed_at, sess.c.target)
                .select_from(rec.outerjoin(sess, sess.c.id == rec.c.session_id))
                .where(rec.c.status != "open", rec.c.archived_at.is_(None))
                .order_by(rec.c.closed_at)
            ).all()
        count = 0
        for session_id, closed_at, target in rows:
            if session_id in spooled:
                continue
            events = load_events(self.store, session_id)
            body = pack(canonical_line(e) for e in events)
            closed = _aware(closed_at) or utcnow()
            entry = SpoolEntry(
                name=f"{time.time_ns():020d}-{RECORDING}-{session_id}",
                kind=RECORDING,
                key=recording_key(self.config.prefix, closed, target or "unknown", session_id),
                sha256=sha256(body),
                size=len(body),
                events=len(events),
                session_id=session_id,
                target=target,
            )
            self.spool.put(entry, body)
            count += 1
        return count

    def _spool_audit(self, final: bool) -> int:
        spooled = [e.last_seq or 0 for e in self.spool.entries() if e.kind == AUDIT]
        done = max([*spooled, _last_archived_seq(self.store)])
        ae = t.audit_events
        with self.store.tx() as conn:
            rows = conn.execute(
                sa.select(ae.c.seq, ae.c.ts, ae.c.kind)
                .where(ae.c.seq > done)
                .order_by(ae.c.seq)
                .limit(self.config.audit_segment_events)
            ).all()
        pending = [Pending(seq, _aware(ts) or utcnow(), kind) for seq, ts, kind in rows]
        last = segment_end(
            pending,
            now=utcnow(),
            max_age=self.config.audit_segment_age,
            max_events=self.config.audit_segment_events,
            final=final,
        )
        if last is None:
            return 0
        with self.store.tx() as conn:
            events = [
                chain.row_event(row)
                for row in conn.execute(
                    ae.select().where(ae.c.seq > done, ae.c.seq <= last).order_by(ae.c.seq)
                )
            ]
        lines = (
            json.dumps(e.to_json(), sort_keys=True, separators=(",", ":")).encode() + b"\n"
            for e in events
        )
        body = pack(lines)
        first = events[0]
        entry = SpoolEntry(
            name=f"{time.time_ns():020d}-{AUDIT}-{first.seq}-{last}",
            kind=AUDIT,
            key=segment_key(self.config.prefix, first.ts, first.seq, last),
            sha256=sha256(body),
            size=len(body),
            events=len(events),
            first_seq=first.seq,
            last_seq=last,
        )
        self.spool.put(entry, body)
        return 1

    # -- uploading -----------------------------------------------------------------
    def _upload_spool(self) -> tuple[int, str | None]:
        uploaded = 0
        for entry in self.spool.entries():
            try:
                body = self.spool.body(entry)
            except OSError as exc:
                log.error("archive spool: cannot read %s: %s; set aside", entry.name, exc)
                self.spool.set_aside(entry)
                continue
            if sha256(body) != entry.sha256:
                # The spool was damaged; a recording is spooled again from the store
                # on the next pass, an audit segment from the audit log.
                log.error("archive spool: %s does not match its SHA-256; set aside", entry.name)
                self.spool.set_aside(entry)
                continue
            try:
                self._put(entry, body)
            except Exception as exc:
                return uploaded, f"upload of {self.config.url(entry.key)} failed: {_why(exc)}"
            self._archived(entry)
            self.spool.remove(entry)
            uploaded += 1
        return uploaded, None

    def _archived(self, entry: SpoolEntry) -> None:
        data: dict[str, Any] = {
            "bucket": self.config.bucket,
            "key": entry.key,
            "sha256": entry.sha256,
            "bytes": entry.size,
            "events": entry.events,
        }
        if entry.kind == AUDIT:
            chain.append(
                self.store,
                "audit.archived",
                data={**data, "first_seq": entry.first_seq, "last_seq": entry.last_seq},
            )
            return
        assert entry.session_id is not None
        chain.append(
            self.store,
            "recording.archived",
            target=entry.target,
            session_id=entry.session_id,
            data=data,
        )
        now = utcnow()
        with self.store.tx() as conn:
            conn.execute(
                t.session_recordings.update()
                .where(t.session_recordings.c.session_id == entry.session_id)
                .values(
                    archive_key=entry.key,
                    archive_sha256=entry.sha256,
                    archived_at=now,
                    pruned_at=None if self.config.keep_local else now,
                )
            )
            if not self.config.keep_local:
                conn.execute(
                    t.session_events.delete().where(
                        t.session_events.c.session_id == entry.session_id
                    )
                )

    # -- reading back --------------------------------------------------------------
    def recording_events(self, session_id: str) -> tuple[list[SessionEvent], str | None]:
        """An archived recording's events and, when its object does not match the audit
        chain, why.  Unavailable when the archive cannot be read or holds no such record."""
        where = archived_record(self.store, session_id)
        if where is None:
            raise Unavailable(
                f"the audit log holds no archived copy of session {session_id}'s recording",
                hint="dbaccess audit verify shows what is missing",
            )
        key, digest = where
        body = self.fetch(key)
        problem = None
        if sha256(body) != digest:
            problem = "the archived copy does not match the SHA-256 in the audit log"
        try:
            return decode_recording(session_id, body), problem
        except ValueError as exc:
            return [], problem or str(exc)


def archived_record(store: Store, session_id: str) -> tuple[str, str] | None:
    """(key, SHA-256) of a recording's archived object, as the audit chain holds them."""
    ae = t.audit_events
    with store.tx() as conn:
        data = conn.execute(
            sa.select(ae.c.data)
            .where(ae.c.kind == "recording.archived", ae.c.session_id == session_id)
            .order_by(ae.c.seq.desc())
            .limit(1)
        ).scalar()
    if not data or not data.get("key") or not data.get("sha256"):
        return None
    return str(data["key"]), str(data["sha256"])


def _last_archived_seq(store: Store) -> int:
    ae = t.audit_events
    with store.tx() as conn:
        rows = conn.execute(sa.select(ae.c.data).where(ae.c.kind == "audit.archived")).scalars()
        return max((int((data or {}).get("last_seq") or 0) for data in rows), default=0)


def _why(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
