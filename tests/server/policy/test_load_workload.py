"""The policy's ``workload_identities``: the typed result and an error for each kind of mistake."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from server.policy import PolicyError, parse_policy

# Line numbers matter: the error table below refers to them.
BASE = textwrap.dedent(
    """\
    version: 1
    targets:
      demo:
        database: demo
        admin_dsn_env: DEMO_ADMIN_DSN
        scopes:
          read: {grants: [demo_read], max_ttl: 1h, allow: {groups: [ci]}}
    workload_identities:
      - name: ci-migrations
        issuer: https://token.actions.githubusercontent.com
        audience: dbaccess
        claims:
          repository: org/app
          ref: refs/heads/main
          environment: "prod*"
        groups: [ci, migrations]
      - name: gitlab
        issuer: http://127.0.0.1:8080
        audience: dbaccess-gl
        claims: {project_path: "group/*"}
    """
)


def edited(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def problems_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "policy.yaml", base_dir=Path("/etc/dbaccess"))
    return [str(p) for p in caught.value.problems]


def test_entries_read_in_file_order() -> None:
    policy = parse_policy(BASE, "policy.yaml", base_dir=Path("/etc/dbaccess"))
    first, second = policy.workload_identities
    assert first.name == "ci-migrations"
    assert first.issuer == "https://token.actions.githubusercontent.com"
    assert first.audience == "dbaccess"
    assert dict(first.claims) == {
        "repository": "org/app",
        "ref": "refs/heads/main",
        "environment": "prod*",
    }
    assert first.groups == frozenset({"ci", "migrations"})
    assert (second.name, second.issuer, second.groups) == (
        "gitlab",
        "http://127.0.0.1:8080",
        frozenset(),
    )


def test_a_job_may_be_an_agent_acting_for_a_person() -> None:
    text = BASE + "    agent_for: alice\n"
    first, second = parse_policy(
        text, "policy.yaml", base_dir=Path("/etc/dbaccess")
    ).workload_identities
    assert (first.agent_for, second.agent_for) == (None, "alice")


def test_policies_without_workload_identities_have_none() -> None:
    text = BASE.split("workload_identities:")[0]
    assert parse_policy(text, "policy.yaml").workload_identities == ()


ERRORS = [
    pytest.param(
        edited("  - name: gitlab\n", "  - name: ci-migrations\n"),
        [
            "policy.yaml:17: workload_identities[1].name: "
            "'ci-migrations' is already the name of workload_identities[0]"
        ],
        id="duplicate-name",
    ),
    pytest.param(
        edited("  - name: gitlab\n", "  - name: git lab\n"),
        ["policy.yaml:17: workload_identities[1].name: 'git lab' is not a valid workload identity"],
        id="bad-name",
    ),
    pytest.param(
        edited("issuer: http://127.0.0.1:8080", "issuer: http://ci.example.com"),
        [
            "policy.yaml:18: workload_identities[1].issuer: 'http://ci.example.com': "
            "an issuer must use https (http only on loopback)"
        ],
        id="plain-http-issuer",
    ),
    pytest.param(
        edited("issuer: http://127.0.0.1:8080", "issuer: ci.example.com"),
        [
            "policy.yaml:18: workload_identities[1].issuer: 'ci.example.com' is not an "
            "issuer URL such as https://login.example.com"
        ],
        id="issuer-not-a-url",
    ),
    pytest.param(
        edited("    audience: dbaccess-gl\n", ""),
        ["policy.yaml:17: workload_identities[1].audience: required key is missing"],
        id="missing-audience",
    ),
    pytest.param(
        edited('    claims: {project_path: "group/*"}\n', "    claims: {}\n"),
        ["policy.yaml:20: workload_identities[1].claims: list at least one claim to match"],
        id="no-claims",
    ),
    pytest.param(
        edited('    claims: {project_path: "group/*"}\n', ""),
        ["policy.yaml:17: workload_identities[1].claims: required key is missing"],
        id="missing-claims",
    ),
    pytest.param(
        edited("      ref: refs/heads/main\n", "      aud: dbaccess\n"),
        [
            "policy.yaml:14: workload_identities[0].claims.aud: "
            "'aud' is checked by the broker itself: use issuer and audience"
        ],
        id="reserved-claim",
    ),
    pytest.param(
        edited("      ref: refs/heads/main\n", "      ref: [a, b]\n"),
        ["policy.yaml:14: workload_identities[0].claims.ref: expected a single value, got a list"],
        id="claim-pattern-a-list",
    ),
    pytest.param(
        edited("    groups: [ci, migrations]\n", "    group: [ci]\n"),
        ["policy.yaml:16: workload_identities[0].group: unknown key (did you mean 'groups'?)"],
        id="typo-with-suggestion",
    ),
    pytest.param(
        edited("    groups: [ci, migrations]\n", "    groups: [' ci']\n"),
        [
            "policy.yaml:16: workload_identities[0].groups[0]: "
            "' ci' has leading/trailing spaces or control characters"
        ],
        id="bad-group",
    ),
    pytest.param(
        BASE.split("workload_identities:")[0] + "workload_identities: {ci: x}\n",
        ["policy.yaml:8: workload_identities: expected a list, got a mapping"],
        id="not-a-list",
    ),
    pytest.param(
        BASE.split("workload_identities:")[0] + "workload_identities:\n  - ci\n",
        ["policy.yaml:9: workload_identities[0]: expected a mapping, got 'ci'"],
        id="entry-not-a-mapping",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_errors_name_line_and_key(text: str, expected: list[str]) -> None:
    problems = problems_of(text)
    assert len(problems) == len(expected), problems
    for got, want in zip(problems, expected, strict=True):
        assert got.startswith(want), (got, want)
