"""The broker's Prometheus metrics (``GET /metrics``) and its health checks.

Counted where they happen (``prometheus_client`` objects, one set per process):
sessions started by target, scope and identity kind; credential issuance and
revocation latency and failures; recording failures; store errors (every
error the store's engine raises, :func:`watch_store`).  Read when Prometheus
scrapes (:class:`_Now`): sessions active, access requests by state, the
gateway's counts (``server.gateway.signals``: connections, bytes, statements,
guardrail refusals and reviews by rule, masked results), the recorder's queue
and the archive's lag (the oldest closed recording not archived yet).

Readiness (:func:`readiness`, ``GET /readyz``) checks what serving needs: the
store answers, a policy is loaded, each target's admin connection opens (a
target without an admin DSN is not checked), and the archive, when one is
configured, is reachable.  ``GET /healthz`` says only that the process answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import psycopg
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from server.policy import TargetPolicy, resolve_admin_dsn
from server.store import tables as t

if TYPE_CHECKING:
    from server.gateway.server import Gateway
    from server.gateway.signals import GatewaySignals
    from server.sessions.service import SessionService
    from server.store.db import Store

REGISTRY = CollectorRegistry()
_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

SESSIONS_STARTED = Counter(
    "dbaccess_sessions_started",
    "Sessions started, by target, scope and identity kind.",
    ["target", "scope", "kind"],
    registry=REGISTRY,
)
ISSUE_SECONDS = Histogram(
    "dbaccess_credential_issue_seconds",
    "Time to issue a session's credential.",
    ["target"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
ISSUE_FAILURES = Counter(
    "dbaccess_credential_issue_failures",
    "Credentials that could not be issued.",
    ["target"],
    registry=REGISTRY,
)
REVOKE_SECONDS = Histogram(
    "dbaccess_credential_revoke_seconds",
    "Time to revoke a session's credential (and check that nothing is left).",
    ["target"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
REVOKE_FAILURES = Counter(
    "dbaccess_credential_revoke_failures",
    "Revocations that failed or could not be verified.",
    ["target"],
    registry=REGISTRY,
)
RECORDING_FAILURES = Counter(
    "dbaccess_recording_failures",
    "Sessions whose recording failed.",
    registry=REGISTRY,
)
STORE_ERRORS = Counter(
    "dbaccess_store_errors",
    "Errors the store's database raised.",
    registry=REGISTRY,
)


@contextmanager
def timed(histogram: Histogram, failures: Counter, target: str) -> Iterator[None]:
    """Time the block into ``histogram``; an exception counts in ``failures`` too."""
    start = time.perf_counter()
    try:
        yield
    except Exception:
        failures.labels(target).inc()
        raise
    finally:
        histogram.labels(target).observe(time.perf_counter() - start)


def watch_store(store: Store) -> None:
    """Count every error the store's engine raises in :data:`STORE_ERRORS`."""

    def _error(_context: Any) -> None:
        STORE_ERRORS.inc()

    sa.event.listen(store.engine, "handle_error", _error)


