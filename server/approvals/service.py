"""Access requests as the broker runs them: policy in, audit and notifications out.

Every change goes the same way (``_act``): read the request, let
:func:`server.approvals.machine.apply` decide, and store the result with the
compare-and-set of :class:`~server.approvals.repo.RequestRepo`.  When the store
says someone else changed the request meanwhile (a second approver, a cancel,
another session claiming the grant), the request is read again and the machine
decides again, so concurrent callers never produce a double grant.  Only a
change that was stored is audited and notified.

Expiry is applied lazily — a request whose time has run out is expired before
anyone reads or acts on it — and by the reaper's sweep (``expire_due``), so
``request.expired`` is recorded even when nobody looks.

Who may see a request: its requester, whoever may approve it under the policy
in force (or already did), admins, and auditors (who read; deciding stays with
the approvers).  Approver eligibility is judged with the
current policy when the scope still requires approval, else with the rule
recorded on the request when it was made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from common.durations import format_duration
from server.approvals.machine import (
    SYSTEM,
    Action,
    Actor,
    Event,
    Kind,
    Refusal,
    Request,
    Status,
    apply,
    expiry_due,
    may_review,
)
from server.approvals.repo import RequestRepo
from server.audit import chain
from server.errors import (
    ApprovalRequired,
    Conflict,
    DbaccessError,
    Forbidden,
    InvalidInput,
    NotFound,
)
from server.policy.evaluate import Decision, Identity, effective_groups, evaluate, refusal
from server.policy.model import ApprovalPolicy, Policy
from server.store.db import Store, new_id, utcnow

log = logging.getLogger(__name__)

# Enough for every approver of a request deciding at the same moment.
_MAX_TRIES = 50
_MAX_START_AHEAD = timedelta(days=30)

_AUDIT_KIND = {
    Event.APPROVE: "request.approved",
    Event.DENY: "request.denied",
    Event.CANCEL: "request.cancelled",
    Event.EXPIRE: "request.expired",
    Event.USE: "request.used",
    Event.RELEASE: "request.released",
    Event.REVOKE: "request.revoked",
}
# Events a person did (the audit row is theirs); the others belong to the requester.
_BY_ACTOR = frozenset({Event.APPROVE, Event.DENY, Event.CANCEL, Event.REVOKE})


class Notifier(Protocol):
    def notify(self, event: str, payload: dict[str, Any]) -> None: ...


class _Silent:
    def notify(self, event: str, payload: dict[str, Any]) -> None:
        del event, payload


def request_json(r: Request) -> dict[str, Any]:
    """A request as the API shows it; named approvers are not listed (their names stay private)."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": r.id,
        "kind": r.kind.value,
        "requester": r.requester,
        "target": r.target,
        "scope": r.scope,
        "reason": r.reason,
        "ttl": format_duration(r.ttl),
        "status": r.status.value,
        "created_at": iso(r.created_at),
        "expires_at": iso(r.expires_at),
        "start_at": iso(r.start_at),
        "min_approvals": r.rule.min_approvals,
        "approvals_count": len(r.approvals),
        "approvals": [
            {"approver": a.approver, "at": iso(a.at), "comment": a.comment} for a in r.approvals
        ],
        "approver_groups": sorted(r.rule.approver_groups),
        "named_approvers": len(r.rule.approver_identities),
        "approval_ttl": format_duration(r.rule.approval_ttl),
        "single_use": r.rule.single_use,
        "decided_at": iso(r.decided_at),
        "decided_by": r.decided_by,
        "note": r.note,
        "grant_expires_at": iso(r.grant_expires_at),
        "used_at": iso(r.used_at),
        "use_count": r.use_count,
        "session_id": r.session_id,
        "statement": r.statement,
        "statement_sha256": r.statement_sha256,
    }


def _error(refusal: Refusal) -> DbaccessError:
    kind = {"forbidden": Forbidden, "conflict": Conflict, "invalid": InvalidInput}[refusal.kind]
    return kind(refusal.message, hint=refusal.hint)


