"""The policy's ``slack_users``: Slack user ids mapped to the identities they review as."""

from __future__ import annotations

import textwrap

import pytest

from server.policy import PolicyError, parse_policy

BASE = textwrap.dedent(
    """\
    version: 1
    targets:
      demo:
        database: demo
        admin_dsn_env: DEMO_ADMIN_DSN
        scopes:
          read: {grants: [demo_read], max_ttl: 1h, allow: {groups: [dev]}}
    """
)


def test_mapping_read_and_absent_means_empty() -> None:
    text = BASE + "slack_users:\n  U024BE7LH: alice@example.com\n  W0ENTERPRISE: bob\n"
    policy = parse_policy(text, "policy.yaml")
    assert dict(policy.slack_users) == {"U024BE7LH": "alice@example.com", "W0ENTERPRISE": "bob"}
    assert dict(parse_policy(BASE, "policy.yaml").slack_users) == {}


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ("  alice: alice", "policy.yaml:9: slack_users.alice: 'alice' is not a Slack user id"),
        ("  U024BE7LH: ' alice'", "leading/trailing spaces"),
        ("  U024BE7LH: [alice]", "slack_users.U024BE7LH"),
    ],
)
def test_errors_name_line_and_key(entries: str, expected: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(BASE + "slack_users:\n" + entries + "\n", "policy.yaml")
    assert expected in str(caught.value)
