"""The access-request state machine: every status change of a request is decided here, purely.

A request asks for a (target, scope) on behalf of its requester; later kinds (a
statement review) carry a SQL text and its SHA-256 as well.  ``apply(request,
action, actor, now)`` returns the request as it is after the action, or a
:class:`Refusal` saying why not; it never touches a store or a clock, so the
store can apply the result with a conditional UPDATE (``WHERE version = :v``)
and simply decide again if someone else changed the request in between.

::

    pending ──approve (N reached)──► approved ──use (single-use)──► used
      │ approve (fewer than N) ─► pending │ use (multi-use) ───► approved
      │ deny ──────────────────► denied   │ expire (unused) ───► expired
      │ cancel ────────────────► cancelled│ expire (was used) ─► used
      │ expire ────────────────► expired  │ cancel ────────────► cancelled
      │                                   │ revoke ────────────► revoked
    used ──release──► approved   (the session the grant was used for never started)

Rules the handlers enforce:

* the requester never approves or denies their own request, admins included,
  and an agent approves, denies or revokes nothing;
* an approval counts once per distinct approver, and only from someone in the
  approver groups or identities when they approve (``rule`` of the action: the
  policy in force then, else the rule recorded on the request);
* ``min_approvals`` distinct approvals turn a pending request into a grant that
  is usable from ``start_at`` until ``approval_ttl`` later;
* a grant is bound to its request, requester, kind, target, scope and (for a
  statement review) statement hash: using it for anything else is refused;
* a single-use grant starts one session; a multi-use one may start sessions
  until the approved session lifetime, counted from its first use, runs out;
* a pending request expires ``pending_ttl`` after it was made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Literal

from server.policy.model import ApprovalPolicy


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    USED = "used"
    REVOKED = "revoked"


FINAL = frozenset({Status.DENIED, Status.EXPIRED, Status.CANCELLED, Status.USED, Status.REVOKED})


class Kind(StrEnum):
    ACCESS = "access"
    STATEMENT = "statement"


class Event(StrEnum):
    APPROVE = "approve"
    DENY = "deny"
    CANCEL = "cancel"
    EXPIRE = "expire"
    USE = "use"
    RELEASE = "release"
    REVOKE = "revoke"


@dataclass(frozen=True)
class Actor:
    """Who acts: ``groups`` are their effective groups at that moment.

    ``system`` is the broker itself (expiry sweeps, releasing a grant whose
    session failed to start); ``agent`` an AI agent, which decides nothing.
    """

    name: str
    groups: frozenset[str] = frozenset()
    admin: bool = False
    system: bool = False
    agent: bool = False


SYSTEM = Actor("broker", system=True)


@dataclass(frozen=True)
class Approval:
    approver: str
    groups: tuple[str, ...]
    at: datetime
    comment: str | None = None


@dataclass(frozen=True, kw_only=True)
class Request:
    id: str
    kind: Kind = Kind.ACCESS
    requester: str
    requester_groups: frozenset[str] = frozenset()
    target: str
    scope: str
    reason: str | None
    ttl: timedelta
    rule: ApprovalPolicy
    status: Status = Status.PENDING
    version: int = 1
    created_at: datetime
    expires_at: datetime
    start_at: datetime | None = None
    approvals: tuple[Approval, ...] = ()
    decided_at: datetime | None = None
    decided_by: str | None = None
    note: str | None = None
    grant_expires_at: datetime | None = None
    used_at: datetime | None = None
    use_count: int = 0
    session_id: str | None = None
    statement: str | None = None
    statement_sha256: str | None = None
    parameters: tuple[Any, ...] | None = None

    @property
    def approvals_needed(self) -> int:
        return max(0, self.rule.min_approvals - len(self.approvals))


@dataclass(frozen=True)
class Action:
    """What an actor asks for.

    ``note`` is the comment of an approval or the reason of a denial, cancel or
    revoke; ``rule`` the approval rule in force now (None: the one recorded);
    ``target``/``scope``/``statement_sha256``/``session_id`` describe the session
    a ``use`` is for.
    """

    event: Event
    note: str | None = None
    rule: ApprovalPolicy | None = None
    target: str | None = None
    scope: str | None = None
    statement_sha256: str | None = None
    session_id: str | None = None


@dataclass(frozen=True)
class Refusal:
    """Why an action was not applied; ``kind`` maps onto the broker's error kinds."""

    kind: Literal["forbidden", "conflict", "invalid"]
    message: str
    hint: str | None = None


