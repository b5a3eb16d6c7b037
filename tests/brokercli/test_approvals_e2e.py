"""Just-in-time approvals end to end: real broker, real CLI as several people, real webhooks.

The broker runs a policy of this module's own: ``write`` needs one approval from
group ``dba`` (and a reason, and offers break-glass), ``schema`` needs two, and
``hurry`` requests expire after two seconds.  Each test mints tokens for its own
people so that their pending requests never meet another test's.  A local HTTP
receiver stands in for the chat webhook.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from server.demo.provision import DemoTarget
from tests.fix_broker import Broker, Waiting, new_broker
from tests.fix_webhook import Receiver, start_receiver

pytestmark = pytest.mark.slow

POLICY = """\
version: 1
groups:
  dba: [bob, carol]
targets:
  demo:
    description: Demo database
    database: demo
    issuer: postgres
    admin_dsn_file: admin.dsn
    scopes:
      read:
        grants: [demo_read]
        max_ttl: 8h
        allow: {groups: [dev, dba]}
      write:
        grants: [demo_write]
        default_ttl: 15m
        max_ttl: 1h
        allow: {groups: [dev]}
        reason_required: true
        break_glass: true
        approval:
          approvers: {groups: [dba]}
          approval_ttl: 30m
      schema:
        grants: [demo_write]
        max_ttl: 1h
        allow: {groups: [dev]}
        approval:
          approvers: {groups: [dba]}
          min_approvals: 2
      hurry:
        grants: [demo_read]
        max_ttl: 1h
        allow: {groups: [dev]}
        approval:
          approvers: {groups: [dba]}
          pending_ttl: 2s
