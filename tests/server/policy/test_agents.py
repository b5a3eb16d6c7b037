"""The policy's rules for AI agents: which scopes they may use, their guardrails and budgets."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from server.gateway.rules import agent_rules, target_rules
from server.gateway.sqlcheck import StatementClass
from server.policy import Identity, evaluate, parse_policy, visible_targets
from server.policy.agents import (
    AGENT_MAX_RESULT_BYTES,
    AGENT_MAX_RESULT_ROWS,
    agent_limits,
    agents_allowed,
)
from server.policy.load import PolicyError

POLICY = textwrap.dedent(
    """\
    version: 1
    targets:
      app:
        database: app
        admin_dsn_env: APP_ADMIN_DSN
        scopes:
          read:
            grants: [app_read]
            max_ttl: 1h
            allow: {groups: [dev, bots]}
          report:
            grants: [app_read]
            max_ttl: 1h
            allow: {groups: [dev, bots]}
            guardrails: {preset: read}
            limits: {max_result_rows: 200}
          write:
            grants: [app_write]
            max_ttl: 1h
            allow: {groups: [dev, bots]}
          fix:
            grants: [app_write]
            max_ttl: 1h
            allow: {groups: [dev, bots]}
            agents:
              allow: true
              limits: {max_result_rows: 50}
          migrate:
            grants: [app_owner]
            max_ttl: 1h
            allow: {groups: [dev, bots]}
            agents:
              allow: true
              guardrails: {review: [ddl, write], block: [privilege]}
          quiet:
            grants: [app_read]
            max_ttl: 1h
            allow: {groups: [dev, bots]}
            agents: {allow: false}
    """
)
APP = parse_policy(POLICY, "policy.yaml", base_dir=Path("/etc/dbaccess")).targets["app"]
POL = parse_policy(POLICY, "policy.yaml", base_dir=Path("/etc/dbaccess"))
NOW = datetime(2026, 1, 1, tzinfo=UTC)
BOT = Identity("bot", frozenset({"bots"}), kind="agent", owner="alice")
ALICE = Identity("alice", frozenset({"dev"}))
W, D, P = StatementClass.WRITE, StatementClass.DDL, StatementClass.PRIVILEGE


@pytest.mark.parametrize(
    ("scope", "allowed"),
    [
        ("read", True),  # read-only by its name
        ("report", True),  # read-only by its preset
        ("write", False),  # not read-only, and its agents section says nothing
        ("fix", True),
        ("migrate", True),
        ("quiet", False),  # read-only, but agents.allow: false
    ],
)
def test_which_scopes_agents_may_use(scope: str, allowed: bool) -> None:
    assert agents_allowed(APP.scopes[scope]) is allowed
    decision = evaluate(POL, BOT, "app", scope, None, NOW)
    assert decision.allowed is allowed
    if not allowed:
        assert decision.rule == f"targets.app.scopes.{scope}.agents.allow"
    # People are not held to the agents' rules.
    assert evaluate(POL, ALICE, "app", scope, None, NOW).allowed


def test_an_agent_lists_and_chooses_only_scopes_it_may_use() -> None:
    [(_target, scopes)] = visible_targets(POL, BOT)
    assert [s.name for s in scopes] == ["read", "report", "fix", "migrate"]
    assert evaluate(POL, BOT, "app", None, None, NOW).scope == "read"


@pytest.mark.parametrize(
    ("scope", "rows", "size"),
    [
        ("read", AGENT_MAX_RESULT_ROWS, AGENT_MAX_RESULT_BYTES),  # the agents' budgets
        ("report", 200, AGENT_MAX_RESULT_BYTES),  # the scope's own, smaller
        ("fix", 50, AGENT_MAX_RESULT_BYTES),  # the agents section's
    ],
)
def test_agents_have_result_budgets(scope: str, rows: int, size: int) -> None:
    limits = agent_limits(APP.scopes[scope])
    assert (limits.max_result_rows, limits.max_result_bytes) == (rows, size)


@pytest.mark.parametrize(
    ("scope", "block", "review"),
    [
        ("read", {W, D, P}, set()),  # the read preset blocks writes already
        ("fix", {D, P}, {W}),  # DDL blocked, every write by review
        ("migrate", {P}, {D, W}),  # as its agents section says
    ],
)
def test_agent_guardrails(
    scope: str, block: set[StatementClass], review: set[StatementClass]
) -> None:
    rules = agent_rules(target_rules(APP, scope), APP.scopes[scope])
    assert (set(rules.block), set(rules.review)) == (block, review)


def test_agents_section_is_checked() -> None:
    bad = POLICY.replace("agents: {allow: false}", "agents: {allow: maybe, approve: true}")
    with pytest.raises(PolicyError) as err:
        parse_policy(bad, "policy.yaml", base_dir=Path("/etc/dbaccess"))
    text = str(err.value)
    assert "targets.app.scopes.quiet.agents.allow" in text
    assert "approve" in text


@pytest.mark.parametrize(
    ("sql", "agent_rule", "person_rule"),
    [
        ("SELECT 1; SELECT 2", "guardrails.one_statement", "guardrails.allow"),
        ("SELECT 1", "guardrails.allow", "guardrails.allow"),
        # A write among several is refused as the write it is.
        ("COMMIT; DELETE FROM orders", "guardrails.block_write", "guardrails.block_write"),
    ],
)
def test_agents_send_one_statement_at_a_time(sql: str, agent_rule: str, person_rule: str) -> None:
    from server.gateway.guardrails import decide
    from server.gateway.sqlcheck import analyze

    person = target_rules(APP, "read")
    agent = agent_rules(person, APP.scopes["read"])
    assert decide(analyze(sql), agent).rule.startswith(agent_rule)
    assert decide(analyze(sql), person).rule.startswith(person_rule)


@pytest.mark.parametrize(
    ("scope", "sql", "agent_rule", "person_rule"),
    [
        # A sequence's nextval/setval writes: for an agent, a write like any other.
        ("fix", "SELECT nextval('orders_id_seq')", "guardrails.review_write", "guardrails.allow"),
        ("fix", "SELECT setval('orders_id_seq', 1)", "guardrails.review_write", "guardrails.allow"),
        ("fix", "SELECT pg_catalog.nextval('s')", "guardrails.review_write", "guardrails.allow"),
        (
            "fix",
            "SELECT id FROM orders WHERE id = nextval('s')",
            "guardrails.review_write",
            "guardrails.allow",
        ),
        ("fix", "SELECT currval('orders_id_seq')", "guardrails.allow", "guardrails.allow"),
        # Maintenance that rewrites, locks or re-plans tables: a write for agents.
        ("fix", "VACUUM FULL orders", "guardrails.review_write", "guardrails.allow"),
        ("fix", "CLUSTER orders", "guardrails.review_write", "guardrails.allow"),
        ("fix", "REINDEX TABLE orders", "guardrails.review_write", "guardrails.allow"),
        ("fix", "ANALYZE orders", "guardrails.review_write", "guardrails.allow"),
        ("read", "VACUUM orders", "guardrails.block_write", "guardrails.allow"),
        ("read", "SELECT nextval('orders_id_seq')", "guardrails.block_write", "guardrails.allow"),
        (
            "fix",
            "INSERT INTO t VALUES (nextval('s'))",
            "guardrails.review_write",
            "guardrails.allow",
        ),
    ],
)
def test_what_writes_is_a_write_for_agents(
    scope: str, sql: str, agent_rule: str, person_rule: str
) -> None:
    from server.gateway.guardrails import decide
    from server.gateway.sqlcheck import analyze

    person = target_rules(APP, scope)
    agent = agent_rules(person, APP.scopes[scope])
    assert decide(analyze(sql), agent).rule == agent_rule
    assert decide(analyze(sql), person).rule == person_rule


def test_an_agent_cannot_break_glass() -> None:
    # Break-glass skips the approval a scope requires, on a person's word in an
    # emergency; an agent's session waits for the approval like any of its changes.
    urgent = textwrap.indent(
        textwrap.dedent(
            """\
            urgent:
              grants: [app_write]
              max_ttl: 1h
              allow: {groups: [dev, bots]}
              approval: {approvers: {groups: [dba]}}
              break_glass: true
              agents: {allow: true}
            """
        ),
        "      ",
    )
    pol = parse_policy(POLICY + urgent, "policy.yaml", base_dir=Path("/etc/dbaccess"))
    person = evaluate(pol, ALICE, "app", "urgent", None, NOW, reason="INC-1", break_glass=True)
    assert person.allowed and person.break_glass
    bot = evaluate(pol, BOT, "app", "urgent", None, NOW, reason="INC-1", break_glass=True)
    assert not bot.allowed and not bot.break_glass and bot.approval is None
    assert bot.rule == "targets.app.scopes.urgent.break_glass"
    assert evaluate(pol, BOT, "app", "urgent", None, NOW, reason="INC-1").approval is not None
