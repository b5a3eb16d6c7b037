"""The broker's resident memory: idle, and with 200 idle gateway connections.

Starts its own PostgreSQL cluster (demo data, ``max_connections`` raised for the
200 upstream connections) and a dev broker on it, then prints the broker
process's RSS

* once it is ready and idle,
* with 200 open (and once used) gateway connections spread over 5 sessions,

against the target (< 100 MB for the whole process with 200 idle client
connections).  As references, measured in the same run with the same
interpreter: a bare ``python -c 'import asyncio'``, and the RSS that importing
each of the broker's dependencies adds, in the order the broker loads them
(a fresh interpreter imports them one after the other; ``server.runtime`` is
the rest of the broker itself).  The findings are in the module docstring of
bench/gateway_throughput.py.

Run: .venv/bin/python bench/broker_memory.py [--settle 2]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import (
    IDLE_BROKER_ARGS,
    IDLE_CONNECTIONS,
    IDLE_SESSIONS,
    dev_broker,
    idle_memory_in_sessions,
    raise_max_connections,
    rss_kb,
    rss_split_kb,
)

from server.demo.provision import provision_demo
from server.pgcluster import LocalCluster

TARGET_MB = 100
# Top-level imports in the order `dbaccess-server dev` loads them.
BROKER_IMPORTS = (
    "asyncio",
    "typer",
    "yaml",
    "psycopg",
    "pydantic",
    "fastapi",
    "sqlalchemy",
    "sqlglot",
    "uvicorn",
    "server.runtime",
)
# Kept out of the broker unless a target, the config or a migration needs them.
ON_DEMAND_IMPORTS = ("jwt", "alembic", "boto3", "hvac")

_RSS_SNIPPET = """
import importlib, sys
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
print("-", rss())
for name in sys.argv[1:]:
    importlib.import_module(name)
    print(name, rss())
"""


def import_rss(*modules: str) -> list[tuple[str, int]]:
    """RSS (KiB) of a fresh interpreter at start and after importing each module in turn."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SNIPPET, *modules],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return [(name, int(kb)) for name, kb in (line.split() for line in out.splitlines())]


def mb(kb: int) -> str:
    return f"{kb / 1024:6.1f} MB"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--settle", type=float, default=2.0, help="seconds idle before measuring")
    args = ap.parse_args()

    bare = import_rss("asyncio")[-1][1]
    steps = import_rss(*BROKER_IMPORTS)
    on_demand = import_rss(*BROKER_IMPORTS, *ON_DEMAND_IMPORTS)[-len(ON_DEMAND_IMPORTS) :]

    base = Path(tempfile.mkdtemp(prefix="dbaccess-membench-"))
    base.chmod(0o711)
    cluster = LocalCluster(base / "pg")
    try:
        with cluster:
            raise_max_connections(cluster, IDLE_CONNECTIONS * 2)
            demo = provision_demo(cluster)
            with dev_broker(base, demo.admin_dsn, *IDLE_BROKER_ARGS) as (broker, env):
                time.sleep(args.settle)
                ready = rss_kb(broker.pid)
                anon, files = rss_split_kb(broker.pid)
                before, after, after_anon = idle_memory_in_sessions(broker.pid, base, env)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print("RSS added by each import, in the broker's order (fresh interpreter):")
    prev = steps[0][1]
    print(f"  {'(interpreter)':16} {mb(prev)}")
    for name, kb in steps[1:]:
        print(f"  {name:16} {mb(kb - prev)}   (total {mb(kb)})")
        prev = kb
    print("  on demand only (after all of the above):")
    for name, kb in on_demand:
        print(f"  {name:16} {mb(kb - prev)}")
        prev = kb
    print()
    verdict = "met" if after / 1024 < TARGET_MB else "NOT met"
    rows = [
        ("bare python -c 'import asyncio'", bare, ""),
        (
            "broker, ready and idle",
            ready,
            f"heap {mb(anon).strip()}, mapped files {mb(files).strip()}",
        ),
        (f"broker, {IDLE_SESSIONS} sessions held", before, ""),
        (
            f"broker, {IDLE_CONNECTIONS} idle gateway connections",
            after,
            f"+{(after - before) / 1024:.1f} MB, heap {mb(after_anon).strip()}; "
            f"target < {TARGET_MB} MB: {verdict}",
        ),
    ]
    for label, kb, note in rows:
        print(f"{label:40} {mb(kb)}" + (f"   ({note})" if note else ""))


if __name__ == "__main__":
    main()
