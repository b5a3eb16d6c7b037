"""A gateway-only broker's resident memory with 200 idle connections, against a
broker of the default role (``all``) holding the same, measured in the same run.

Starts its own PostgreSQL cluster (demo data, ``max_connections`` raised for the
upstream connections, and a store database), then, one after the other, on
that store and with the same policy and config:

* a broker of role ``all`` (``run --config``): ready and idle, then with 200
  open (and once used) gateway connections over 5 sessions -- the reference;
* an API-only broker and a gateway-only one: the sessions are started through
  the API replica and held on the gateway replica; the gateway replica's RSS
  ready and idle, and with the same 200 connections.

It prints both, and the gateway replica's against the reference (the ratio).
The gateway-only process loads no web framework (FastAPI, pydantic, uvicorn,
Jinja2, the MCP SDK: tests/server/sessions/test_roles_e2e.py checks it).

Run: .venv/bin/python bench/gateway_rss.py [--settle 2]   (about 40 s)

Findings (Python 3.11.7, the pinned dependencies, 2 cores shared; MB of RSS,
three runs within 0.3 MB of each other)
---------------------------------------------------------------------
::

    MB of RSS                            all  gateway-only  ratio
    ready and idle                     151.6         112.6   0.74
    200 idle gateway connections       165.4         124.3   0.75

About 40 MB less: besides FastAPI, starlette, pydantic, uvicorn, Jinja2 and
the MCP SDK, the routes, templates and app objects built on them are never
made.  What the gateway-only process still loads beyond the standard library:
sqlglot (~29), psycopg (~12), SQLAlchemy (~11: the store), typer, PyYAML and
prometheus_client (server.metrics, imported by the session service), and the
broker's own modules.  The 200 connections cost both the same (~12 MB, about
60 KB each).  The reference runs from a config file on a PostgreSQL store, as
replicas do; bench/broker_memory.py measures the dev broker.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psycopg
from benchlib import (
    IDLE_CONNECTIONS,
    IDLE_POLICY,
    IDLE_SESSIONS,
    held_session,
    idle_memory,
    raise_max_connections,
    rss_kb,
)

from server.demo.provision import provision_demo, write_admin_dsn_file
from server.pgcluster import LocalCluster
from server.tlsutil import TlsFiles, ensure_dev_ca

BIN = Path(sys.executable).parent


def write_config(base: Path, name: str, store_url: str, tls: TlsFiles, extra: str = "") -> Path:
    path = base / f"{name}.yaml"
    path.write_text(
        f"store_url: {store_url}\n"
        "policy: policy.yaml\n"
        f"data_dir: {base / name}\n"
        "api_listen: 127.0.0.1:0\n"
        "gateway_listen: 127.0.0.1:0\n"
        f"gateway_max_connections_per_identity: {IDLE_CONNECTIONS * 2}\n"
        f"tls:\n  cert: {tls.cert}\n  key: {tls.key}\n  ca: {tls.ca}\n" + extra
    )
    return path


@contextmanager
def broker(
    base: Path, config: Path, env: dict[str, str], ready: str
) -> Iterator[tuple[subprocess.Popen[bytes], re.Match[str]]]:
    """``dbaccess-server run --config CONFIG`` until its ready line matches ``ready``."""
    log = base / f"{config.stem}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "dbaccess-server"), "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while (found := re.search(ready, log.read_text(errors="replace"))) is None:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(log.read_text(errors="replace"))
            time.sleep(0.1)
        yield proc, found
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def measure(
    pid: int, env: dict[str, str], gateway: tuple[str, int], ca: str, settle: float
) -> tuple[int, int]:
    """RSS (KiB) of ``pid`` ready and idle, and with IDLE_CONNECTIONS connections over
    IDLE_SESSIONS sessions started through the API ``env`` points at."""
    time.sleep(settle)
    idle = rss_kb(pid)
    with ExitStack() as stack:
        tickets = [stack.enter_context(held_session(env))[1] for _ in range(IDLE_SESSIONS)]
        _before, after, _anon = idle_memory(pid, gateway, tickets, ca)
    return idle, after


def mb(kb: int) -> str:
    return f"{kb / 1024:6.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settle", type=float, default=2.0, help="seconds idle before measuring")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="dbaccess-gwbench-"))
    base.chmod(0o711)
    try:
        with LocalCluster(base / "pg") as cluster:
            raise_max_connections(cluster, IDLE_CONNECTIONS * 2)
            demo = provision_demo(cluster)
            with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench_store")
            url = cluster.dsn(dbname="bench_store").replace(
                "postgresql://", "postgresql+psycopg://", 1
            )
            tls = ensure_dev_ca(base / "tls")
            assert tls.ca is not None
            write_admin_dsn_file(base / "admin.dsn", demo.admin_dsn)
            (base / "policy.yaml").write_text(IDLE_POLICY)
            env = dict(os.environ)
            env.update(
                DBACCESS_CONFIG_DIR=str(base / "cli"),
                PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
                DBACCESS_CA_FILE=str(tls.ca),
            )
            env["DBACCESS_TOKEN"] = subprocess.run(
                [
                    *(str(BIN / "dbaccess-server"), "token", "create", "--store-url", url),
                    *("--identity", "dev", "--groups", "dev,admin"),
                ],
                capture_output=True,
                text=True,
                check=True,
                env=env,
                timeout=60,
            ).stdout.strip()

            rows: dict[str, tuple[int, int]] = {}
            config = write_config(base, "all", url, tls)
            with broker(base, config, env, r"API (https://\S+), gateway (\S+):(\d+)") as (
                proc,
                ready,
            ):
                env["DBACCESS_SERVER"] = ready[1]
                gateway = (ready[2], int(ready[3]))
                rows["all"] = measure(proc.pid, env, gateway, str(tls.ca), args.settle)

            config = write_config(base, "gateway", url, tls, "role: gateway\n")
            with broker(base, config, env, r"\(gateway\): gateway (\S+):(\d+)") as (gw, ready):
                gateway = (ready[1], int(ready[2]))
                api_extra = f"role: api\npublic_gateway_address: {gateway[0]}:{gateway[1]}\n"
                config = write_config(base, "api", url, tls, api_extra)
                with broker(base, config, env, r"\(api\): API (https://\S+),") as (_api, ready):
                    env["DBACCESS_SERVER"] = ready[1]
                    rows["gateway"] = measure(gw.pid, env, gateway, str(tls.ca), args.settle)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"{'MB of RSS':32} {'all':>7} {'gateway-only':>13} {'ratio':>6}")
    labels = ("ready and idle", f"{IDLE_CONNECTIONS} idle gateway connections")
    for n, label in enumerate(labels):
        ref, gw_kb = rows["all"][n], rows["gateway"][n]
        print(f"{label:32} {mb(ref):>7} {mb(gw_kb):>13} {gw_kb / ref:6.2f}")


if __name__ == "__main__":
    main()
