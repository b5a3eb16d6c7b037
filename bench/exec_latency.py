"""End-to-end latency of `dbaccess exec demo -c "select 1"`, split into what it is
made of, and of the role create+revoke cycle alone, measured in the same run.

Starts its own PostgreSQL cluster (demo data) and a dev broker, then runs the
real CLI N times.  Beside the exec it times the CLI's own start-up
(`dbaccess --version`, the floor of every command) and the broker's part of a
session (the API's session start and end, as the CLI's client calls them, with
the role created and revoked through the issuer's pooled admin connections).
Prints p50/p95 of each and the share of the exec time the role cycle accounts
for, and, as the reference measured in the same run, a bare interpreter that
imports what the exec path cannot do without (typer, which validates options
through pydantic, and psycopg): the exec's ratio to it is what to compare across
runs on a busy machine.  Run: .venv/bin/python bench/exec_latency.py [--runs 20]

Where the time goes, one exec split by marks in the CLI (medians of 12, 2 cores
at load ~2, the whole ~380 ms; at load 4-6 every part about doubles): the
interpreter's start 26 ms; imports 195 ms (typer and the CLI's modules 96,
psycopg 78, asyncio and ssl for the tunnel 21); typer's option parsing 73 ms
(pydantic imported, one TypeAdapter built per option); the broker's session
start 28 ms and end 17 ms (the role's issue and revoke are about 60% of them:
CREATE ROLE with a password costs the target one PBKDF2 of the verifier, 5-7 ms,
to check that it is not the empty password's); the gateway login through the
tunnel 16 ms; the statement 2 ms; the exit 4 ms.  The interpreter's teardown
after the answer (50-300 ms with psycopg loaded, by load) is no longer paid: the
program ends once its output is flushed.  Python files without bytecode
(PYTHONDONTWRITEBYTECODE and no __pycache__) are compiled on every run, in the
imports above.  Last figures, same run: exec p50 350-400 ms against a reference
of 180-200 ms (ratio 2.0; 2.4 before the exit without teardown and the role
cycle's fewer round trips), the role cycle p50 10-13 ms (11-15 before).
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


# The floor of the exec path: the interpreter and the libraries it cannot do without
# (typer, which validates options through pydantic, and psycopg), ending as the CLI
# does, without the interpreter's teardown.
REFERENCE = "import os, typer, pydantic, psycopg; os._exit(0)"


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
                # Interleaved, so that a change of the machine's load hits all three alike.
                commands = {
                    "exec": [str(BIN / "dbaccess"), "exec", "demo", "-c", "select 1", "-o", "csv"],
                    "reference": [sys.executable, "-c", REFERENCE],
                    "startup": [str(BIN / "dbaccess"), "--version"],
                }
                times: dict[str, list[float]] = {name: [] for name in commands}
                for _ in range(args.runs):
                    for name, argv in commands.items():
                        t0 = time.perf_counter()
                        res = subprocess.run(
                            argv, env=env, capture_output=True, text=True, check=False
                        )
                        times[name].append(time.perf_counter() - t0)
                        if res.returncode != 0:
                            raise SystemExit(res.stderr)
                exec_times, reference_times, startup_times = times.values()
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
                ref = pct(reference_times, 0.5)
                print(
                    "  reference (python importing typer, pydantic, psycopg):"
                    f" p50 {ref * 1000:.0f} ms  (exec / reference: {e50 / ref:.2f})"
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
