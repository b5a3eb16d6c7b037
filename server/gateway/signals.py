"""What the gateway counts for the broker's ``/metrics``: plain numbers, no I/O.

One :data:`SIGNALS` per process.  The gateway's modules add to it where the
thing happens (a connection accepted, bytes relayed, a statement sent, a
guardrail refusal, a masked result) with an integer addition, the cheapest
thing a hot path can do; ``server.metrics`` reads it when Prometheus scrapes.
Additions happen on the event loop (the guard's refusals also in analysis
threads, where a lost increment under a race would cost one count, never a
wrong decision).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class GatewaySignals:
    connections: int = 0  # client connections accepted
    bytes_from_clients: int = 0
    bytes_from_targets: int = 0
    statements: int = 0  # Query and Parse messages judged by the guard
    # (outcome, rule) -> count: blocks, reviews asked for, reviewed statements run.
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)
    masked_results: int = 0  # results whose RowDescription came with masked columns
    masked_columns: int = 0  # masked columns in those results


SIGNALS = GatewaySignals()
