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

With ``--soak SECONDS`` it first holds ``--soak-sessions`` sessions open at
once over the three replicas, each with a gateway connection that runs a
statement every second, for that long; then ends them all and reports the
brokers' memory and CPU per session, the session roles left on the target and
the recordings not closed whole (both must be 0), and ``audit verify``.

    .venv/bin/python bench/replicas.py [--sessions 120] [--clients 6] [--lease 5]
    .venv/bin/python bench/replicas.py --soak 60 --soak-sessions 200
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
from benchlib import IDLE_POLICY, dev_broker, gateway_of, raise_max_connections, rss_kb

from brokercli.client import BrokerClient
from server.demo.provision import provision_demo
from server.pgcluster import LocalCluster
from server.store.sealing import create_key_file

BIN = Path(sys.executable).parent


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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def soak(
    cluster: LocalCluster,
    brokers: list[tuple[Any, dict[str, str]]],
    homes: list[Path],
    count: int,
    seconds: float,
) -> None:
    """``count`` sessions at once over the replicas, each with a busy gateway connection."""
    clients = [client_for(env) for _, env in brokers]
    cas = [gateway_of(home)[2] for home in homes]
    pids = [proc.pid for proc, _ in brokers]
    rss0 = [rss_kb(pid) for pid in pids]
    cpu0 = [cpu_seconds(pid) for pid in pids]
    sessions, conns = [], []
    try:
        for n in range(count):
            replica = n % len(brokers)
            session = clients[replica].start_session("demo", "read", None, "soak", {})
            sessions.append((replica, session))
            conns.append(
                psycopg.connect(
                    host=session.gateway.host,
                    port=session.gateway.port,
                    user="soak",
                    password=session.ticket,
                    dbname=session.database,
                    sslmode="verify-full",
                    sslrootcert=cas[replica],
                    connect_timeout=10,
                )
            )
        statements = 0
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            tick = time.monotonic()
            for conn in conns:
                conn.execute("select id from public.orders limit 1").fetchone()
                statements += 1
            time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
        rss1 = [rss_kb(pid) for pid in pids]
        cpu1 = [cpu_seconds(pid) for pid in pids]
    finally:
        for conn in conns:
            conn.close()
        for replica, session in sessions:
            clients[replica].end_session(session.id)
        for client in clients:
            client.close()
    per = count / len(brokers)
    for i in range(len(pids)):
        print(
            f"  replica {i}: RSS {rss0[i] / 1024:.0f} -> {rss1[i] / 1024:.0f} MiB "
            f"({(rss1[i] - rss0[i]) / per:.0f} KiB a session), CPU {cpu1[i] - cpu0[i]:.1f}s "
            f"({(cpu1[i] - cpu0[i]) / per * 1000 / seconds:.1f} ms a session a second)"
        )
    with psycopg.connect(cluster.dsn(dbname="demo"), autocommit=True) as conn:
        roles = conn.execute(
            "SELECT count(*) FROM pg_roles r JOIN pg_auth_members m ON m.member = r.oid"
            " JOIN pg_roles mk ON mk.oid = m.roleid"
            " WHERE mk.rolname = 'dbaccess_managed' AND NOT m.admin_option"
        ).fetchone()
    with psycopg.connect(cluster.dsn(dbname="bench_store"), autocommit=True) as conn:
        unclosed = conn.execute(
            "SELECT count(*) FROM sessions s LEFT JOIN session_recordings r"
            " ON r.session_id = s.id WHERE s.reason = 'soak'"
            " AND (r.status IS DISTINCT FROM 'closed' OR r.digest IS NULL OR r.dropped > 0)"
        ).fetchone()
    verify = subprocess.run(
        [str(BIN / "dbaccess"), "audit", "verify"],
        env=brokers[0][1],
        capture_output=True,
        text=True,
        check=False,
    )
    print(
        f"  {statements} statements; session roles left: {roles[0] if roles else '?'}; "
        f"recordings not closed whole: {unclosed[0] if unclosed else '?'}; "
        f"audit verify: {'ok' if verify.returncode == 0 else 'FAILED ' + verify.stdout}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=120)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--victims", type=int, default=10)
    ap.add_argument("--lease", type=float, default=5.0)
    ap.add_argument("--soak", type=float, default=0.0, help="seconds; 0: no soak")
    ap.add_argument("--soak-sessions", type=int, default=200)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="dbaccess-bench-"))
    base.chmod(0o711)
    try:
        with LocalCluster(base / "pg") as cluster:
            if args.soak:
                raise_max_connections(cluster, args.soak_sessions + 100)
            demo_dsn = provision_demo(cluster).admin_dsn
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench_store")
            url = cluster.dsn(dbname="bench_store").replace(
                "postgresql://", "postgresql+psycopg://", 1
            )
            extra = ("--store-url", url, "--replica-lease", str(args.lease))
            extra += ("--reaper-interval", "1")
            # Replicas of one store seal with one key.
            store_key = base / "store.key"
            create_key_file(store_key, "bench1")
            print(
                f"{args.sessions} sessions (start + end) from {args.clients} client threads; "
                f"lease {args.lease:g}s, reaper every 1s"
            )
            with ExitStack() as stack:
                brokers: list[tuple[Any, dict[str, str]]] = []
                homes: list[Path] = []
                for replicas in (1, 3):
                    while len(brokers) < replicas:
                        homes.append(base / f"replica{len(brokers)}")
                        started = dev_broker(
                            homes[-1], demo_dsn, *extra, policy=IDLE_POLICY, store_key=store_key
                        )
                        brokers.append(stack.enter_context(started))
                    starts, wall = load([env for _, env in brokers], args.sessions, args.clients)
                    p50, p95 = pct(starts, 0.5) * 1000, pct(starts, 0.95) * 1000
                    print(
                        f"{replicas} replica(s): session start p50 {p50:6.1f} ms"
                        f"  p95 {p95:6.1f} ms  {len(starts) / wall:6.1f} sessions/s"
                    )
                if args.soak:
                    print(
                        f"soak: {args.soak_sessions} sessions at once over 3 replicas, "
                        f"a statement a second on each for {args.soak:g}s"
                    )
                    soak(cluster, brokers, homes, args.soak_sessions, args.soak)
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