Result = Request | Refusal
Handler = Callable[[Request, Action, Actor, datetime], Result]


def may_review(actor: Actor, rule: ApprovalPolicy) -> bool:
    """Whether ``actor`` is one of the rule's approvers (by name or by a current group)."""
    if actor.system or actor.agent:
        return False
    return actor.name in rule.approver_identities or bool(actor.groups & rule.approver_groups)


def expiry_due(request: Request, now: datetime) -> bool:
    """Whether an ``expire`` would be applied now: the sweep and every reader ask this first."""
    if request.status is Status.PENDING:
        return now >= request.expires_at
    if request.status is Status.APPROVED and request.grant_expires_at is not None:
        return now >= request.grant_expires_at
    return False


def apply(request: Request, action: Action, actor: Actor, now: datetime) -> Result:
    """The request after ``action`` by ``actor`` at ``now``, or why that cannot happen."""
    handler = TRANSITIONS.get((request.status, action.event))
    if handler is None:
        return _wrong_state(request, action.event)
    return handler(request, action, actor, now)


def _wrong_state(request: Request, event: Event) -> Refusal:
    if request.status is Status.PENDING:
        return Refusal("conflict", f"request {request.id} is pending: it cannot be {_done(event)}")
    return Refusal(
        "conflict",
        f"request {request.id} is {request.status.value}: it cannot be {_done(event)} any more",
    )


def _done(event: Event) -> str:
    return {
        Event.APPROVE: "approved",
        Event.DENY: "denied",
        Event.CANCEL: "cancelled",
        Event.EXPIRE: "expired",
        Event.USE: "used",
        Event.RELEASE: "released",
        Event.REVOKE: "revoked",
    }[event]


def _stamp(request: Request, **changes: Any) -> Request:
    return replace(request, version=request.version + 1, **changes)


def _expired_refusal(request: Request) -> Refusal:
    return Refusal(
        "conflict",
        f"request {request.id} expired at {request.expires_at:%Y-%m-%d %H:%M:%S} UTC",
        hint="ask again: dbaccess request",
    )


def _reviewer_problem(request: Request, actor: Actor, verb: str) -> Refusal:
    if actor.agent:
        return Refusal(
            "forbidden",
            f"an agent cannot {verb} requests ({actor.name} is an agent)",
            hint="a person among the approvers decides: dbaccess approve " + request.id,
        )
    if actor.name == request.requester:
        return Refusal(
            "forbidden",
            f"you cannot {verb} your own request {request.id}",
            hint="someone else among the approvers has to decide"
            if verb == "approve"
            else f"withdraw it with: dbaccess cancel {request.id}",
        )
    return Refusal(
        "forbidden",
        f"{actor.name} is not an approver of scope {request.scope!r} of target {request.target!r}",
    )


def _approve(request: Request, action: Action, actor: Actor, now: datetime) -> Result:
    rule = action.rule or request.rule
    if actor.name == request.requester or not may_review(actor, rule):
        return _reviewer_problem(request, actor, "approve")
    if now >= request.expires_at:
        return _expired_refusal(request)
    if any(a.approver == actor.name for a in request.approvals):
        return Refusal("conflict", f"you already approved request {request.id}")
    approval = Approval(actor.name, tuple(sorted(actor.groups)), now, _clean(action.note))
    approvals = (*request.approvals, approval)
    if len(approvals) < rule.min_approvals:
        return _stamp(request, approvals=approvals)
    usable_from = max(now, request.start_at) if request.start_at else now
    return _stamp(
        request,
        approvals=approvals,
        status=Status.APPROVED,
        decided_at=now,
        decided_by=actor.name,
        grant_expires_at=usable_from + rule.approval_ttl,
    )


def _deny(request: Request, action: Action, actor: Actor, now: datetime) -> Result:
    rule = action.rule or request.rule
    if actor.name == request.requester or not may_review(actor, rule):
        return _reviewer_problem(request, actor, "deny")
    if now >= request.expires_at:
        return _expired_refusal(request)
    reason = _clean(action.note)
    if reason is None:
        return Refusal("invalid", "a reason is required to deny a request")
    return _stamp(request, status=Status.DENIED, decided_at=now, decided_by=actor.name, note=reason)


