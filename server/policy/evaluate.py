"""Deciding whether an identity may open a session on a target, as pure functions of the policy.

``evaluate`` walks a fixed sequence and stops at the first "no":

1. the target exists (``target.unknown``);
2. the scope: the one asked for must exist (``scope.unknown``); with none asked
   for, the only scope the identity may use, else ``read`` if it may use it, else
   a refusal listing the scopes (``scope.none_allowed`` / ``scope.ambiguous``);
3. the scope's ``allow`` lists name the identity or one of its groups
   (``targets.<t>.scopes.<s>.allow``, also the rule of an allowed decision),
   and an agent may use it (``targets.<t>.scopes.<s>.agents.allow``: by
   default only read-only scopes, :mod:`server.policy.agents`); an agent
   choosing no scope chooses among those it may use;
4. the TTL: none asked for means ``default_ttl``; zero or less is refused
   (``ttl.not_positive``), and above ``max_ttl`` is refused (``scope.max_ttl``)
   rather than clamped, so nobody ends up with a shorter session than they think;
5. the reason: a scope with ``reason_required`` refuses an empty one
   (``targets.<t>.scopes.<s>.reason_required``);
6. break-glass, when the identity asks for it: the scope must offer it, a
   reason must be given and the identity must not be an agent
   (``targets.<t>.scopes.<s>.break_glass``, also the rule of the allowed,
   flagged decision);
7. approval: a scope whose ``approval.required`` is set answers "needs approval"
   (``targets.<t>.scopes.<s>.approval``) with the approval rule attached, or a
   refusal (``targets.<t>.scopes.<s>.approval.approvers``) when nobody but the
   requester could ever approve.

A decision is therefore one of three outcomes: ``allowed``, ``needs_approval``
(``allowed`` is false, so a caller that knows nothing of approvals fails closed)
or ``denied``.

The ``rule`` of a :class:`Decision` is a stable identifier for logs, audit events
and API errors; the ``reason`` is for the person.  An identity's groups are the
ones its identity provider vouches for plus those the policy's ``groups:`` lists it in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from common.durations import format_duration
from server.errors import DbaccessError, Forbidden, NotFound
from server.policy.agents import agents_allowed, deny_reason
from server.policy.model import ApprovalPolicy, Policy, ScopePolicy, TargetPolicy

PREFERRED_SCOPE = "read"
AGENT = "agent"
ADD_REASON = 'add --reason "…" (the ticket or incident this is for)'


@dataclass(frozen=True)
class Identity:
    """Who is asking.  ``kind`` is ``user``, ``workload``, ``service``, ``agent`` or ``dev``;
    ``owner`` is the person an ``agent`` acts for."""

    name: str
    groups: frozenset[str]
    kind: str = "user"
    owner: str | None = None

    @property
    def agent(self) -> bool:
        return self.kind == AGENT


@dataclass(frozen=True)
class Decision:
    """The outcome of ``evaluate``; ``ttl`` is set when allowed or when it needs approval.

    ``approval`` is the rule to satisfy when the scope needs approval first;
    ``break_glass`` marks a session allowed without the approval its scope requires;
    ``remedy`` says what to change on the command line, where that is clear.
    """

    allowed: bool
    rule: str
    reason: str
    ttl: timedelta | None
    scope: str | None
    approval: ApprovalPolicy | None = None
    break_glass: bool = False
    remedy: str | None = None

    @property
    def hint(self) -> str:
        """What the person can do about a refusal, and the rule that refused."""
        return f"{self.remedy} (rule: {self.rule})" if self.remedy else f"rule: {self.rule}"

    @property
    def needs_approval(self) -> bool:
        return not self.allowed and self.approval is not None

    @property
    def outcome(self) -> str:
        """``allowed``, ``needs_approval`` or ``denied``."""
        if self.allowed:
            return "allowed"
        return "needs_approval" if self.approval is not None else "denied"


# Refusals that name something that does not exist, rather than something not allowed.
_UNKNOWN_RULES = frozenset({"target.unknown", "scope.unknown"})


def refusal(decision: Decision) -> DbaccessError:
    """The error a denied decision is raised as: an unknown target or scope is not
    found (the CLI's exit 6), anything else is forbidden (exit 5)."""
    if decision.rule in _UNKNOWN_RULES:
        return NotFound(decision.reason, hint="dbaccess targets lists targets and their scopes")
    return Forbidden(decision.reason, hint=decision.hint)


def effective_groups(policy: Policy, identity: Identity) -> frozenset[str]:
    """The identity's own groups plus the policy groups that list it."""
    listed = {group for group, members in policy.groups.items() if identity.name in members}
    return identity.groups | listed


def visible_targets(
    policy: Policy, identity: Identity
) -> list[tuple[TargetPolicy, list[ScopePolicy]]]:
    """Targets with at least one scope the identity may use, with those scopes, in policy order."""
    groups = effective_groups(policy, identity)
    visible = []
    for target in policy.targets.values():
        scopes = [s for s in target.scopes.values() if _usable(s, identity, groups)]
        if scopes:
            visible.append((target, scopes))
    return visible


def evaluate(
    policy: Policy,
    identity: Identity,
    target: str,
    scope: str | None,
    requested_ttl: timedelta | None,
    now: datetime,
    *,
    reason: str | None = None,
    break_glass: bool = False,
) -> Decision:
    """Decide whether ``identity`` may open a session on ``target`` in ``scope`` for a TTL.

    ``reason`` is the person's stated reason; ``break_glass`` says they ask to
    skip a required approval.

    ``now`` is part of the contract so that time-dependent rules can be added
    without changing every caller; no rule depends on it yet.
    """
    del now
    target_policy = policy.targets.get(target)
    if target_policy is None:
        return _deny("target.unknown", f"there is no target named {target!r}", None)
    groups = effective_groups(policy, identity)
    scopes = target_policy.scopes
    if scope is None:
        chosen = _choose_scope(target_policy, identity, groups)
        if isinstance(chosen, Decision):
            return chosen
        scope_policy = chosen
    else:
        found = scopes.get(scope)
        if found is None:
            return _deny(
                "scope.unknown",
                f"target {target!r} has no scope {scope!r} (its scopes: {_names(scopes)})",
                scope,
            )
        scope_policy = found
    rule = f"targets.{target}.scopes.{scope_policy.name}.allow"
    why = _why_allowed(scope_policy, identity, groups)
    if why is not None and identity.agent and not agents_allowed(scope_policy):
        return _deny(
            f"targets.{target}.scopes.{scope_policy.name}.agents.allow",
            deny_reason(target, scope_policy),
            scope_policy.name,
        )
    if why is None:
        return _deny(
            rule,
            f"{identity.name} may not use scope {scope_policy.name!r} of target {target!r} "
            f"({_who(scope_policy)})",
            scope_policy.name,
        )
    if requested_ttl is None:
        ttl = scope_policy.default_ttl
    elif requested_ttl <= timedelta(0):
        return _deny(
            "ttl.not_positive", "the requested TTL must be longer than zero", scope_policy.name
        )
    elif requested_ttl > scope_policy.max_ttl:
        return _deny(
            "scope.max_ttl",
            f"the requested TTL {format_duration(requested_ttl)} is longer than the maximum "
            f"{format_duration(scope_policy.max_ttl)} of scope {scope_policy.name!r} "
            f"of target {target!r}",
            scope_policy.name,
        )
    else:
        ttl = requested_ttl
    return _approval_stage(target, scope_policy, identity, rule, why, ttl, reason, break_glass)


def _approval_stage(
    target: str,
    scope: ScopePolicy,
    identity: Identity,
    allow_rule: str,
    why: str,
    ttl: timedelta,
    reason: str | None,
    break_glass: bool,
) -> Decision:
    base = f"targets.{target}.scopes.{scope.name}"
    has_reason = bool(reason and reason.strip())
    if scope.reason_required and not has_reason:
        return _deny(
            f"{base}.reason_required",
            f"scope {scope.name!r} of target {target!r} requires a reason (ticket, incident)",
            scope.name,
            remedy=ADD_REASON,
        )
    if break_glass:
        if identity.agent:
            # Break-glass is a person's call in an emergency, on their word; an
            # agent's access waits for the approval the scope requires.
            return _deny(
                f"{base}.break_glass",
                f"an agent cannot break glass ({identity.name} is an agent)",
                scope.name,
            )
        if not scope.break_glass:
            return _deny(
                f"{base}.break_glass",
                f"scope {scope.name!r} of target {target!r} does not offer break-glass access",
                scope.name,
            )
        if not has_reason:
            return _deny(
                f"{base}.break_glass",
                "break-glass access needs a reason",
                scope.name,
                remedy=ADD_REASON,
            )
        return Decision(
            allowed=True,
            rule=f"{base}.break_glass",
            reason=f"{why}; break-glass: approval skipped, the session is flagged",
            ttl=ttl,
            scope=scope.name,
            break_glass=True,
        )
    approval = scope.approval
    if not approval.required:
        return Decision(allowed=True, rule=allow_rule, reason=why, ttl=ttl, scope=scope.name)
    others = approval.approver_identities - {identity.name}
    if not approval.approver_groups and len(others) < approval.min_approvals:
        return _deny(
            f"{base}.approval.approvers",
            f"scope {scope.name!r} of target {target!r} needs {approval.min_approvals} "
            "approvals from people other than the requester, and not enough are listed",
            scope.name,
        )
    return Decision(
        allowed=False,
        rule=f"{base}.approval",
        reason=f"scope {scope.name!r} of target {target!r} needs {describe_approvers(approval)}",
        ttl=ttl,
        scope=scope.name,
        approval=approval,
    )


def describe_approvers(approval: ApprovalPolicy) -> str:
    """How many approvals from whom, e.g. ``2 approvals from group dba or a named approver``.

    Named approvers are not listed: other people's names stay private.
    """
    count = approval.min_approvals
    who = []
    if approval.approver_groups:
        label = "group" if len(approval.approver_groups) == 1 else "groups"
        who.append(f"{label} {', '.join(sorted(approval.approver_groups))}")
    if approval.approver_identities:
        who.append("a named approver")
    plural = "approval" if count == 1 else "approvals"
    return f"{count} {plural} from {' or '.join(who)}"


def _choose_scope(
    target: TargetPolicy, identity: Identity, groups: frozenset[str]
) -> ScopePolicy | Decision:
    usable = [s for s in target.scopes.values() if _usable(s, identity, groups)]
    if len(usable) == 1:
        return usable[0]
    for candidate in usable:
        if candidate.name == PREFERRED_SCOPE:
            return candidate
    if not usable:
        return _deny(
            "scope.none_allowed",
            f"{identity.name} may use no scope of target {target.name!r} "
            f"(its scopes: {_names(target.scopes)})",
            None,
        )
    return _deny(
        "scope.ambiguous",
        f"target {target.name!r} has several scopes {identity.name} may use "
        f"({', '.join(s.name for s in usable)}): choose one",
        None,
    )


def _usable(scope: ScopePolicy, identity: Identity, groups: frozenset[str]) -> bool:
    """Whether the identity may use the scope (an agent only where agents may)."""
    if identity.agent and not agents_allowed(scope):
        return False
    return _why_allowed(scope, identity, groups) is not None


def _why_allowed(scope: ScopePolicy, identity: Identity, groups: frozenset[str]) -> str | None:
    if identity.name in scope.allow_identities:
        return f"{identity.name} is listed by name"
    shared = sorted(groups & scope.allow_groups)
    if shared:
        return f"{identity.name} is in group {shared[0]}"
    return None


def _who(scope: ScopePolicy) -> str:
    # Group names help the person ask for access; other people's names stay private.
    if not scope.allow_groups and not scope.allow_identities:
        return "nobody may use it"
    if not scope.allow_groups:
        return "only identities listed by name may use it"
    return f"allowed groups: {', '.join(sorted(scope.allow_groups))}"


def _names(scopes: Mapping[str, ScopePolicy]) -> str:
    return ", ".join(scopes)


def _deny(rule: str, reason: str, scope: str | None, *, remedy: str | None = None) -> Decision:
    return Decision(allowed=False, rule=rule, reason=reason, ttl=None, scope=scope, remedy=remedy)
