"""What an AI agent may do in a scope: the policy's ``agents`` sections and their defaults.

An agent is an identity of kind ``agent`` (a broker token made with
``dbaccess-server token create --kind agent --owner alice``).  It is allowed
into a scope the way anyone is (the scope's ``allow`` lists), and then held to
the scope's ``agents`` section, whose defaults are conservative:

* **read-only scopes only**: an agent may use a scope whose guardrail preset is
  ``read`` unless the section says ``allow: true`` (and never one that says
  ``allow: false``);
* **no DDL**: DDL and privilege changes are blocked for agents unless the
  section's ``guardrails`` give ``block`` (or ``review``) themselves;
* **writes only by review**: every write is a statement review (approved by
  someone else, bound to the statement's SHA-256, run once) unless the
  section's ``guardrails`` give ``review``;
* **result budgets on**: at most :data:`AGENT_MAX_RESULT_ROWS` rows and
  :data:`AGENT_MAX_RESULT_BYTES` bytes per statement (or the scope's own, when
  smaller), unless the section's ``limits`` say otherwise.

The guardrail part is applied by the gateway (``server.gateway.rules.agent_rules``);
these functions are pure and decide the rest.
"""

from __future__ import annotations

from dataclasses import replace

from server.policy.model import ScopePolicy, SessionLimits, preset_of

AGENT_MAX_RESULT_ROWS = 1000
AGENT_MAX_RESULT_BYTES = 1 << 20


def read_only(scope: ScopePolicy) -> bool:
    """Whether the scope's guardrails start from the ``read`` preset."""
    return preset_of(scope.name, scope.guardrails) == "read"


def agents_allowed(scope: ScopePolicy) -> bool:
    """Whether agents may use ``scope`` at all (on top of its ``allow`` lists)."""
    allow = scope.agents.allow
    return read_only(scope) if allow is None else allow


def _smaller(value: int | None, cap: int) -> int:
    return cap if value is None else min(value, cap)


def agent_default_limits(limits: SessionLimits) -> SessionLimits:
    """A scope's limits with the agents' result budgets."""
    return replace(
        limits,
        max_result_rows=_smaller(limits.max_result_rows, AGENT_MAX_RESULT_ROWS),
        max_result_bytes=_smaller(limits.max_result_bytes, AGENT_MAX_RESULT_BYTES),
    )


def agent_limits(scope: ScopePolicy) -> SessionLimits:
    """The limits of an agent's session in ``scope``."""
    if scope.agents.limits is not None:
        return scope.agents.limits
    return agent_default_limits(scope.effective_limits)


def deny_reason(target: str, scope: ScopePolicy) -> str:
    if scope.agents.allow is False:
        return f"agents may not use scope {scope.name!r} of target {target!r}"
    return (
        f"agents may use only read-only scopes, and scope {scope.name!r} of target "
        f"{target!r} is not one (its agents.allow would have to say true)"
    )
