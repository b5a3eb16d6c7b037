"""Access requests against a real store: lifecycle, visibility, expiry, audit, and races.

Every test runs twice: on a SQLite file (the embedded default) and on a fresh
database of the test PostgreSQL cluster (the store several replicas share), so
the compare-and-set that keeps concurrent deciders honest is checked on both.
The races use real threads released together by a barrier.
"""

from __future__ import annotations

import secrets
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from server.approvals.machine import Request, Status
from server.approvals.service import Approvals
from server.audit import chain
from server.errors import ApprovalRequired, Conflict, Forbidden, InvalidInput, NotFound
from server.pgcluster import LocalCluster
from server.policy import Decision, Identity, evaluate, parse_policy
from server.store import tables as t
from server.store.db import Store

POLICY = parse_policy(
    textwrap.dedent(
        """\
        version: 1
        groups:
          dba: [bob, carol, dave, erin, fay, gus]
        targets:
          demo:
            database: demo
            admin_dsn_env: DEMO_DSN
            scopes:
              read:
                grants: [demo_read]
                max_ttl: 8h
                allow: {groups: [dev]}
              write:
                grants: [demo_write]
                max_ttl: 1h
                default_ttl: 15m
                allow: {groups: [dev, dba]}
                approval:
                  approvers: {groups: [dba]}
                  approval_ttl: 30m
                  pending_ttl: 2h
              schema:
                grants: [demo_owner]
                max_ttl: 1h
                allow: {groups: [dev]}
                approval:
                  approvers: {groups: [dba]}
                  min_approvals: 2
              reuse:
                grants: [demo_write]
                max_ttl: 1h
                default_ttl: 20m
                allow: {groups: [dev]}
                approval:
                  approvers: {groups: [dba]}
                  single_use: false
        """
    ),
    "policy.yaml",
)
T0 = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
M = timedelta(minutes=1)

ALICE = Identity("alice", frozenset({"dev"}))
BOB = Identity("bob", frozenset())
CAROL = Identity("carol", frozenset())
MALLORY = Identity("mallory", frozenset({"dev"}))
ROOT = Identity("root", frozenset({"admin"}))
OSCAR = Identity("oscar", frozenset({"sales"}))
APPROVERS = [Identity(name, frozenset()) for name in ("bob", "carol", "dave", "erin", "fay", "gus")]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Setup:
    approvals: Approvals
    clock: Clock
    store: Store

    def decision(self, who: Identity, scope: str, ttl: timedelta | None = None) -> Decision:
        return evaluate(POLICY, who, "demo", scope, ttl, self.clock(), reason="INC-7")

    def claim(self, who: Identity, scope: str, session: str, **kw: Any) -> Request:
        ttl = kw.pop("ttl", None)
        d = self.decision(who, scope, ttl)
        return self.approvals.claim(who, d, "demo", ttl, "INC-7", session, **kw)

    def audit_kinds(self) -> list[str]:
        return [e.kind for e in chain.events(self.store)]

    def approval_rows(self, request_id: str) -> int:
        with self.store.tx() as conn:
            q = sa.select(sa.func.count()).where(t.approvals.c.request_id == request_id)
            return int(conn.execute(q).scalar_one())


def _pg_store(cluster: LocalCluster) -> Store:
    name = f"store_{secrets.token_hex(4)}"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return Store.open(cluster.dsn(dbname=name).replace("postgresql://", "postgresql+psycopg://", 1))


