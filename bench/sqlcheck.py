"""Micro-benchmark of statement analysis (``server.gateway.sqlcheck.analyze``).

Reports microseconds of CPU time per call (the thread's, so other load on the
host disturbs the figures less; best of five rounds) for a 200-character SELECT
with a join, a WHERE and an ORDER BY:

* ``uncached``  the analysis without its caches (``analyze_uncached``): each
                call tokenizes, parses and analyses
* ``shaped``    ``analyze`` on statements that differ only in a number (an
                application that does not bind its parameters): after the first,
                the literal-insensitive cache fills in the analysis of the shape
* ``cached``    the same statement again: a lookup in the LRU cache
* ``parse``     sqlglot's tokenizer and parser alone, for the share of the work
                that is sqlglot's
* ``pure``      ``uncached`` again in a child process that imports sqlglot's
                pure-Python modules instead of its compiled ones (a copy of the
                package without the extension modules), for the ratio

Run: ``.venv/bin/python bench/sqlcheck.py [--count N] [--no-pure]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ROUNDS = 5
STATEMENT = (
    "SELECT c.id, c.name, c.email, o.total FROM public.customers AS c "
    "JOIN orders o ON o.customer_id = c.id WHERE c.created_at > now() - interval '30 days' "
    "AND o.status = 'paid' AND o.id > {n} ORDER BY o.total DESC LIMIT 50"
)


def best_of(repeats: int, count: int, run: Callable[[int], object]) -> float:
    """Fastest of ``repeats`` rounds of ``count`` calls, in CPU microseconds per call."""
    best = float("inf")
    for round_ in range(repeats):
        started = time.thread_time()
        for i in range(count):
            run(round_ * count + i)
        best = min(best, (time.thread_time() - started) / count)
    return best * 1e6


def measure(count: int) -> dict[str, float]:
    from server.gateway import sqlcheck
    from server.gateway.sqlcheck import lexing

    sqlcheck.cache_clear()
    sqlcheck.analyze(STATEMENT.format(n=-1))  # imports and first-use set-up
    texts = [STATEMENT.format(n=i) for i in range(ROUNDS * count)]
    # analyze() would answer these from the shape cache: they differ only in a number.
    results = {"uncached": best_of(ROUNDS, count, lambda i: sqlcheck.analyze_uncached(texts[i]))}
    results["shaped"] = best_of(ROUNDS, count, lambda i: sqlcheck.analyze(texts[i]))
    same = texts[0]
    sqlcheck.analyze(same)
    results["cached"] = best_of(ROUNDS, count * 20, lambda i: sqlcheck.analyze(same))

    def parse(i: int) -> None:
        text = texts[i]
        lexing._parse(lexing._tokenize(text), text)

    results["parse"] = best_of(ROUNDS, count, parse)
    results["length"] = float(len(same))
    return results


def pure_python_copy(target: Path) -> Path:
    """A copy of the installed sqlglot package without its compiled modules."""
    spec = importlib.util.find_spec("sqlglot")
    if spec is None or spec.origin is None:
        raise RuntimeError("sqlglot is not installed")
    source = Path(spec.origin).parent
    shutil.copytree(
        source,
        target / "sqlglot",
        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"),
    )
    return target


def measure_pure(count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="sqlglot-pure-") as tmp:
        path = pure_python_copy(Path(tmp))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(path), str(ROOT)]))
        done = subprocess.run(
            [sys.executable, __file__, "--child", "--count", str(count)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=300, help="calls per round")
    parser.add_argument("--no-pure", action="store_true", help="skip the pure-Python run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        results = measure(args.count)
        # sqlcheck is the one importer of sqlglot; look at what it loaded.
        loaded = sys.modules["sqlglot.parser"].__file__ or ""
        results["compiled"] = float(not loaded.endswith(".py"))
        print(json.dumps(results))
        return

    results = measure(args.count)
    print(f"statement: {int(results['length'])} characters, {args.count} calls per round")
    print(f"  uncached  {results['uncached']:9.1f} us/analyze")
    print(f"  shaped    {results['shaped']:9.2f} us/analyze (other numbers, shape cache)")
    print(f"  cached    {results['cached']:9.2f} us/analyze")
    print(f"  ratio     {results['uncached'] / results['shaped']:9.1f}x (uncached / shaped)")
    print(f"  parse     {results['parse']:9.1f} us (sqlglot tokenize + parse, compiled)")
    if args.no_pure:
        return
    pure = measure_pure(max(args.count // 3, 20))
    if pure.get("compiled"):
        print("  pure      (the child process still loaded compiled sqlglot; no ratio)")
        return
    print(f"  pure      {pure['uncached']:9.1f} us/analyze with pure-Python sqlglot")
    print(f"  ratio     {pure['uncached'] / results['uncached']:9.1f}x (pure / compiled, uncached)")
    print(f"            {pure['parse'] / results['parse']:9.1f}x (pure / compiled, parse only)")


if __name__ == "__main__":
    main()
