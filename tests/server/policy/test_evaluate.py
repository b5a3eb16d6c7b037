"""Policy evaluation as tables: who may use which scope of which target, for how long, and why not."""

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


@pytest.mark.parametrize(
    ("identity", "target", "scope", "ttl", "allowed", "rule", "chosen", "granted", "reason"),
    [
        # explicit scope, TTL defaults and limits
        (BOB, "demo", "read", None, True, "targets.demo.scopes.read.allow", "read", 30 * M, "bob is in group dev"),
        (BOB, "demo", "read", 2 * H, True, "targets.demo.scopes.read.allow", "read", 2 * H, "group dev"),
        (BOB, "demo", "read", 8 * H, True, "targets.demo.scopes.read.allow", "read", 8 * H, "group dev"),
        (BOB, "demo", "read", 8 * H + timedelta(seconds=1), False, "scope.max_ttl", "read", None, "longer than the maximum 8h of scope 'read'"),
        (BOB, "demo", "read", timedelta(0), False, "ttl.not_positive", "read", None, "longer than zero"),
        (BOB, "demo", "read", -5 * M, False, "ttl.not_positive", "read", None, "longer than zero"),
        (BOB, "demo", "write", None, False, "targets.demo.scopes.write.allow", "write", None, "bob may not use scope 'write' of target 'demo' (allowed groups: dba)"),
        (ALICE, "demo", "write", H, True, "targets.demo.scopes.write.allow", "write", H, "alice is in group dba"),
        (ALICE, "demo", "write", 2 * H, False, "scope.max_ttl", "write", None, "the requested TTL 2h is longer than the maximum 1h"),
        (ALICE, "ops", "admin", None, True, "targets.ops.scopes.admin.allow", "admin", H, "group dba"),
        (DAVE, "ops", "admin", 2 * H, True, "targets.ops.scopes.admin.allow", "admin", 2 * H, "dave is in group oncall"),
        (CAROL, "demo", "read", None, True, "targets.demo.scopes.read.allow", "read", 30 * M, "carol is listed by name"),
        (CAROL, "demo", "write", None, False, "targets.demo.scopes.write.allow", "write", None, "carol may not use"),
        (FRANK, "solo", "maint", 4 * H, True, "targets.solo.scopes.maint.allow", "maint", 4 * H, "listed by name"),
        # nobody may use an empty allow list
        (ALICE, "demo", "nobody", None, False, "targets.demo.scopes.nobody.allow", "nobody", None, "nobody may use it"),
        (MALLORY, "demo", "read", None, False, "targets.demo.scopes.read.allow", "read", None, "allowed groups: dba, dev"),
        (MALLORY, "ops", "admin", H, False, "targets.ops.scopes.admin.allow", "admin", None, "mallory may not use"),
        # the allow check comes before the TTL check
        (MALLORY, "demo", "read", timedelta(0), False, "targets.demo.scopes.read.allow", "read", None, "may not use"),
        (MALLORY, "demo", "read", 99 * H, False, "targets.demo.scopes.read.allow", "read", None, "may not use"),
        # groups are matched exactly, and a name is not a group
        (SHOUTY, "demo", "write", None, False, "targets.demo.scopes.write.allow", "write", None, "may not use"),
        (GROUP_NAMED, "demo", "read", None, False, "targets.demo.scopes.read.allow", "read", None, "may not use"),
        # no scope given
        (BOB, "demo", None, None, True, "targets.demo.scopes.read.allow", "read", 30 * M, "group dev"),
        (ALICE, "demo", None, None, True, "targets.demo.scopes.read.allow", "read", 30 * M, "group dba"),
        (ALICE, "demo", None, 9 * H, False, "scope.max_ttl", "read", None, "maximum 8h"),
        (ERIN, "ops", None, None, True, "targets.ops.scopes.write.allow", "write", H, "erin is listed by name"),
        (CI, "solo", None, None, True, "targets.solo.scopes.maint.allow", "maint", H, "ci-deploy is in group dev"),
        (DAVE, "ops", None, None, False, "scope.ambiguous", None, None, "target 'ops' has several scopes dave may use (admin, write): choose one"),
        (MALLORY, "demo", None, None, False, "scope.none_allowed", None, None, "mallory may use no scope of target 'demo' (its scopes: read, write, nobody)"),
        (CAROL, "ops", None, None, False, "scope.none_allowed", None, None, "its scopes: admin, write"),
        # unknown names
        (BOB, "nope", "read", None, False, "target.unknown", None, None, "there is no target named 'nope'"),
        (BOB, "nope", None, None, False, "target.unknown", None, None, "no target named 'nope'"),
        (BOB, "demo", "admin", None, False, "scope.unknown", "admin", None, "target 'demo' has no scope 'admin' (its scopes: read, write, nobody)"),
        (MALLORY, "demo", "admin", H, False, "scope.unknown", "admin", None, "has no scope 'admin'"),
    ],
)  # fmt: skip
def test_evaluate(
    identity: Identity,
    target: str,
    scope: str | None,
    ttl: timedelta | None,
    allowed: bool,
    rule: str,
    chosen: str | None,
    granted: timedelta | None,
    reason: str,
) -> None:
    decision = evaluate(POLICY, identity, target, scope, ttl, NOW)
    assert (decision.allowed, decision.rule, decision.scope, decision.ttl) == (
        allowed,
        rule,
        chosen,
        granted,
    )
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
