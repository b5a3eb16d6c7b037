"""HTTP routes of just-in-time access requests: ask, list, show, approve, deny, cancel, revoke.

The routes only authenticate, parse and translate: who may see or decide what
is the approvals service's business (:mod:`server.approvals.service`), and the
state changes themselves are the state machine's (:mod:`server.approvals.machine`).
``POST /v1/sessions`` creates requests too, when a scope needs approval and no
grant is waiting; this module serves everything else.

List filters are query flags that may be given bare (``?pending&mine``) or with
a value (``?to_review=true``).  (No ``from __future__ import annotations`` here:
FastAPI must see the ``Caller`` annotations, which are local to ``register``, as objects.)
"""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field

from server.api.common import is_admin, parse_ttl, parse_when
from server.approvals.machine import Request
from server.approvals.service import request_json
from server.errors import Forbidden
from server.policy.evaluate import Identity
from server.sessions.service import SessionService


class NewRequest(BaseModel):
    target: str = Field(min_length=1, max_length=200)
    scope: str | None = Field(default=None, max_length=200)
    ttl: str | None = Field(default=None, max_length=20)
    reason: str | None = Field(default=None, max_length=2000)
    start_at: str | None = Field(default=None, max_length=64)


class NewReview(BaseModel):
    target: str = Field(min_length=1, max_length=200)
    scope: str | None = Field(default=None, max_length=200)
    reason: str | None = Field(default=None, max_length=2000)
    statement: str = Field(min_length=1, max_length=1_000_000)


class Note(BaseModel):
    comment: str | None = Field(default=None, max_length=2000)
    reason: str | None = Field(default=None, max_length=2000)


def _flag(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("0", "false", "no", "off")


def open_review(
    service: SessionService,
    who: Identity,
    target_name: str,
    scope_name: str | None,
    reason: str | None,
    statement: str,
) -> tuple[Request, bool]:
    """Open (or find the pending) review of exactly ``statement`` for ``who``.

    An agent's review of a statement its guardrails block (DDL, by default) is
    refused at once, naming the rule: no approval could ever let it run."""
    from server.gateway.guardrails import Outcome, decide, statement_sha256
    from server.gateway.rules import agent_rules, target_rules
    from server.gateway.sqlcheck import analyze
    from server.gateway.statements import review_rule
    from server.policy.evaluate import evaluate, refusal

    target = service.target(target_name)
    decision = evaluate(
        service.policy, who, target_name, scope_name, None, datetime.now(UTC), reason=reason
    )
    if decision.scope is None or (not decision.allowed and decision.approval is None):
        raise refusal(decision)
    scope = target.scopes[decision.scope]
    if who.agent:
        rules = agent_rules(target_rules(target, scope.name), scope)
        judged = decide(analyze(statement), rules)
        if judged.outcome is Outcome.BLOCK:
            raise Forbidden(
                f"{judged.message or 'the statement is refused'} ({judged.rule})",
                hint=judged.hint or None,
            )
    return service.approvals.request_statement(
        requester=who.name,
        groups=who.groups,
        target=target_name,
        scope=decision.scope,
        reason=reason,
        statement=statement,
        sha256=statement_sha256(statement, ()),
        rule=review_rule(scope),
        ttl=scope.default_ttl,
        guardrail="review.requested",
    )


def register(app: FastAPI, service: SessionService, caller: Callable[..., Identity]) -> None:
    """Add the request routes to ``app``; ``caller`` is the app's authentication dependency."""
    Caller = Annotated[Identity, Depends(caller)]
    approvals = service.approvals

    @app.post("/v1/requests", status_code=201)
    def create_request(body: NewRequest, who: Caller) -> dict[str, Any]:
        ttl = parse_ttl(body.ttl)
        start_at = parse_when(body.start_at, "start_at", direction="ahead")
        request, created = approvals.create(
            who, body.target, body.scope, ttl, body.reason, start_at
        )
        return {"request": request_json(request), "created": created}

    @app.post("/v1/reviews", status_code=201)
    def create_review(body: NewReview, who: Caller) -> dict[str, Any]:
        """A statement review asked for ahead of time (a CI script): approved, the
        exact text runs once in a session of the same identity, target and scope."""
        request, created = open_review(
            service, who, body.target, body.scope, body.reason, body.statement
        )
        return {"request": request_json(request), "created": created}

    @app.get("/v1/requests")
    def list_requests(
        who: Caller,
        pending: str | None = None,
        mine: str | None = None,
        to_review: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        found = approvals.find(
            who,
            admin=is_admin(who),
            pending=_flag(pending),
            mine=_flag(mine),
            to_review=_flag(to_review),
            limit=max(1, min(limit, 1000)),
        )
        return [request_json(r) for r in found]

    @app.get("/v1/requests/{request_id}")
    def show_request(request_id: str, who: Caller) -> dict[str, Any]:
        return request_json(approvals.get(request_id, who, admin=is_admin(who)))

    @app.post("/v1/requests/{request_id}/approve")
    def approve(request_id: str, who: Caller, body: Note | None = None) -> dict[str, Any]:
        comment = body.comment if body else None
        return request_json(approvals.approve(request_id, who, comment, admin=is_admin(who)))

    @app.post("/v1/requests/{request_id}/deny")
    def deny(request_id: str, body: Note, who: Caller) -> dict[str, Any]:
        return request_json(approvals.deny(request_id, who, body.reason, admin=is_admin(who)))

    @app.post("/v1/requests/{request_id}/cancel")
    def cancel(request_id: str, who: Caller, body: Note | None = None) -> dict[str, Any]:
        note = body.reason if body else None
        return request_json(approvals.cancel(request_id, who, note, admin=is_admin(who)))

    @app.post("/v1/requests/{request_id}/revoke")
    def revoke(request_id: str, body: Note, who: Caller) -> dict[str, Any]:
        return request_json(approvals.revoke(request_id, who, body.reason, admin=is_admin(who)))
