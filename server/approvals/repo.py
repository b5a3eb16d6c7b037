"""Access requests in the store, changed only by compare-and-set.

``save(old, new)`` writes what :func:`server.approvals.machine.apply` decided, in
one transaction: the approvals ``new`` adds are inserted (the unique
``(request_id, approver)`` constraint refuses a second one by the same person)
and the request row is updated ``WHERE id = :id AND status = :old_status AND
version = :old_version``.  If either part finds that someone else got there
first, the transaction rolls back and ``save`` returns False; the caller reads
the request again and lets the machine decide anew.  This holds on SQLite (one
writer at a time) and on PostgreSQL under READ COMMITTED (the UPDATE re-checks
its WHERE clause against the row another transaction just committed).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from server.approvals.machine import Approval, Kind, Request, Status
from server.policy.model import ApprovalPolicy
from server.store import tables as t
from server.store.db import Store, _aware

R = t.access_requests
A = t.approvals


class _LostRace(Exception):
    pass


class RequestRepo:
    def __init__(self, store: Store) -> None:
        self.store = store

    def insert(self, request: Request) -> bool:
        """Store a new request; False when the requester already has one pending for that scope."""
        try:
            with self.store.tx() as conn:
                conn.execute(R.insert().values(**_row(request)))
                for approval in request.approvals:
                    conn.execute(A.insert().values(**_approval_row(request.id, approval)))
        except sa.exc.IntegrityError:
            return False
        return True

    def save(self, old: Request, new: Request) -> bool:
        """Apply ``old`` → ``new`` if nobody changed ``old`` meanwhile; False if someone did."""
        assert new.id == old.id and new.version == old.version + 1
        added = new.approvals[len(old.approvals) :]
        try:
            with self.store.tx() as conn:
                for approval in added:
                    conn.execute(A.insert().values(**_approval_row(new.id, approval)))
                values = _row(new)
                del values["id"]
                res = conn.execute(
                    R.update()
                    .where(R.c.id == old.id, R.c.status == old.status.value)
                    .where(R.c.version == old.version)
                    .values(**values)
                )
                if res.rowcount != 1:
                    raise _LostRace
        except (_LostRace, sa.exc.IntegrityError):
            return False
        return True

    def get(self, request_id: str) -> Request | None:
        found = self._select(R.select().where(R.c.id == request_id))
        return found[0] if found else None

    def find(
        self,
        *,
        requester: str | None = None,
        statuses: Iterable[Status] | None = None,
        limit: int = 100,
    ) -> list[Request]:
        q = R.select().order_by(R.c.created_at.desc()).limit(limit)
        if requester is not None:
            q = q.where(R.c.requester == requester)
        if statuses is not None:
            q = q.where(R.c.status.in_([s.value for s in statuses]))
        return self._select(q)

    def pending_for(self, requester: str, target: str, scope: str) -> Request | None:
        found = self._select(
            R.select().where(
                R.c.requester == requester,
                R.c.target == target,
                R.c.scope == scope,
                R.c.kind == Kind.ACCESS.value,
                R.c.status == Status.PENDING.value,
            )
        )
        return found[0] if found else None

    def grants_for(self, requester: str, target: str, scope: str, now: datetime) -> list[Request]:
        """Approved, unexpired access grants for (target, scope), soonest ending first."""
        return self._select(
            R.select()
            .where(
                R.c.requester == requester,
                R.c.target == target,
                R.c.scope == scope,
                R.c.kind == Kind.ACCESS.value,
                R.c.status == Status.APPROVED.value,
                R.c.grant_expires_at > now,
            )
            .order_by(R.c.grant_expires_at)
        )

    def statement_requests(
        self, requester: str, target: str, scope: str, sha256: str, status: Status
    ) -> list[Request]:
        """Statement reviews of one statement hash in ``status``, oldest first."""
        return self._select(
            R.select()
            .where(
                R.c.requester == requester,
                R.c.target == target,
                R.c.scope == scope,
                R.c.kind == Kind.STATEMENT.value,
                R.c.statement_sha256 == sha256,
                R.c.status == status.value,
            )
            .order_by(R.c.created_at)
        )

    def due(self, now: datetime) -> list[Request]:
        """Requests whose pending time or grant has run out."""
        return self._select(
            R.select().where(
                sa.or_(
                    sa.and_(R.c.status == Status.PENDING.value, R.c.expires_at <= now),
                    sa.and_(R.c.status == Status.APPROVED.value, R.c.grant_expires_at <= now),
                )
            )
        )

    def _select(self, query: sa.Select[Any]) -> list[Request]:
        # A read: every change is a compare-and-set of its own (``save``), so what
        # was read needs no write lock held until then.
        with self.store.read() as conn:
            rows = list(conn.execute(query))
            ids = [row._mapping["id"] for row in rows]
            by_request: dict[str, list[Approval]] = {i: [] for i in ids}
            if ids:
                for a in conn.execute(
                    A.select().where(A.c.request_id.in_(ids)).order_by(A.c.created_at, A.c.id)
                ):
                    m = a._mapping
                    at = _aware(m["created_at"])
                    assert at is not None
                    by_request[m["request_id"]].append(
                        Approval(m["approver"], tuple(m["approver_groups"]), at, m["comment"])
                    )
        return [_request(row, by_request[row._mapping["id"]]) for row in rows]


def _row(r: Request) -> dict[str, Any]:
    return {
        "id": r.id,
        "kind": r.kind.value,
        "requester": r.requester,
        "requester_groups": sorted(r.requester_groups),
        "target": r.target,
        "scope": r.scope,
        "reason": r.reason,
        "ttl_seconds": int(r.ttl.total_seconds()),
        "start_at": r.start_at,
        "status": r.status.value,
        "version": r.version,
        "created_at": r.created_at,
        "expires_at": r.expires_at,
        "decided_at": r.decided_at,
        "decided_by": r.decided_by,
        "note": r.note,
        "min_approvals": r.rule.min_approvals,
        "approver_groups": sorted(r.rule.approver_groups),
        "approver_identities": sorted(r.rule.approver_identities),
        "approval_ttl_seconds": int(r.rule.approval_ttl.total_seconds()),
        "pending_ttl_seconds": int(r.rule.pending_ttl.total_seconds()),
        "single_use": r.rule.single_use,
        "grant_expires_at": r.grant_expires_at,
        "used_at": r.used_at,
        "use_count": r.use_count,
        "session_id": r.session_id,
        "statement": r.statement,
        "statement_sha256": r.statement_sha256,
        "parameters": list(r.parameters) if r.parameters is not None else None,
    }


def _approval_row(request_id: str, a: Approval) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "approver": a.approver,
        "approver_groups": list(a.groups),
        "comment": a.comment,
        "created_at": a.at,
    }


def _request(row: sa.Row[Any], approvals: Sequence[Approval]) -> Request:
    m = row._mapping
    created, expires = _aware(m["created_at"]), _aware(m["expires_at"])
    assert created is not None and expires is not None
    return Request(
        id=m["id"],
        kind=Kind(m["kind"]),
        requester=m["requester"],
        requester_groups=frozenset(m["requester_groups"]),
        target=m["target"],
        scope=m["scope"],
        reason=m["reason"],
        ttl=timedelta(seconds=m["ttl_seconds"]),
        rule=ApprovalPolicy(
            required=True,
            approver_groups=frozenset(m["approver_groups"]),
            approver_identities=frozenset(m["approver_identities"]),
            min_approvals=m["min_approvals"],
            approval_ttl=timedelta(seconds=m["approval_ttl_seconds"]),
            pending_ttl=timedelta(seconds=m["pending_ttl_seconds"]),
            single_use=bool(m["single_use"]),
        ),
        status=Status(m["status"]),
        version=m["version"],
        created_at=created,
        expires_at=expires,
        start_at=_aware(m["start_at"]),
        approvals=tuple(approvals),
        decided_at=_aware(m["decided_at"]),
        decided_by=m["decided_by"],
        note=m["note"],
        grant_expires_at=_aware(m["grant_expires_at"]),
        used_at=_aware(m["used_at"]),
        use_count=m["use_count"],
        session_id=m["session_id"],
        statement=m["statement"],
        statement_sha256=m["statement_sha256"],
        parameters=tuple(m["parameters"]) if m["parameters"] is not None else None,
    )
