"""Approval, reason and break-glass rules: how they read from a file and what evaluate decides."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta

import pytest

from server.policy import Identity, PolicyError, evaluate, parse_policy
from server.policy.model import NO_APPROVAL, ApprovalPolicy

POLICY_TEXT = textwrap.dedent(
    """\
    version: 1
    groups:
      dba: [bob, carol]
    targets:
      demo:
        database: demo
        admin_dsn_env: DEMO_DSN
        scopes:
          read:
            grants: [demo_read]
            max_ttl: 8h
            allow: {groups: [dev, dba]}
          write:
            grants: [demo_write]
            max_ttl: 1h
            default_ttl: 15m
            allow: {groups: [dev, dba]}
            reason_required: true
            approval:
              approvers: {groups: [dba]}
              min_approvals: 2
              approval_ttl: 30m
          admin:
            grants: [demo_admin]
            max_ttl: 1h
            allow: {groups: [dev]}
            break_glass: true
            approval:
              approvers: {identities: [erin]}
              pending_ttl: 2h
              single_use: false
          solo:
            grants: [demo_read]
            max_ttl: 1h
            allow: {identities: [erin, frank]}
            approval: {approvers: {identities: [erin]}}
          optional:
            grants: [demo_read]
            max_ttl: 1h
            allow: {groups: [dev]}
            approval: {required: false, approvers: {groups: [dba]}}
    """
)
POLICY = parse_policy(POLICY_TEXT, "policy.yaml")
NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
M = timedelta(minutes=1)
H = timedelta(hours=1)

ALICE = Identity("alice", frozenset({"dev"}))
BOB = Identity("bob", frozenset())  # dba through the policy's groups
ERIN = Identity("erin", frozenset())
FRANK = Identity("frank", frozenset())
MALLORY = Identity("mallory", frozenset({"sales"}))

W = "targets.demo.scopes.write"
A = "targets.demo.scopes.admin"


def test_approval_blocks_read_into_typed_values() -> None:
    scopes = POLICY.targets["demo"].scopes
    assert scopes["read"].approval is NO_APPROVAL
    assert not scopes["read"].approval.required
    assert (scopes["read"].reason_required, scopes["read"].break_glass) == (False, False)
    assert scopes["write"].approval == ApprovalPolicy(
        required=True,
        approver_groups=frozenset({"dba"}),
        approver_identities=frozenset(),
        min_approvals=2,
        approval_ttl=30 * M,
        pending_ttl=24 * H,
        single_use=True,
    )
    assert scopes["write"].reason_required
    admin = scopes["admin"]
    assert admin.break_glass
    assert admin.approval.approver_identities == frozenset({"erin"})
    assert (admin.approval.min_approvals, admin.approval.approval_ttl) == (1, H)
    assert (admin.approval.pending_ttl, admin.approval.single_use) == (2 * H, False)
    assert not scopes["optional"].approval.required


Expected = tuple[str, str, str | None, timedelta | None]


@pytest.mark.parametrize(
    ("identity", "scope", "ttl", "reason", "glass", "expected", "why"),
    [
        (ALICE, "write", None, "INC-1", False, ("needs_approval", f"{W}.approval", "write", 15 * M),
         "needs 2 approvals from group dba"),
        (ALICE, "write", 30 * M, "INC-1", False,
         ("needs_approval", f"{W}.approval", "write", 30 * M), "2 approvals"),
        (BOB, "write", None, "INC-1", False, ("needs_approval", f"{W}.approval", "write", 15 * M),
         "group dba"),  # an approver asking still needs two others
        (ALICE, "write", None, None, False, ("denied", f"{W}.reason_required", "write", None),
         "requires a reason"),
        (ALICE, "write", None, "   ", False, ("denied", f"{W}.reason_required", "write", None),
         "requires a reason"),
        (ALICE, "write", 2 * H, "INC-1", False, ("denied", "scope.max_ttl", "write", None),
         "longer than the maximum"),
        (MALLORY, "write", None, "INC-1", False, ("denied", f"{W}.allow", "write", None),
         "may not use"),
        (ALICE, "read", None, None, False,
         ("allowed", "targets.demo.scopes.read.allow", "read", H), "group dev"),
        (ALICE, "admin", None, None, False, ("needs_approval", f"{A}.approval", "admin", H),
         "1 approval from a named approver"),
        (ALICE, "admin", None, "INC-2", True, ("allowed", f"{A}.break_glass", "admin", H),
         "break-glass"),
        (ALICE, "admin", None, None, True, ("denied", f"{A}.break_glass", "admin", None),
         "needs a reason"),
        (ALICE, "admin", None, " ", True, ("denied", f"{A}.break_glass", "admin", None),
         "needs a reason"),
        (ALICE, "write", None, "INC-1", True, ("denied", f"{W}.break_glass", "write", None),
         "does not offer break-glass"),
        (ALICE, "read", None, "x", True,
         ("denied", "targets.demo.scopes.read.break_glass", "read", None), "does not offer"),
        (MALLORY, "admin", None, "INC-2", True, ("denied", f"{A}.allow", "admin", None),
         "may not use"),  # break-glass never widens who may use a scope
        (ERIN, "solo", None, None, False,
         ("denied", "targets.demo.scopes.solo.approval.approvers", "solo", None),
         "other than the requester"),
        (FRANK, "solo", None, None, False,
         ("needs_approval", "targets.demo.scopes.solo.approval", "solo", H), "named approver"),
        (ALICE, "optional", None, None, False,
         ("allowed", "targets.demo.scopes.optional.allow", "optional", H), "group dev"),
    ],
)  # fmt: skip
def test_evaluate_approvals(
    identity: Identity,
    scope: str,
    ttl: timedelta | None,
    reason: str | None,
    glass: bool,
    expected: Expected,
    why: str,
) -> None:
    d = evaluate(POLICY, identity, "demo", scope, ttl, NOW, reason=reason, break_glass=glass)
    assert (d.outcome, d.rule, d.scope, d.ttl) == expected
    assert why in d.reason
    assert d.allowed is (d.outcome == "allowed")
    assert d.needs_approval is (d.outcome == "needs_approval")
    assert d.break_glass is (d.outcome == "allowed" and glass)
    if d.needs_approval:
        assert d.approval == POLICY.targets["demo"].scopes[scope].approval


@pytest.mark.parametrize(
    ("scope", "reason", "glass"),
    [("write", None, False), ("write", "  ", False), ("admin", None, True)],
)
def test_a_missing_reason_says_how_to_give_one(scope: str, reason: str | None, glass: bool) -> None:
    d = evaluate(POLICY, ALICE, "demo", scope, None, NOW, reason=reason, break_glass=glass)
    assert d.outcome == "denied"
    assert d.hint == f'add --reason "…" (the ticket or incident this is for) (rule: {d.rule})'


def test_other_refusals_name_their_rule() -> None:
    d = evaluate(POLICY, MALLORY, "demo", "write", None, NOW, reason="INC-1")
    assert d.hint == f"rule: {d.rule}"


def test_needs_approval_never_names_the_named_approvers() -> None:
    d = evaluate(POLICY, FRANK, "demo", "solo", None, NOW)
    assert "erin" not in d.reason


BASE = textwrap.dedent(
    """\
    version: 1
    targets:
      demo:
        database: demo
        admin_dsn_env: DEMO_DSN
        scopes:
          write:
            grants: [demo_write]
            max_ttl: 1h
            allow: {groups: [dev]}
            approval:
              approvers:
                groups: [dba]
              min_approvals: 1
    """
)


def edited(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def test_base_is_valid() -> None:
    scope = parse_policy(BASE, "policy.yaml").targets["demo"].scopes["write"]
    assert scope.approval.required and scope.approval.approver_groups == {"dba"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            edited("          approvers:\n            groups: [dba]\n", ""),
            "policy.yaml:11: targets.demo.scopes.write.approval.approvers: approval is "
            "required, so name who may approve (groups, identities or both)",
            id="no-approvers",
        ),
        pytest.param(
            edited("groups: [dba]", "groups: []"),
            "policy.yaml:12: targets.demo.scopes.write.approval.approvers: approval is "
            "required, so name who may approve (groups, identities or both)",
            id="empty-approvers",
        ),
        pytest.param(
            edited("groups: [dba]", "identities: [erin, frank]").replace(
                "min_approvals: 1", "min_approvals: 3"
            ),
            "policy.yaml:14: targets.demo.scopes.write.approval.min_approvals: 3 approvals "
            "can never be reached: only 2 approvers are listed",
            id="unreachable-count",
        ),
        pytest.param(
            edited("min_approvals: 1", "min_approvals: 0"),
            "policy.yaml:14: targets.demo.scopes.write.approval.min_approvals: "
            "'0' is not a whole number from 1 to 9999",
            id="zero-approvals",
        ),
        pytest.param(
            edited("min_approvals: 1", "min_approvals: two"),
            "policy.yaml:14: targets.demo.scopes.write.approval.min_approvals: "
            "'two' is not a whole number from 1 to 9999",
            id="words-for-numbers",
        ),
        pytest.param(
            edited("min_approvals: 1", "min_approvals: 1\n          required: yes"),
            "policy.yaml:15: targets.demo.scopes.write.approval.required: "
            "'yes' is not true or false",
            id="yaml-1.1-boolean",
        ),
        pytest.param(
            edited("min_approvals: 1", "approval_ttl: 30"),
            "policy.yaml:14: targets.demo.scopes.write.approval.approval_ttl: "
            "'30' is not a duration: add a unit, e.g. 30m or 30s",
            id="bare-number-ttl",
        ),
        pytest.param(
            edited("min_approvals: 1", "pending_ttl: 0s"),
            "policy.yaml:14: targets.demo.scopes.write.approval.pending_ttl: "
            "'0s' is too short: a TTL must be longer than zero",
            id="zero-pending-ttl",
        ),
        pytest.param(
            edited("min_approvals: 1", "aproval_ttl: 1h"),
            "policy.yaml:14: targets.demo.scopes.write.approval.aproval_ttl: "
            "unknown key (did you mean 'approval_ttl'?)",
            id="misspelt-approval-key",
        ),
        pytest.param(
            edited("            groups: [dba]", "            group: [dba]"),
            "policy.yaml:13: targets.demo.scopes.write.approval.approvers.group: "
            "unknown key (did you mean 'groups'?)",
            id="misspelt-approvers-key",
        ),
        pytest.param(
            edited("min_approvals: 1", "single_use: sometimes"),
            "policy.yaml:14: targets.demo.scopes.write.approval.single_use: "
            "'sometimes' is not true or false",
            id="single-use-not-bool",
        ),
        pytest.param(
            edited("allow: {groups: [dev]}", "allow: {groups: [dev]}\n        reason_required: 1"),
            "policy.yaml:11: targets.demo.scopes.write.reason_required: '1' is not true or false",
            id="reason-required-not-bool",
        ),
        pytest.param(
            edited(
                "        approval:\n          approvers:\n            groups: [dba]\n"
                "          min_approvals: 1\n",
                "        break_glass: true\n",
            ),
            "policy.yaml:11: targets.demo.scopes.write.break_glass: break-glass skips an "
            "approval, but this scope requires none",
            id="break-glass-without-approval",
        ),
        pytest.param(
            edited("        approval:\n", "        approvals:\n"),
            "policy.yaml:11: targets.demo.scopes.write.approvals: "
            "unknown key (did you mean 'approval'?)",
            id="misspelt-approval",
        ),
    ],
)
def test_policy_errors(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml")
    assert expected in [str(p) for p in caught.value.problems]


def test_an_approval_block_may_say_it_is_not_required_and_name_nobody() -> None:
    text = edited("          approvers:\n            groups: [dba]\n", "").replace(
        "min_approvals: 1", "required: false"
    )
    scope = parse_policy(text, "policy.yaml").targets["demo"].scopes["write"]
    assert not scope.approval.required
