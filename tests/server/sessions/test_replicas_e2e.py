"""Three broker processes on one PostgreSQL store: any replica answers for any session.

The replicas are dev brokers sharing a store (``--store-url``) with a short
lease (``--replica-lease 2``) and a reaper every second, so a SIGKILLed one's
sessions are ended by a survivor within 2 s + 1 s (plus the time a revocation
takes).  Each test states what it measures.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg import sql

from server.demo.provision import DemoTarget
from server.pgcluster import LocalCluster
from server.store.db import Store
from tests.fix_broker import Broker, Waiting, demo_policy, new_broker
from tests.fix_session import held_session

pytestmark = pytest.mark.slow

LEASE = 2.0
APPROVED_SCOPE = """\
      approved:
        grants: [demo_read]
        max_ttl: 1h
        allow: {groups: [dev]}
        approval:
          approvers: {groups: [dev]}
"""
AdminConn = psycopg.Connection[tuple[object, ...]]


@pytest.fixture(scope="module")
def trio(pg_cluster: LocalCluster, demo_target: DemoTarget) -> Iterator[list[Broker]]:
    name = f"store_{secrets.token_hex(4)}"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = pg_cluster.dsn(dbname=name).replace("postgresql://", "postgresql+psycopg://", 1)
    Store.migrate_url(url)  # once, before three brokers open it at the same time
    brokers = [new_broker(demo_target, store_url=url) for _ in range(3)]
    try:
        with ThreadPoolExecutor(3) as pool:
            list(
                pool.map(
                    lambda b: b.start(
                        "--replica-lease", str(LEASE), policy=demo_policy(scopes=APPROVED_SCOPE)
                    ),
                    brokers,
                )
            )
        yield brokers
    finally:
        for b in brokers:
            b.stop()
            b.kill()
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def role_exists(conn: AdminConn, role: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def test_a_kill_through_another_replica_cuts_the_owners_client_at_once(trio: list[Broker]) -> None:
    a, b, _c = trio
    with held_session(a) as s:
        listed = b.cli("sessions", "-o", "json")
        assert s.session_id in listed.stdout, "any replica lists any session"
        psql = subprocess.Popen(
            ["psql", "-XAt", "-c", "select pg_sleep(30)"],
            env=s.env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        killed = b.cli("kill", s.session_id)
        done = time.monotonic()
        assert killed.returncode == 0, killed.stderr
        _out, err = psql.communicate(timeout=20)
        cut_after = time.monotonic() - done
        assert psql.returncode != 0
        assert "terminat" in err, err
        assert cut_after < 1.0, f"the client was cut {cut_after:.2f}s after the kill returned"
        assert s.proc.wait(30) == 8  # the held tunnel notices through replica A
    replay = a.cli("replay", s.session_id)
    assert replay.returncode == 0, replay.stderr
    assert "session.end" in replay.stdout or "killed" in replay.stdout


def test_an_approval_on_one_replica_wakes_the_requester_on_another(trio: list[Broker]) -> None:
    a, b, _c = trio
    reviewer = b.token("rita", "dev")
    waiting = Waiting(
        a.spawn("exec", "demo", "--scope", "approved", "--reason", "INC-7", "-c", "select 42")
    )
    request_id = waiting.expect(r"waiting for approval of request (\S+)")[1]
    approved = b.cli("approve", request_id, "--yes", token=reviewer)
    assert approved.returncode == 0, approved.stderr
    woke = time.monotonic()
    waiting.expect(r"approved by rita", timeout=10)
    assert time.monotonic() - woke < 2.0  # the CLI looks once a second
    code, out, err = waiting.finish()
    assert code == 0, err
    assert "42" in out


def start_sessions(broker: Broker, token: str, clients: int, each: int) -> dict[str, str]:
    """``clients`` API clients of ``broker`` at once, ``each`` sessions apiece: id -> role."""

    def run(_: int) -> list[tuple[str, str]]:
        client = broker.client(token)  # one per thread: a client is not shared
        try:
            started = [client.start_session("demo", "read", None, "load", {}) for _ in range(each)]
        finally:
            client.close()
        return [(s.id, str(s.raw["db_user"])) for s in started]

    with ThreadPoolExecutor(clients) as pool:
        return dict(pair for batch in pool.map(run, range(clients)) for pair in batch)


def test_a_sigkilled_replicas_sessions_are_ended_by_a_survivor_and_no_other_is_touched(
    trio: list[Broker], admin_conn: AdminConn
) -> None:
    """48 sessions over the three replicas (16 each, through their APIs, all at
    once), and one held through a tunnel on the replica that is SIGKILLed."""
    a, b, c = trio
    with held_session(a) as on_a, held_session(c) as on_c:
        role_a = on_a.psql("select current_user").stdout.strip()
        role_c = on_c.psql("select current_user").stdout.strip()
        assert role_a and role_c
        token = b.token("loader", "dev")  # the store is shared: good on every replica
        with ThreadPoolExecutor(3) as pool:
            loads = list(pool.map(lambda broker: start_sessions(broker, token, 4, 4), trio))
        doomed = {**loads[0], on_a.session_id: role_a}
        spared = {**loads[1], **loads[2], on_c.session_id: role_c}
        psql = subprocess.Popen(
            ["psql", "-XAt", "-c", "select pg_sleep(60)"],
            env=on_a.env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        a.kill()  # SIGKILL: no clean-up code runs
        died = time.monotonic()
        psql.communicate(timeout=20)
        assert psql.returncode != 0, "its client gets an error"
        roles = list(doomed.values())
        left = "SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)"
        while admin_conn.execute(left, (roles,)).fetchone() != (0,):
            assert time.monotonic() - died < 30, "the dead replica's roles outlived it"
            time.sleep(0.1)
        revoked_after = time.monotonic() - died
        # The lease, a reaper's turn and 17 revocations.
        assert revoked_after < LEASE + 1 + 10, f"revoked after {revoked_after:.1f}s"
        res = on_c.psql("select 1")
        assert res.returncode == 0, res.stderr
        assert admin_conn.execute(left, (list(spared.values()),)).fetchone() == (len(spared),)
        listed = json.loads(b.cli("sessions", "-o", "json", "--all", "--limit", "200").stdout)
        status = {row["id"]: row["status"] for row in listed}
        assert {status[sid] for sid in doomed} == {"orphaned"}
        assert {status[sid] for sid in spared} == {"active"}
    verify = b.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