"""
REQUEST_ID = re.compile(r"\b(r-[0-9a-f]{12})\b")
WRITE_SQL = "update customers set city = city where id = 1"


@dataclass
class World:
    broker: Broker
    hooks: Receiver
    bob: str
    carol: str

    def person(self, prefix: str = "alice") -> str:
        """A token for a new developer (group dev) of this test's own."""
        return self.broker.token(f"{prefix}-{secrets.token_hex(3)}", "dev")

    def cli(self, token: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.broker.cli(*args, token=token, **kw)

    def audit(self) -> list[dict[str, Any]]:
        res = self.broker.cli("audit", "--limit", "10000", "-o", "json")
        assert res.returncode == 0, res.stderr
        return list(json.loads(res.stdout))

    def request(self, token: str, request_id: str) -> dict[str, Any]:
        res = self.cli(token, "requests", "--mine", "-o", "json")
        assert res.returncode == 0, res.stderr
        return next(r for r in json.loads(res.stdout) if r["id"] == request_id)

    def hooks_for(self, request_id: str) -> list[str]:
        return [
            body["event"]
            for body in self.hooks.delivered()
            if (body.get("request") or {}).get("id") == request_id
        ]


@pytest.fixture(scope="module")
def world(demo_target: DemoTarget) -> Iterator[World]:
    hooks, server = start_receiver()
    broker = new_broker(demo_target)
    broker.start("--webhook", hooks.url, policy=POLICY)
    try:
        yield World(broker, hooks, broker.token("bob", "staff"), broker.token("carol", "staff"))
    finally:
        broker.stop()
        server.shutdown()
        server.server_close()


def wait_in_background(world: World, token: str, *args: str) -> tuple[Waiting, str]:
    job = Waiting(world.broker.spawn(*args, token=token))
    request_id = job.expect(r"waiting for approval of request (r-[0-9a-f]+)").group(1)
    return job, request_id


# -----------------------------------------------------------------------------------


def test_request_approve_and_use_once(world: World) -> None:
    alice = world.person()
    asked = world.cli(
        alice, "request", "demo", "--scope", "write", "--reason", "INC-42 <!channel> & fix order 7"
    )
    assert asked.returncode == 0, asked.stderr
    request_id = asked.stdout.strip()
    assert REQUEST_ID.fullmatch(request_id)
    assert "needs 1 approval" in asked.stderr

    listed = json.loads(world.cli(alice, "requests", "--mine", "--pending", "-o", "json").stdout)
    assert [r["id"] for r in listed] == [request_id]
    review = json.loads(world.cli(world.bob, "requests", "--to-review", "-o", "json").stdout)
    assert request_id in [r["id"] for r in review]

    own = world.cli(alice, "approve", request_id, "--yes")
    assert own.returncode == 5, own.stderr
    assert "cannot approve your own request" in own.stderr

    no_tty = world.cli(world.bob, "approve", request_id)
    assert no_tty.returncode == 2
    assert "no terminal" in no_tty.stderr and "--yes" in no_tty.stderr
    for shown in (
        "requester:",
        "target:     demo",
        "scope:      write",
        "INC-42",
        "ttl:        15m",
    ):
        assert shown in no_tty.stderr
    assert world.request(alice, request_id)["status"] == "pending"

    ok = world.cli(world.bob, "approve", request_id, "--yes", "--comment", "go ahead")
    assert ok.returncode == 0, ok.stderr
    assert f"approved {request_id}" in ok.stderr

    first = world.cli(
        alice, "exec", "demo", "--scope", "write", "--reason", "INC-42", "-c", WRITE_SQL
    )
    assert first.returncode == 0, first.stderr
    assert "UPDATE 1" in first.stderr
    assert world.request(alice, request_id)["status"] == "used"

    # Single use: the next session opens a new request, and --no-wait says so with code 9.
    second = world.cli(
        alice, "exec", "demo", "--scope", "write", "--reason", "INC-42", "-c", WRITE_SQL,
        "--no-wait",
    )  # fmt: skip
    assert second.returncode == 9, second.stderr
    again = second.stdout.strip()
    assert REQUEST_ID.fullmatch(again) and again != request_id
    assert world.request(alice, again)["status"] == "pending"
    assert world.cli(alice, "cancel", again).returncode == 0
    assert world.request(alice, again)["status"] == "cancelled"

    mine = [e for e in world.audit() if (e["data"] or {}).get("request_id") == request_id]
    assert [e["kind"] for e in mine] == [
        "request.created",
        "request.approved",
        "request.used",
        "session.started",
    ]
    approved = mine[1]
    assert (approved["identity"], approved["data"]["comment"]) == ("bob", "go ahead")
    deadline = time.monotonic() + 10
    while world.hooks_for(request_id) != ["request.created", "request.approved"]:
        assert time.monotonic() < deadline, world.hooks_for(request_id)
        time.sleep(0.1)
    created = next(b for b in world.hooks.delivered() if b["request"]["id"] == request_id)
    assert created["request"]["reason"] == "INC-42 <!channel> & fix order 7"


def test_two_of_n_while_the_cli_waits(world: World) -> None:
    alice = world.person()
    job, request_id = wait_in_background(
        world, alice, "exec", "demo", "--scope", "schema", "-c", "select 41 + 1 as answer",
        "-o", "json", "--wait-timeout", "2m",
    )  # fmt: skip
    first = world.cli(world.bob, "approve", request_id, "--yes")
    assert first.returncode == 0, first.stderr
    assert "1 of 2, 1 more needed" in first.stderr
    twice = world.cli(world.bob, "approve", request_id, "--yes")
    assert twice.returncode == 8 and "already approved" in twice.stderr
    assert job.proc.poll() is None  # still waiting for the second approver
    second = world.cli(world.carol, "approve", request_id, "--yes")
    assert second.returncode == 0, second.stderr
    rc, out, err = job.finish()
    assert rc == 0, err
    assert json.loads(out)[0]["rows"] == [{"answer": 42}]
    assert "approved by bob, carol" in err


def test_denied_while_waiting_exits_10(world: World) -> None:
    alice = world.person()
    job, request_id = wait_in_background(
        world, alice, "exec", "demo", "--scope", "write", "--reason", "INC-43", "-c", WRITE_SQL
    )
    missing_reason = world.cli(world.bob, "deny", request_id)
    assert missing_reason.returncode == 2
    denied = world.cli(world.bob, "deny", request_id, "--reason", "use the read scope")
    assert denied.returncode == 0, denied.stderr
    rc, _out, err = job.finish()
    assert rc == 10, err
    assert f"request {request_id} was denied by bob: use the read scope" in err
    assert "request.denied" in [e["kind"] for e in world.audit()]


def test_expired_while_waiting_exits_11(world: World) -> None:
    alice = world.person()
    job, request_id = wait_in_background(
        world, alice, "exec", "demo", "--scope", "hurry", "-c", "select 1"
    )
    rc, _out, err = job.finish(timeout=30)
    assert rc == 11, err
    assert f"request {request_id} expired" in err
    expired = [
        e
        for e in world.audit()
        if e["kind"] == "request.expired" and e["data"]["request_id"] == request_id
    ]
    assert len(expired) == 1


def test_wait_timeout_exits_12_and_leaves_the_request_pending(world: World) -> None:
    alice = world.person()
    started = time.monotonic()
    res = world.cli(
        alice, "exec", "demo", "--scope", "write", "--reason", "INC-44", "-c", WRITE_SQL,
        "--wait-timeout", "2s",
    )  # fmt: skip
    assert res.returncode == 12, res.stderr
    assert time.monotonic() - started < 20
    assert "no decision on request" in res.stderr
    request_id = REQUEST_ID.search(res.stderr).group(1)  # type: ignore[union-attr]
    assert world.request(alice, request_id)["status"] == "pending"
    # Running it again waits on the same request rather than asking twice.
    again = world.cli(
        alice, "exec", "demo", "--scope", "write", "--reason", "INC-44", "-c", WRITE_SQL,
        "--no-wait",
    )  # fmt: skip
    assert again.returncode == 9 and again.stdout.strip() == request_id


def test_reason_required_and_break_glass(world: World) -> None:
    alice = world.person()
    no_reason = world.cli(alice, "exec", "demo", "--scope", "write", "-c", "select 1")
    assert no_reason.returncode == 5
    assert "requires a reason" in no_reason.stderr
    glass = world.cli(
        alice, "exec", "demo", "--scope", "write", "--break-glass", "--reason", "INC-99 outage",
        "-c", WRITE_SQL,
    )  # fmt: skip
    assert glass.returncode == 0, glass.stderr
    flagged = [e for e in world.audit() if e["kind"] == "session.break_glass"]
    assert any(e["data"]["reason"] == "INC-99 outage" for e in flagged)
    deadline = time.monotonic() + 10
    while not any(
        b.get("event") == "session.break_glass" and b["session"]["reason"] == "INC-99 outage"
        for b in world.hooks.delivered()
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    not_offered = world.cli(
        alice,
        "exec",
        "demo",
        "--scope",
        "schema",
        "--break-glass",
        "--reason",
        "x",
        "-c",
        "select 1",
    )
    assert not_offered.returncode == 5
    assert "does not offer break-glass" in not_offered.stderr


def test_outsiders_see_nothing(world: World) -> None:
    alice = world.person()
    request_id = world.cli(alice, "request", "demo", "--scope", "schema", "--reason", "m").stdout
    request_id = request_id.strip()
    mallory = world.person("mallory")
    listed = json.loads(world.cli(mallory, "requests", "-o", "json").stdout)
    assert request_id not in [r["id"] for r in listed]
    approve = world.cli(mallory, "approve", request_id, "--yes")
    assert approve.returncode == 6
    assert world.cli(mallory, "cancel", request_id).returncode == 6
    assert world.cli(alice, "cancel", request_id).returncode == 0


def test_request_ahead_of_time_is_usable_from_its_start(world: World) -> None:
    from datetime import datetime, timedelta

    alice = world.person()
    later = (datetime.now() + timedelta(hours=1)).replace(microsecond=0)
    res = world.cli(
        alice, "request", "demo", "--scope", "schema", "--reason", "maintenance window",
        "--start-at", later.isoformat(), "-o", "json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)["request"]
    assert datetime.fromisoformat(r["start_at"]) == later.astimezone()
    for approver in (world.bob, world.carol):
        assert world.cli(approver, "approve", r["id"], "--yes").returncode == 0
    early = world.cli(alice, "exec", "demo", "--scope", "schema", "-c", "select 1")
    assert early.returncode == 8, early.stderr
    assert f"request {r['id']} is approved for use from" in early.stderr
    too_far = world.cli(
        alice, "request", "demo", "--scope", "schema", "--reason", "x",
        "--start-at", "2099-01-01T00:00",
    )  # fmt: skip
    assert too_far.returncode == 2 and "30 days" in too_far.stderr
    assert world.cli(alice, "cancel", r["id"]).returncode == 0