@pytest.fixture(params=["sqlite", "postgresql"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    if request.param == "sqlite":
        store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    else:
        store = _pg_store(request.getfixturevalue("pg_cluster"))
    clock = Clock()
    try:
        yield Setup(Approvals(store, lambda: POLICY, clock=clock), clock, store)
    finally:
        store.close()


# -- lifecycle ----------------------------------------------------------------------


def test_request_approve_use_once(setup: Setup) -> None:
    a = setup.approvals
    req, created = a.create(ALICE, "demo", "write", None, "INC-7: fix a stuck job")
    assert created and req.status is Status.PENDING
    assert req.ttl == 15 * M and req.expires_at == T0 + 120 * M
    with pytest.raises(Forbidden, match="your own request"):
        a.approve(req.id, ALICE, "lgtm")
    setup.clock.now += M
    approved = a.approve(req.id, BOB, "ok for 15m")
    assert approved.status is Status.APPROVED
    assert approved.grant_expires_at == T0 + 31 * M
    used = setup.claim(ALICE, "write", "s-1")
    assert (used.id, used.status, used.session_id) == (req.id, Status.USED, "s-1")
    # Single use: the next session needs a new request.
    with pytest.raises(ApprovalRequired) as again:
        setup.claim(ALICE, "write", "s-2")
    assert again.value.request_id != req.id
    assert again.value.to_json()["request_id"] == again.value.request_id
    assert again.value.to_json()["error"] == "approval_required"
    assert a.get(again.value.request_id, ALICE).status is Status.PENDING
    kinds = setup.audit_kinds()
    assert kinds == ["request.created", "request.approved", "request.used", "request.created"]
    assert chain.verify(setup.store).ok


def test_two_of_n_needs_two_distinct_approvers(setup: Setup) -> None:
    a = setup.approvals
    req, _ = a.create(ALICE, "demo", "schema", None, "migration 42")
    first = a.approve(req.id, BOB, None)
    assert (first.status, len(first.approvals)) == (Status.PENDING, 1)
    with pytest.raises(Conflict, match="already approved"):
        a.approve(req.id, BOB, "again")
    with pytest.raises(ApprovalRequired, match="still waiting"):
        setup.claim(ALICE, "schema", "s-1", request_id=req.id)
    second = a.approve(req.id, CAROL, None)
    assert second.status is Status.APPROVED
    assert [x.approver for x in second.approvals] == ["bob", "carol"]
    assert setup.approval_rows(req.id) == 2
    assert setup.claim(ALICE, "schema", "s-1", request_id=req.id).status is Status.USED


def test_deny_needs_a_reason_and_ends_the_request(setup: Setup) -> None:
    a = setup.approvals
    req, _ = a.create(ALICE, "demo", "write", None, "INC-7")
    with pytest.raises(InvalidInput, match="reason is required"):
        a.deny(req.id, BOB, None)
    denied = a.deny(req.id, BOB, "use the read scope")
    assert (denied.status, denied.note, denied.decided_by) == (
        Status.DENIED,
        "use the read scope",
        "bob",
    )
    with pytest.raises(Conflict, match="is denied"):
        a.approve(req.id, CAROL, None)
    # A denied request is not pending any more: asking again opens a new one.
    again, created = a.create(ALICE, "demo", "write", None, "INC-7, please")
    assert created and again.id != req.id


def test_asking_twice_returns_the_pending_request(setup: Setup) -> None:
    a = setup.approvals
    first, created = a.create(ALICE, "demo", "write", None, "INC-7")
    second, created_again = a.create(ALICE, "demo", "write", 30 * M, "INC-7 again")
    assert created and not created_again and second.id == first.id
    with pytest.raises(ApprovalRequired) as err:
        setup.claim(ALICE, "write", "s-1")
    assert err.value.request_id == first.id
    assert setup.audit_kinds().count("request.created") == 1


@pytest.mark.parametrize(
    ("who", "target", "scope", "error", "text"),
    [
        (ALICE, "demo", "read", Conflict, "does not need approval"),
        (OSCAR, "demo", "schema", Forbidden, "may not use"),
        (ALICE, "nope", "write", NotFound, "no target named"),
        (ALICE, "demo", "nope", NotFound, "has no scope"),
    ],
)
def test_what_cannot_be_requested(
    setup: Setup, who: Identity, target: str, scope: str, error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text):
        setup.approvals.create(who, target, scope, None, "because")


def test_visibility_and_filters(setup: Setup) -> None:
    a = setup.approvals
    mine, _ = a.create(ALICE, "demo", "write", None, "INC-7")
    malloys, _ = a.create(MALLORY, "demo", "write", None, "curious")
    ids = lambda found: {r.id for r in found}  # noqa: E731
    assert ids(a.find(ALICE)) == {mine.id}
    assert ids(a.find(ALICE, mine=True)) == {mine.id}
    assert ids(a.find(BOB)) == {mine.id, malloys.id}
    assert ids(a.find(BOB, to_review=True)) == {mine.id, malloys.id}
    assert ids(a.find(ALICE, to_review=True)) == set()
    assert ids(a.find(ROOT, admin=True)) == {mine.id, malloys.id}
    with pytest.raises(NotFound):
        a.get(mine.id, MALLORY)
    with pytest.raises(NotFound):
        a.approve(mine.id, MALLORY, None)
    a.approve(mine.id, BOB, None)
    assert ids(a.find(BOB, to_review=True)) == {malloys.id}
    assert ids(a.find(BOB, pending=True)) == {malloys.id}
    assert a.get(mine.id, ROOT, admin=True).status is Status.APPROVED


def test_cancel_by_requester_or_admin_only(setup: Setup) -> None:
    a = setup.approvals
    req, _ = a.create(ALICE, "demo", "write", None, "INC-7")
    with pytest.raises(Forbidden, match="only alice or an admin"):
        a.cancel(req.id, BOB)
    assert a.cancel(req.id, ALICE, "not needed").status is Status.CANCELLED
    other, _ = a.create(ALICE, "demo", "write", None, "INC-8")
    assert a.cancel(other.id, ROOT, admin=True).decided_by == "root"


# -- time ------------------------------------------------------------------------------


def test_pending_request_expires_and_is_audited(setup: Setup) -> None:
    a = setup.approvals
    req, _ = a.create(ALICE, "demo", "write", None, "INC-7")
    setup.clock.now = T0 + 119 * M
    assert a.expire_due() == []
    setup.clock.now = T0 + 120 * M
    assert a.expire_due() == [req.id]
    assert a.expire_due() == []
    assert a.get(req.id, ALICE).status is Status.EXPIRED
    with pytest.raises(Conflict, match="expired"):
        a.approve(req.id, BOB, None)
    assert setup.audit_kinds() == ["request.created", "request.expired"]


def test_reading_an_overdue_request_expires_it(setup: Setup) -> None:
    a = setup.approvals
    req, _ = a.create(ALICE, "demo", "write", None, "INC-7")
    setup.clock.now = T0 + 3 * 60 * M
    with pytest.raises(Conflict, match="expired"):
        a.approve(req.id, BOB, None)
    assert a.get(req.id, ALICE).status is Status.EXPIRED
    assert setup.audit_kinds().count("request.expired") == 1


def test_unused_grant_expires_after_approval_ttl(setup: Setup) -> None:
    a = setup.approvals
    req, _ = a.create(ALICE, "demo", "write", None, "INC-7")
    a.approve(req.id, BOB, None)
    setup.clock.now = T0 + 30 * M
    with pytest.raises(ApprovalRequired) as err:
        setup.claim(ALICE, "write", "s-1")
    assert err.value.request_id != req.id
    assert a.get(req.id, ALICE).status is Status.EXPIRED


def test_multi_use_grant_lasts_the_session_lifetime_from_first_use(setup: Setup) -> None:
    a = setup.approvals
    req, _ = a.create(ALICE, "demo", "reuse", None, "load test")
    a.approve(req.id, BOB, None)
    setup.clock.now = T0 + 5 * M
    first = setup.claim(ALICE, "reuse", "s-1")
    assert (first.status, first.grant_expires_at) == (Status.APPROVED, T0 + 25 * M)
    setup.clock.now = T0 + 20 * M
    assert setup.claim(ALICE, "reuse", "s-2").use_count == 2
    setup.clock.now = T0 + 25 * M
    with pytest.raises(ApprovalRequired):
        setup.claim(ALICE, "reuse", "s-3")
    assert a.get(req.id, ALICE).status is Status.USED


def test_grant_is_bound_to_requester_scope_and_ttl(setup: Setup) -> None:
    a = setup.approvals
    req, _ = a.create(ALICE, "demo", "write", None, "INC-7")
    a.approve(req.id, BOB, None)
    with pytest.raises(NotFound):
        setup.claim(MALLORY, "write", "s-1", request_id=req.id)
    with pytest.raises(Forbidden, match="demo/write, not demo/schema"):
        setup.claim(ALICE, "schema", "s-1", request_id=req.id)
    with pytest.raises(Forbidden, match="approved for 15m, not 1h"):
        setup.claim(ALICE, "write", "s-1", request_id=req.id, ttl=60 * M)
    # Without an explicit request, a longer TTL simply finds no grant.
    with pytest.raises(ApprovalRequired):
        setup.claim(ALICE, "write", "s-1", ttl=60 * M)
    assert setup.claim(ALICE, "write", "s-2").id == req.id


def test_grant_for_later_is_usable_from_start_at(setup: Setup) -> None:
    a = setup.approvals
    req, _ = a.create(ALICE, "demo", "write", None, "maintenance window", T0 + 60 * M)
    assert req.start_at == T0 + 60 * M
    approved = a.approve(req.id, BOB, None)
    assert approved.grant_expires_at == T0 + 90 * M
    setup.clock.now = T0 + 10 * M
    with pytest.raises(Conflict, match="approved for use from 2025-06-01 10:00:00 UTC"):
        setup.claim(ALICE, "write", "s-1")
    assert a.find(ALICE, pending=True) == []  # no second request was opened
    setup.clock.now = T0 + 60 * M
    assert setup.claim(ALICE, "write", "s-1").status is Status.USED


@pytest.mark.parametrize(
    ("start_at", "expected"),
    [(T0 - M, None), (T0, None), (T0 + 29 * 24 * 60 * M, T0 + 29 * 24 * 60 * M)],
)
def test_start_at_in_the_past_means_now(
    setup: Setup, start_at: datetime, expected: datetime | None
) -> None:
    req, _ = setup.approvals.create(ALICE, "demo", "write", None, "x", start_at)
    assert req.start_at == expected


def test_start_at_more_than_30_days_ahead_is_refused(setup: Setup) -> None:
    with pytest.raises(InvalidInput, match="30 days"):
        setup.approvals.create(ALICE, "demo", "write", None, "x", T0 + timedelta(days=31))


def test_release_gives_the_grant_back(setup: Setup) -> None:
    a = setup.approvals
    req, _ = a.create(ALICE, "demo", "write", None, "INC-7")
    a.approve(req.id, BOB, None)
    used = setup.claim(ALICE, "write", "s-1")
    a.release(used, "s-1")
    assert a.get(req.id, ALICE).status is Status.APPROVED
    assert setup.claim(ALICE, "write", "s-2").session_id == "s-2"


# -- races ---------------------------------------------------------------------------


def race(n: int, job: Callable[[int], Any]) -> tuple[list[Any], list[BaseException]]:
    """Run ``job(i)`` for i in range(n) on n threads started at the same instant."""
    barrier = threading.Barrier(n)
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        try:
            value = job(i)
        except BaseException as exc:
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(value)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not any(th.is_alive() for th in threads)
    return results, errors


def test_race_same_approver_twice_counts_once(setup: Setup) -> None:
    req, _ = setup.approvals.create(ALICE, "demo", "schema", None, "migration")
    ok, failed = race(8, lambda _i: setup.approvals.approve(req.id, BOB, None))
    assert len(ok) == 1
    assert all(isinstance(e, Conflict) for e in failed), failed
    assert setup.approval_rows(req.id) == 1
    assert setup.approvals.get(req.id, ALICE).status is Status.PENDING


def test_race_many_approvers_on_one_of_n_make_one_grant(setup: Setup) -> None:
    req, _ = setup.approvals.create(ALICE, "demo", "write", None, "INC-7")
    ok, failed = race(6, lambda i: setup.approvals.approve(req.id, APPROVERS[i], None))
    assert len(ok) == 1 and ok[0].status is Status.APPROVED
    assert all(isinstance(e, Conflict) and "is approved" in e.message for e in failed), failed
    assert setup.approval_rows(req.id) == 1
    assert setup.audit_kinds().count("request.approved") == 1


def test_race_many_approvers_on_two_of_n_stop_at_two(setup: Setup) -> None:
    req, _ = setup.approvals.create(ALICE, "demo", "schema", None, "migration")
    ok, failed = race(6, lambda i: setup.approvals.approve(req.id, APPROVERS[i], None))
    assert len(ok) == 2 and len(failed) == 4
    assert sorted(r.status for r in ok) == [Status.APPROVED, Status.PENDING]
    final = setup.approvals.get(req.id, ALICE)
    assert final.status is Status.APPROVED and len(final.approvals) == 2
    assert setup.approval_rows(req.id) == 2


@pytest.mark.parametrize("round_", range(5))
def test_race_approve_against_cancel(setup: Setup, round_: int) -> None:
    a = setup.approvals
    req, _ = a.create(ALICE, "demo", "schema", None, f"migration {round_}")
    a.approve(req.id, BOB, None)  # the race decides the second, granting approval

    def job(i: int) -> str:
        if i == 0:
            a.cancel(req.id, ALICE)
            return "cancel"
        a.approve(req.id, CAROL, None)
        return "approve"

    ok, failed = race(2, job)
    final = a.get(req.id, ALICE)
    # Either order is fine; what must never happen is a grant that outlives its cancel,
    # or an approval row left behind by an approval that lost.
    assert "cancel" in ok and final.status is Status.CANCELLED
    approved = "approve" in ok
    assert len(final.approvals) == setup.approval_rows(req.id) == (2 if approved else 1)
    assert all(isinstance(e, Conflict) for e in failed)
    with pytest.raises(ApprovalRequired):
        setup.claim(ALICE, "schema", "s-1")


def test_race_two_sessions_for_one_single_use_grant(setup: Setup) -> None:
    a = setup.approvals
    req, _ = a.create(ALICE, "demo", "write", None, "INC-7")
    a.approve(req.id, BOB, None)
    ok, failed = race(8, lambda i: setup.claim(ALICE, "write", f"s-{i}"))
    assert len(ok) == 1 and ok[0].id == req.id and ok[0].status is Status.USED
    assert len(failed) == 7 and all(isinstance(e, ApprovalRequired) for e in failed), failed
    # The losers all wait on one new request, not seven.
    assert len({e.request_id for e in failed if isinstance(e, ApprovalRequired)}) == 1
    assert setup.audit_kinds().count("request.used") == 1


def test_race_creators_share_one_pending_request(setup: Setup) -> None:
    ok, failed = race(8, lambda _i: setup.approvals.create(ALICE, "demo", "write", None, "x"))
    assert not failed
    assert len({r.id for r, _created in ok}) == 1
    assert sum(created for _r, created in ok) == 1


def test_an_agent_decides_nothing_and_its_owner_does_not_approve_for_it(setup: Setup) -> None:
    # The agent "helper" acts for bob, who is an approver of scope write.
    setup.store.create_token("helper", ("dev",), "agent", None, owner="bob")
    helper = Identity("helper", frozenset({"dev"}), kind="agent", owner="bob")
    agent_admin = Identity("root-bot", frozenset({"admin", "dba"}), kind="agent", owner="root")
    a = setup.approvals
    with pytest.raises(Forbidden, match="only read-only scopes"):
        a.create(helper, "demo", "write", None, "INC-7")
    req, _ = a.request_statement(
        requester="helper",
        groups=frozenset({"dev"}),
        target="demo",
        scope="write",
        reason="INC-7",
        statement="DELETE FROM jobs WHERE id = 1",
        sha256="0" * 64,
        rule=POLICY.targets["demo"].scopes["write"].approval,
        ttl=15 * M,
        guardrail="review.requested",
    )
    with pytest.raises(Forbidden, match="agent that acts for you"):
        a.approve(req.id, BOB, "mine, really")
    mine, _ = a.create(ALICE, "demo", "write", None, "INC-8")
    for agent in (helper, agent_admin):
        with pytest.raises((Forbidden, NotFound)):
            a.approve(mine.id, agent, "ok", admin=True)
    with pytest.raises(Forbidden, match="an agent cannot approve"):
        a.approve(req.id, helper, "ok")
    with pytest.raises(NotFound):  # not even its admin group lets an agent see others' requests
        a.approve(req.id, agent_admin, "ok", admin=True)
    assert a.approve(req.id, CAROL, "ok").status is Status.APPROVED


def test_an_agents_name_decides_nothing_through_any_entry_point(setup: Setup) -> None:
    # Slack's user mapping and the web inbox build an identity from a name alone
    # (kind "user"): the name of an agent (one with an agent token, even a revoked
    # one) must not approve, deny or revoke there either.
    setup.store.create_token("helper", ("dba",), "agent", None, owner="root")
    as_person = Identity("helper", frozenset({"dba"}))
    a = setup.approvals
    mine, _ = a.create(ALICE, "demo", "write", None, "INC-8")
    with pytest.raises((Forbidden, NotFound)):
        a.approve(mine.id, as_person, "ok")
    with pytest.raises((Forbidden, NotFound)):
        a.deny(mine.id, as_person, "no")
    assert a.get(mine.id, ALICE).status is Status.PENDING
