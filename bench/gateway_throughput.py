"""Gateway throughput against PostgreSQL directly and through pgbouncer, in one run.

Starts its own PostgreSQL cluster (pgbench tables at scale 10, readable by
``demo_read``), a pgbouncer from the distribution's package (session pooling,
loopback TCP, SCRAM from an auth_file; it also offers TLS to clients with the
broker's dev certificate, so TLS-to-TLS comparisons are like for like) and a
dev broker, then measures, for each route:

* ``pgbench -S -M simple`` and ``-M extended`` with 1, 8 and 32 clients for
  ``--seconds`` each (TPS, average latency, and the proxy's CPU time per
  transaction, user + system, summed over all its threads and the processes
  it runs: the broker writes its recordings to the store from a child);
* a 1,000,000-row read (~80 bytes a row) with ``psql -At -c ... > /dev/null``
  (median of ``--reads`` runs, routes alternated), and the proxy's CPU time
  for it (on a busy machine the read's time is mostly psql's and the
  server's; the CPU is what the proxy spends);

and finally the broker's resident memory with 200 idle client connections
(bench/broker_memory.py measures that alone, with where the memory goes).
Routes are alternated within each measurement, so that a machine that gets
busier mid-run weighs on every route alike.

Routes: ``direct`` (plain TCP to PostgreSQL), ``pgbouncer`` (plain TCP),
``pgbouncer-tls`` (TLS from the client to pgbouncer), ``dbaccess`` (TLS from
the client straight to the gateway, ticket as password: guardrails, pinned
limits, result limits and recording), ``dbaccess-masked`` (the same on a
second target of the same database that has the shipped demo's masking
rules, on columns pgbench never reads: the full pipeline),
``dbaccess-tunnel`` (through ``dbaccess connect``'s local tunnel, which adds
a hop in another Python process) and ``dbaccess-no-access`` (``dbaccess``'s
route to a second dev broker on the same target and policy started with
``--no-access-events``: its statements are recorded without their access
facts, so that ``dbaccess`` against it is what recording access events costs,
measured in the same run; each route's CPU is its own broker's).

Targets (from the gateway core's issue): dbaccess and dbaccess-masked >= 0.7x
pgbouncer-tls TPS at 8 clients in both modes (<= 35 µs of broker CPU a
transaction) and >= 0.6x at 1 and 32 clients; a masked transaction costs at
most 1.2x an unmasked one; the unmasked 1M-row read <= 1.1x direct and the
masked one <= 1.25x the unmasked; gateway memory < 100 MB with 200 idle
client connections.  From the data-access audit's issue: recording access
events costs at most 5 % of throughput (dbaccess >= 0.95x
dbaccess-no-access).  The ratios to plain pgbouncer are printed as well.

With ``--repeat N`` each route's pgbench runs N times, the routes alternated
each time, and the medians are compared: on a 2-core machine one run of a few
seconds differs from the next by up to 15 %, more than the 5 % the access
events may cost.  For the access events, the ratio of each round's two runs
(back to back) is printed too, with their median: a minute the machine runs
slower weighs on both runs of a round, where it may fall on one route's runs
only among the medians.

Run: .venv/bin/python bench/gateway_throughput.py [--seconds 10] [--reads 3] [--repeat 1]
     [--routes direct,pgbouncer,pgbouncer-tls,dbaccess,dbaccess-masked,dbaccess-tunnel,
               dbaccess-no-access]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psycopg
from benchlib import (
    IDLE_BROKER_ARGS,
    IDLE_CONNECTIONS,
    IDLE_POLICY,
    MASKED_TARGET,
    dev_broker,
    gateway_of,
    held_session,
    idle_memory_in_sessions,
    raise_max_connections,
    with_masked_twin,
)

from server.demo.provision import provision_demo
from server.pgcluster import LocalCluster, free_port

BIN = Path(sys.executable).parent
PGBOUNCER = "/usr/sbin/pgbouncer"
BENCH_USER = "bench"
BENCH_PASSWORD = "bench-password-not-secret"
READ_SQL = "select i, md5(i::text), repeat('x', 40) from generate_series(1, 1000000) as s(i)"
ALL_ROUTES = (
    "direct",
    "pgbouncer",
    "pgbouncer-tls",
    "dbaccess",
    "dbaccess-masked",
    "dbaccess-tunnel",
    "dbaccess-no-access",
)
# Recording access events may cost the gateway this much of its throughput at most.
ACCESS_EVENTS_TPS: Final = 0.95


@dataclass
class Route:
    name: str
    env: dict[str, str]
    proxy_pid: int | None = None  # whose CPU time a transaction costs is measured


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time so far of a process and of the children it runs (the
    broker's recording writer: server/audit/event_writes.py)."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for each in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
            user += int(fields[11])
            system += int(fields[12])
    return user / tick, system / tick


def pg_env(host: str, port: int, user: str, password: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PGHOST=host,
        PGPORT=str(port),
        PGUSER=user,
        PGPASSWORD=password,
        PGDATABASE="demo",
        PGSSLMODE="disable",
        PGCONNECT_TIMEOUT="10",
    )
    env.update(extra)
    return env


def pgbench(
    route: Route, mode: str, clients: int, seconds: int
) -> tuple[float, float, tuple[float, float]]:
    """TPS, average latency (ms) and the proxy's user and system CPU time per
    transaction (µs; zero without a proxy)."""
    cmd = [
        "pgbench",
        "-n",
        "-S",
        "-M",
        mode,
        "-c",
        str(clients),
        "-j",
        str(min(clients, 2)),
        "-T",
        str(seconds),
    ]
    cpu_before = cpu_seconds(route.proxy_pid) if route.proxy_pid else (0.0, 0.0)
    res = subprocess.run(
        cmd, env=route.env, capture_output=True, text=True, timeout=seconds + 120, check=False
    )
    cpu_after = cpu_seconds(route.proxy_pid) if route.proxy_pid else (0.0, 0.0)
    out = res.stdout + res.stderr
    tps = re.search(r"tps = ([0-9.]+)", out)
    lat = re.search(r"latency average = ([0-9.]+) ms", out)
    count = re.search(r"actually processed: ([0-9]+)", out)
    if res.returncode != 0 or tps is None or lat is None or count is None:
        raise RuntimeError(f"pgbench via {route.name} failed:\n{out}")
    done = max(int(count.group(1)), 1)
    usr, sys_ = (
        (after - before) / done * 1e6 for before, after in zip(cpu_before, cpu_after, strict=True)
    )
    return float(tps.group(1)), float(lat.group(1)), (usr, sys_)


def big_read(route: Route) -> tuple[float, float]:
    """Seconds of one 1M-row read, and the proxy's CPU seconds (user + system)
    for it: on a busy machine the time is mostly psql's and the server's, the
    CPU is what the proxy spends."""
    cpu_before = cpu_seconds(route.proxy_pid) if route.proxy_pid else (0.0, 0.0)
    started = time.perf_counter()
    with open(os.devnull, "wb") as null:
        res = subprocess.run(
            ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", READ_SQL],
            env=route.env,
            stdout=null,
            stderr=subprocess.PIPE,
            timeout=300,
            check=False,
        )
    if res.returncode != 0:
        raise RuntimeError(f"psql via {route.name} failed: {res.stderr.decode()}")
    secs = time.perf_counter() - started
    cpu_after = cpu_seconds(route.proxy_pid) if route.proxy_pid else (0.0, 0.0)
    return secs, sum(cpu_after) - sum(cpu_before)


def run_as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def pgbouncer(base: Path, pg_port: int, cert: Path, key: Path) -> Iterator[int]:
    where = base / "pgbouncer"
    where.mkdir(mode=0o700)
    port = free_port()
    # pgbouncer refuses to run as root, so its files go to the user it runs as.
    tls_cert, tls_key = where / "server.crt", where / "server.key"
    shutil.copy(cert, tls_cert)
    shutil.copy(key, tls_key)
    (where / "users.txt").write_text(f'"{BENCH_USER}" "{BENCH_PASSWORD}"\n')
    (where / "pgbouncer.ini").write_text(
        f"""[databases]
