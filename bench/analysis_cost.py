"""What analysing one statement costs, against its size: time and peak memory.

For each shape of statement text -- a long string literal, a long quoted
identifier, deep nesting, a long IN list, many statements in one Query, a long
comment -- and each size from 1 kB to 16 MB, measures the analysis the gateway
runs on a statement it has not seen before, with the size limit lifted (so the
analysis itself is measured, not the refusal before it):
``sqlcheck.analyze`` (tokenizing, the lexical check, splitting, parsing; the
token budget still stops texts of more than 50,000 tokens, as in the gateway)
and the redaction of the statement for the audit log and the recording.

Prints CPU microseconds (the thread's; best of a few rounds) and per kB, and
the peak memory the analysis allocated (tracemalloc, in a separate round), then
per shape the ratio of the largest to the smallest microseconds per kB, and
that of the largest size's to the smallest's: linear growth keeps the second at
1 or below (small texts pay a fixed cost that large ones spread; past 50,000
tokens the budget stops the work early), a superlinear pass would make it grow
with the largest size.  With
``--limit`` the gateway's refusal of an oversize text is measured instead, for
comparison.

Run: ``.venv/bin/python bench/analysis_cost.py [--max-size 16M] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KB = 1024
SIZES = (1 * KB, 16 * KB, 256 * KB, 1024 * KB, 16 * 1024 * KB)


def shapes() -> dict[str, Callable[[int], str]]:
    return {
        "literal": lambda n: "select length('" + "x" * n + "')",
        "identifier": lambda n: 'select 1 as "' + "y" * n + '"',
        "nesting": lambda n: "select " + "(" * (n // 2) + "1" + ")" * (n // 2),
        "in_list": lambda n: (
            "select 1 where 1 in (" + ",".join(str(i % 1000) for i in range(n // 4)) + ")"
        ),
        "statements": lambda n: "select 1;" * (n // 9),
        "comment": lambda n: "select 1 /* " + "c" * n + " */",
    }


def analysis(sql: str) -> None:
    from server.audit.recording import statement_event
    from server.gateway import sqlcheck
    from server.gateway.statements import redact

    sqlcheck.cache_clear()
    sqlcheck.analyze(sql, max_len=len(sql), time_budget=1e9)
    redact(sql)
    statement_event(sql, started_at=_NOW, duration_ms=0.0)


def refusal(sql: str) -> None:
    from server.gateway import analysis_limits

    body = sql.encode() + b"\0"
    analysis_limits.oversize(
        analysis_limits.statement_size(ord("Q"), body), analysis_limits.AnalysisLimits()
    )


def cpu_us(run: Callable[[str], None], sql: str, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.thread_time()
        run(sql)
        best = min(best, time.thread_time() - started)
    return best * 1e6


def peak_mb(run: Callable[[str], None], sql: str) -> float:
    tracemalloc.start()
    try:
        run(sql)
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def size_arg(text: str) -> int:
    units = {"k": KB, "m": KB * KB}
    unit = units.get(text[-1:].lower(), 1)
    return int(text[:-1] if unit != 1 else text) * unit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-size", type=size_arg, default=16 * KB * KB)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", action="store_true", help="measure the refusal instead")
    args = parser.parse_args()
    run = refusal if args.limit else analysis
    sizes = [s for s in SIZES if s <= args.max_size]
    analysis("select 1")  # imports and first-use set-up
    print(f"{'shape':<11} {'size':>9} {'CPU ms':>10} {'us/kB':>9} {'peak MB':>9}")
    ratios: dict[str, tuple[float, float]] = {}
    for name, make in shapes().items():
        per_kb: list[float] = []
        for size in sizes:
            sql = make(size)
            us = cpu_us(run, sql, args.rounds if size < KB * KB else 1)
            mb = peak_mb(run, sql)
            per_kb.append(us / (len(sql) / KB))
            print(f"{name:<11} {len(sql):>9} {us / 1000:>10.1f} {per_kb[-1]:>9.1f} {mb:>9.1f}")
        ratios[name] = (max(per_kb) / min(per_kb), per_kb[-1] / per_kb[0])
    print()
    print("per shape: largest / smallest us per kB, and us per kB at the largest size /")
    print("at the smallest (linear: the second is 1 or below, small texts paying a fixed")
    print("cost; a superlinear pass makes it grow with the largest size)")
    for name, (ratio, growth) in ratios.items():
        print(f"  {name:<11} {ratio:8.1f} {growth:8.2f}")


if __name__ == "__main__":
    from datetime import UTC, datetime

    _NOW = datetime.now(UTC)
    main()
