"""Small pieces every route module shares: the privileged groups, TTL and time parsing,
the listing of targets (the API's and the agents' tools').

Kept apart from :mod:`server.api.app` so that the route modules it registers can
import them at their top without an import cycle.
"""

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from common.durations import format_duration, parse_duration, parse_time
from server.errors import InvalidInput
from server.policy.evaluate import Identity, visible_targets
from server.policy.model import Policy

ADMIN_GROUP = "admin"
AUDITOR_GROUP = "auditor"


def is_admin(who: Identity) -> bool:
    """Admins act on everyone's sessions and requests; an agent never does, whatever its groups."""
    return ADMIN_GROUP in who.groups and not who.agent


def may_audit(who: Identity) -> bool:
    """Admins and auditors read the audit log and anyone's recordings; an agent
    never does, whatever its groups (recordings hold others' statements and
    results)."""
    return not {ADMIN_GROUP, AUDITOR_GROUP}.isdisjoint(who.groups) and not who.agent


def parse_ttl(text: str | None) -> timedelta | None:
    """A TTL from a request body (None when not given), or InvalidInput saying why not."""
    if not text:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def parse_when(
    text: str | None, what: str, *, direction: Literal["ago", "ahead"]
) -> datetime | None:
    """A time from a request (None when not given): ISO 8601 (UTC unless it has an
    offset) or a duration from now, such as ``1h``; else InvalidInput saying why not."""
    if not text:
        return None
    try:
        return parse_time(text, datetime.now(UTC), direction=direction, naive=UTC)
    except ValueError as exc:
        raise InvalidInput(f"{what}: {exc}") from None


def target_listing(policy: Policy, who: Identity) -> list[dict[str, Any]]:
    """The targets and scopes ``who`` may use, as ``GET /v1/targets`` shows them."""
    return [
        {
            "name": target.name,
            "description": target.description,
            "database": target.database,
            "scopes": [
                {
                    "name": s.name,
                    "default_ttl": format_duration(s.default_ttl),
                    "max_ttl": format_duration(s.max_ttl),
                    "grants": list(s.grants),
                    "approval": s.approval.required,
                    "reason_required": s.reason_required,
                    "break_glass": s.break_glass,
                }
                for s in scopes
            ],
        }
        for target, scopes in visible_targets(policy, who)
    ]