demo = host=127.0.0.1 port={pg_port} dbname=demo

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {where / "users.txt"}
pool_mode = session
max_client_conn = 400
default_pool_size = 64
logfile = {where / "pgbouncer.log"}
pidfile = {where / "pgbouncer.pid"}
ignore_startup_parameters = extra_float_digits
client_tls_sslmode = allow
client_tls_cert_file = {tls_cert}
client_tls_key_file = {tls_key}
"""
    )
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        for path in [where, *where.iterdir()]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
    proc = subprocess.Popen(
        run_as_postgres([PGBOUNCER, str(where / "pgbouncer.ini")]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with psycopg.connect(
                    host="127.0.0.1",
                    port=port,
                    user=BENCH_USER,
                    password=BENCH_PASSWORD,
                    dbname="demo",
                    sslmode="disable",
                    connect_timeout=2,
                ):
                    break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = where / "pgbouncer.log"
                    raise RuntimeError(
                        "pgbouncer did not start: "
                        + (log.read_text() if log.exists() else "no log")
                    ) from None
                time.sleep(0.2)
        yield port
    finally:
        # SIGTERM, by the pid pgbouncer wrote: its SIGINT waits for clients to leave,
        # and runuser, killed after waiting for that, left pgbouncer running.
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((where / "pgbouncer.pid").read_text().strip()), signal.SIGTERM)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def setup_cluster(cluster: LocalCluster) -> str:
    raise_max_connections(cluster, 400)
    demo = provision_demo(cluster)
    superuser = cluster.dsn(dbname=demo.database)
    env = pg_env("127.0.0.1", cluster.port, cluster.superuser, cluster.password)
    subprocess.run(
        ["pgbench", "-i", "-q", "-s", "10"], env=env, capture_output=True, check=True, timeout=300
    )
    with psycopg.connect(superuser, autocommit=True) as conn:
        conn.execute(
            "grant select on pgbench_accounts, pgbench_branches, pgbench_tellers, "
            "pgbench_history to demo_read"
        )
        conn.execute(
            f"create role {BENCH_USER} login password '{BENCH_PASSWORD}' in role demo_read"
        )
        conn.execute(f"grant connect on database demo to {BENCH_USER}")
    return demo.admin_dsn


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "   -  "
    return f"{a / b:5.2f}x"


@contextmanager
def bare_broker(base: Path, admin_dsn: str, policy: str) -> Iterator[Route]:
    """The route ``dbaccess-no-access``: a second dev broker on the same target and
    policy that records statements without their access facts (``--no-access-events``),
    and a session held on it (TLS from the client straight to its gateway)."""
    with (
        dev_broker(base, admin_dsn, *IDLE_BROKER_ARGS, "--no-access-events", policy=policy) as (
            broker,
            env,
        ),
        held_session(env) as (_port, ticket),
    ):
        host, port, ca = gateway_of(base)
        yield Route(
            "dbaccess-no-access",
            pg_env(host, port, "dev", ticket, PGSSLMODE="verify-full", PGSSLROOTCERT=ca),
            broker.pid,
        )


def ensure_pgbouncer() -> None:
    """pgbouncer is the benchmark's reference: install it (bench/setup.sh) when missing."""
    if Path(PGBOUNCER).exists():
        return
    print("pgbouncer is missing: running bench/setup.sh ...", flush=True)
    subprocess.run(["bash", str(Path(__file__).with_name("setup.sh"))], check=True)
    if not Path(PGBOUNCER).exists():
        raise SystemExit(f"bench/setup.sh did not install {PGBOUNCER}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10, help="duration of each pgbench run")
    ap.add_argument("--reads", type=int, default=3, help="runs of the 1M-row read (median)")
    ap.add_argument("--routes", default=",".join(ALL_ROUTES))
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--modes", default="simple,extended")
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="pgbench runs of each route (routes alternated each time; the median is kept)",
    )
    args = ap.parse_args()
    routes_wanted = [r for r in args.routes.split(",") if r]
    for name in routes_wanted:
        if name not in ALL_ROUTES:
            raise SystemExit(f"unknown route {name!r} (one of {', '.join(ALL_ROUTES)})")
    clients = [int(c) for c in args.clients.split(",")]
    modes = args.modes.split(",")
    # pgbouncer is the reference of its own routes only: without them it is not needed.
    bouncing = any(name.startswith("pgbouncer") for name in routes_wanted)
    if bouncing:
        ensure_pgbouncer()

    base = Path(tempfile.mkdtemp(prefix="dbaccess-gwbench-"))
    base.chmod(0o711)
    cluster = LocalCluster(base / "pg")
    try:
        with cluster:
            print("setting up the cluster (pgbench -i -s 10) ...", flush=True)
            admin_dsn = setup_cluster(cluster)
            policy = with_masked_twin(IDLE_POLICY)
            with (
                dev_broker(base, admin_dsn, *IDLE_BROKER_ARGS, policy=policy) as (broker, env),
                held_session(env) as (tunnel_port, ticket),
                held_session(env, MASKED_TARGET) as (_masked_port, masked_ticket),
                contextlib.ExitStack() as stack,
            ):
                gw_host, gw_port, ca = gateway_of(base)
                bare: Route | None = None
                if "dbaccess-no-access" in routes_wanted:
                    bare = stack.enter_context(bare_broker(base / "no-access", admin_dsn, policy))
                tls_dir = base / "data" / "tls"
                with (
                    pgbouncer(base, cluster.port, tls_dir / "server.crt", tls_dir / "server.key")
                    if bouncing
                    else contextlib.nullcontext(0)
                ) as bouncer_port:
                    pidfile = base / "pgbouncer" / "pgbouncer.pid"
                    bouncer_pid = int(pidfile.read_text().strip()) if bouncing else None
                    all_routes = {
                        "direct": Route(
                            "direct",
                            pg_env("127.0.0.1", cluster.port, BENCH_USER, BENCH_PASSWORD),
                        ),
                        "pgbouncer": Route(
                            "pgbouncer",
                            pg_env("127.0.0.1", bouncer_port, BENCH_USER, BENCH_PASSWORD),
                            bouncer_pid,
                        ),
                        "pgbouncer-tls": Route(
                            "pgbouncer-tls",
                            pg_env(
                                "127.0.0.1",
                                bouncer_port,
                                BENCH_USER,
                                BENCH_PASSWORD,
                                PGSSLMODE="require",
                            ),
                            bouncer_pid,
                        ),
                        "dbaccess": Route(
                            "dbaccess",
                            pg_env(
                                gw_host,
                                gw_port,
                                "dev",
                                ticket,
                                PGSSLMODE="verify-full",
                                PGSSLROOTCERT=ca,
                            ),
                            broker.pid,
                        ),
                        "dbaccess-masked": Route(
                            "dbaccess-masked",
                            pg_env(
                                gw_host,
                                gw_port,
                                "dev",
                                masked_ticket,
                                PGSSLMODE="verify-full",
                                PGSSLROOTCERT=ca,
                            ),
                            broker.pid,
                        ),
                        "dbaccess-tunnel": Route(
                            "dbaccess-tunnel",
                            pg_env("127.0.0.1", tunnel_port, "dev", ticket),
                            broker.pid,
                        ),
                    }
                    if bare is not None:
                        all_routes[bare.name] = bare
                    routes = [all_routes[n] for n in routes_wanted]
                    results: dict[tuple[str, str, int], tuple[float, float]] = {}
                    cpus: dict[tuple[str, str, int], float] = {}
                    each_tps: dict[tuple[str, str, int], list[float]] = {}
                    for mode in modes:
                        for n in clients:
                            runs: dict[str, list[tuple[float, float, float]]] = {}
                            for route in [r for _ in range(args.repeat) for r in routes]:
                                tps, lat, cpu = pgbench(route, mode, n, args.seconds)
                                runs.setdefault(route.name, []).append((tps, lat, sum(cpu)))
                                kept = runs[route.name]
                                each_tps[(route.name, mode, n)] = [r[0] for r in kept]
                                results[(route.name, mode, n)] = (
                                    statistics.median(r[0] for r in kept),
                                    statistics.median(r[1] for r in kept),
                                )
                                cpus[(route.name, mode, n)] = statistics.median(r[2] for r in kept)
                                print(
                                    f"pgbench -S -M {mode:8} -c {n:2}  {route.name:18}"
                                    f" {tps:9.0f} tps  {lat:7.3f} ms"
                                    + (
                                        f"  proxy CPU {cpu[0]:5.1f} usr + {cpu[1]:5.1f} sys µs/tx"
                                        if route.proxy_pid
                                        else ""
                                    ),
                                    flush=True,
                                )
                    reads: dict[str, float] = {}
                    read_cpus: dict[str, float] = {}
                    read_runs: dict[str, list[tuple[float, float]]] = {}
                    for _ in range(args.reads):  # routes alternated, one read each time
                        for route in routes:
                            read_runs.setdefault(route.name, []).append(big_read(route))
                    for route in routes:
                        if args.reads < 1:  # --reads 0: the pgbench runs alone
                            break
                        runs = read_runs[route.name]
                        reads[route.name] = statistics.median(r[0] for r in runs)
                        read_cpus[route.name] = statistics.median(r[1] for r in runs)
                        print(
                            f"1M-row read               {route.name:18} {reads[route.name]:9.3f} s"
                            f"  proxy CPU {read_cpus[route.name]:.2f} s",
                            flush=True,
                        )
                    before, after, _ = idle_memory_in_sessions(broker.pid, base, env, ticket)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    def tps(route: str, mode: str, n: int) -> float | None:
        got = results.get((route, mode, n))
        return got[0] if got else None

    print()
    print(f"pgbench -S, {args.seconds} s each, median of {args.repeat}; TPS")
    print(f"{'mode':9} {'clients':>7} " + " ".join(f"{r.name:>16}" for r in routes))
    for mode in modes:
        for n in clients:
            cells = " ".join(f"{tps(r.name, mode, n) or 0:16.0f}" for r in routes)
            print(f"{mode:9} {n:7} {cells}")
    # Like for like: TLS from the client to both, both session-per-connection proxies.
    print()
    print(
        "dbaccess against pgbouncer-tls (TLS to both) and plain pgbouncer: TPS ratios, "
        "and the proxy's CPU (user + system, all threads and its writer process) per transaction"
    )
    print(
        f"{'mode':9} {'clients':>7}  {'route':16}  {'/ pgb-tls':>9}  {'target':>8}"
        f"  {'/ pgbouncer':>11}  {'µs/tx':>7}  {'pgb-tls µs/tx':>13}  {'CPU ratio':>9}"
    )
    for mode in modes:
        for n in clients:
            ref = tps("pgbouncer-tls", mode, n)
            ref_cpu = cpus.get(("pgbouncer-tls", mode, n))
            target = 0.7 if n == 8 else 0.6
            for name in ("dbaccess", "dbaccess-masked"):
                got = tps(name, mode, n)
                if got is None:
                    continue
                got_cpu = cpus.get((name, mode, n))
                met = "" if ref is None else ("met" if got >= target * ref else "NOT met")
                print(
                    f"{mode:9} {n:7}  {name:16}  {ratio(got, ref):>9}  {f'>= {target}x':>8}"
                    f"  {ratio(got, tps('pgbouncer', mode, n)):>11}"
                    f"  {'-' if got_cpu is None else f'{got_cpu:.1f}':>7}"
                    f"  {'-' if ref_cpu is None else f'{ref_cpu:.1f}':>13}"
                    f"  {ratio(got_cpu, ref_cpu):>9}  {met}"
                )
    if any(k[0] == "dbaccess-no-access" for k in cpus) and any(k[0] == "dbaccess" for k in cpus):
        print()
        print(
            "access events: dbaccess (with them) against dbaccess-no-access (a second broker, "
            "`dbaccess-server dev --no-access-events`): TPS ratio of the medians (target >= "
            f"{ACCESS_EVENTS_TPS}x), broker CPU per transaction with and without, and the "
            "ratio of each round's two runs with their median"
        )
        for mode in modes:
            for n in clients:
                with_ = tps("dbaccess", mode, n)
                without = tps("dbaccess-no-access", mode, n)
                cpu_with = cpus.get(("dbaccess", mode, n))
                cpu_without = cpus.get(("dbaccess-no-access", mode, n))
                verdict = (
                    ""
                    if with_ is None or without is None
                    else ("met" if with_ >= ACCESS_EVENTS_TPS * without else "NOT met")
                )
                # Each round's two runs were back to back: their ratio is what the
                # machine's slower and faster minutes disturb least.
                rounds = [
                    a / b
                    for a, b in zip(
                        each_tps.get(("dbaccess", mode, n), ()),
                        each_tps.get(("dbaccess-no-access", mode, n), ()),
                        strict=False,
                    )
                    if b
                ]
                paired = statistics.median(rounds) if rounds else None
                print(
                    f"  {mode:9} {n:3} clients  {ratio(with_, without):>7}  {verdict:7}"
                    f"  CPU {cpu_with or 0:6.1f} µs/tx with, {cpu_without or 0:6.1f} without"
                    f"  (+{(cpu_with or 0) - (cpu_without or 0):.1f})"
                    + (
                        ""
                        if paired is None
                        else f"  round by round {' '.join(f'{r:.2f}' for r in rounds)}:"
                        f" median {paired:.2f}x"
                        f" {'met' if paired >= ACCESS_EVENTS_TPS else 'NOT met'}"
                    )
                )
    if any(k[0] == "dbaccess-masked" for k in cpus) and any(k[0] == "dbaccess" for k in cpus):
        print()
        print("masked against unmasked, broker CPU per transaction (target <= 1.2x)")
        for mode in modes:
            for n in clients:
                masked = cpus.get(("dbaccess-masked", mode, n))
                plain = cpus.get(("dbaccess", mode, n))
                verdict = (
                    ""
                    if masked is None or plain is None
                    else ("met" if masked <= 1.2 * plain else "NOT met")
                )
                print(f"  {mode:9} {n:3} clients  {ratio(masked, plain):>7}  {verdict}")
    if reads:
        print()
        print(
            f"1M-row read (median of {args.reads}, routes alternated): seconds, ratio to direct "
            "(target <= 1.1x for dbaccess) and to dbaccess (target <= 1.25x for "
            "dbaccess-masked); the proxy's CPU seconds and their ratio to dbaccess's"
        )
    for name, secs in reads.items():
        cpu = read_cpus.get(name, 0.0)
        print(
            f"  {name:16} {secs:7.3f} s  {ratio(secs, reads.get('direct')):>7}"
            f"  {ratio(secs, reads.get('dbaccess')):>7}   CPU {cpu:5.2f} s"
            f"  {ratio(cpu or None, read_cpus.get('dbaccess')):>7}"
        )
    growth = (after - before) / 1024
    print()
    print(
        f"broker RSS: {before / 1024:.1f} MB before, {after / 1024:.1f} MB with "
        f"{IDLE_CONNECTIONS} idle gateway connections (+{growth:.1f} MB; target < 100 MB: "
        f"{'met' if after / 1024 < 100 else 'NOT met'} for the whole process, "
        f"{'met' if growth < 100 else 'NOT met'} for the connections)"
    )


if __name__ == "__main__":
    main()
