"""End-to-end latency of `dbaccess exec demo -c "select 1"`, split into what it is
made of, and of the role create+revoke cycle alone, measured in the same run.

Starts its own PostgreSQL cluster (demo data) and a dev broker, then runs the
real CLI N times.  Beside the exec it times the CLI's own start-up
(`dbaccess --version`, the floor of every command) and the broker's part of a
session (the API's session start and end, as the CLI's client calls them, with
the role created and revoked through the issuer's pooled admin connections).
Prints p50/p95 of each and the share of the exec time the role cycle accounts
for.  Run: .venv/bin/python bench/exec_latency.py [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchlib import dev_broker

from server.credentials.postgres import PostgresIssuer
from server.demo.provision import provision_demo
from server.pgcluster import LocalCluster

BIN = Path(sys.executable).parent


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def broker_part(env: dict[str, str], runs: int) -> list[float]:
    """Seconds of each of ``runs`` session starts and ends through the broker's API."""
    from brokercli.client import BrokerClient

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        client = BrokerClient.from_env(None)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    times = []
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            session = client.start_session("demo", "read", None, "bench", {})
            client.end_session(session.id)
            times.append(time.perf_counter() - t0)
    finally:
        client.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="dbaccess-bench-"))
    base.chmod(0o711)
    cluster = LocalCluster(base / "pg")
    try:
        with cluster:
            demo_dsn = provision_demo(cluster).admin_dsn
            with dev_broker(base, demo_dsn) as (_proc, env):
                exec_times = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    res = subprocess.run(
                        [str(BIN / "dbaccess"), "exec", "demo", "-c", "select 1", "-o", "csv"],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                    exec_times.append(time.perf_counter() - t0)
                    if res.returncode != 0:
                        raise SystemExit(res.stderr)
                startup_times = []
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    version = [str(BIN / "dbaccess"), "--version"]
                    subprocess.run(version, env=env, capture_output=True, check=True)
                    startup_times.append(time.perf_counter() - t0)
                api_times = broker_part(env, args.runs)

                issuer = PostgresIssuer(demo_dsn)
                cycle_times = []
                for i in range(args.runs):
                    t0 = time.perf_counter()
                    cred = issuer.issue(
                        identity="bench",
                        session_id=f"s-bench{i:06d}",
                        grants=["demo_read"],
                        valid_until=datetime.now(UTC) + timedelta(minutes=5),
                    )
                    issuer.revoke(cred.username)
                    cycle_times.append(time.perf_counter() - t0)
                issuer.close()

                e50, e95 = pct(exec_times, 0.5), pct(exec_times, 0.95)
                c50, c95 = pct(cycle_times, 0.5), pct(cycle_times, 0.95)
                print(f"runs: {args.runs}")
                print(
                    f"dbaccess exec demo -c 'select 1': p50 {e50 * 1000:.0f} ms"
                    f"  p95 {e95 * 1000:.0f} ms"
                    f"  (target p50 < 300 ms: {'met' if e50 < 0.3 else 'NOT met'})"
                )
                startup = pct(startup_times, 0.5)
                print(
                    f"  of which the CLI's start-up:     p50 {startup * 1000:.0f} ms"
                    "  (dbaccess --version)"
                )
                print(
                    f"  of which the broker's session:   p50 {pct(api_times, 0.5) * 1000:.1f} ms"
                    f"  p95 {pct(api_times, 0.95) * 1000:.1f} ms  (API start + end)"
                )
                print(
                    f"role create+revoke cycle:        p50 {c50 * 1000:.1f} ms"
                    f"  p95 {c95 * 1000:.1f} ms"
                    f"  (target p50 < 10 ms: {'met' if c50 < 0.01 else 'NOT met'})"
                )
                print(f"role cycle / exec (p50 ratio):   {c50 / e50:.3f}")
                print(f"mean exec {statistics.mean(exec_times) * 1000:.0f} ms")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
