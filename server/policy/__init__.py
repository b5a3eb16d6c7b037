"""The policy: which targets exist, which scopes they offer, and who may use them.

``load_policy`` reads and checks the YAML file (:mod:`server.policy.load`) into
the immutable values of :mod:`server.policy.model`; ``evaluate`` and
``visible_targets`` (:mod:`server.policy.evaluate`) are pure functions over them;
``resolve_admin_dsn`` (:mod:`server.policy.dsn`) fetches a target's admin
connection string at the moment it is needed.
"""

from server.policy.dsn import resolve_admin_dsn
from server.policy.evaluate import Decision, Identity, effective_groups, evaluate, visible_targets
from server.policy.load import PolicyError, load_policy, parse_policy
from server.policy.model import (
    ApprovalPolicy,
    Issuer,
    Policy,
    ScopePolicy,
    SslMode,
    TargetPolicy,
)

__all__ = [
    "ApprovalPolicy",
    "Decision",
    "Identity",
    "Issuer",
    "Policy",
    "PolicyError",
    "ScopePolicy",
    "SslMode",
    "TargetPolicy",
    "effective_groups",
    "evaluate",
    "load_policy",
    "parse_policy",
    "resolve_admin_dsn",
    "visible_targets",
]
