"""Round trip of the agents' ``query`` tool on a one-row select, warm and cold, over
stdio (``dbaccess mcp``) and over HTTP (the broker's ``/mcp``), against the same
statement through ``dbaccess exec``, in one run.

Starts its own PostgreSQL cluster (demo data) and a dev broker.  Warm: the tool's
session is open already (the pool reuses it).  Cold: the first query of a fresh
agent token, so the broker starts a session (policy, a new role, the recording)
and the tools connect through the gateway first; the MCP client is connected
beforehand (``tools/list``), so process start-up is not counted.  Each cold run
uses a token of its own.  Prints p50/p95 of each, with the issue's targets:
warm p50 under 20 ms, cold under exec's p50.

Run: .venv/bin/python bench/mcp_latency.py [--runs 20] [--cold-runs 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
from benchlib import dev_broker
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from server.demo.provision import provision_demo
from server.pgcluster import LocalCluster

BIN = Path(sys.executable).parent
SQL = "select 1"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def agent_token(base: Path, env: dict[str, str], n: int) -> str:
    res = subprocess.run(
        [
            str(BIN / "dbaccess-server"), "token", "create", "--data-dir", str(base / "data"),
            "--kind", "agent", "--owner", "dev", "--identity", f"bench-agent-{n}",
            "--groups", "dev", "--ttl", "1h",
        ],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return res.stdout.strip()


def stdio(env: dict[str, str], token: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=str(BIN / "dbaccess"), args=["mcp"], env={**env, "DBACCESS_TOKEN": token}
    )


def http(base: Path, env: dict[str, str], token: str) -> Any:
    profile = json.loads((base / "cli" / "profile.json").read_text())

    @asynccontextmanager
    async def transport() -> AsyncIterator[Any]:
        async with (
            httpx2.AsyncClient(
                headers={"Authorization": f"Bearer {token}"},
                verify=ssl.create_default_context(cafile=profile["ca_file"]),
                timeout=60,
            ) as client,
            streamable_http_client(f"{profile['server']}/mcp", http_client=client) as streams,
        ):
            yield streams

    return transport()


async def timed_queries(server: Any, runs: int) -> list[float]:
    """Connect, list the tools, then time ``runs`` query calls (the first is cold)."""
    times = []
    async with Client(server) as client:
        await client.list_tools()
        for _ in range(runs):
            t0 = time.perf_counter()
            result = await client.call_tool("query", {"target": "demo", "sql": SQL})
            times.append(time.perf_counter() - t0)
            if result.is_error:
                raise SystemExit(f"query failed: {result.structured_content}")
    return times


async def health_times(base: Path, runs: int) -> list[float]:
    """The floor under the HTTP transport: the broker API's GET /v1/health over TLS."""
    profile = json.loads((base / "cli" / "profile.json").read_text())
    times = []
    verify = ssl.create_default_context(cafile=profile["ca_file"])
    async with httpx2.AsyncClient(verify=verify) as client:
        for _ in range(runs + 1):
            t0 = time.perf_counter()
            (await client.get(f"{profile['server']}/v1/health")).raise_for_status()
            times.append(time.perf_counter() - t0)
    return times[1:]


def measure(
    make: Callable[[str], Any], new_token: Callable[[], str], runs: int, cold: int
) -> tuple[list[float], list[float]]:
    warm = anyio.run(timed_queries, make(new_token()), runs + 1)[1:]
    cold_times = [anyio.run(timed_queries, make(new_token()), 1)[0] for _ in range(cold)]
    return warm, cold_times


def line(name: str, values: list[float], target: str = "") -> str:
    return (
        f"{name:<34} p50 {pct(values, 0.5) * 1000:7.1f} ms  p95 {pct(values, 0.95) * 1000:7.1f} ms"
        f"{'  ' + target if target else ''}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--cold-runs", type=int, default=8)
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
                        [str(BIN / "dbaccess"), "exec", "demo", "-c", SQL, "-o", "csv"],
                        env=env, capture_output=True, text=True, check=False,
                    )  # fmt: skip
                    exec_times.append(time.perf_counter() - t0)
                    if res.returncode != 0:
                        raise SystemExit(res.stderr)
                count = iter(range(1_000_000))

                def new_token() -> str:
                    return agent_token(base, env, next(count))

                results: dict[str, tuple[list[float], list[float]]] = {
                    "stdio (dbaccess mcp)": measure(
                        lambda t: stdio(env, t), new_token, args.runs, args.cold_runs
                    ),
                    "HTTP (/mcp)": measure(
                        lambda t: http(base, env, t), new_token, args.runs, args.cold_runs
                    ),
                }
                health = anyio.run(health_times, base, args.runs)
                e50 = pct(exec_times, 0.5)
                print(f"runs: {args.runs} warm, {args.cold_runs} cold; statement: {SQL}")
                print(line("dbaccess exec", exec_times))
                print(line("broker GET /v1/health (HTTPS)", health))
                for name, (warm, cold) in results.items():
                    w50, c50 = pct(warm, 0.5), pct(cold, 0.5)
                    print(
                        line(f"query, warm, {name}", warm,
                             f"(target p50 < 20 ms: {'met' if w50 < 0.020 else 'NOT met'})")
                    )  # fmt: skip
                    print(
                        line(f"query, cold, {name}", cold,
                             f"(target p50 < exec's: {'met' if c50 < e50 else 'NOT met'})")
                    )  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
