"""Binding a verified workload token to a service identity of the policy (pure functions).

A CI job proves what it is with a JWT its platform signs (GitHub Actions,
GitLab CI, a cloud's workload identity): the claims say which repository, branch,
environment and workflow the job runs for.  The policy's ``workload_identities``
list says which of those jobs become which service identity.  :func:`bind` walks
the list in order and returns the first entry whose issuer and audience are the
token's and whose every listed claim matches, with shell-style globs
(``fnmatch``, case-sensitive: ``*`` also spans ``/``).

A claim matches when it is present and its value, as text, matches the pattern:
strings as they are, booleans and numbers as JSON writes them (``true``, ``42``),
a list when any of its items does.  A claim that is missing, an object, or null
matches nothing, so a token cannot slip through by leaving a claim out.

When nothing binds, the result explains why for the entries of the token's
issuer, naming claims and entries but never a token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from server.policy.model import WorkloadIdentity


@dataclass(frozen=True)
class WorkloadClaims:
    """What a verified token says: its issuer, its audiences, and all of its claims."""

    issuer: str
    audiences: tuple[str, ...]
    claims: Mapping[str, Any]


@dataclass(frozen=True)
class BindResult:
    """The entry the token binds to, or None with a reason fit for the caller."""

    identity: WorkloadIdentity | None
    reason: str


def claim_matches(value: Any, pattern: str) -> bool:
    if isinstance(value, list):
        return any(claim_matches(item, pattern) for item in value)
    if value is None or isinstance(value, dict):
        return False
    text = value if isinstance(value, str) else json.dumps(value)
    return fnmatchcase(text, pattern)


def mismatch(entry: WorkloadIdentity, token: WorkloadClaims) -> str | None:
    """Why ``token`` does not bind to ``entry``, or None when it does."""
    if entry.issuer != token.issuer:
        return f"issuer is not {entry.issuer}"
    if entry.audience not in token.audiences:
        return f"audience {entry.audience!r} is not among the token's audiences"
    for claim, pattern in entry.claims.items():
        if claim not in token.claims:
            return f"the token has no {claim!r} claim"
        if not claim_matches(token.claims[claim], pattern):
            return f"claim {claim!r} does not match {pattern!r}"
    return None


def bind(entries: Sequence[WorkloadIdentity], token: WorkloadClaims) -> BindResult:
    reasons: list[str] = []
    for entry in entries:
        why = mismatch(entry, token)
        if why is None:
            return BindResult(entry, f"bound to {entry.name}")
        if entry.issuer == token.issuer:
            reasons.append(f"{entry.name}: {why}")
    if not reasons:
        return BindResult(None, f"no workload identity trusts the issuer {token.issuer}")
    return BindResult(None, "no workload identity matches this token (" + "; ".join(reasons) + ")")
