"""An API-only and a gateway-only broker (``run --role``) on one PostgreSQL store.

The API replica starts sessions and hands them to the gateway replica (its
``public_gateway_address``), which takes each at its client's first connection
through the store.  The gateway replica runs with ``PYTHONPROFILEIMPORTTIME``,
so every module the process ever imports is named on its stderr: after the
tests drove sessions through it, the web framework must not be among them.
The replicas' lease is 2 s and their reapers run every second.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from psycopg import sql

from server.audit.recording import recording_info
from server.demo.provision import DemoTarget, write_admin_dsn_file
from server.pgcluster import LocalCluster
from server.store.db import Store
from server.tlsutil import TlsFiles, ensure_dev_ca
from tests.fix_broker import BIN, Broker, demo_policy, new_broker
from tests.fix_mcp import call, with_client
from tests.fix_pg import make_tmp_dir
from tests.fix_session import held_session

pytestmark = pytest.mark.slow

WEB_FRAMEWORK = ("starlette", "fastapi", "uvicorn", "jinja2", "mcp", "slack_sdk")
_IMPORTED = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S.*)$")


@dataclass
class SplitApi(Broker):
    """The CLI's side of an API-only broker run from a config file: its URL, CA and a token."""

    server_url: str = ""
    ca_file: str = ""
    api_token: str = ""

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(
            DBACCESS_SERVER=self.server_url,
            DBACCESS_CA_FILE=self.ca_file,
            DBACCESS_TOKEN=self.api_token,
            **extra,
        )


@dataclass
class Split:
    api: SplitApi
    api_proc: subprocess.Popen[bytes]
    gateway_proc: subprocess.Popen[bytes]
    gateway_log: Path
    gateway_port: int
    api_port: int
    store_url: str


