"""How each connection of a session gets its hooks: the relay setups the shell runs.

The hooks (the guard, the result limit, masking's) are sans-IO and take what
they need as values and callables: rules, limits, a place to record, the
approval service's two calls.  The setups here read the session service for
them -- the policy of the session's target and scope, its limits, its
recorder, the approval service -- once per connection, when the shell enters
the relay phase (``Gateway.relay_setup``), so that the hooks' modules never
import the services.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from server.gateway.analysis_limits import AnalysisLimits
from server.gateway.guardrails import SIDE_CHANNELS, Decision, GuardrailRules
from server.gateway.pinning import LimitPins
from server.gateway.relay import Relay
from server.gateway.result_limit import Caps, ResultLimit
from server.gateway.rules import agent_rules, target_rules
from server.gateway.search_path import catalog_first, session_search_path
from server.gateway.statements import SessionFacts, StatementGuard, review_rule
from server.sessions.service import LiveSession, SessionService

MaskingCheck = Callable[[LiveSession, tuple[str, ...]], Callable[[str], Decision] | None]


def guard_setup(
    service: SessionService,
    masking: MaskingCheck | None = None,
    limits: AnalysisLimits | None = None,
) -> Callable[[Relay, LiveSession], None]:
    """The gateway's relay setup that puts a guard on every connection of a session;
    ``masking`` gives the refusals masking needs before a statement runs
    (``MaskingSetup.pre_execution``); ``limits`` bound what analysing one
    statement may cost."""

    def setup(relay: Relay, live: LiveSession) -> None:
        record = live.record
        target = service.policy.targets.get(record.target)
        scope = target.scopes.get(record.scope) if target is not None else None
        if target is None or scope is None:
            # The policy changed under the session: the strictest preset, no reviews.
            rules = GuardrailRules.preset("read")
            review = None
        else:
            rules = target_rules(target, scope.name)
            if live.agent:
                rules = agent_rules(rules, scope)
            review = review_rule(scope)
        # The server checked the value at login (and the gateway before it).
        path = session_search_path(relay.parameters.get("search_path"), live.credential.username)
        # None when masking does not apply to the session (its rules are built
        # once, by the masking setup, with the target's key).
        check = masking(live, path) if masking is not None else None
        if check is not None:
            # The masking hooks refuse a result only after the server ran the
            # statement, so functions whose effect outlives the statement could
            # carry a masked value out (set_config then current_setting,
            # pg_notify, an advisory lock's key in pg_locks): refuse them
            # before they run in a masked session, whatever its inference setting.
            rules = replace(rules, functions_deny=rules.functions_deny | SIDE_CHANNELS)
        if not catalog_first(path):
            rules = replace(rules, catalog_first=False)
        facts = SessionFacts(
            session_id=record.id,
            identity=record.identity,
            groups=frozenset(record.groups),
            target=record.target,
            scope=record.scope,
            reason=record.reason,
            ttl=record.expires_at - record.created_at,
        )
        scope_limits = service.limits(live)
        StatementGuard(
            rules,
            facts,
            approvals=service.approvals if scope is not None else None,
            audit=service.audit.append,
            review=review,
            search_path=path,
            masking=check,
            limits=limits,
            record=service.recorder.record,
            pins=LimitPins.of(scope_limits, record.target, record.scope),
        ).install(relay)

    return setup


def limit_setup(service: SessionService) -> Callable[[Relay, LiveSession], None]:
    """The gateway's relay setup that bounds every connection's results by its
    scope's limits (``SessionService.limits``)."""

    def setup(relay: Relay, live: LiveSession) -> None:
        record = live.record
        caps = Caps.of(service.limits(live), record.scope)
        if not caps.active:
            return
        ResultLimit(caps, session_id=record.id, record=service.recorder.record).install(relay)

    return setup
