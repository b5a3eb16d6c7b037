"""From a target's scopes to each scope's guardrail rules, knowing what the other scopes allow."""

from __future__ import annotations

import textwrap
from pathlib import Path

from server.gateway.rules import target_rules
from server.gateway.sqlcheck import StatementClass
from server.policy.load import parse_policy

POLICY = textwrap.dedent(
    """\
    version: 1
    targets:
      app:
        database: app
        issuer: postgres
        admin_dsn_env: APP_ADMIN_DSN
        scopes:
          read:
            grants: [app_read]
            default_ttl: 15m
            max_ttl: 1h
            allow: {groups: [dev]}
          write:
            grants: [app_write]
            default_ttl: 15m
            max_ttl: 1h
            allow: {groups: [dev]}
            guardrails: {block: [ddl]}
          admin:
            grants: [app_admin]
            default_ttl: 15m
            max_ttl: 1h
            allow: {groups: [dba]}
            guardrails: {preset: admin}
    """
)


def test_a_read_scope_knows_which_scopes_allow_what_it_blocks() -> None:
    target = parse_policy(POLICY, "policy.yaml", base_dir=Path("/etc/dbaccess")).targets["app"]
    read = target_rules(target, "read")
    assert read.block == {StatementClass.WRITE, StatementClass.DDL}
    assert read.elsewhere == (
        (StatementClass.WRITE, "write"),
        (StatementClass.DDL, "admin"),
        (StatementClass.WRITE, "admin"),
    )
    assert target_rules(target, "write").elsewhere == ((StatementClass.DDL, "admin"),)
    assert target_rules(target, "admin").elsewhere == ()
