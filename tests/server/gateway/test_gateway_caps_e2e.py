"""Connection caps from the policy on a real broker: per session, per identity on a
target (by default a share of the target's max_connections), refused with 53300 and
a hint naming the policy key, while another identity still connects."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import psycopg
import pytest

from server.demo.provision import DemoTarget
from server.gateway import pgwire
from server.gateway.session import startup_packet
from tests.fix_broker import Broker, demo_policy, running_broker
from tests.fix_pgwire import login_error
from tests.fix_session import held_session

pytestmark = pytest.mark.slow

# read: the automatic share (the test cluster has max_connections 200: 24 per
# identity); write: small caps of its own.
POLICY = demo_policy(target="    limits:\n      max_connections_per_session: 50\n").replace(
    "          preset: write\n          review: [ddl]\n",
    "          preset: write\n          review: [ddl]\n        limits:\n"
    "          max_connections_per_session: 2\n          max_connections_per_identity: 3\n",
    1,
)


@pytest.fixture(scope="module")
def broker(demo_target: DemoTarget) -> Iterator[Broker]:
    with running_broker(demo_target, POLICY) as b:
        yield b


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def test_the_per_session_cap_comes_from_the_policy(broker: Broker) -> None:
    with held_session(broker, "--scope", "write") as s, ExitStack() as stack:
        for _ in range(2):
            stack.enter_context(connect(s.dsn()))
        fields = login_error(s.port, s.database, s.ticket)
        assert fields["C"] == "53300", fields
        assert f"too many connections for session {s.session_id} (limit 2)" in fields["M"]
        assert "limits.max_connections_per_session of scope 'write'" in fields["H"]
        session_id = s.session_id
    assert _limit_events(broker, session_id) == [
        ("max_connections_per_session", 2, "refused", "53300")
    ]


def _limit_events(broker: Broker, session_id: str) -> list[tuple[str, object, str, str]]:
    """The session's limit events, once its recording has them."""
    deadline = time.monotonic() + 20
    while True:
        res = broker.cli("replay", session_id, "--output", "json")
        assert res.returncode == 0, res.stderr
        found = [
            (d["limit"], d["value"], d["action"], d["sqlstate"])
            for d in (e["data"] for e in json.loads(res.stdout)["events"] if e["kind"] == "limit")
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_an_identity_at_its_cap_is_refused_and_another_still_connects(broker: Broker) -> None:
    alice = broker.token("alice", "dev")
    with (
        held_session(broker, "--scope", "write") as first,
        held_session(broker, "--scope", "write") as second,
        held_session(broker, "--scope", "write", token=alice) as other,
        ExitStack() as stack,
    ):
        stack.enter_context(connect(first.dsn()))
        stack.enter_context(connect(first.dsn()))
        stack.enter_context(connect(second.dsn()))  # 3 across dev's sessions
        fields = login_error(second.port, second.database, second.ticket)
        assert fields["C"] == "53300", fields
        assert "too many connections for identity 'dev' to target 'demo' (limit 3" in fields["M"]
        assert "limits.max_connections_per_identity of scope 'write'" in fields["H"]
        with connect(other.dsn()) as conn:  # alice is not held back by dev
            assert conn.execute("select 1").fetchone() == (1,)
        session_id = second.session_id
    assert _limit_events(broker, session_id) == [
        ("max_connections_per_identity", 3, "refused", "53300")
    ]


def test_by_default_one_identity_gets_a_share_of_max_connections(
    broker: Broker, admin_conn: psycopg.Connection[Any]
) -> None:
    row = admin_conn.execute("show max_connections").fetchone()
    assert row == ("200",)
    # 200 less 3 for superusers and 5 for the broker: 192; half for the broker's
    # sessions (96), a quarter of that for one identity.
    share = 24
    alice = broker.token("alice", "dev")
    with (
        held_session(broker, "--scope", "read") as s,
        held_session(broker, "--scope", "read", token=alice) as other,
        ExitStack() as stack,
    ):
        for _ in range(share):
            stack.enter_context(connect(s.dsn()))
        fields = login_error(s.port, s.database, s.ticket)
        assert fields["C"] == "53300", fields
        assert f"(limit {share} across its sessions)" in fields["M"]
        assert "auto: a share of the target's max_connections (200)" in fields["H"]
        with connect(other.dsn()) as conn:
            assert conn.execute("select 1").fetchone() == (1,)


def test_the_deprecated_server_setting_still_caps_sessions(demo_target: DemoTarget) -> None:
    with running_broker(demo_target, POLICY, "--session-max-connections", "1") as b:
        assert "session_max_connections is deprecated" in b.log()
        with held_session(b, "--scope", "write") as s, connect(s.dsn()):
            fields = login_error(s.port, s.database, s.ticket)
            assert fields["C"] == "53300", fields
            assert "(limit 1)" in fields["M"]
            assert "session_max_connections (deprecated)" in fields["H"]


def _race(dsns: list[str]) -> tuple[list[psycopg.Connection[Any]], list[str]]:
    """Log in to every DSN at once: the connections opened, the refusals' texts."""
    opened: list[psycopg.Connection[Any]] = []
    refused: list[str] = []
    lock = threading.Lock()

    def login(dsn: str) -> None:
        try:
            conn = connect(dsn)
        except psycopg.OperationalError as exc:
            with lock:
                refused.append(str(exc))
            return
        with lock:
            opened.append(conn)

    threads = [threading.Thread(target=login, args=(d,)) for d in dsns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return opened, refused


def test_connections_racing_for_the_caps_never_overshoot_them_nor_leak_slots(
    broker: Broker,
) -> None:
    """Many logins at once, and a storm of clients that vanish mid-login, as an
    attacker would try to slip past a count or wear it down."""
    with (
        held_session(broker, "--scope", "write") as first,
        held_session(broker, "--scope", "write") as second,
    ):
        for _round in range(2):
            dsns = [first.dsn(), second.dsn()] * 6
            opened, refused = _race(dsns)
            try:
                # 2 per session, 3 for dev across them: never more, however they race.
                assert len(opened) == 3, (len(opened), refused)
                assert len(refused) == len(dsns) - 3
                assert all("too many connections" in r for r in refused), refused
            finally:
                for conn in opened:
                    conn.close()
            # Clients that hang up at every step of the login: each slot comes back.
            for step in range(40):
                with socket.create_connection(("127.0.0.1", first.port), timeout=10) as sock:
                    sock.sendall(startup_packet({"user": "dev", "database": first.database}))
                    if step % 2:
                        sock.recv(64)  # the password request
                        sock.sendall(pgwire.PasswordMessage.from_password(first.ticket).encode())
            deadline = time.monotonic() + 10
            while True:  # the gateway notices the hang-ups as they close
                try:
                    with connect(first.dsn()), connect(first.dsn()), connect(second.dsn()):
                        break
                except psycopg.OperationalError:
                    assert time.monotonic() < deadline, "slots leaked by vanished clients"
                    time.sleep(0.2)
