"""HTTP route of session recordings: ``GET /v1/sessions/{id}/recording``.

The session's owner, admins and auditors may read a recording.  The answer
holds the session, the recording's state, its events in order (each with its
offset from the session's start, for a timeline) and, for a closed recording
read whole, whether its events still match the digest the audit chain holds.
A recording whose local events were removed after archival is read from the
archive (``service.archiver``) and checked the same way.
(No ``from __future__ import annotations`` here: FastAPI must see the ``Caller``
annotation, which is local to ``register``, as an object.)
"""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query

from server.api.common import may_audit
from server.audit import access, chain, recording
from server.errors import NotFound, Unavailable
from server.policy.evaluate import Identity
from server.sessions.service import SessionService

MAX_EVENTS = 100_000


def register(app: FastAPI, service: SessionService, caller: Callable[..., Identity]) -> None:
    """Add the recording route to ``app``; ``caller`` is the app's authentication dependency."""
    Caller = Annotated[Identity, Depends(caller)]
    store = service.store

    @app.get("/v1/sessions/{session_id}/recording")
    def session_recording(
        session_id: str,
        who: Caller,
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = MAX_EVENTS,
    ) -> dict[str, Any]:
        record = store.get_session(session_id)
        allowed = record is not None and (record.identity == who.name or may_audit(who))
        if record is None or not allowed:
            raise NotFound(f"unknown session {session_id!r}", hint="list yours: dbaccess sessions")
        info = recording.recording_info(store, session_id)
        events = recording.load_events(store, session_id, after=after, limit=limit)
        verified: bool | None = None
        problem: str | None = None
        archive_problem: str | None = None
        if info is not None and info.pruned_at is not None and not events:
            everything, archive_problem = _archived(service, session_id)
            events = [e for e in everything if e.seq > after][:limit]
        whole = after == 0 and len(events) < limit
        if info is not None and info.status != "open" and whole:
            problem = archive_problem or recording.verify_recording(store, info, events)
            verified = problem is None
        start = record.created_at
        rec_json = info.to_json() if info is not None else None
        if rec_json and rec_json["archive"] and service.archiver is not None:
            rec_json["archive"]["url"] = service.archiver.config.url(rec_json["archive"]["key"])
        return {
            "session": record.to_json(),
            "recording": rec_json,
            "verified": verified,
            "problem": problem,
            "events": [
                {
                    **event.to_json(),
                    "offset_ms": round((event.ts - start).total_seconds() * 1000, 3),
                }
                for event in events
            ],
        }


def _archived(
    service: SessionService, session_id: str
) -> tuple[list[recording.SessionEvent], str | None]:
    if service.archiver is None:
        raise Unavailable(
            f"the recording of session {session_id} was archived and removed from this "
            "broker's store, and this broker has no archive configured",
            hint="configure the archive: mapping (bucket, endpoint_url) in the broker's config",
        )
    return service.archiver.recording_events(session_id)


def verify_audit(service: SessionService) -> dict[str, Any]:
    """The answer of ``GET /v1/audit/verify``: the hash chain, every closed recording,
    the access index.

    ``ok`` covers all three (the index is held to the recordings' ``access``
    events).  When the chain is intact but a recording is not,
    ``first_bad_seq`` is the ``recording.closed`` event of the first such
    recording and ``problem`` says which session and what is wrong; an access
    index that differs from its events is named in ``problem`` too.
    """
    store = service.store
    res = chain.verify(store)
    archiver = service.archiver
    recordings = recording.verify_recordings(
        store, archiver.recording_events if archiver is not None else None
    )
    index = access.verify_index(store)
    first_bad_seq, problem = res.first_bad_seq, res.problem
    if res.ok and recordings.problems:
        first = recordings.problems[0]
        first_bad_seq = first.audit_seq
        problem = f"recording of session {first.session_id}: {first.problem}"
    elif res.ok and index:
        first_index = index[0]
        problem = (
            f"access event {first_index.seq} of session {first_index.session_id}: "
            f"{first_index.problem}"
            if first_index.seq is not None
            else f"access index: {first_index.problem}"
        )
    return {
        "ok": res.ok and recordings.ok and not index,
        "events": res.events,
        "first_bad_seq": first_bad_seq,
        "problem": problem,
        "recordings": recordings.to_json(),
        "access": {"ok": not index, "problems": [p.to_json() for p in index]},
    }