def _cancel(request: Request, action: Action, actor: Actor, now: datetime) -> Result:
    if actor.name != request.requester and not actor.admin:
        return Refusal(
            "forbidden",
            f"only {request.requester} or an admin may cancel request {request.id}",
        )
    return _stamp(
        request,
        status=Status.CANCELLED,
        decided_at=now,
        decided_by=actor.name,
        note=_clean(action.note),
    )


def _revoke(request: Request, action: Action, actor: Actor, now: datetime) -> Result:
    rule = action.rule or request.rule
    if actor.name == request.requester:
        return Refusal(
            "forbidden",
            "withdraw your own grant with cancel",
            hint=f"dbaccess cancel {request.id}",
        )
    if not (actor.admin or may_review(actor, rule)):
        return _reviewer_problem(request, actor, "revoke")
    return _stamp(
        request,
        status=Status.REVOKED,
        decided_at=now,
        decided_by=actor.name,
        note=_clean(action.note),
    )


def _expire_pending(request: Request, action: Action, actor: Actor, now: datetime) -> Result:
    if not expiry_due(request, now):
        return Refusal("conflict", f"request {request.id} has not expired yet")
    return _stamp(request, status=Status.EXPIRED, decided_at=now, decided_by=actor.name)


def _expire_grant(request: Request, action: Action, actor: Actor, now: datetime) -> Result:
    if not expiry_due(request, now):
        return Refusal("conflict", f"the grant of request {request.id} has not expired yet")
    # A multi-use grant that started sessions was used, not wasted.
    final = Status.USED if request.use_count else Status.EXPIRED
    return _stamp(request, status=final)


def _use(request: Request, action: Action, actor: Actor, now: datetime) -> Result:
    if actor.name != request.requester:
        return Refusal(
            "forbidden", f"request {request.id} was made by {request.requester}, not {actor.name}"
        )
    wanted = (action.target, action.scope, action.statement_sha256)
    granted = (request.target, request.scope, request.statement_sha256)
    if wanted != granted:
        what = f"{request.target}/{request.scope}"
        return Refusal(
            "forbidden",
            f"request {request.id} grants {what}"
            + (" for one reviewed statement" if request.statement_sha256 else "")
            + f", not {action.target}/{action.scope}",
        )
    if request.start_at is not None and now < request.start_at:
        return Refusal(
            "conflict",
            f"request {request.id} is usable from {request.start_at:%Y-%m-%d %H:%M:%S} UTC",
        )
    assert request.grant_expires_at is not None
    if now >= request.grant_expires_at:
        return Refusal(
            "conflict",
            f"the grant of request {request.id} expired at "
            f"{request.grant_expires_at:%Y-%m-%d %H:%M:%S} UTC",
            hint="ask again: dbaccess request",
        )
    if request.rule.single_use:
        return _stamp(
            request,
            status=Status.USED,
            used_at=now,
            use_count=request.use_count + 1,
            session_id=action.session_id,
        )
    first = request.use_count == 0
    return _stamp(
        request,
        used_at=now if first else request.used_at,
        use_count=request.use_count + 1,
        session_id=action.session_id,
        grant_expires_at=now + request.ttl if first else request.grant_expires_at,
    )


def _release(request: Request, action: Action, actor: Actor, now: datetime) -> Result:
    if not actor.system:
        return Refusal("forbidden", "only the broker releases a grant")
    if request.use_count == 0 or action.session_id != request.session_id:
        return Refusal("conflict", f"request {request.id} was not used by that session")
    remaining = request.use_count - 1
    return _stamp(
        request,
        status=Status.APPROVED,
        use_count=remaining,
        used_at=request.used_at if remaining else None,
        session_id=request.session_id if remaining else None,
    )


def _clean(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    return text.strip()


TRANSITIONS: Mapping[tuple[Status, Event], Handler] = MappingProxyType(
    {
        (Status.PENDING, Event.APPROVE): _approve,
        (Status.PENDING, Event.DENY): _deny,
        (Status.PENDING, Event.CANCEL): _cancel,
        (Status.PENDING, Event.EXPIRE): _expire_pending,
        (Status.APPROVED, Event.USE): _use,
        (Status.APPROVED, Event.EXPIRE): _expire_grant,
        (Status.APPROVED, Event.CANCEL): _cancel,
        (Status.APPROVED, Event.REVOKE): _revoke,
        (Status.APPROVED, Event.RELEASE): _release,
        (Status.USED, Event.RELEASE): _release,
    }
)
