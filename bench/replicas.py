"""Broker replicas on one PostgreSQL store: session starts with 1 and 3 replicas, and
how long a dead replica's roles outlive it.

Starts its own PostgreSQL cluster (the demo target and a store database on it)
and dev brokers sharing that store (``--store-url``).  For 1 and then 3
replicas, ``--clients`` threads each start and end sessions through the
broker's API (the CLI's client; the threads take the replicas in turn) until
``--sessions`` have run: session start p50/p95 and sessions per second
(start + end).  Then ``--victims`` sessions are started on one replica, it is
SIGKILLed, and the time until the last of its roles is gone from the target is
measured (the lease is ``--lease`` seconds, the reaper runs every second).

    .venv/bin/python bench/replicas.py [--sessions 120] [--clients 6] [--lease 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
from benchlib import dev_broker

from brokercli.client import BrokerClient
from server.demo.provision import provision_demo
from server.pgcluster import LocalCluster


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def client_for(env: dict[str, str]) -> BrokerClient:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        return BrokerClient.from_env(None)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def load(envs: list[dict[str, str]], sessions: int, clients: int) -> tuple[list[float], float]:
    """Start and end ``sessions`` sessions from ``clients`` threads over the replicas;
    the start times (s) and the wall time of the whole run."""
    starts: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    left = [sessions]

    # Made here: client_for swaps the process's environment, which threads share.
    made = [client_for(envs[n % len(envs)]) for n in range(clients)]

    def worker(n: int) -> None:
        client = made[n]
        try:
            while True:
                with lock:
                    if left[0] == 0:
                        return
                    left[0] -= 1
                t0 = time.perf_counter()
                try:
                    session = client.start_session("demo", "read", None, "bench", {})
                    started = time.perf_counter() - t0
                    client.end_session(session.id)
                except Exception as exc:  # counted and shown, the run goes on
                    with lock:
                        errors.append(str(exc))
                    continue
                with lock:
                    starts.append(started)
        finally:
            client.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    if errors:
        print(f"  {len(errors)} failed, e.g. {errors[0]}")
    return starts, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=120)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--victims", type=int, default=10)
    ap.add_argument("--lease", type=float, default=5.0)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="dbaccess-bench-"))
    base.chmod(0o711)
    try:
        with LocalCluster(base / "pg") as cluster:
            demo_dsn = provision_demo(cluster).admin_dsn
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench_store")
            url = cluster.dsn(dbname="bench_store").replace(
                "postgresql://", "postgresql+psycopg://", 1
            )
            extra = ("--store-url", url, "--replica-lease", str(args.lease))
            extra += ("--reaper-interval", "1")
            print(
                f"{args.sessions} sessions (start + end) from {args.clients} client threads; "
                f"lease {args.lease:g}s, reaper every 1s"
            )
            with ExitStack() as stack:
                brokers: list[tuple[Any, dict[str, str]]] = []
                for replicas in (1, 3):
                    while len(brokers) < replicas:
                        home = base / f"replica{len(brokers)}"
                        brokers.append(stack.enter_context(dev_broker(home, demo_dsn, *extra)))
                    starts, wall = load([env for _, env in brokers], args.sessions, args.clients)
                    p50, p95 = pct(starts, 0.5) * 1000, pct(starts, 0.95) * 1000
                    print(
                        f"{replicas} replica(s): session start p50 {p50:6.1f} ms"
                        f"  p95 {p95:6.1f} ms  {len(starts) / wall:6.1f} sessions/s"
                    )
                victim_proc, victim_env = brokers[0]
                client = client_for(victim_env)
                roles = [
                    str(client.start_session("demo", "read", None, "bench", {}).raw["db_user"])
                    for _ in range(args.victims)
                ]
                client.close()
                victim_proc.kill()
                died = time.perf_counter()
                with psycopg.connect(cluster.dsn(dbname="demo"), autocommit=True) as conn:
                    while time.perf_counter() - died < args.lease + 60:
                        left = conn.execute(
                            "SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", (roles,)
                        ).fetchone()
                        if left is not None and left[0] == 0:
                            break
                        time.sleep(0.05)
                gone = time.perf_counter() - died
                print(
                    f"replica SIGKILLed with {args.victims} sessions: its last role revoked "
                    f"{gone:.2f}s later (lease {args.lease:g}s)"
                )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
