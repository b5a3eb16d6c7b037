"""Evaluation tables: who may use which scope of which target, for how long, or why not."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta

import pytest

from server.policy import Identity, evaluate, parse_policy, visible_targets
from server.policy.evaluate import effective_groups

POLICY = parse_policy(
    textwrap.dedent(
        """\
        version: 1
        groups:
          dba: [alice]
          oncall: [dave]
        targets:
          demo:
            database: demo
            admin_dsn_env: DEMO_DSN
            scopes:
              read:
                grants: [demo_read]
                max_ttl: 8h
                default_ttl: 30m
                allow: {groups: [dev, dba], identities: [carol]}
              write:
                grants: [demo_write]
                max_ttl: 1h
                default_ttl: 15m
                allow: {groups: [dba]}
              nobody:
                grants: [demo_read]
                max_ttl: 1h
                allow: {groups: [], identities: []}
          ops:
            database: ops
            admin_dsn_env: OPS_DSN
            scopes:
              admin:
                grants: [ops_admin]
                max_ttl: 2h
                allow: {groups: [oncall, dba]}
              write:
                grants: [ops_write]
                max_ttl: 1h
                allow: {groups: [oncall], identities: [erin]}
          solo:
            database: solo
            admin_dsn_env: SOLO_DSN
            scopes:
              maint:
                grants: [solo_maint]
                max_ttl: 4h
                allow: {groups: [dev], identities: [frank]}
        """
    ),
    "policy.yaml",
)

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

ALICE = Identity("alice", frozenset())  # dba through the policy's groups
BOB = Identity("bob", frozenset({"dev"}))  # dev through the identity provider
CAROL = Identity("carol", frozenset())  # listed by name on demo.read
DAVE = Identity("dave", frozenset())  # oncall through the policy's groups
ERIN = Identity("erin", frozenset({"contractors"}))
FRANK = Identity("frank", frozenset())
MALLORY = Identity("mallory", frozenset({"sales"}))
CI = Identity("ci-deploy", frozenset({"dev"}), kind="service")
SHOUTY = Identity("bob", frozenset({"DBA"}))
GROUP_NAMED = Identity("dba", frozenset())  # a person whose name is a group's name

H = timedelta(hours=1)
M = timedelta(minutes=1)
S = timedelta(seconds=1)


DEMO_READ = "targets.demo.scopes.read.allow"
DEMO_WRITE = "targets.demo.scopes.write.allow"
DEMO_NOBODY = "targets.demo.scopes.nobody.allow"
OPS_ADMIN = "targets.ops.scopes.admin.allow"
OPS_WRITE = "targets.ops.scopes.write.allow"
SOLO_MAINT = "targets.solo.scopes.maint.allow"

Expected = tuple[bool, str, str | None, timedelta | None]


def yes(rule: str, scope: str, ttl: timedelta) -> Expected:
    return (True, rule, scope, ttl)


def no(rule: str, scope: str | None = None) -> Expected:
    return (False, rule, scope, None)


@pytest.mark.parametrize(
    ("identity", "target", "scope", "ttl", "expected", "reason"),
    [
        # explicit scope, TTL defaults and limits
        (BOB, "demo", "read", None, yes(DEMO_READ, "read", 30 * M), "bob is in group dev"),
        (BOB, "demo", "read", 2 * H, yes(DEMO_READ, "read", 2 * H), "group dev"),
        (BOB, "demo", "read", 8 * H, yes(DEMO_READ, "read", 8 * H), "group dev"),
        (BOB, "demo", "read", 8 * H + S, no("scope.max_ttl", "read"),
         "the requested TTL 8h1s is longer than the maximum 8h of scope 'read' of target 'demo'"),
        (BOB, "demo", "read", 0 * S, no("ttl.not_positive", "read"), "longer than zero"),
        (BOB, "demo", "read", -5 * M, no("ttl.not_positive", "read"), "longer than zero"),
        (BOB, "demo", "write", None, no(DEMO_WRITE, "write"),
         "bob may not use scope 'write' of target 'demo' (allowed groups: dba)"),
        (ALICE, "demo", "write", H, yes(DEMO_WRITE, "write", H), "alice is in group dba"),
        (ALICE, "demo", "write", 2 * H, no("scope.max_ttl", "write"),
         "the requested TTL 2h is longer than the maximum 1h"),
        (ALICE, "ops", "admin", None, yes(OPS_ADMIN, "admin", H), "group dba"),
        (DAVE, "ops", "admin", 2 * H, yes(OPS_ADMIN, "admin", 2 * H), "dave is in group oncall"),
        (CAROL, "demo", "read", None, yes(DEMO_READ, "read", 30 * M), "carol is listed by name"),
        (CAROL, "demo", "write", None, no(DEMO_WRITE, "write"), "carol may not use"),
        (FRANK, "solo", "maint", 4 * H, yes(SOLO_MAINT, "maint", 4 * H), "listed by name"),
        # nobody may use an empty allow list
        (ALICE, "demo", "nobody", None, no(DEMO_NOBODY, "nobody"), "nobody may use it"),
        (MALLORY, "demo", "read", None, no(DEMO_READ, "read"), "allowed groups: dba, dev"),
        (MALLORY, "ops", "admin", H, no(OPS_ADMIN, "admin"), "mallory may not use"),
        # the allow check comes before the TTL check
        (MALLORY, "demo", "read", 0 * S, no(DEMO_READ, "read"), "may not use"),
        (MALLORY, "demo", "read", 99 * H, no(DEMO_READ, "read"), "may not use"),
        # groups are matched exactly, and a name is not a group
        (SHOUTY, "demo", "write", None, no(DEMO_WRITE, "write"), "may not use"),
        (GROUP_NAMED, "demo", "read", None, no(DEMO_READ, "read"), "may not use"),
        # no scope given
        (BOB, "demo", None, None, yes(DEMO_READ, "read", 30 * M), "group dev"),
        (ALICE, "demo", None, None, yes(DEMO_READ, "read", 30 * M), "group dba"),
        (ALICE, "demo", None, 9 * H, no("scope.max_ttl", "read"), "maximum 8h"),
        (ERIN, "ops", None, None, yes(OPS_WRITE, "write", H), "erin is listed by name"),
        (CI, "solo", None, None, yes(SOLO_MAINT, "maint", H), "ci-deploy is in group dev"),
        (DAVE, "ops", None, None, no("scope.ambiguous"),
         "target 'ops' has several scopes dave may use (admin, write): choose one"),
        (MALLORY, "demo", None, None, no("scope.none_allowed"),
         "mallory may use no scope of target 'demo' (its scopes: read, write, nobody)"),
        (CAROL, "ops", None, None, no("scope.none_allowed"), "its scopes: admin, write"),
        # unknown names
        (BOB, "nope", "read", None, no("target.unknown"), "there is no target named 'nope'"),
        (BOB, "nope", None, None, no("target.unknown"), "there is no target named 'nope'"),
        (BOB, "demo", "admin", None, no("scope.unknown", "admin"),
         "target 'demo' has no scope 'admin' (its scopes: read, write, nobody)"),
        (MALLORY, "demo", "admin", H, no("scope.unknown", "admin"), "has no scope 'admin'"),
    ],
)  # fmt: skip
def test_evaluate(
    identity: Identity,
    target: str,
    scope: str | None,
    ttl: timedelta | None,
    expected: Expected,
    reason: str,
) -> None:
    decision = evaluate(POLICY, identity, target, scope, ttl, NOW)
    assert (decision.allowed, decision.rule, decision.scope, decision.ttl) == expected
    assert reason in decision.reason


def test_refusals_do_not_name_other_identities() -> None:
    decision = evaluate(POLICY, MALLORY, "demo", "read", None, NOW)
    assert not decision.allowed
    assert "carol" not in decision.reason


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        (BOB, [("demo", ["read"]), ("solo", ["maint"])]),
        (ALICE, [("demo", ["read", "write"]), ("ops", ["admin"])]),
        (CAROL, [("demo", ["read"])]),
        (DAVE, [("ops", ["admin", "write"])]),
        (ERIN, [("ops", ["write"])]),
        (CI, [("demo", ["read"]), ("solo", ["maint"])]),
        (MALLORY, []),
        (GROUP_NAMED, []),
    ],
)
def test_visible_targets(identity: Identity, expected: list[tuple[str, list[str]]]) -> None:
    visible = visible_targets(POLICY, identity)
    assert [(t.name, [s.name for s in scopes]) for t, scopes in visible] == expected


@pytest.mark.parametrize(
    ("identity", "expected"),
    [
        (ALICE, {"dba"}),
        (BOB, {"dev"}),
        (DAVE, {"oncall"}),
        (MALLORY, {"sales"}),
        (Identity("alice", frozenset({"dev"})), {"dba", "dev"}),
    ],
)
def test_effective_groups(identity: Identity, expected: set[str]) -> None:
    assert effective_groups(POLICY, identity) == expected
