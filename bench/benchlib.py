"""What the benchmarks share: a dev broker process on a given target (running the
demo policy without its masking rules unless told otherwise: the benchmarks of the
gateway measure its unmasked path, bench/masking.py the masked one), sessions held
open through ``dbaccess connect`` and the broker's resident memory with many idle
gateway connections."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fix_broker import DEMO_POLICY, demo_policy

if TYPE_CHECKING:
    from server.pgcluster import LocalCluster

BIN = Path(sys.executable).parent
IDLE_CONNECTIONS = 200
IDLE_SESSIONS = 5  # 40 connections each, below a session role's connection limit
# What dev_broker needs for IDLE_CONNECTIONS in IDLE_SESSIONS sessions of one identity
# (the target's max_connections must exceed IDLE_CONNECTIONS too).
IDLE_BROKER_ARGS = ("--gateway-max-connections-per-identity", "400")


def unmasked_demo_policy(*, target: str = "") -> str:
    """The demo policy without its masking rules, with ``target`` (indented target
    keys) added to the demo target: what the benchmarks of the unmasked gateway run.
    The shipped demo masks its people data, and a benchmark that takes it as is
    measures the masked path without saying so; the tests' brokers run the same
    text (tests/fix_broker.py's ``demo_policy``, which this is)."""
    return demo_policy(target=target)


# The unmasked demo policy with the connection caps raised to match (its target's limits).
IDLE_POLICY = unmasked_demo_policy(
    target="    limits:\n"
    "      max_connections_per_session: 400\n"
    "      max_connections_per_identity: 400\n"
    "      max_connections_per_target: 400\n"
)
MASKED_TARGET = "demo_masked"


def with_masked_twin(policy: str) -> str:
    """``policy`` (whose last target is ``demo``) with a second target on the same
    database, :data:`MASKED_TARGET`: the same target with the shipped demo's
    masking rules (on the customers' columns, which pgbench never reads), so
    that one broker measures the unmasked and the masked pipeline side by side."""
    shipped = DEMO_POLICY.read_text()
    masking = re.search(r"(?ms)^    masking:\n.*?(?=^    \S)", shipped)
    assert masking is not None
    block = policy[policy.index("  demo:\n") :].replace("  demo:\n", f"  {MASKED_TARGET}:\n", 1)
    block = block.replace("    scopes:\n", masking.group(0) + "    scopes:\n", 1)
    return policy.rstrip("\n") + "\n" + block


@contextmanager
def dev_broker(
    base: Path,
    admin_dsn: str,
    *extra_args: str,
    policy: str | None = None,
    store_key: Path | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    """A `dbaccess-server dev` on ``admin_dsn`` with ``policy`` (by default the demo's
    without its masking, ``unmasked_demo_policy()``), with a CLI environment logged
    in to it; ``store_key``: the key file of a store replicas share."""
    (base / "data").mkdir(parents=True, exist_ok=True)
    (base / "data" / "policy.yaml").write_text(unmasked_demo_policy() if policy is None else policy)
    env = dict(os.environ)
    env.pop("DBACCESS_TOKEN", None)
    env.pop("DBACCESS_SERVER", None)
    env.update(
        DBACCESS_CONFIG_DIR=str(base / "cli"),
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
    )
    log_path = base / "server.log"
    proc = subprocess.Popen(
        [
            str(BIN / "dbaccess-server"),
            "dev",
            "--data-dir",
            str(base / "data"),
            "--target-dsn",
            admin_dsn,
            *extra_args,
        ],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env={**env, "DBACCESS_SERVER_STORE_KEY_FILE": str(store_key)} if store_key else env,
    )
    try:
        deadline = time.monotonic() + 60
        while "dev broker is running" not in log_path.read_text(errors="replace"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(log_path.read_text(errors="replace"))
            time.sleep(0.1)
        yield proc, env
    finally:
        _interrupt(proc, 60)


def _interrupt(proc: subprocess.Popen[Any], timeout: float) -> None:
    """Stop ``proc`` as Ctrl-C would, killing it if it is not gone in ``timeout`` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def raise_max_connections(cluster: LocalCluster, n: int) -> None:
    """Restart ``cluster`` with ``max_connections = n``.  The restart may move it to
    another port (the old one can still be taken): take its DSNs only after this."""
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"alter system set max_connections = {int(n)}")
    cluster.stop()
    cluster.start()


def rss_kb(pid: int) -> int:
    """Resident set size of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def rss_split_kb(pid: int) -> tuple[int, int]:
    """Anonymous (heap) and file-backed (mapped libraries) parts of a process's RSS, KiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["RssAnon"].split()[0]), int(fields["RssFile"].split()[0])


def gateway_of(base: Path) -> tuple[str, int, str]:
    """Host, port and CA file of the gateway of the dev broker in ``base``."""
    found = re.search(r"gateway:\s+(\S+):(\d+)", (base / "server.log").read_text())
    if found is None:
        raise RuntimeError("no gateway address in the broker's log")
    profile = json.loads((base / "cli" / "profile.json").read_text())
    return found.group(1), int(found.group(2)), str(profile["ca_file"])


@contextmanager
def held_session(env: dict[str, str], target: str = "demo") -> Iterator[tuple[int, str]]:
    proc = subprocess.Popen(
        [str(BIN / "dbaccess"), "connect", target, "--no-launch", "--ttl", "1h"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    text = ""
    try:
        while "press Ctrl-C" not in text:
            line = proc.stderr.readline()
            if not line:
                raise RuntimeError(f"dbaccess connect --no-launch exited: {text}")
            text += line
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
        ticket = re.search(r"session ticket\): (\S+)", text).group(1)  # type: ignore[union-attr]
        yield port, ticket
    finally:
        _interrupt(proc, 30)


def idle_memory(
    broker_pid: int, gateway: tuple[str, int], tickets: list[str], ca: str
) -> tuple[int, int, int]:
    """Broker RSS before and with IDLE_CONNECTIONS open (and once used) gateway
    connections, and the anonymous part of the latter (KiB).

    Spread over several sessions: each session role has a connection limit of its own.
    """
    before = rss_kb(broker_pid)
    conns = []
    try:
        for i in range(IDLE_CONNECTIONS):
            conns.append(
                psycopg.connect(
                    host=gateway[0],
                    port=gateway[1],
                    user="dev",
                    password=tickets[i % len(tickets)],
                    dbname="demo",
                    sslmode="verify-full",
                    sslrootcert=ca,
                    connect_timeout=10,
                )
            )
        for conn in conns:
            conn.execute("select 1")
        time.sleep(1)
        after = rss_kb(broker_pid)
        after_anon = rss_split_kb(broker_pid)[0]
    finally:
        for conn in conns:
            conn.close()
    return before, after, after_anon


def idle_memory_in_sessions(
    broker_pid: int, base: Path, env: dict[str, str], first_ticket: str | None = None
) -> tuple[int, int, int]:
    """``idle_memory`` over IDLE_SESSIONS sessions held open for the purpose
    (``first_ticket``, when given, is one of them, already held by the caller)."""
    host, port, ca = gateway_of(base)
    with ExitStack() as stack:
        tickets = [first_ticket] if first_ticket else []
        while len(tickets) < IDLE_SESSIONS:
            tickets.append(stack.enter_context(held_session(env))[1])
        return idle_memory(broker_pid, (host, port), tickets, ca)
