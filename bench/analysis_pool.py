"""Where reading a statement in a worker process pays off: the interpreter lock
an analysis holds in the broker, inline against through a worker.

For statement texts of a few shapes (a long IN list and many statements in one
Query, both made of one-character tokens, the costliest per byte; a long
string literal, the cheapest) and sizes from 512 bytes to just under the
256 KiB size limit, measures with the caches cleared:

* ``inline``  the CPU time of ``sqlcheck.analyze`` in this thread: the time an
              analysis thread holds the interpreter lock (sqlglot's compiled
              tokenizer and parser never release it), so the event loop waits;
* ``worker``  the same analysis through ``analysis_pool.analyze`` with a worker
              process at hand: the CPU time left in this thread (sending the text,
              unpickling the answer) and the wall-clock time of the round trip.

Prints, per shape and size, both CPU times and the ratio inline / worker (how
many times less the broker holds the lock when the worker reads it); the
gateway sends texts longer than ``PROCESS_MIN_CHARS`` to a worker, which pays
off where the ratio is well above 1.

Run: ``.venv/bin/python bench/analysis_pool.py [--rounds 3]``
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

KB = 1024
SIZES = (512, 1 * KB, 2 * KB, 4 * KB, 16 * KB, 64 * KB, 255 * KB)
SHAPES: dict[str, Callable[[int], str]] = {
    "in-list": lambda n: "select 1 where 1 in (" + ",".join(["1"] * (n // 2)) + ")",
    "statements": lambda n: "select 1;" * (n // 9),
    "literal": lambda n: "select length('" + "x" * n + "')",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="best of this many")
    args = ap.parse_args()

    from server.gateway import analysis_pool, sqlcheck
    from server.gateway.analysis_pool import AnalysisPool, offloading

    pool = AnalysisPool(1)
    pool.start()
    pool.call(5.0, sqlcheck.analyze_uncached, "select 1")  # the worker is up
    # Every size through the worker, to see where it stops paying off.
    saved = analysis_pool.PROCESS_MIN_CHARS
    analysis_pool.PROCESS_MIN_CHARS = 0  # type: ignore[misc]
    try:
        print(
            f"{'shape':<11}{'size':>8}  {'inline CPU':>11}  {'worker: CPU here':>16}  "
            f"{'wall':>9}  {'inline/worker':>13}"
        )
        for shape, make in SHAPES.items():
            for size in SIZES:
                sql = make(size)
                inline = here = wall = float("inf")
                for _ in range(args.rounds):
                    sqlcheck.cache_clear()
                    started = time.thread_time()
                    sqlcheck.analyze(sql)
                    inline = min(inline, time.thread_time() - started)
                    sqlcheck.cache_clear()
                    with offloading(pool):
                        cpu, clock = time.thread_time(), time.perf_counter()
                        analysis_pool.analyze(sql)
                        here = min(here, time.thread_time() - cpu)
                        wall = min(wall, time.perf_counter() - clock)
                print(
                    f"{shape:<11}{len(sql):>8}  {inline * 1e3:>9.2f}ms  {here * 1e3:>14.2f}ms  "
                    f"{wall * 1e3:>7.2f}ms  {inline / max(here, 1e-6):>12.1f}x"
                )
    finally:
        analysis_pool.PROCESS_MIN_CHARS = saved  # type: ignore[misc]
        pool.close()
    print(f"\nthe gateway reads texts over {saved} characters in a worker process")


if __name__ == "__main__":
    main()
