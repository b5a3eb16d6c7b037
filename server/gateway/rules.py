"""From a scope's ``guardrails`` settings in the policy to the gateway's :class:`GuardrailRules`.

``target_rules`` adds what the target's other scopes allow (``elsewhere``), so
a refusal can say which scope to use instead.

The preset comes first (``read`` for a scope named read, ``write`` otherwise,
unless the policy names one, with ``production`` making every write a review),
then each key the policy gives replaces the preset's value for that field.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from server.gateway.guardrails import GuardrailRules, Outcome
from server.gateway.sqlcheck import StatementClass
from server.policy.model import GuardrailSettings, TargetPolicy


def rules_for(scope: str, settings: GuardrailSettings) -> GuardrailRules:
    preset = settings.preset or ("read" if scope == "read" else "write")
    rules = GuardrailRules.preset(preset, production=bool(settings.production))
    changes: dict[str, Any] = {}
    if settings.review is not None:
        changes["review"] = frozenset(StatementClass(c) for c in settings.review)
    if settings.block is not None:
        changes["block"] = frozenset(StatementClass(c) for c in settings.block)
    if settings.functions_allow is not None:
        changes["functions_allow"] = settings.functions_allow
    if settings.functions_deny is not None:
        changes["functions_deny"] = settings.functions_deny
    for key in ("require_where", "allow_listen_notify", "allow_code"):
        value = getattr(settings, key)
        if value is not None:
            changes[key] = value
    if settings.unknown is not None:
        changes["unknown"] = Outcome(settings.unknown)
    if settings.max_rows_by_explain is not None:
        changes["max_rows_by_explain"] = settings.max_rows_by_explain
    return replace(rules, **changes) if changes else rules


def target_rules(target: TargetPolicy, scope: str) -> GuardrailRules:
    """The rules of ``scope`` of ``target``, knowing which other scopes allow what it blocks."""
    rules = rules_for(scope, target.scopes[scope].guardrails)
    if not rules.block:
        return rules
    elsewhere = []
    for other in target.scopes.values():
        if other.name == scope:
            continue
        blocked = rules_for(other.name, other.guardrails).block
        elsewhere += [(kind, other.name) for kind in sorted(rules.block) if kind not in blocked]
    return replace(rules, elsewhere=tuple(elsewhere))
