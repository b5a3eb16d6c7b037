"""Time the postgres issuer's create + revoke cycle against a throwaway cluster.

Starts its own PostgreSQL (never the machine's), provisions the demo target and
then, as the least-privilege ``dbaccess_admin``, runs N cycles of
``issue`` (CREATE ROLE with a SCRAM verifier) followed by ``revoke`` (NOLOGIN,
terminate, REASSIGN/DROP OWNED, DROP ROLE, verify), first with no connection
open, then with one live connection of the session role that revoke must end.

    .venv/bin/python bench/role_cycle.py [--cycles 50]

Figures (2026-12-07, PostgreSQL 15, 2 cores shared with other work, load
1.9-2.4), p50 without / with a live connection: issue 1.1-1.4 / 1.5 ms, revoke
4.6-4.9 / 6.5-6.9 ms, cycle 5.7-6.2 / 7.9-8.5 ms.  While session roles' SCRAM
verifiers had 4,096 PBKDF2 rounds (which PostgreSQL computes once at CREATE ROLE,
checking the verifier is not the empty password's): issue 7.0-7.8 ms, cycle
13.1-13.3 / 13.2-17.2 ms.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from server.credentials.postgres import PostgresIssuer
from server.demo.provision import provision_demo
from server.pgcluster import LocalCluster


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def report(label: str, samples: list[float]) -> None:
    ms = [s * 1000 for s in samples]
    print(
        f"{label:<34} p50 {percentile(ms, 50):7.1f} ms   p95 {percentile(ms, 95):7.1f} ms"
        f"   mean {statistics.fmean(ms):7.1f} ms   max {max(ms):7.1f} ms"
    )


def run(
    cycles: int,
    with_connection: bool,
    issuer: PostgresIssuer,
    cluster: LocalCluster,
    *,
    quiet: bool = False,
) -> float:
    """Runs ``cycles`` cycles, prints their times unless ``quiet``; the p50 cycle (s)."""
    issue_t: list[float] = []
    revoke_t: list[float] = []
    cycle_t: list[float] = []
    for _ in range(cycles):
        start = time.perf_counter()
        cred = issuer.issue(
            identity="bench@example.com",
            session_id=str(uuid.uuid4()),
            grants=["demo_read"],
            valid_until=datetime.now(UTC) + timedelta(minutes=5),
        )
        issued = time.perf_counter()
        conn = None
        if with_connection:
            conn = psycopg.connect(
                cluster.dsn(user=cred.username, password=cred.password, dbname="demo")
            )
            conn.execute("SELECT 1")
        before_revoke = time.perf_counter()
        result = issuer.revoke(cred.username)
        done = time.perf_counter()
        if conn is not None:
            conn.close()
        if not (result.dropped and result.verified):
            raise SystemExit(f"revoke did not verify: {result}")
        issue_t.append(issued - start)
        revoke_t.append(done - before_revoke)
        cycle_t.append((issued - start) + (done - before_revoke))
    if quiet:
        return percentile(cycle_t, 50)
    suffix = " (live conn)" if with_connection else ""
    report(f"issue{suffix}", issue_t)
    report(f"revoke{suffix}", revoke_t)
    report(f"issue+revoke cycle{suffix}", cycle_t)
    return percentile(cycle_t, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=50)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="dbaccess-bench-"))
    base.chmod(0o711)
    try:
        with LocalCluster(base / "cluster") as cluster:
            target = provision_demo(cluster)
            issuer = PostgresIssuer(target.admin_dsn)
            with psycopg.connect(cluster.dsn()) as conn:
                version = conn.info.server_version
            print(
                f"PostgreSQL {version // 10000}.{version % 10000} on 127.0.0.1:{cluster.port}, "
                f"{args.cycles} cycles each, admin role dbaccess_admin (not superuser)"
            )
            run(5, True, issuer, cluster, quiet=True)  # warm-up, not reported
            idle = run(args.cycles, False, issuer, cluster)
            live = run(args.cycles, True, issuer, cluster)
            print(f"cycle with a live connection / without (p50): {live / idle:.2f}x")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
