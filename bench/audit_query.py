"""``dbaccess audit access`` over 1,000,000 access events, on SQLite and on PostgreSQL.

Fills a fresh store of each kind with ``--events`` access events (as the
recorder indexes them: ``server.audit.access.write_index``, in batches) spread
over 30 days, 50 identities (a tenth of them agents acting for a person), 3
targets and 40 tables of which ``customers`` is one, with one to three
relations and up to five columns each (``email`` masked in most), then times
the questions ``dbaccess audit access`` asks (``find``: one record per
statement, newest first, 200 at most; ``summarize``: counts by identity and
relation), each the best of ``--runs``.  The requirement: under 1 s each.

By default every event touches a set of columns of its own, the worst case for
the index, which keeps each distinct set once (``access_shapes``); ``--shapes
N`` draws the events from N statement shapes, as an application's statements
are.

Run: ``.venv/bin/python bench/audit_query.py [--events 1000000] [--runs 3]
[--stores sqlite,postgresql] [--shapes N]``
"""

from __future__ import annotations

import argparse
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import sql

from server.audit import access
from server.audit.access import AccessQuery, RelationAccess, SessionFacts, access_event
from server.pgcluster import LocalCluster
from server.store.db import Store

NOW = datetime.now(UTC).replace(microsecond=0)
BATCH = 5_000
TABLES = ["customers"] + [f"table_{i}" for i in range(39)]
COLUMNS = ["id", "email", "phone", "city", "amount", "status", "created_at"]


def relations_drawn(rng: random.Random) -> list[RelationAccess]:
    """What one statement touched: one to three tables, up to five columns of each."""
    relations = []
    for table in rng.sample(TABLES, rng.randint(1, 3)):
        columns = tuple(rng.sample(COLUMNS, rng.randint(1, 5)))
        masked = frozenset({"email"} & set(columns)) if rng.random() < 0.9 else frozenset()
        action = access.WRITE if rng.random() < 0.05 else access.READ
        relations.append(RelationAccess("public", table, action, columns, masked))
    return relations


def fill(store: Store, events: int, shapes: int) -> float:
    """Write ``events`` access events into ``store``; the seconds it took.  ``shapes``:
    how many distinct statement shapes they are drawn from (0: each its own)."""
    rng = random.Random(7)
    people = [SessionFacts(f"t{i % 3}", f"person{i}", "user") for i in range(45)]
    agents = [SessionFacts(f"t{i % 3}", f"agent{i}", "agent", f"person{i}") for i in range(5)]
    who = people + agents
    pool = [relations_drawn(rng) for _ in range(shapes)]
    start = time.perf_counter()
    seq = 0
    for first in range(0, events, BATCH):
        batch = []
        for n in range(first, min(first + BATCH, events)):
            facts = who[n % len(who)]
            relations = rng.choice(pool) if pool else relations_drawn(rng)
            seq += 1
            data = {
                access.FACTS: access_event(
                    facts, command="SELECT", relations=relations, rows=rng.randint(0, 100)
                )
            }
            ts = NOW - timedelta(seconds=rng.randint(0, 30 * 86400))
            batch.append(SimpleNamespace(session_id=f"s-{n // 200:012x}", seq=seq, ts=ts,
                                         kind=access.KIND, data=data))  # fmt: skip
        with store.tx() as conn:
            access.write_index(conn, batch)
    return time.perf_counter() - start


QUESTIONS: dict[str, Callable[[Store], Any]] = {
    "--table customers --column email --since 7d": lambda s: access.find(
        s, AccessQuery(table="customers", column="email", since=NOW - timedelta(days=7))
    ),
    "--table customers --column email --clear-only --since 30d": lambda s: access.find(
        s,
        AccessQuery(
            table="customers", column="email", clear_only=True, since=NOW - timedelta(days=30)
        ),
    ),
    "--identity person7 --since 30d": lambda s: access.find(
        s, AccessQuery(identity="person7", since=NOW - timedelta(days=30))
    ),
    "--kind agent --target t1 --writes --since 30d": lambda s: access.find(
        s,
        AccessQuery(kind="agent", target="t1", writes=True, since=NOW - timedelta(days=30)),
    ),
    "--target t2 --since 1d": lambda s: access.find(
        s, AccessQuery(target="t2", since=NOW - timedelta(days=1))
    ),
    "--summary --table customers --since 7d": lambda s: access.summarize(
        s, AccessQuery(table="customers", since=NOW - timedelta(days=7))
    ),
}


def measure(store: Store, runs: int) -> dict[str, tuple[float, int]]:
    out = {}
    for name, question in QUESTIONS.items():
        best, found = float("inf"), 0
        for _ in range(runs):
            start = time.perf_counter()
            found = len(question(store))
            best = min(best, time.perf_counter() - start)
        out[name] = (best, found)
    return out


def report(kind: str, filled: float, events: int, results: dict[str, tuple[float, int]]) -> None:
    print(f"\n{kind}: {events:,} access events written in {filled:.1f} s")
    for name, (seconds, found) in results.items():
        verdict = "ok" if seconds < 1.0 else "OVER 1 s"
        print(f"  {seconds * 1000:8.1f} ms  {found:5d} rows  {verdict:8s}  audit access {name}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stores", default="sqlite,postgresql")
    ap.add_argument(
        "--shapes",
        type=int,
        default=0,
        help="distinct statement shapes the events are drawn from (0, the default and the "
        "worst case for the index: every event its own)",
    )
    args = ap.parse_args()
    kinds = args.stores.split(",")
    base = Path(tempfile.mkdtemp(prefix="dbaccess-bench-audit-"))
    base.chmod(0o711)
    try:
        if "sqlite" in kinds:
            store = Store.open(f"sqlite:///{base / 'store.db'}")
            try:
                filled = fill(store, args.events, args.shapes)
                report("SQLite", filled, args.events, measure(store, args.runs))
            finally:
                store.close()
        if "postgresql" in kinds:
            with LocalCluster(base / "pg") as cluster:
                name = f"store_{secrets.token_hex(4)}"
                with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                url = cluster.dsn(dbname=name).replace("postgresql://", "postgresql+psycopg://", 1)
                store = Store.open(url)
                try:
                    filled = fill(store, args.events, args.shapes)
                    with store.tx() as conn:
                        conn.exec_driver_sql("ANALYZE access_events")
                        conn.exec_driver_sql("ANALYZE access_shape_columns")
                        conn.exec_driver_sql("ANALYZE access_shapes")
                    report("PostgreSQL", filled, args.events, measure(store, args.runs))
                finally:
                    store.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
