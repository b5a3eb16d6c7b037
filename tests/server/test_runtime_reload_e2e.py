"""SIGHUP reloads the policy of a running broker, end to end.

A broker with an open policy runs a held session; the policy file then gains an
approval requirement (applied at once), becomes invalid (rejected, the old one
stays, the log and the audit log say why) and is restored.  The held session
keeps working throughout.  This module runs its broker alone: a second broker on
the same target would reap this one's session roles as orphans.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.fix_broker import Broker
from tests.fix_session import held_session

pytestmark = pytest.mark.slow

OPEN_POLICY = """\
version: 1
targets:
  demo:
    database: demo
    admin_dsn_file: admin.dsn
    scopes:
      read:
        grants: [demo_read]
        max_ttl: 8h
        allow: {groups: [dev]}
      write:
        grants: [demo_write]
        max_ttl: 1h
        allow: {groups: [dev]}
"""
GATED = OPEN_POLICY + "        approval: {approvers: {groups: [dba]}}\n"


def wait_for_audit(broker: Broker, kind: str, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        res = broker.cli("audit", "--limit", "10000", "-o", "json")
        if res.returncode == 0 and sum(e["kind"] == kind for e in json.loads(res.stdout)) >= count:
            return
        assert time.monotonic() < deadline, f"no {kind} in the audit log"
        time.sleep(0.2)


def test_sighup_reloads_policy_rejects_a_bad_one_and_keeps_sessions(
    fresh_broker: Broker,
) -> None:
    broker = fresh_broker
    broker.start(policy=OPEN_POLICY)
    write = ("exec", "demo", "--scope", "write", "-c", "select 1", "--no-wait")
    assert broker.cli(*write).returncode == 0
    with held_session(broker, "--scope", "read") as held:
        assert held.psql("select 1").stdout.strip() == "1"

        broker.write_policy(GATED)
        broker.reload()
        wait_for_audit(broker, "policy.reloaded", 1)
        gated = broker.cli(*write)
        assert gated.returncode == 9, gated.stderr
        assert "needs 1 approval" in gated.stderr
        second = held.psql("select 2")
        assert second.stdout.strip() == "2", second.stderr

        broker.write_policy(OPEN_POLICY.replace("max_ttl: 1h", "max_ttl: forever"))
        broker.reload()
        wait_for_audit(broker, "policy.reload_rejected", 1)
        assert "policy reload rejected" in broker.log()
        assert "max_ttl: 'forever' is not a duration" in broker.log()
        still_gated = broker.cli(*write)
        assert still_gated.returncode == 9, still_gated.stderr
        assert held.psql("select 3").stdout.strip() == "3"

        broker.write_policy(OPEN_POLICY)
        broker.reload()
        wait_for_audit(broker, "policy.reloaded", 2)
        assert broker.cli(*write).returncode == 0
        assert held.psql("select 4").stdout.strip() == "4"
