"""The access-request state machine as tables: every (state, event, actor, time) and its outcome."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest

from server.approvals.machine import (
    FINAL,
    SYSTEM,
    TRANSITIONS,
    Action,
    Actor,
    Approval,
    Event,
    Kind,
    Refusal,
    Request,
    Status,
    apply,
    expiry_due,
)
from server.gateway.guardrails import statement_sha256
from server.policy.model import ApprovalPolicy

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
M = timedelta(minutes=1)
H = timedelta(hours=1)

RULE = ApprovalPolicy(
    required=True,
    approver_groups=frozenset({"dba"}),
    approver_identities=frozenset({"erin"}),
    min_approvals=1,
    approval_ttl=H,
    pending_ttl=24 * H,
    single_use=True,
)
TWO = replace(RULE, min_approvals=2)
MULTI = replace(RULE, single_use=False)
SRE_ONLY = replace(RULE, approver_groups=frozenset({"sre"}), approver_identities=frozenset())

ALICE = Actor("alice", frozenset({"dev"}))
ALICE_ADMIN = Actor("alice", frozenset({"dba", "admin"}), admin=True)
BOB = Actor("bob", frozenset({"dba"}))
CAROL = Actor("carol", frozenset({"dba"}))
ERIN = Actor("erin", frozenset())
MALLORY = Actor("mallory", frozenset({"dev"}))
ROOT = Actor("root", frozenset({"admin"}), admin=True)

PENDING = Request(
    id="r-1",
    requester="alice",
    requester_groups=frozenset({"dev"}),
    target="demo",
    scope="write",
    reason="INC-1",
    ttl=30 * M,
    rule=RULE,
    created_at=T0,
    expires_at=T0 + 24 * H,
)
PENDING_TWO = replace(PENDING, rule=TWO)
HALF = replace(
    PENDING_TWO, version=2, approvals=(Approval("bob", ("dba",), T0 + M, None),)
)  # one of two
APPROVED = replace(
    PENDING,
    status=Status.APPROVED,
    version=2,
    approvals=(Approval("bob", ("dba",), T0 + M, "ok"),),
    decided_at=T0 + M,
    decided_by="bob",
    grant_expires_at=T0 + M + H,
)
APPROVED_MULTI = replace(APPROVED, rule=MULTI)
USED_MULTI_ONCE = replace(
    APPROVED_MULTI,
    version=3,
    use_count=1,
    used_at=T0 + 2 * M,
    session_id="s-1",
    grant_expires_at=T0 + 32 * M,
)
USED = replace(
    APPROVED, status=Status.USED, version=3, use_count=1, used_at=T0 + 2 * M, session_id="s-1"
)
LATER = replace(PENDING, start_at=T0 + 3 * H)
LATER_APPROVED = replace(
    LATER, status=Status.APPROVED, version=2, grant_expires_at=T0 + 4 * H, decided_at=T0 + M
)
SQL = "update accounts set frozen = true where id = 7"
STATEMENT = replace(
    APPROVED, kind=Kind.STATEMENT, statement=SQL, statement_sha256=statement_sha256(SQL)
)


@dataclass(frozen=True)
class Ok:
    status: Status
    approvals: int | None = None
    use_count: int | None = None
    grant_expires_at: datetime | None = None
    note: str | None = None


@dataclass(frozen=True)
class No:
    kind: str
    text: str


def use(target: str = "demo", scope: str = "write", sha: str | None = None) -> Action:
    return Action(Event.USE, target=target, scope=scope, statement_sha256=sha, session_id="s-9")


APPROVE = Action(Event.APPROVE)
DENY = Action(Event.DENY, note="not during the freeze")
CANCEL = Action(Event.CANCEL)
EXPIRE = Action(Event.EXPIRE)
REVOKE = Action(Event.REVOKE, note="changed my mind")
RELEASE_S1 = Action(Event.RELEASE, session_id="s-1")

ROWS = [
    # -- pending: approvals --------------------------------------------------------
    ("approver by group", PENDING, APPROVE, BOB, T0 + M,
     Ok(Status.APPROVED, approvals=1, grant_expires_at=T0 + M + H)),
    ("approver by name", PENDING, APPROVE, ERIN, T0 + M, Ok(Status.APPROVED, approvals=1)),
    ("self-approval", PENDING, APPROVE, ALICE, T0 + M, No("forbidden", "your own request")),
    ("self-approval by an admin in the approver group", PENDING, APPROVE, ALICE_ADMIN, T0 + M,
     No("forbidden", "your own request")),
    ("outsider", PENDING, APPROVE, MALLORY, T0 + M, No("forbidden", "mallory is not an approver")),
    ("admins are not approvers by default", PENDING, APPROVE, ROOT, T0 + M,
     No("forbidden", "not an approver")),
    ("the broker never approves", PENDING, APPROVE, SYSTEM, T0 + M, No("forbidden", "approver")),
    ("first of two", PENDING_TWO, APPROVE, BOB, T0 + M, Ok(Status.PENDING, approvals=1)),
    ("second of two, a different approver", HALF, APPROVE, CAROL, T0 + 2 * M,
     Ok(Status.APPROVED, approvals=2, grant_expires_at=T0 + 2 * M + H)),
    ("same approver twice does not count twice", HALF, APPROVE, BOB, T0 + 2 * M,
     No("conflict", "already approved")),
    ("approval after the pending time", PENDING, APPROVE, BOB, T0 + 24 * H,
     No("conflict", "expired")),
    ("approval just before the pending time ends", PENDING, APPROVE, BOB, T0 + 24 * H - M,
     Ok(Status.APPROVED)),
    ("grant usable from start_at", LATER, APPROVE, BOB, T0 + M,
     Ok(Status.APPROVED, grant_expires_at=T0 + 4 * H)),
    # -- pending: the approval rule in force when deciding --------------------------
    ("approver removed from the policy since", PENDING,
     replace(APPROVE, rule=SRE_ONLY), BOB, T0 + M, No("forbidden", "not an approver")),
    ("policy now asks for two", PENDING, replace(APPROVE, rule=TWO), BOB, T0 + M,
     Ok(Status.PENDING, approvals=1)),
    # -- pending: denial and cancellation ------------------------------------------
    ("denied with a reason", PENDING, DENY, BOB, T0 + M,
     Ok(Status.DENIED, note="not during the freeze")),
    ("denial needs a reason", PENDING, Action(Event.DENY), BOB, T0 + M,
     No("invalid", "reason is required")),
    ("blank reason is no reason", PENDING, Action(Event.DENY, note="  "), BOB, T0 + M,
     No("invalid", "reason is required")),
    ("requester cannot deny (cancel instead)", PENDING, DENY, ALICE, T0 + M,
     No("forbidden", "your own request")),
    ("outsider cannot deny", PENDING, DENY, MALLORY, T0 + M, No("forbidden", "not an approver")),
    ("denial after the pending time", PENDING, DENY, BOB, T0 + 25 * H, No("conflict", "expired")),
    ("half-approved can still be denied", HALF, DENY, CAROL, T0 + 2 * M, Ok(Status.DENIED)),
    ("requester cancels", PENDING, CANCEL, ALICE, T0 + M, Ok(Status.CANCELLED)),
    ("admin cancels", PENDING, CANCEL, ROOT, T0 + M, Ok(Status.CANCELLED)),
    ("approver cannot cancel", PENDING, CANCEL, BOB, T0 + M, No("forbidden", "only alice")),
    ("outsider cannot cancel", PENDING, CANCEL, MALLORY, T0 + M, No("forbidden", "only alice")),
    # -- pending: expiry and events that need a grant -------------------------------
    ("expire too early", PENDING, EXPIRE, SYSTEM, T0 + H, No("conflict", "not expired")),
    ("expire when due", PENDING, EXPIRE, SYSTEM, T0 + 24 * H, Ok(Status.EXPIRED)),
    ("half-approved expires too", HALF, EXPIRE, SYSTEM, T0 + 25 * H,
     Ok(Status.EXPIRED, approvals=1)),
    ("use before approval", PENDING, use(), ALICE, T0 + M, No("conflict", "is pending")),
    ("revoke before approval", PENDING, REVOKE, ROOT, T0 + M, No("conflict", "is pending")),
    ("release before approval", PENDING, RELEASE_S1, SYSTEM, T0 + M, No("conflict", "pending")),
    # -- approved: using the grant --------------------------------------------------
    ("requester uses it", APPROVED, use(), ALICE, T0 + 2 * M, Ok(Status.USED, use_count=1)),
    ("another scope", APPROVED, use(scope="read"), ALICE, T0 + 2 * M,
     No("forbidden", "grants demo/write, not demo/read")),
    ("another target", APPROVED, use(target="prod"), ALICE, T0 + 2 * M,
     No("forbidden", "not prod/write")),
    ("someone else's grant", APPROVED, use(), BOB, T0 + 2 * M,
     No("forbidden", "made by alice, not bob")),
    ("grant past approval_ttl", APPROVED, use(), ALICE, T0 + M + H,
     No("conflict", "expired")),
    ("grant before start_at", LATER_APPROVED, use(), ALICE, T0 + H,
     No("conflict", "usable from")),
    ("grant at start_at", LATER_APPROVED, use(), ALICE, T0 + 3 * H, Ok(Status.USED)),
    ("multi-use, first use opens the session-lifetime window", APPROVED_MULTI, use(), ALICE,
     T0 + 2 * M, Ok(Status.APPROVED, use_count=1, grant_expires_at=T0 + 32 * M)),
    ("multi-use, later use keeps the window", USED_MULTI_ONCE, use(), ALICE, T0 + 10 * M,
     Ok(Status.APPROVED, use_count=2, grant_expires_at=T0 + 32 * M)),
    ("multi-use, after the window", USED_MULTI_ONCE, use(), ALICE, T0 + 32 * M,
     No("conflict", "expired")),
    ("statement review, same statement", STATEMENT, use(sha=statement_sha256(SQL)), ALICE,
     T0 + 2 * M, Ok(Status.USED)),
    ("statement review, other statement", STATEMENT, use(sha=statement_sha256(SQL + " or 1=1")),
     ALICE, T0 + 2 * M, No("forbidden", "one reviewed statement")),
    ("statement grant is not plain access", STATEMENT, use(), ALICE, T0 + 2 * M,
     No("forbidden", "one reviewed statement")),
    # -- approved: expiry, withdrawal, revocation -----------------------------------
    ("grant expiry too early", APPROVED, EXPIRE, SYSTEM, T0 + 2 * M, No("conflict", "not expired")),
    ("unused grant expires", APPROVED, EXPIRE, SYSTEM, T0 + M + H, Ok(Status.EXPIRED)),
    ("used multi-use grant ends as used", USED_MULTI_ONCE, EXPIRE, SYSTEM, T0 + 40 * M,
     Ok(Status.USED, use_count=1)),
    ("requester withdraws a grant", APPROVED, CANCEL, ALICE, T0 + 2 * M, Ok(Status.CANCELLED)),
    ("approver revokes", APPROVED, REVOKE, BOB, T0 + 2 * M,
     Ok(Status.REVOKED, note="changed my mind")),
    ("admin revokes", APPROVED, REVOKE, ROOT, T0 + 2 * M, Ok(Status.REVOKED)),
    ("requester revokes (cancel instead)", APPROVED, REVOKE, ALICE, T0 + 2 * M,
     No("forbidden", "cancel")),
    ("outsider revokes", APPROVED, REVOKE, MALLORY, T0 + 2 * M, No("forbidden", "not an approver")),
    ("approve a grant again", APPROVED, APPROVE, CAROL, T0 + 2 * M, No("conflict", "is approved")),
    ("deny a grant", APPROVED, DENY, CAROL, T0 + 2 * M, No("conflict", "is approved")),
    # -- release: a session that never started gives the grant back ----------------
    ("release by the broker", USED, RELEASE_S1, SYSTEM, T0 + 3 * M,
     Ok(Status.APPROVED, use_count=0)),
    ("release for another session", USED, Action(Event.RELEASE, session_id="s-2"), SYSTEM,
     T0 + 3 * M, No("conflict", "not used by that session")),
    ("release by a person", USED, RELEASE_S1, ALICE, T0 + 3 * M, No("forbidden", "broker")),
    ("release of a multi-use use", USED_MULTI_ONCE, RELEASE_S1, SYSTEM, T0 + 3 * M,
     Ok(Status.APPROVED, use_count=0)),
    ("release of an unused grant", APPROVED, RELEASE_S1, SYSTEM, T0 + 3 * M,
     No("conflict", "not used")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_", "action", "actor", "now", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in ROWS],
)
def test_transition(
    request_: Request, action: Action, actor: Actor, now: datetime, expected: Ok | No
) -> None:
    result = apply(request_, action, actor, now)
    if isinstance(expected, No):
        assert isinstance(result, Refusal), result
        assert result.kind == expected.kind
        assert expected.text in result.message
        return
    assert isinstance(result, Request), result
    assert result.status is expected.status
    assert result.version == request_.version + 1
    assert (result.id, result.requester, result.target, result.scope) == (
        request_.id,
        request_.requester,
        request_.target,
        request_.scope,
    )
    if expected.approvals is not None:
        assert len(result.approvals) == expected.approvals
    if expected.use_count is not None:
        assert result.use_count == expected.use_count
    if expected.grant_expires_at is not None:
        assert result.grant_expires_at == expected.grant_expires_at
    if expected.note is not None:
        assert result.note == expected.note


FINAL_REQUESTS = {
    Status.DENIED: replace(PENDING, status=Status.DENIED, note="no"),
    Status.EXPIRED: replace(PENDING, status=Status.EXPIRED),
    Status.CANCELLED: replace(PENDING, status=Status.CANCELLED),
    Status.USED: USED,
    Status.REVOKED: replace(APPROVED, status=Status.REVOKED),
}


@pytest.mark.parametrize("status", sorted(FINAL))
@pytest.mark.parametrize(
    ("action", "actor"),
    [(APPROVE, BOB), (DENY, BOB), (CANCEL, ALICE), (CANCEL, ROOT), (use(), ALICE),
     (REVOKE, ROOT), (EXPIRE, SYSTEM)],
)  # fmt: skip
def test_final_states_stay_final(status: Status, action: Action, actor: Actor) -> None:
    result = apply(FINAL_REQUESTS[status], action, actor, T0 + 30 * H)
    assert isinstance(result, Refusal)
    assert result.kind == "conflict"
    assert f"is {status.value}" in result.message


def test_the_table_is_the_documented_one() -> None:
    assert set(TRANSITIONS) == {
        (Status.PENDING, Event.APPROVE),
        (Status.PENDING, Event.DENY),
        (Status.PENDING, Event.CANCEL),
        (Status.PENDING, Event.EXPIRE),
        (Status.APPROVED, Event.USE),
        (Status.APPROVED, Event.EXPIRE),
        (Status.APPROVED, Event.CANCEL),
        (Status.APPROVED, Event.REVOKE),
        (Status.APPROVED, Event.RELEASE),
        (Status.USED, Event.RELEASE),
    }
    # Nothing leads out of a final state except giving back a grant whose session failed.
    assert {state for state, _ in TRANSITIONS} & FINAL == {Status.USED}


@pytest.mark.parametrize(
    ("request_", "now", "due"),
    [
        (PENDING, T0, False),
        (PENDING, T0 + 24 * H - M, False),
        (PENDING, T0 + 24 * H, True),
        (APPROVED, T0 + H, False),
        (APPROVED, T0 + M + H, True),
        (USED, T0 + 99 * H, False),
        (FINAL_REQUESTS[Status.DENIED], T0 + 99 * H, False),
    ],
)
def test_expiry_due(request_: Request, now: datetime, due: bool) -> None:
    assert expiry_due(request_, now) is due


def test_two_approvals_from_the_same_person_never_make_a_grant() -> None:
    once = apply(PENDING_TWO, APPROVE, BOB, T0 + M)
    assert isinstance(once, Request)
    twice = apply(once, APPROVE, BOB, T0 + 2 * M)
    assert isinstance(twice, Refusal)
    assert once.status is Status.PENDING and once.approvals_needed == 1