class _Now(Collector):
    """What is read at scrape time from the broker's live objects."""

    def __init__(
        self, service: SessionService, gateway: Gateway | None, signals: GatewaySignals
    ) -> None:
        self.service = service
        self.gateway = gateway
        self.signals = signals

    def collect(self) -> Iterator[Any]:
        yield self._sessions()
        yield from self._requests()
        yield from self._gateway()
        yield from self._recording()

    def _sessions(self) -> GaugeMetricFamily:
        active = GaugeMetricFamily(
            "dbaccess_sessions_active",
            "Sessions this broker holds now, by target, scope and identity kind.",
            labels=["target", "scope", "kind"],
        )
        counts: dict[tuple[str, str, str], int] = {}
        for live in self.service.live_sessions():
            key = (live.record.target, live.record.scope, "agent" if live.agent else live.kind)
            counts[key] = counts.get(key, 0) + 1
        for key, n in sorted(counts.items()):
            active.add_metric(list(key), n)
        return active

    def _requests(self) -> Iterator[Any]:
        family = GaugeMetricFamily(
            "dbaccess_requests", "Access requests in the store, by state.", labels=["state"]
        )
        c = t.access_requests.c
        try:
            with self.service.store.read() as conn:
                rows = conn.execute(sa.select(c.status, sa.func.count()).group_by(c.status)).all()
        except sa.exc.SQLAlchemyError:
            rows = []
        for state, n in sorted(rows):
            family.add_metric([state], n)
        yield family

    def _gateway(self) -> Iterator[Any]:
        s = self.signals
        if self.gateway is not None:
            active = GaugeMetricFamily(
                "dbaccess_gateway_connections_active", "Client connections open now."
            )
            active.add_metric([], len(self.gateway.connections))
            yield active
        yield CounterMetricFamily(
            "dbaccess_gateway_connections", "Client connections accepted.", value=s.connections
        )
        relayed = CounterMetricFamily(
            "dbaccess_gateway_bytes", "Bytes relayed, by direction.", labels=["direction"]
        )
        relayed.add_metric(["from_client"], s.bytes_from_clients)
        relayed.add_metric(["from_target"], s.bytes_from_targets)
        yield relayed
        yield CounterMetricFamily(
            "dbaccess_gateway_statements",
            "Statements (Query and Parse messages) the guard judged.",
            value=s.statements,
        )
        decisions = CounterMetricFamily(
            "dbaccess_guardrail_decisions",
            "Statements blocked, held for review, and reviewed statements run, by rule.",
            labels=["outcome", "rule"],
        )
        for (outcome, rule), n in sorted(s.decisions.items()):
            decisions.add_metric([outcome, rule], n)
        yield decisions
        yield CounterMetricFamily(
            "dbaccess_masking_rewrites",
            "Results whose columns the gateway masked.",
            value=s.masked_results,
        )
        yield CounterMetricFamily(
            "dbaccess_masked_columns",
            "Masked columns in those results.",
            value=s.masked_columns,
        )

    def _recording(self) -> Iterator[Any]:
        depth = GaugeMetricFamily(
            "dbaccess_recording_queue_depth", "Recording events waiting to be written."
        )
        depth.add_metric([], self.service.recorder.queue_depth())
        yield depth
        if self.service.archiver is None:
            return
        lag = GaugeMetricFamily(
            "dbaccess_archive_lag_seconds",
            "Age of the oldest closed recording not archived yet (0: none waits).",
        )
        r = t.session_recordings.c
        try:
            with self.service.store.read() as conn:
                oldest = conn.execute(
                    sa.select(sa.func.min(r.closed_at)).where(
                        r.status != "open", r.archived_at.is_(None)
                    )
                ).scalar()
        except sa.exc.SQLAlchemyError:
            return
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        lag.add_metric([], (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0)
        yield lag


def register(
    service: SessionService, gateway: Gateway | None, signals: GatewaySignals
) -> Callable[[], None]:
    """Read the broker's live objects at each scrape; returns the undoing."""
    collector = _Now(service, gateway, signals)
    REGISTRY.register(collector)
    watch_store(service.store)
    return lambda: REGISTRY.unregister(collector)


def readiness(service: SessionService) -> dict[str, Any]:
    """Each check's result (``ok`` and, when not, why), and whether all passed."""
    checks: dict[str, dict[str, Any]] = {}

    def store_answers() -> None:
        # A read: on SQLite it waits for no writer's lock, and takes none.
        with service.store.read() as conn:
            conn.execute(sa.text("SELECT 1"))

    checks["store"] = _check(store_answers)
    policy = service.policy
    checks["policy"] = {"ok": bool(policy.targets), "targets": len(policy.targets)}
    for name, target in policy.targets.items():
        if target.has_admin_dsn:
            checks[f"target:{name}"] = _check(partial(_admin_answers, target))
    archiver = service.archiver
    if archiver is not None:
        checks["archive"] = _check(
            lambda: archiver.client().head_bucket(Bucket=archiver.config.bucket)
        )
    return {"ok": all(c["ok"] for c in checks.values()), "checks": checks}


def _check(probe: Callable[[], object]) -> dict[str, Any]:
    try:
        probe()
    except Exception as exc:  # what failed is the answer, not an error of the check
        detail = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        return {"ok": False, "detail": str(detail)[:300]}
    return {"ok": True}


def _admin_answers(target: TargetPolicy) -> None:
    with psycopg.connect(
        resolve_admin_dsn(target),
        connect_timeout=3,
        autocommit=True,
        application_name="dbaccess-broker",
    ) as conn:
        conn.execute("SELECT 1")
