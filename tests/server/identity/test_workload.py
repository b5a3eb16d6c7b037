"""Binding workload tokens to the policy's service identities: one table, first match wins."""

from __future__ import annotations

from typing import Any

import pytest

from server.identity.workload import WorkloadClaims, bind, claim_matches
from server.policy.model import WorkloadIdentity

GH = "https://token.actions.githubusercontent.com"
GL = "https://gitlab.example.com"

ENTRIES = (
    WorkloadIdentity(
        name="ci-migrations",
        issuer=GH,
        audience="dbaccess",
        claims={
            "repository": "org/app",
            "ref": "refs/heads/main",
            "environment": "prod*",
            "job_workflow_ref": "org/app/.github/workflows/*@refs/heads/main",
        },
        groups=frozenset({"ci", "migrations"}),
    ),
    WorkloadIdentity(
        name="ci-readonly",
        issuer=GH,
        audience="dbaccess",
        claims={"repository": "org/*"},
        groups=frozenset({"ci"}),
    ),
    WorkloadIdentity(
        name="gitlab-deploy",
        issuer=GL,
        audience="dbaccess-gl",
        claims={"project_path": "group/[ab]pp", "ref_protected": "true", "pipeline_id": "1?"},
        groups=frozenset({"deploy"}),
    ),
)

MAIN = {
    "sub": "repo:org/app:environment:production",
    "repository": "org/app",
    "ref": "refs/heads/main",
    "environment": "production",
    "job_workflow_ref": "org/app/.github/workflows/migrate.yml@refs/heads/main",
}
GITLAB = {"sub": "project_path:group/app", "project_path": "group/app", "ref_protected": True}


def token(
    claims: dict[str, Any], *, issuer: str = GH, audiences: tuple[str, ...] = ("dbaccess",)
) -> WorkloadClaims:
    return WorkloadClaims(issuer=issuer, audiences=audiences, claims=claims)


@pytest.mark.parametrize(
    ("tok", "bound", "reason"),
    [
        pytest.param(token(MAIN), "ci-migrations", None, id="all-claims-match"),
        pytest.param(
            token({**MAIN, "environment": "prod-eu"}), "ci-migrations", None, id="glob-suffix"
        ),
        pytest.param(
            token({**MAIN, "environment": "staging"}),
            "ci-readonly",
            None,
            id="first-fails-second-binds",
        ),
        pytest.param(
            token({**MAIN, "ref": "refs/heads/dev"}), "ci-readonly", None, id="other-branch"
        ),
        pytest.param(
            token({**MAIN, "job_workflow_ref": "org/app/.github/workflows/x.yml@refs/heads/dev"}),
            "ci-readonly",
            None,
            id="workflow-from-another-branch",
        ),
        pytest.param(
            token({k: v for k, v in MAIN.items() if k != "environment"}),
            "ci-readonly",
            None,
            id="missing-claim-skips-entry",
        ),
        pytest.param(
            token({**MAIN, "repository": "other/app"}),
            None,
            "ci-readonly: claim 'repository' does not match 'org/*'",
            id="nothing-matches",
        ),
        pytest.param(
            token({"sub": "x"}),
            None,
            "ci-migrations: the token has no 'repository' claim",
            id="missing-claim-everywhere",
        ),
        pytest.param(
            token({**MAIN, "repository": "ORG/app"}), None, "does not match", id="case-sensitive"
        ),
        pytest.param(
            token(MAIN, audiences=("something-else",)),
            None,
            "audience 'dbaccess' is not among",
            id="wrong-audience",
        ),
        pytest.param(
            token(MAIN, audiences=("other", "dbaccess")), "ci-migrations", None, id="audience-list"
        ),
        pytest.param(
            token(MAIN, issuer="https://evil.example.com"),
            None,
            "no workload identity trusts the issuer https://evil.example.com",
            id="unknown-issuer",
        ),
        pytest.param(
            token({**GITLAB, "pipeline_id": 12}, issuer=GL, audiences=("dbaccess-gl",)),
            "gitlab-deploy",
            None,
            id="bool-and-number-as-json",
        ),
        pytest.param(
            token(
                {**GITLAB, "project_path": "group/xpp", "pipeline_id": 12},
                issuer=GL,
                audiences=("dbaccess-gl",),
            ),
            None,
            "claim 'project_path' does not match 'group/[ab]pp'",
            id="character-class",
        ),
        pytest.param(
            token(
                {**GITLAB, "ref_protected": False, "pipeline_id": 12},
                issuer=GL,
                audiences=("dbaccess-gl",),
            ),
            None,
            "claim 'ref_protected' does not match 'true'",
            id="false-is-not-true",
        ),
        pytest.param(
            token({**GITLAB, "pipeline_id": 123}, issuer=GL, audiences=("dbaccess-gl",)),
            None,
            "claim 'pipeline_id' does not match '1?'",
            id="question-mark-is-one-character",
        ),
    ],
)
def test_bind(tok: WorkloadClaims, bound: str | None, reason: str | None) -> None:
    result = bind(ENTRIES, tok)
    if bound is not None:
        assert result.identity is not None
        assert result.identity.name == bound
        return
    assert result.identity is None
    assert reason is not None and reason in result.reason


def test_first_entry_wins_even_when_later_ones_match_too() -> None:
    result = bind(ENTRIES, token(MAIN))
    assert result.identity is not None
    assert (result.identity.name, result.identity.groups) == (
        "ci-migrations",
        frozenset({"ci", "migrations"}),
    )


def test_no_entries_binds_nothing() -> None:
    assert bind((), token(MAIN)).identity is None


@pytest.mark.parametrize(
    ("value", "pattern", "matches"),
    [
        ("a/b/c", "a/*", True),  # fnmatch: * spans slashes
        (["x", "main"], "ma*", True),  # a list matches when an item does
        ([], "*", False),
        (None, "*", False),
        ({"k": "v"}, "*", False),
        (7, "7", True),
        (True, "true", True),
        ("", "*", True),
    ],
)
def test_claim_matches(value: Any, pattern: str, matches: bool) -> None:
    assert claim_matches(value, pattern) is matches