class Approvals:
    def __init__(
        self,
        store: Store,
        policy: Callable[[], Policy],
        *,
        notifier: Notifier | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.repo = RequestRepo(store)
        self._policy = policy
        self.notifier: Notifier = notifier or _Silent()
        self.clock = clock

    # -- who ------------------------------------------------------------------
    def actor(self, identity: Identity, *, admin: bool = False) -> Actor:
        # An agent's name is an agent's wherever it comes from: Slack's user
        # mapping and the web inbox know a name, not a token's kind.
        agent = identity.agent or bool(self.store.agent_owners(identity.name))
        return Actor(
            identity.name,
            effective_groups(self._policy(), identity),
            admin=admin and not agent,
            agent=agent,
        )

    def rule_for(self, request: Request) -> ApprovalPolicy:
        target = self._policy().targets.get(request.target)
        scope = target.scopes.get(request.scope) if target else None
        if scope is not None and scope.approval.required:
            return scope.approval
        return request.rule

    def _visible(self, request: Request, actor: Actor) -> bool:
        return (
            actor.admin
            or request.requester == actor.name
            or any(a.approver == actor.name for a in request.approvals)
            or may_review(actor, self.rule_for(request))
        )

    # -- reading ----------------------------------------------------------------
    def get(
        self, request_id: str, identity: Identity, *, admin: bool = False, auditor: bool = False
    ) -> Request:
        request = self._fresh(request_id)
        actor = self.actor(identity, admin=admin)
        if request is None or not (auditor or self._visible(request, actor)):
            # Someone who may not see it learns no more than that it is not theirs to see.
            raise NotFound(
                f"unknown request {request_id!r}",
                hint="yours: dbaccess requests --mine; those you may approve: "
                "dbaccess requests --to-review",
            )
        return request

    def find(
        self,
        identity: Identity,
        *,
        admin: bool = False,
        pending: bool = False,
        mine: bool = False,
        to_review: bool = False,
        limit: int = 100,
        auditor: bool = False,
    ) -> list[Request]:
        self.expire_due()
        actor = self.actor(identity, admin=admin)
        statuses = [Status.PENDING] if pending or to_review else None
        if mine:
            found = self.repo.find(requester=actor.name, statuses=statuses, limit=limit)
        elif (admin or auditor) and not to_review:
            found = self.repo.find(statuses=statuses, limit=limit)
        else:
            # Who may review depends on the policy, not on columns: scan the newest, filter.
            found = [
                r
                for r in self.repo.find(statuses=statuses, limit=max(limit * 20, 1000))
                if self._visible(r, actor)
            ]
        if to_review:
            found = [
                r
                for r in found
                if r.requester != actor.name
                and may_review(actor, self.rule_for(r))
                and all(a.approver != actor.name for a in r.approvals)
            ]
        return found[:limit]

    def _fresh(self, request_id: str) -> Request | None:
        request = self.repo.get(request_id)
        if request is not None and expiry_due(request, self.clock()):
            self._expire(request)
            request = self.repo.get(request_id)
        return request

    # -- creating -------------------------------------------------------------
    def create(
        self,
        identity: Identity,
        target: str,
        scope: str | None,
        ttl: timedelta | None,
        reason: str | None,
        start_at: datetime | None = None,
    ) -> tuple[Request, bool]:
        """Ask for access ahead of time; returns the request and whether it is new.

        An existing pending request of the same identity for the same scope is
        returned instead of a second one.
        """
        now = self.clock()
        decision = evaluate(self._policy(), identity, target, scope, ttl, now, reason=reason)
        if decision.allowed:
            raise Conflict(
                f"scope {decision.scope!r} of target {target!r} does not need approval",
                hint=f"use it directly: dbaccess connect {target} --scope {decision.scope}",
            )
        if not decision.needs_approval:
            raise refusal(decision)
        if start_at is not None:
            if start_at > now + _MAX_START_AHEAD:
                raise InvalidInput("the start time is more than 30 days ahead")
            if start_at <= now:
                start_at = None
        return self._open(identity, decision, target, reason, start_at)

    def _open(
        self,
        identity: Identity,
        decision: Decision,
        target: str,
        reason: str | None,
        start_at: datetime | None,
    ) -> tuple[Request, bool]:
        assert decision.approval is not None and decision.scope and decision.ttl
        for _ in range(_MAX_TRIES):
            now = self.clock()
            existing = self.repo.pending_for(identity.name, target, decision.scope)
            if existing is not None:
                if not expiry_due(existing, now):
                    return existing, False
                self._expire(existing)
                continue
            request = Request(
                id=new_id("r-"),
                requester=identity.name,
                requester_groups=effective_groups(self._policy(), identity),
                target=target,
                scope=decision.scope,
                reason=(reason or "").strip() or None,
                ttl=decision.ttl,
                rule=decision.approval,
                created_at=now,
                expires_at=now + decision.approval.pending_ttl,
                start_at=start_at,
            )
            # The partial unique index lets only one of two racing creators in.
            if self.repo.insert(request):
                self._record_created(request, decision)
                return request, True
        raise Conflict("could not create the request; try again")

    def _record_created(self, request: Request, decision: Decision) -> None:
        chain.append(
            self.store,
            "request.created",
            identity=request.requester,
            target=request.target,
            data={
                "request_id": request.id,
                "kind": request.kind.value,
                "scope": request.scope,
                "reason": request.reason,
                "ttl": format_duration(request.ttl),
                "rule": decision.rule,
                "min_approvals": request.rule.min_approvals,
                "approver_groups": sorted(request.rule.approver_groups),
                "expires_at": request.expires_at.isoformat(),
                "start_at": request.start_at.isoformat() if request.start_at else None,
            },
        )
        self._notify("request.created", request, request.requester)

    # -- deciding -------------------------------------------------------------
    def approve(
        self, request_id: str, identity: Identity, comment: str | None, *, admin: bool = False
    ) -> Request:
        request = self.get(request_id, identity, admin=admin)
        self._not_for_own_agent(request, identity)
        return self._act(request_id, Event.APPROVE, self.actor(identity, admin=admin), comment)

    def _not_for_own_agent(self, request: Request, identity: Identity) -> None:
        """An agent's request is its owner's own: the owner may not approve it either."""
        if identity.name in self.store.agent_owners(request.requester):
            raise Forbidden(
                f"you cannot approve request {request.id} of {request.requester}, "
                "an agent that acts for you",
                hint="someone else among the approvers has to decide",
            )

    def deny(
        self, request_id: str, identity: Identity, reason: str | None, *, admin: bool = False
    ) -> Request:
        self.get(request_id, identity, admin=admin)
        return self._act(request_id, Event.DENY, self.actor(identity, admin=admin), reason)

    def cancel(
        self, request_id: str, identity: Identity, note: str | None = None, *, admin: bool = False
    ) -> Request:
        self.get(request_id, identity, admin=admin)
        return self._act(request_id, Event.CANCEL, self.actor(identity, admin=admin), note)

    def revoke(
        self, request_id: str, identity: Identity, reason: str | None, *, admin: bool = False
    ) -> Request:
        self.get(request_id, identity, admin=admin)
        return self._act(request_id, Event.REVOKE, self.actor(identity, admin=admin), reason)

    def _act(
        self,
        request_id: str,
        event: Event,
        actor: Actor,
        note: str | None = None,
        **use: str | None,
    ) -> Request:
        for _ in range(_MAX_TRIES):
            request = self.repo.get(request_id)
            if request is None:
                raise NotFound(f"unknown request {request_id!r}")
            now = self.clock()
            if event is not Event.EXPIRE and expiry_due(request, now):
                self._expire(request)
                continue
            action = Action(event, note=note, rule=self.rule_for(request), **use)
            result = apply(request, action, actor, now)
            if isinstance(result, Refusal):
                raise _error(result)
            if self.repo.save(request, result):
                self._record(request, result, event, actor)
                return result
        raise Conflict(f"request {request_id} is changing too fast; try again")

    def _expire(self, request: Request) -> bool:
        result = apply(request, Action(Event.EXPIRE), SYSTEM, self.clock())
        if isinstance(result, Refusal) or not self.repo.save(request, result):
            return False
        self._record(request, result, Event.EXPIRE, SYSTEM)
        return True

    def expire_due(self) -> list[str]:
        """Expire every request whose time ran out (the reaper calls this); returns their ids."""
        return [r.id for r in self.repo.due(self.clock()) if self._expire(r)]

    def _record(self, old: Request, new: Request, event: Event, actor: Actor) -> None:
        data: dict[str, Any] = {
            "request_id": new.id,
            "requester": new.requester,
            "scope": new.scope,
            "actor": actor.name,
            "status": new.status.value,
        }
        if event is Event.APPROVE:
            data.update(
                comment=new.approvals[-1].comment,
                approvals=len(new.approvals),
                required=self.rule_for(new).min_approvals,
                granted=new.status is Status.APPROVED,
                approver_groups=list(new.approvals[-1].groups),
            )
            if new.grant_expires_at:
                data["grant_expires_at"] = new.grant_expires_at.isoformat()
        elif event in (Event.DENY, Event.CANCEL, Event.REVOKE):
            data["note"] = new.note
        elif event is Event.EXPIRE:
            data["was"] = old.status.value
        elif event in (Event.USE, Event.RELEASE):
            data["use_count"] = new.use_count
        chain.append(
            self.store,
            _AUDIT_KIND[event],
            identity=actor.name if event in _BY_ACTOR else new.requester,
            target=new.target,
            session_id=new.session_id if event in (Event.USE, Event.RELEASE) else None,
            data=data,
        )
        if event is Event.EXPIRE and new.status is not Status.EXPIRED:
            return  # a used multi-use grant running out is not news
        if event not in (Event.USE, Event.RELEASE):
            self._notify(_AUDIT_KIND[event], new, actor.name)

    def _notify(self, event: str, request: Request, actor: str) -> None:
        try:
            self.notifier.notify(
                event,
                {"request": request_json(request), "actor": actor, "ts": self.clock().isoformat()},
            )
        except Exception:  # a notification must never undo or block a decision
            log.exception("notifying %s for %s failed", event, request.id)

    # -- statement reviews -----------------------------------------------------------
    def request_statement(
        self,
        *,
        requester: str,
        groups: frozenset[str],
        target: str,
        scope: str,
        reason: str | None,
        statement: str,
        sha256: str,
        rule: ApprovalPolicy,
        ttl: timedelta,
        guardrail: str,
    ) -> tuple[Request, bool]:
        """A review of one statement the gateway held; the pending one for the same
        hash is returned instead of a second (returns the request and whether it is new)."""
        for _ in range(_MAX_TRIES):
            now = self.clock()
            pending = self.repo.statement_requests(requester, target, scope, sha256, Status.PENDING)
            for existing in pending:
                if not expiry_due(existing, now):
                    return existing, False
                self._expire(existing)
            request = Request(
                id=new_id("r-"),
                kind=Kind.STATEMENT,
                requester=requester,
                requester_groups=groups,
                target=target,
                scope=scope,
                reason=(reason or "").strip() or None,
                ttl=ttl,
                rule=rule,
                created_at=now,
                expires_at=now + rule.pending_ttl,
                statement=statement,
                statement_sha256=sha256,
            )
            if self.repo.insert(request):
                chain.append(
                    self.store,
                    "request.created",
                    identity=requester,
                    target=target,
                    data={
                        "request_id": request.id,
                        "kind": request.kind.value,
                        "scope": scope,
                        "reason": request.reason,
                        "rule": guardrail,
                        "statement_sha256": sha256,
                        "min_approvals": rule.min_approvals,
                        "approver_groups": sorted(rule.approver_groups),
                        "expires_at": request.expires_at.isoformat(),
                    },
                )
                self._notify("request.created", request, requester)
                return request, True
        raise Conflict("could not create the request; try again")

    def use_statement(
        self, *, requester: str, target: str, scope: str, sha256: str, session_id: str
    ) -> Request | None:
        """Consume an approved review of exactly this statement, or None if there is none.

        The compare-and-set in ``_act`` lets one use win when two sessions race."""
        actor = Actor(requester)
        now = self.clock()
        for grant in self.repo.statement_requests(
            requester, target, scope, sha256, Status.APPROVED
        ):
            if expiry_due(grant, now):
                self._expire(grant)
                continue
            try:
                return self._act(
                    grant.id,
                    Event.USE,
                    actor,
                    None,
                    target=target,
                    scope=scope,
                    statement_sha256=sha256,
                    session_id=session_id,
                )
            except (Conflict, Forbidden):
                continue
        return None

    # -- using ---------------------------------------------------------------------
    def claim(
        self,
        identity: Identity,
        decision: Decision,
        target: str,
        requested_ttl: timedelta | None,
        reason: str | None,
        session_id: str,
        request_id: str | None = None,
    ) -> Request:
        """Use an approved grant for a session about to start, or raise ApprovalRequired.

        With ``request_id`` only that request's grant is considered.  Without a
        usable grant, the identity's pending request for this scope (a new one if
        there is none) is named in the ApprovalRequired error.
        """
        assert decision.needs_approval and decision.scope is not None
        actor = self.actor(identity)
        use = {"target": target, "scope": decision.scope, "session_id": session_id}
        if request_id is not None:
            chosen = self._fresh(request_id)
            if chosen is None or chosen.requester != identity.name:
                raise NotFound(f"unknown request {request_id!r}")
            if chosen.status is Status.PENDING:
                raise ApprovalRequired(
                    f"request {chosen.id} is still waiting for approval",
                    request_id=chosen.id,
                    hint=f"see it with: dbaccess requests --mine; {_approve_hint(chosen)}",
                )
            if (chosen.target, chosen.scope) == (target, decision.scope):
                self._check_ttl(chosen, requested_ttl)
            return self._act(chosen.id, Event.USE, actor, None, **use)
        early: Request | None = None
        now = self.clock()
        for grant in self.repo.grants_for(identity.name, target, decision.scope, now):
            if requested_ttl is not None and requested_ttl > grant.ttl:
                continue
            if grant.start_at is not None and grant.start_at > now:
                early = early or grant
                continue
            try:
                return self._act(grant.id, Event.USE, actor, None, **use)
            except Conflict:
                continue  # used or expired a moment ago by someone else: try the next one
        if early is not None and early.start_at is not None:
            # Asking again would only duplicate what is already approved for later.
            raise Conflict(
                f"request {early.id} is approved for use from "
                f"{early.start_at:%Y-%m-%d %H:%M:%S} UTC",
                hint="run the command again then",
            )
        request, created = self._open(identity, decision, target, reason, None)
        state = "was created" if created else "is already waiting"
        raise ApprovalRequired(
            f"{decision.reason}: request {request.id} {state}",
            request_id=request.id,
            hint=f"dbaccess waits for it unless --no-wait; {_approve_hint(request)}",
        )

    @staticmethod
    def _check_ttl(grant: Request, requested_ttl: timedelta | None) -> None:
        if requested_ttl is not None and requested_ttl > grant.ttl:
            raise Forbidden(
                f"request {grant.id} was approved for {format_duration(grant.ttl)}, "
                f"not {format_duration(requested_ttl)}"
            )

    def release(self, grant: Request, session_id: str) -> None:
        """Give a grant back when the session it was claimed for could not start."""
        try:
            self._act(grant.id, Event.RELEASE, SYSTEM, None, session_id=session_id)
        except DbaccessError as exc:
            log.warning("could not release request %s: %s", grant.id, exc.message)

    def break_glass(self, session: dict[str, Any], rule: str) -> None:
        """Flag a session that skipped its approval: audit it and tell the approvers."""
        chain.append(
            self.store,
            "session.break_glass",
            identity=session["identity"],
            target=session["target"],
            session_id=session["id"],
            data={"scope": session["scope"], "reason": session["reason"], "rule": rule},
        )
        try:
            self.notifier.notify(
                "session.break_glass",
                {"session": session, "actor": session["identity"], "ts": self.clock().isoformat()},
            )
        except Exception:
            log.exception("notifying break-glass session %s failed", session["id"])


def _approve_hint(request: Request) -> str:
    return f"an approver runs: dbaccess approve {request.id}"
