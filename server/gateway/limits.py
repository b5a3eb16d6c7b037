"""Admission limits of the gateway, without sockets or clocks of their own.

* ``TokenBucket`` — ``rate`` tokens a second up to ``burst``; the caller passes
  the time, so tests drive it with a fake clock.
* ``CancelLimiter`` — CancelRequests cost a token from the sender address's
  bucket and one from a global bucket.  A cancel is an unauthenticated packet
  that makes the gateway open a connection to the target, so a flood (or a
  search for valid keys) must not turn into a flood against the database.
  Buckets of addresses that have been quiet long enough to be full again are
  forgotten, so the table stays small.
* ``ConnectionCaps`` — concurrent client connections: in all and per identity
  across the gateway (the broker's ``gateway_max_connections*`` settings), and
  per target and per identity on a target (the scope's
  ``limits.max_connections_per_target``/``_per_identity``, by default a share
  of the target's ``max_connections``: see
  :func:`~server.policy.limits.connection_shares`), so that one identity, or
  the broker as a whole, never takes a target's last connection slots.  A
  refusal is a ``GatewayError`` with SQLSTATE 53300, as PostgreSQL's own "too
  many connections", with a hint naming the setting or policy key that set
  the limit.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from server.gateway.session import GatewayError

if TYPE_CHECKING:  # the caps are data here; the service that reads them does I/O
    from server.sessions.service import TargetCaps

CANCEL_RATE_PER_ADDRESS = 5.0
CANCEL_BURST_PER_ADDRESS = 20.0
CANCEL_RATE_GLOBAL = 100.0
CANCEL_BURST_GLOBAL = 400.0


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def take(self, now: float) -> bool:
        self.refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def full_at(self) -> float:
        return self.stamp + (self.burst - self.tokens) / self.rate


class CancelLimiter:
    def __init__(
        self,
        now: float,
        *,
        rate_per_address: float = CANCEL_RATE_PER_ADDRESS,
        burst_per_address: float = CANCEL_BURST_PER_ADDRESS,
        rate_global: float = CANCEL_RATE_GLOBAL,
        burst_global: float = CANCEL_BURST_GLOBAL,
    ) -> None:
        self.rate = rate_per_address
        self.burst = burst_per_address
        self.overall = TokenBucket(rate_global, burst_global, now)
        self.buckets: dict[str, TokenBucket] = {}
        self.refused = 0

    @classmethod
    def for_rate(cls, rate_per_address: float, now: float) -> CancelLimiter:
        """Limits derived from one setting: bursts of four times the rate (at least
        two), and room for twenty such senders at once across the gateway."""
        burst = max(2.0, 4 * rate_per_address)
        return cls(
            now,
            rate_per_address=rate_per_address,
            burst_per_address=burst,
            rate_global=20 * rate_per_address,
            burst_global=20 * burst,
        )

    def allow(self, address: str, now: float) -> bool:
        """True if a CancelRequest from ``address`` may go on to the target now."""
        if len(self.buckets) > 1024:
            self._forget_full(now)
        bucket = self.buckets.get(address)
        if bucket is None:
            bucket = self.buckets[address] = TokenBucket(self.rate, self.burst, now)
        bucket.refill(now)
        self.overall.refill(now)
        # Both buckets must have a token before either is charged: a sender over
        # its own limit must not drain the global bucket for everyone else.
        if bucket.tokens >= 1 and self.overall.tokens >= 1:
            bucket.tokens -= 1
            self.overall.tokens -= 1
            return True
        self.refused += 1
        return False

    def _forget_full(self, now: float) -> None:
        for address, bucket in list(self.buckets.items()):
            if bucket.full_at() <= now:
                del self.buckets[address]


class CapRefused(GatewayError):
    """A connection over a cap: 53300, and which setting or policy key capped it."""

    def __init__(self, message: str, hint: str, *, limit: str, value: int) -> None:
        super().__init__("53300", message, hint)
        self.limit = limit
        self.value = value


class ConnectionCaps:
    def __init__(self, total: int, per_identity: int) -> None:
        if total < 1 or per_identity < 1:
            raise ValueError("connection caps must be at least 1")
        self.total = total
        self.per_identity = per_identity
        self.count = 0
        self.by_identity: Counter[str] = Counter()
        self.by_target: Counter[str] = Counter()
        self.by_target_identity: Counter[tuple[str, str]] = Counter()

    def admit(self, identity: str, caps: TargetCaps | None = None) -> None:
        """Count one more connection for ``identity`` (to ``caps.target``, within
        ``caps``), or raise GatewayError 53300."""
        if self.count >= self.total:
            raise CapRefused(
                f"too many connections to the gateway (limit {self.total})",
                "try again when other connections have closed, or ask an administrator "
                "to raise gateway_max_connections",
                limit="gateway_max_connections",
                value=self.total,
            )
        if self.by_identity[identity] >= self.per_identity:
            raise CapRefused(
                f"too many connections for identity {identity!r} "
                f"(limit {self.per_identity} across its sessions)",
                "close some of your connections, or ask an administrator to raise "
                "gateway_max_connections_per_identity",
                limit="gateway_max_connections_per_identity",
                value=self.per_identity,
            )
        if caps is not None:
            target = caps.target
            if self.by_target[target] >= caps.per_target:
                raise CapRefused(
                    f"too many connections to target {target!r} through the gateway "
                    f"(limit {caps.per_target})",
                    "try again when other connections have closed; "
                    + _policy_key(caps, "max_connections_per_target", caps.target_auto),
                    limit="max_connections_per_target",
                    value=caps.per_target,
                )
            if self.by_target_identity[(target, identity)] >= caps.per_identity:
                raise CapRefused(
                    f"too many connections for identity {identity!r} to target {target!r} "
                    f"(limit {caps.per_identity} across its sessions)",
                    "close some of your connections; "
                    + _policy_key(caps, "max_connections_per_identity", caps.identity_auto),
                    limit="max_connections_per_identity",
                    value=caps.per_identity,
                )
            self.by_target[target] += 1
            self.by_target_identity[(target, identity)] += 1
        self.count += 1
        self.by_identity[identity] += 1

    def release(self, identity: str, target: str | None = None) -> None:
        self.count -= 1
        _drop(self.by_identity, identity)
        if target is not None:
            _drop(self.by_target, target)
            _drop(self.by_target_identity, (target, identity))


def _drop(counter: Counter[Any], key: object) -> None:
    left = counter[key] - 1
    if left > 0:
        counter[key] = left
    else:
        del counter[key]


def _policy_key(caps: TargetCaps, key: str, auto: bool) -> str:
    where = f"limits.{key} of scope {caps.scope!r} of target {caps.target!r}"
    if auto:
        share = (
            f"a share of the target's max_connections ({caps.max_connections})"
            if caps.max_connections is not None
            else "a share of the target's max_connections"
        )
        return f"the limit is {where} (auto: {share}); an administrator can set it in the policy"
    return f"the limit is {where}; an administrator can raise it in the policy"
