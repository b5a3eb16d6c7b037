"""The broker's resident memory: idle, and with 200 idle gateway connections.

Starts its own PostgreSQL cluster (demo data, ``max_connections`` raised for the
200 upstream connections) and a dev broker on it, then prints the broker
process's RSS

* once it is ready and idle (with its heap and mapped-file parts),
* with 5 sessions held open, and with 200 open (and once used) gateway
  connections spread over them,

against the target (< 100 MB for the whole process with 200 idle client
connections).  As references, measured in the same run with the same
interpreter: a bare ``python -c 'import asyncio'``, and the RSS that importing
each of the broker's dependencies adds, in the order the broker loads them
(a fresh interpreter imports them one after the other; ``server.runtime`` is
the rest: the broker's own modules and what only they import).

Run: .venv/bin/python bench/broker_memory.py [--settle 2]   (about 40 s)

Findings (Python 3.11.7, the pinned dependencies, 2 cores; MB of RSS)
---------------------------------------------------------------------
What the running broker holds, importing in its order::

    interpreter                               10.6
    asyncio (with ssl: the system OpenSSL)     9.3   bare `import asyncio`: 20.0
    typer (with its bundled click)             2.8
    yaml                                       0.9
    psycopg[binary] (own libpq and OpenSSL)   12.0
    pydantic                                   3.7
    fastapi (starlette, opentelemetry-api)    12.8
    sqlalchemy                                11.4
    sqlglot[c]                                29.4   ~19 of it mapped mypyc .so files;
                                                     the pure-Python build is no smaller
    uvicorn (h11, click, multiprocessing)      2.3
    uvloop                                     1.0
    scramp (asn1crypto)                        2.2
    SQLAlchemy's sqlite + postgresql dialects  2.4   the partial index in store/tables.py
                                                     names both, so both load
    the broker's own modules                  ~8     gateway 2.9, sqlcheck 2.0, ...
    = all imports                            ~110   (~114 when its sources have no .pyc,
                                                     e.g. PYTHONDONTWRITEBYTECODE=1: the
                                                     compiler's memory is mostly reused,
                                                     ready and idle differs by 0.3)
    start-up: store, policy, API app, TLS,
      gateway, libpq's first connections     ~12
    = ready and idle                         ~122   heap 79, mapped files 42
    5 sessions held                           +2
    200 idle gateway connections             +10.5  about 52 KB each
    = measured                               ~134   (heap 90)

Kept out of the running broker (MB each adds alone after ``import asyncio``):

* PyJWT with cryptography, 12.5: imported where tokens are checked, at start
  only with an identity provider or workload identities configured
  (server/identity/oidc.py); certificate fingerprints use the ssl module
  (server/tlsutil.py).
* Alembic with Mako and Pygments, about 11 (27.9 with the SQLAlchemy they
  need): a store at head is recognised without them (server/store/db.py), and
  the broker migrates and makes its dev certificates (cryptography, 9.9) in a
  forked child (server/isolated.py, server/cli.py).
* boto3/botocore 15.8 and hvac 11.1: already imported only for rds-iam or
  vault targets and for audit archival.
* keyring (about 1, dev only: it saves the CLI's token): left as it is.

Before and after, this benchmark on the same machine: ready and idle 140-143
-> 122 MB; with 200 idle gateway connections 153-155 -> 134 MB.  The target
is not met.  Levers measured and not taken: MALLOC_ARENA_MAX=2 (no change: the
broker runs few threads, so few malloc arenas), gc.freeze() after start-up (no
change: it saves copy-on-write in forked workers, of which the broker has
none), malloc_trim(0) (0.4 MB: the heap is live objects, pymalloc's arenas
were 98% used), PSYCOPG_IMPL=python (12.5 instead of 12.0: the system libpq
brings GnuTLS and Kerberos of its own).  The dependencies the gateway and API
need at all times (interpreter and asyncio 20, sqlglot 29, FastAPI with
pydantic 16.5, psycopg 12, SQLAlchemy 11.4) come to 89 MB before the broker's
own code, its start-up and any connection, so < 100 MB for the whole process
takes a structural change (for instance the gateway in a process of its own,
without the API's FastAPI and SQLAlchemy), not more lazy imports.
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
    IDLE_POLICY,
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
    "uvloop",
    "scramp",
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
            with dev_broker(base, demo.admin_dsn, *IDLE_BROKER_ARGS, policy=IDLE_POLICY) as (
                broker,
                env,
            ):
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
    print(f"{'':40} {'RSS':>9}  {'/ bare':>6}")
    for label, kb, note in rows:
        print(f"{label:40} {mb(kb)}  {kb / bare:5.2f}x" + (f"   ({note})" if note else ""))


if __name__ == "__main__":
    main()
