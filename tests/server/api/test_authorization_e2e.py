"""Who may do what on the broker API, as a matrix of role by endpoint against a
real broker: a person acts on their own sessions and requests, approvers see
and decide what they may approve, auditors read the audit log and recordings,
admins administer.  Nobody approves their own request."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from brokercli.client import BrokerClient
from brokercli.errors import CliError
from server.demo.provision import DemoTarget
from tests.fix_broker import Broker, new_broker

pytestmark = pytest.mark.slow

POLICY = """\
version: 1
targets:
  demo:
    database: demo
    admin_dsn_file: admin.dsn
    scopes:
      read:
        grants: [demo_read]
        max_ttl: 1h
        allow: {groups: [dev]}
      write:
        grants: [demo_write]
        max_ttl: 1h
        allow: {groups: [dev]}
        approval:
          approvers: {groups: [dba]}
"""


@dataclass
class World:
    broker: Broker
    clients: dict[str, BrokerClient]
    alice_session: str
    alice_request: str


@pytest.fixture(scope="module")
def world(demo_target: DemoTarget) -> Iterator[World]:
    b = new_broker(demo_target)
    b.start(policy=POLICY)
    try:
        tokens = {
            "alice": b.token("alice", "dev"),
            "mallory": b.token("mallory", "dev"),
            "approver": b.token("bob", "dev", "dba"),
            "auditor": b.token("audrey", "auditor"),
            "admin": b.token("root", "admin", "dev"),
            # An agent whose token names the privileged groups: it gets none of their powers.
            "agent": b.token("ops-bot", "admin", "auditor", "dev", owner="root"),
        }
        clients = {k: b.client(v) for k, v in tokens.items()}
        alice = clients["alice"]
        session = alice.request("POST", "/v1/sessions", json={"target": "demo", "scope": "read"})
        request = alice.request(
            "POST", "/v1/requests", json={"target": "demo", "scope": "write", "reason": "fix"}
        )
        yield World(b, clients, session["session"]["id"], request["request"]["id"])
        alice.request("DELETE", f"/v1/sessions/{session['session']['id']}")
    finally:
        b.stop()


def _status(world: World, who: str, method: str, path: str, body: Any = None) -> int:
    path = path.format(s=world.alice_session, r=world.alice_request)
    try:
        world.clients[who].request(method, path, json=body)
    except CliError as err:
        return {
            "not_authenticated": 401,
            "forbidden": 403,
            "not_found": 404,
            "conflict": 409,
            "invalid": 400,
        }.get(str((err.details or {}).get("error")), 500)
    return 200


# 200 = allowed; 403 = refused; 404 = not even visible.
ROLES = ("alice", "mallory", "approver", "auditor", "admin")
MATRIX = [
    ("GET", "/v1/sessions/{s}", (200, 404, 404, 404, 200)),
    ("GET", "/v1/sessions?all=true", (403, 403, 403, 403, 200)),
    ("GET", "/v1/sessions/{s}/recording", (200, 404, 404, 200, 200)),
    ("GET", "/v1/audit", (403, 403, 403, 200, 200)),
    ("GET", "/v1/audit/verify", (403, 403, 403, 200, 200)),
    # Everyone may ask; only admins and auditors get more than their own statements.
    ("GET", "/v1/audit/access", (200, 200, 200, 200, 200)),
    ("GET", "/v1/audit/report", (403, 403, 403, 200, 200)),
    ("GET", "/v1/requests/{r}", (200, 404, 200, 404, 200)),
    ("GET", "/v1/targets", (200, 200, 200, 200, 200)),
    ("GET", "/v1/whoami", (200, 200, 200, 200, 200)),
]


@pytest.mark.parametrize(
    ("method", "path", "who", "expected"),
    [(m, p, who, exp) for m, p, row in MATRIX for who, exp in zip(ROLES, row, strict=True)],
)
def test_read_matrix(world: World, method: str, path: str, who: str, expected: int) -> None:
    assert _status(world, who, method, path) == expected


@pytest.mark.parametrize(
    ("who", "expected"),
    [("alice", 403), ("mallory", 404), ("auditor", 404), ("approver", 200)],
)
def test_who_may_approve_alices_request(world: World, who: str, expected: int) -> None:
    # The approver goes last (parametrize order): once approved, the request is decided.
    assert _status(world, who, "POST", "/v1/requests/{r}/approve", {"comment": "ok"}) == expected


@pytest.mark.parametrize("who", ["mallory", "approver", "auditor"])
def test_others_cannot_end_alices_session(world: World, who: str) -> None:
    assert _status(world, who, "DELETE", "/v1/sessions/{s}") in (403, 404)
    assert _status(world, "alice", "GET", "/v1/sessions/{s}") == 200


# An agent in the admin and auditor groups reads and decides only what any agent
# may: its own sessions, recordings and access events, never the audit log,
# others' recordings or requests.
AGENT_MATRIX = [
    ("GET", "/v1/sessions/{s}", 404),
    ("GET", "/v1/sessions?all=true", 403),
    ("GET", "/v1/sessions/{s}/recording", 404),
    ("GET", "/v1/audit", 403),
    ("GET", "/v1/audit/verify", 403),
    ("GET", "/v1/audit/report", 403),
    ("GET", "/v1/requests/{r}", 404),
]


@pytest.mark.parametrize(("method", "path", "expected"), AGENT_MATRIX)
def test_an_agent_in_privileged_groups_is_no_admin_or_auditor(
    world: World, method: str, path: str, expected: int
) -> None:
    assert _status(world, "agent", method, path) == expected


def test_without_a_token_everything_but_health_is_401(world: World) -> None:
    anonymous = world.broker.client("")
    anonymous.token = None
    for path in ("/v1/sessions", "/v1/targets", "/v1/audit", "/v1/audit/access", "/v1/requests"):
        with pytest.raises(CliError) as err:
            anonymous.request("GET", path)
        assert (err.value.details or {}).get("error") == "not_authenticated"
    assert anonymous.request("GET", "/v1/health") == {"status": "ok"}