def _config(folder: Path, name: str, store_url: str, tls: TlsFiles, extra: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(
        f"store_url: {store_url}\n"
        "policy: policy.yaml\n"
        f"data_dir: {folder / name}\n"
        "api_listen: 127.0.0.1:0\n"
        "gateway_listen: 127.0.0.1:0\n"
        "reaper_interval: 1s\n"
        "replica_lease: 2s\n"
        f"tls:\n  cert: {tls.cert}\n  key: {tls.key}\n  ca: {tls.ca}\n" + extra
    )
    return path


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, pattern: str) -> re.Match[str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"), re.MULTILINE)
        if found:
            return found
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.1)
    raise RuntimeError(f"broker did not start:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


@pytest.fixture(scope="module")
def split(pg_cluster: LocalCluster, demo_target: DemoTarget) -> Iterator[Split]:
    name = f"store_{secrets.token_hex(4)}"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = pg_cluster.dsn(dbname=name).replace("postgresql://", "postgresql+psycopg://", 1)
    Store.migrate_url(url)
    folder = make_tmp_dir("dbaccess-roles-")
    cli = new_broker(demo_target, store_url=url)  # its folder: the CLI's config, removed after
    procs: list[subprocess.Popen[bytes]] = []
    try:
        tls = ensure_dev_ca(folder / "tls")
        write_admin_dsn_file(folder / "admin.dsn", demo_target.admin_dsn)
        (folder / "policy.yaml").write_text(demo_policy())
        env = cli.env()
        # The gateway's role from the command line, the API's from its file.
        gw_log = folder / "gateway.log"
        with gw_log.open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [
                        str(BIN / "dbaccess-server"),
                        "run",
                        "--config",
                        str(_config(folder, "gateway", url, tls, "")),
                        "--role",
                        "gateway",
                    ],
                    stdout=log,
                    stderr=log,
                    env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
                )
            )
        gw_port = int(_wait_ready(procs[0], gw_log, r"\(gateway\): gateway 127\.0\.0\.1:(\d+)")[1])
        api_log = folder / "api.log"
        api_config = _config(
            folder, "api", url, tls, f"role: api\npublic_gateway_address: 127.0.0.1:{gw_port}\n"
        )
        with api_log.open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [str(BIN / "dbaccess-server"), "run", "--config", str(api_config)],
                    stdout=log,
                    stderr=log,
                    env=env,
                )
            )
        api_url = _wait_ready(procs[1], api_log, r"\(api\): API (https://\S+),")[1]
        token = subprocess.run(
            [
                str(BIN / "dbaccess-server"),
                "token",
                "create",
                "--store-url",
                url,
                "--identity",
                "dev",
                "--groups",
                "dev,admin",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=True,
        ).stdout.strip()
        api = SplitApi(
            data_dir=cli.data_dir,
            config_dir=cli.config_dir,
            target_dsn=demo_target.admin_dsn,
            server_url=api_url,
            ca_file=str(tls.ca),
            api_token=token,
        )
        yield Split(
            api,
            procs[1],
            procs[0],
            gw_log,
            gw_port,
            int(api_url.rsplit(":", 1)[1]),
            url,
        )
    finally:
        for proc in procs:
            _stop(proc)
        shutil.rmtree(folder, ignore_errors=True)
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _owner_role(split: Split, session_id: str | None = None) -> str:
    """The role of the replica that owns ``session_id`` (default: the latest session)."""
    store = Store.open(split.store_url)
    try:
        if session_id is None:
            record = store.list_sessions(limit=1)[0]
        else:
            record = store.get_session(session_id)
        assert record is not None
        roles = {r.id: r.role for r in store.replicas()}
        return roles[str(record.owner)]
    finally:
        store.close()


def test_exec_through_the_api_replica_runs_on_the_gateway_replica(split: Split) -> None:
    done = split.api.cli("exec", "demo", "-c", "select 40 + 2")
    assert done.returncode == 0, done.stderr
    assert "42" in done.stdout
    assert _owner_role(split) == "gateway", "the gateway replica took the session"
    verify = split.api.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_kill_through_the_api_replica_cuts_the_connection_on_the_gateway(split: Split) -> None:
    with held_session(split.api) as s:
        first = s.psql("select current_user")
        assert first.returncode == 0, first.stderr
        assert _owner_role(split, s.session_id) == "gateway", "the gateway replica took it"
        psql = subprocess.Popen(
            ["psql", "-XAt", "-c", "select pg_sleep(30)"],
            env=s.env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        killed = split.api.cli("kill", s.session_id)
        done = time.monotonic()
        assert killed.returncode == 0, killed.stderr
        _out, err = psql.communicate(timeout=20)
        assert psql.returncode != 0
        assert "terminat" in err, err
        assert time.monotonic() - done < 2.0
    replay = split.api.cli("replay", s.session_id)
    assert replay.returncode == 0, replay.stderr
    assert "current_user" in replay.stdout
    verify = split.api.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_session_ended_before_any_connection_stays_with_the_api_replica(split: Split) -> None:
    with held_session(split.api) as s:
        # The CLI prints its banner a moment before it starts waiting for Ctrl-C.
        time.sleep(1.0)
        assert s.end() == 0
    assert _owner_role(split, s.session_id) == "api"
    store = Store.open(split.store_url)
    try:
        record = store.get_session(s.session_id)
        info = recording_info(store, s.session_id)
    finally:
        store.close()
    assert record is not None and record.status == "ended"
    assert record.revocation is not None and record.revocation["verified"]
    assert info is not None and info.status == "closed" and info.events == 2
    verify = split.api.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_agents_tools_on_the_api_replica_query_through_the_gateway_replica(
    split: Split,
) -> None:
    token = subprocess.run(
        [
            *(str(BIN / "dbaccess-server"), "token", "create", "--store-url", split.store_url),
            *("--identity", "helper", "--groups", "dev", "--kind", "agent", "--owner", "dev"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=split.api.env(),
        check=True,
    ).stdout.strip()

    @asynccontextmanager
    async def over_http() -> AsyncIterator[Any]:
        async with (
            httpx2.AsyncClient(
                headers={"Authorization": f"Bearer {token}"},
                verify=ssl.create_default_context(cafile=split.api.ca_file),
                timeout=60,
            ) as http,
            streamable_http_client(f"{split.api.server_url}/mcp", http_client=http) as streams,
        ):
            yield streams

    async def body(c: Client) -> dict[str, Any]:
        err, out, text = await call(c, "query", target="demo", sql="SELECT 6 * 7 AS answer")
        assert not err, text
        return out

    out = with_client(over_http(), body)
    assert out["rows"] == [[42]]
    assert _owner_role(split, out["session_id"]) == "gateway"


def test_the_api_replica_has_no_gateway_and_the_gateway_replica_no_api(split: Split) -> None:
    # The API-only replica's gateway_listen and the gateway-only one's api_listen
    # are never bound: each process listens on its own port only.
    for proc, own in ((split.api_proc, split.api_port), (split.gateway_proc, split.gateway_port)):
        ports = _listening_ports(proc.pid)
        assert ports == {own}, (proc.pid, ports)


def test_pg_isready_is_the_gateway_replicas_health_check(split: Split) -> None:
    # It logs in as far as the password request: the gateway's loop answered.
    ready = subprocess.run(
        ["pg_isready", "-h", "127.0.0.1", "-p", str(split.gateway_port), "-t", "10"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert "accepting connections" in ready.stdout


def test_the_gateway_replica_never_imports_the_web_framework(split: Split) -> None:
    # Run last in the module's order: by now sessions went through the gateway replica.
    imported = {
        m[1].strip().split(".")[0]
        for line in split.gateway_log.read_text(errors="replace").splitlines()
        if (m := _IMPORTED.match(line))
    }
    assert "server" in imported and "psycopg" in imported, "the import log is read"
    assert not imported & set(WEB_FRAMEWORK), sorted(imported & set(WEB_FRAMEWORK))


def _listening_ports(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_a_bad_role_is_refused_with_the_roles_named(tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("role: api\n")
    bad_flag = subprocess.run(
        [str(BIN / "dbaccess-server"), "run", "--config", str(config), "--role", "web"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad_flag.returncode == 2
    assert "'web' is not one of 'all', 'api', 'gateway'" in bad_flag.stderr
    no_gateway = subprocess.run(
        [str(BIN / "dbaccess-server"), "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert no_gateway.returncode != 0
    assert "give public_gateway_address" in no_gateway.stderr
    bad_env = subprocess.run(
        [str(BIN / "dbaccess-server"), "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "DBACCESS_SERVER_ROLE": "proxy"},
    )
    assert bad_env.returncode != 0
    assert "DBACCESS_SERVER_ROLE: 'proxy' is not a role (one of: all, api, gateway)" in (
        bad_env.stderr
    )
