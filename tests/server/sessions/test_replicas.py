"""Replicas on one PostgreSQL store, and deployments side by side on one target.

Session services run in this process, each as one replica (the broker's own
``SessionService`` with the real postgres issuer on the test cluster's demo
database); a replica "dies" by having its lease ended in the store, as the
others see a SIGKILLed one once its lease runs out (the broker processes'
own tests are in test_replicas_e2e.py).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from server.audit import chain
from server.audit.recording import recording_info, verify_recordings
from server.demo.provision import DemoTarget
from server.errors import Forbidden, NotAuthenticated
from server.pgcluster import LocalCluster
from server.policy import Identity, parse_policy
from server.sessions.replicas import Membership, host_key
from server.sessions.service import SessionService
from server.store.db import Store, utcnow
from tests.fix_store import found_in_clear

POLICY = textwrap.dedent(
    """\
    version: 1
    targets:
      demo:
        database: demo
        admin_dsn_env: REPLICAS_DEMO_DSN
        scopes:
          read:
            grants: [demo_read]
            max_ttl: 1h
            allow: {groups: [dev]}
    """
)
ALICE = Identity("alice", frozenset({"dev"}))
AdminConn = psycopg.Connection[Any]


@pytest.fixture
def new_pg_store(pg_cluster: LocalCluster) -> Iterator[Callable[[], Store]]:
    """Stores on fresh databases of the test cluster (one per deployment)."""
    made: list[tuple[Store, str]] = []

    def make() -> Store:
        name = f"store_{secrets.token_hex(4)}"
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = pg_cluster.dsn(dbname=name).replace("postgresql://", "postgresql+psycopg://", 1)
        store = Store.open(url)
        made.append((store, name))
        return store

    yield make
    for store, name in made:
        store.close()
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def replicas(
    demo_target: DemoTarget, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[Store], SessionService]]:
    """Replicas (session services, registered with a lease) on a given store."""
    monkeypatch.setenv("REPLICAS_DEMO_DSN", demo_target.admin_dsn)
    made: list[SessionService] = []

    def make(store: Store) -> SessionService:
        service = SessionService(store, parse_policy(POLICY, "policy.yaml"))
        Membership(service, lease=60).join()
        made.append(service)
        return service

    yield make
    for service in made:
        service.end_all()
        service.recorder.stop()
        service.close_issuers()


def role_exists(conn: AdminConn, role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def start(service: SessionService) -> str:
    record, _ticket = service.start(ALICE, "demo", "read", timedelta(minutes=10), "replicas")
    return record.db_user


def test_live_replicas_leave_each_other_alone_and_a_dead_ones_sessions_end_once(
    new_pg_store: Callable[[], Store],
    replicas: Callable[[Store], SessionService],
    admin_conn: AdminConn,
) -> None:
    store = new_pg_store()
    a, b, c = replicas(store), replicas(store), replicas(store)
    roles = [start(a) for _ in range(6)]
    for service in (b, c):
        report = service.reap(startup=True)  # a broker starting beside a live one
        assert (report.orphaned_sessions, report.revoked_roles, report.errors) == ([], [], [])
    assert all(role_exists(admin_conn, r) for r in roles)
    assert {s.owner for s in store.list_sessions(active=True)} == {a.replica_id}

    store.end_replica(a.replica_id)  # as its lease runs out
    reports: list[Any] = []
    threads = [threading.Thread(target=lambda s=s: reports.append(s.reap())) for s in (b, c)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    ended = [sid for report in reports for sid in report.orphaned_sessions]
    assert sorted(ended) == sorted(s.id for s in store.list_sessions(limit=10))
    assert len(set(ended)) == 6, "each session ended by exactly one replica"
    assert not any(role_exists(admin_conn, r) for r in roles)
    assert store.list_sessions(active=True) == []
    events = [e for e in chain.events(store) if e.kind == "session.ended"]
    assert len(events) == 6
    assert chain.verify(store).ok
    assert verify_recordings(store).ok


def test_an_end_through_another_replica_cuts_the_owners_connections_and_recording(
    new_pg_store: Callable[[], Store],
    replicas: Callable[[Store], SessionService],
    admin_conn: AdminConn,
) -> None:
    store = new_pg_store()
    a, b = replicas(store), replicas(store)
    record, _ticket = a.start(ALICE, "demo", "read", timedelta(minutes=10), "replicas")
    closed: list[str] = []

    class Handle:
        def close_from_broker(self, sqlstate: str, message: str, hint: str | None) -> None:
            closed.append(message)

    live = a.live(record.id)
    assert live is not None
    a.attach(live, Handle())
    ended = b.end(record.id, status="killed", reason="INC-9", actor="root")
    assert ended.status == "killed"
    assert not role_exists(admin_conn, record.db_user)
    assert a.live(record.id) is not None, "the owner learns of it by its sync"
    assert a.sync_live() == [record.id]
    assert a.live(record.id) is None
    assert closed == ["terminating connection: the session was ended by an administrator"]
    assert verify_recordings(store).ok
    assert [e.kind for e in chain.events(store)].count("session.ended") == 1


def test_another_deployment_on_the_same_target_never_touches_its_roles(
    new_pg_store: Callable[[], Store],
    replicas: Callable[[Store], SessionService],
    admin_conn: AdminConn,
    tmp_path: Path,
) -> None:
    first = new_pg_store()
    a = replicas(first)
    role = start(a)
    second = Store.open(f"sqlite:///{tmp_path / 'second.db'}")
    try:
        other = replicas(second)
        assert other.store.deployment_id != a.store.deployment_id
        report = other.reap(startup=True)
        assert report.revoked_roles == [] and report.errors == []
        with pytest.raises(Forbidden, match="another dbaccess deployment"):
            other.issuer(other.target("demo")).revoke(role)
        first.end_replica(a.replica_id)  # even with its broker dead
        assert other.reap().revoked_roles == []
        assert role_exists(admin_conn, role)
        # Its own deployment's next replica does end it.
        assert replicas(first).reap(startup=True).orphaned_sessions != []
        assert not role_exists(admin_conn, role)
    finally:
        second.close()


def test_a_role_minted_by_a_replica_that_died_before_storing_its_session_is_revoked(
    new_pg_store: Callable[[], Store],
    replicas: Callable[[Store], SessionService],
    admin_conn: AdminConn,
) -> None:
    store = new_pg_store()
    a, b = replicas(store), replicas(store)
    issuer = a.issuer(a.target("demo"))
    cred = issuer.issue(
        identity="alice",
        session_id="s-halfway",
        grants=["demo_read"],
        valid_until=utcnow() + timedelta(minutes=5),
    )
    assert b.reap().revoked_roles == [], "a live replica may be starting its session"
    store.end_replica(a.replica_id)
    assert b.reap().revoked_roles == [cred.username]
    assert not role_exists(admin_conn, cred.username)


def test_a_restarted_broker_marks_its_dead_previous_life_at_once(
    new_pg_store: Callable[[], Store],
) -> None:
    store = new_pg_store()
    dead_pid = 2**22 + 17  # above the kernel's pid_max: no such process
    store.register_replica(
        "r-previous", host=host_key(), pid=dead_pid, role="all", api_url=None, lease=60
    )
    store.register_replica(
        "r-elsewhere", host="other-host/pid:[1]", pid=dead_pid, role="all", api_url=None, lease=60
    )
    store.register_replica(
        "r-alive", host=host_key(), pid=os.getppid(), role="all", api_url=None, lease=60
    )
    service = SessionService(store, parse_policy(POLICY, "policy.yaml"))
    try:
        membership = Membership(service, lease=60)
        membership.join()
        alive = {r.id for r in store.replicas(alive_at=utcnow())}
        assert alive == {"r-elsewhere", "r-alive", service.replica_id}
        assert store.heartbeat(service.replica_id, 60)
        membership.leave()
        assert service.replica_id not in {r.id for r in store.replicas(alive_at=utcnow())}
        assert not store.heartbeat(service.replica_id, 60), "an ended lease stays ended"
        store.prune_replicas(utcnow() + timedelta(seconds=120))
        assert {r.id for r in store.replicas()} == set(), "none names an active session"
    finally:
        service.recorder.stop()


def test_a_recording_left_open_by_an_owner_that_died_after_a_kill_is_closed_by_a_reaper(
    new_pg_store: Callable[[], Store],
    replicas: Callable[[Store], SessionService],
) -> None:
    store = new_pg_store()
    a, b = replicas(store), replicas(store)
    record, _ticket = a.start(ALICE, "demo", "read", timedelta(minutes=10), "replicas")
    a.recorder.flush(10)
    b.end(record.id, status="killed", reason="INC-10", actor="root")
    store.end_replica(a.replica_id)  # dead before it learnt of the kill
    info = recording_info(store, record.id)
    assert info is not None and info.status == "open"
    b.reap()
    info = recording_info(store, record.id)
    assert info is not None and info.status == "closed"
    assert verify_recordings(store).ok


def test_a_recording_a_live_replica_is_closing_is_not_taken_from_it(
    new_pg_store: Callable[[], Store],
    replicas: Callable[[Store], SessionService],
) -> None:
    """A replica that claimed a dead one's session has ended it and is about to
    close its recording (still open, its writer still the dead owner): another
    replica's reaper must leave that recording to it, or the two close it at
    once and its digest no longer matches its events."""
    store = new_pg_store()
    a, b, c = replicas(store), replicas(store), replicas(store)
    record, _ticket = a.start(ALICE, "demo", "read", timedelta(minutes=10), "replicas")
    a.recorder.flush(10)
    store.end_replica(a.replica_id)
    (claimed,) = store.claim_orphans(b.replica_id, utcnow())
    # b has ended the session in the store; its recorder has not closed the recording yet.
    assert store.finish_session(claimed.id, status="orphaned", reason="its broker stopped")
    info = recording_info(store, record.id)
    assert info is not None and info.status == "open"
    assert store.abandoned_recordings(c.replica_id, utcnow()) == []
    store.end_replica(b.replica_id)  # b died before closing it: now it is abandoned
    assert [r.id for r in store.abandoned_recordings(c.replica_id, utcnow())] == [record.id]


@pytest.fixture
def split_roles(
    demo_target: DemoTarget, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[Store, str], SessionService]]:
    """Replicas of a role (``api``: sessions handed off; ``gateway``) on a given store."""
    monkeypatch.setenv("REPLICAS_DEMO_DSN", demo_target.admin_dsn)
    made: list[SessionService] = []

    def make(store: Store, role: str) -> SessionService:
        service = SessionService(store, parse_policy(POLICY, "policy.yaml"), hand_off=role == "api")
        Membership(service, role=role, lease=60).join()
        made.append(service)
        return service

    yield make
    for service in made:
        service.end_all()
        service.recorder.stop()
        service.close_issuers()


def test_a_handed_off_session_is_taken_by_one_gateway_replica_with_a_working_credential(
    new_pg_store: Callable[[], Store],
    split_roles: Callable[[Store, str], SessionService],
) -> None:
    store = new_pg_store()
    api, g1, g2 = (
        split_roles(store, "api"),
        split_roles(store, "gateway"),
        split_roles(store, "gateway"),
    )
    record, ticket = api.start(ALICE, "demo", "read", timedelta(minutes=10), "handoff")
    assert api.live(record.id) is None, "an API replica holds no credential"
    found = store.session_handoff(hashlib.sha256(ticket.encode()).hexdigest())
    assert found is not None and found[1] is not None and record.db_user not in found[1]
    outcomes: dict[str, Any] = {}

    def connect(gateway: SessionService) -> None:
        try:
            outcomes[gateway.replica_id] = gateway.resolve_ticket(ticket, "demo")
        except NotAuthenticated as exc:
            outcomes[gateway.replica_id] = exc

    threads = [threading.Thread(target=connect, args=(g,)) for g in (g1, g2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    taken = [o for o in outcomes.values() if not isinstance(o, Exception)]
    refused = [o for o in outcomes.values() if isinstance(o, NotAuthenticated)]
    assert len(taken) == 1 and len(refused) == 1, outcomes
    assert "held by another broker replica" in refused[0].message
    winner = g1 if outcomes[g1.replica_id] is taken[0] else g2
    assert winner.resolve_ticket(ticket, "demo") is taken[0], "its next connection finds it here"
    owned = store.get_session(record.id)
    assert owned is not None and owned.owner == winner.replica_id
    up = taken[0].upstream
    with psycopg.connect(
        host=up.host,
        port=up.port,
        dbname=up.database,
        user=taken[0].credential.username,
        password=taken[0].credential.login_password(),
        sslmode="disable",
    ) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (record.db_user,)
    with pytest.raises(NotAuthenticated, match="invalid session ticket"):
        g1.resolve_ticket("dbt_" + "x" * 43, "demo")


def test_the_store_keeps_neither_the_ticket_nor_the_password_of_a_handed_off_session(
    new_pg_store: Callable[[], Store],
    split_roles: Callable[[Store, str], SessionService],
) -> None:
    store = new_pg_store()
    api, gateway = split_roles(store, "api"), split_roles(store, "gateway")
    record, ticket = api.start(ALICE, "demo", "read", timedelta(minutes=10), "at rest")
    password = gateway.resolve_ticket(ticket, "demo").credential.login_password()
    assert found_in_clear(store, ticket, password) == []
    gateway.end(record.id, status="ended", reason="done", actor="alice")
    assert found_in_clear(store, ticket, password) == []
    found = store.session_handoff(hashlib.sha256(ticket.encode()).hexdigest())
    assert found is not None and found[1] is None, "an ended session keeps no sealed credential"


def test_an_untaken_session_waits_for_its_gateway_and_ends_through_its_api_replica(
    new_pg_store: Callable[[], Store],
    split_roles: Callable[[Store, str], SessionService],
    admin_conn: AdminConn,
) -> None:
    store = new_pg_store()
    api = split_roles(store, "api")
    record, _ticket = api.start(ALICE, "demo", "read", timedelta(minutes=10), "handoff")
    report = api.reap()
    assert (report.orphaned_sessions, report.revoked_roles, report.errors) == ([], [], [])
    assert role_exists(admin_conn, record.db_user)
    ended = api.end(record.id, status="killed", reason="by an admin", actor="admin")
    assert ended.status == "killed" and not role_exists(admin_conn, record.db_user)
    info = recording_info(store, record.id)
    assert info is not None and info.status == "closed" and info.events == 2
    assert verify_recordings(store).ok
