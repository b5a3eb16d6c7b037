"""The ``guardrails`` section of targets and scopes, and the rules the gateway makes of it."""

from __future__ import annotations

import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from server.gateway.guardrails import GuardrailRules, Outcome
from server.gateway.rules import rules_for
from server.gateway.sqlcheck import StatementClass
from server.policy import PolicyError, parse_policy

POLICY = textwrap.dedent(
    """\
    version: 1
    targets:
      demo:
        database: demo
        admin_dsn_env: DEMO_ADMIN_DSN
        guardrails:
          production: true
          max_rows_by_explain: 1000
        scopes:
          read:
            grants: [demo_read]
            max_ttl: 8h
            allow:
              groups: [dev]
          write:
            grants: [demo_write]
            max_ttl: 1h
            allow:
              groups: [dev]
            guardrails:
              review: [ddl]
              functions_deny: [pg_sleep, myschema.*]
              require_where: false
              unknown: review
          ops:
            grants: [demo_write]
            max_ttl: 1h
            allow:
              groups: [dev]
            guardrails:
              preset: admin
              production: false
              allow_listen_notify: true
              max_rows_by_explain: 0
    """
)


def _scopes() -> dict[str, GuardrailRules]:
    policy = parse_policy(POLICY, "policy.yaml", base_dir=Path("/etc"))
    return {n: rules_for(n, s.guardrails) for n, s in policy.targets["demo"].scopes.items()}


def test_presets_by_scope_name_and_overrides() -> None:
    rules = _scopes()
    assert rules["read"] == replace(
        GuardrailRules.preset("read", production=True), max_rows_by_explain=1000
    )
    write = rules["write"]
    assert write.max_rows_by_explain == 1000  # the target's, inherited
    assert write.review == {StatementClass.DDL}  # the override replaces production's writes
    assert write.functions_deny == {"pg_sleep", "myschema.*"}
    assert write.require_where is False and write.unknown is Outcome.REVIEW
    ops = rules["ops"]
    assert ops.allow_code and ops.allow_listen_notify
    assert ops.review == {StatementClass.DDL}  # production: false at the scope wins
    assert ops.max_rows_by_explain == 0


def test_without_a_section_the_defaults_apply() -> None:
    section = "    guardrails:\n      production: true\n      max_rows_by_explain: 1000\n"
    assert section in POLICY
    text = POLICY.replace(section, "", 1)
    policy = parse_policy(text, "policy.yaml", base_dir=Path("/etc"))
    read = policy.targets["demo"].scopes["read"]
    assert rules_for("read", read.guardrails) == GuardrailRules.preset("read")


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ("review: [ddl]", "review: [ddl, bogus]", "targets.demo.scopes.write.guardrails.review[1]"),
        ("preset: admin", "preset: root", "targets.demo.scopes.ops.guardrails.preset"),
        ("unknown: review", "unknown: allow", "targets.demo.scopes.write.guardrails.unknown"),
        ("pg_sleep,", "'pg_sleep(',", "targets.demo.scopes.write.guardrails.functions_deny[0]"),
        ("production: true", "production: maybe", "targets.demo.guardrails.production"),
        ("require_where: false", "require_wher: false", "targets.demo.scopes.write.guardrails"),
        (
            "max_rows_by_explain: 1000",
            "max_rows_by_explain: -1",
            "targets.demo.guardrails.max_rows_by_explain",
        ),
        (
            "max_rows_by_explain: 0",
            "max_rows_by_explain: lots",
            "targets.demo.scopes.ops.guardrails.max_rows_by_explain",
        ),
    ],
)
def test_mistakes_name_file_line_and_key(old: str, new: str, problem: str) -> None:
    assert old in POLICY
    with pytest.raises(PolicyError) as caught:
        parse_policy(POLICY.replace(old, new, 1), "policy.yaml", base_dir=Path("/etc"))
    found = [str(p) for p in caught.value.problems]
    assert any(p.startswith("policy.yaml:") and problem in p for p in found), found
