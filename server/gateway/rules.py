"""From a scope's ``guardrails`` settings in the policy to the gateway's :class:`GuardrailRules`.

``target_rules`` adds what the target's other scopes allow (``elsewhere``), so
a refusal can say which scope to use instead.

The preset comes first (``read`` for a scope named read, ``write`` otherwise,
unless the policy names one, with ``production`` making every write a review),
then each key the policy gives replaces the preset's value for that field.
``agent_rules`` makes a scope's rules an agent's (``server.policy.agents``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from server.gateway.guardrails import SEQUENCE_FUNCTIONS, GuardrailRules, Outcome
from server.gateway.sqlcheck import StatementClass
from server.policy.model import GuardrailSettings, ScopePolicy, TargetPolicy, preset_of

# What an agent may never do unless its scope's agents section says otherwise.
AGENT_BLOCK = frozenset({StatementClass.DDL, StatementClass.PRIVILEGE})
AGENT_REVIEW = frozenset({StatementClass.WRITE})
# Built-in functions whose call writes (a sequence), so that for agents a SELECT
# calling them is a write like any other: reviewed or blocked, never just run.
AGENT_WRITE_FUNCTIONS = SEQUENCE_FUNCTIONS
# Maintenance that rewrites or locks tables (VACUUM FULL, CLUSTER, REINDEX) or
# changes every session's plans (ANALYZE): for agents, writes.
AGENT_WRITE_COMMANDS = frozenset({"VACUUM", "ANALYZE", "CLUSTER", "REINDEX", "CHECKPOINT"})


def rules_for(scope: str, settings: GuardrailSettings) -> GuardrailRules:
    rules = GuardrailRules.preset(preset_of(scope, settings), production=bool(settings.production))
    return _over(rules, settings)


def _over(rules: GuardrailRules, settings: GuardrailSettings) -> GuardrailRules:
    """``rules`` with each key ``settings`` give replaced (``preset`` aside)."""
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


def agent_rules(rules: GuardrailRules, scope: ScopePolicy) -> GuardrailRules:
    """The rules of an agent's session: the scope's ``rules`` with its ``agents``
    guardrails laid over them, and the agents' defaults where those leave
    ``block`` or ``review`` unsaid: DDL and privilege changes blocked, every
    write a statement review (``server.policy.agents``), a call of a function
    that writes (``AGENT_WRITE_FUNCTIONS``) or table maintenance
    (``AGENT_WRITE_COMMANDS``) counting as a write; and one statement per
    input, so that a text shows what it does (no ``COMMIT;`` and a write behind a
    read)."""
    settings = scope.agents.guardrails
    if settings.preset is not None or settings.production is not None:
        base = rules_for(scope.name, settings.over(scope.guardrails))
    else:
        base = _over(rules, settings)
    block = base.block if settings.block is not None else base.block | AGENT_BLOCK
    review = base.review if settings.review is not None else base.review | AGENT_REVIEW
    return replace(
        base,
        block=block,
        review=review - block,
        one_statement=True,
        write_functions=base.write_functions | AGENT_WRITE_FUNCTIONS,
        write_commands=base.write_commands | AGENT_WRITE_COMMANDS,
    )
