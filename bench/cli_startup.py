"""Start-up cost of ``dbaccess --help``, measured against bare interpreters.

Help and shell completion run on every keystroke-level interaction, so the CLI
must not pay for the libraries its commands use (httpx, psycopg, keyring...).
Wall time is noisy, which is why this is a benchmark and not a test: it prints
the median of several runs of each command, and the ratio of ``dbaccess --help``
to ``python -c "import typer"`` (typer being the floor the CLI cannot go below).

    .venv/bin/python bench/cli_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    'python -c "import typer"': [sys.executable, "-c", "import typer"],
    "dbaccess --help": [sys.executable, "-m", "brokercli.app", "--help"],
}


def median_seconds(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description="Median start-up time of dbaccess --help.")
    parser.add_argument("--runs", type=int, default=7, help="runs per command (default 7)")
    opts = parser.parse_args()
    # One untimed round first, so that every case starts with warm file caches.
    for argv in CASES.values():
        median_seconds(argv, 1)
    medians = {name: median_seconds(argv, opts.runs) for name, argv in CASES.items()}
    for name, seconds in medians.items():
        print(f"{name:<28} {seconds * 1000:8.1f} ms  (median of {opts.runs})")
    help_s = medians["dbaccess --help"]
    typer_s = medians['python -c "import typer"']
    bare_s = medians["python -c pass"]
    print(f"{'ratio to import typer':<28} {help_s / typer_s:8.2f} x")
    print(f"{'over python -c pass':<28} {(help_s - bare_s) * 1000:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
