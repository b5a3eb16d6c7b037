"""dbaccess-server as an operator runs it: the embedded dev default with its own
throwaway cluster, Ctrl-C with a session open, and `run --config FILE`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from server.demo.provision import DemoTarget, write_admin_dsn_file
from server.pgcluster import LocalCluster
from server.tlsutil import ensure_dev_ca
from tests.fix_broker import BIN
from tests.fix_session import held_session

pytestmark = pytest.mark.slow


def _env(config_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBACCESS_")}
    env.update(
        DBACCESS_CONFIG_DIR=str(config_dir),
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def _wait_for(log: Path, marker: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if marker in text:
            return text
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{text}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"no {marker!r} within {timeout}s:\n{log.read_text()}")


def test_dev_mode_with_its_own_cluster_then_ctrl_c(pg_tmp_dir: Path) -> None:
    data, cli = pg_tmp_dir / "data", pg_tmp_dir / "cli"
    log = pg_tmp_dir / "server.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [str(BIN / "dbaccess-server"), "dev", "--data-dir", str(data)],
            stdout=fh,
            stderr=fh,
            env=_env(cli),
        )
    try:
        text = _wait_for(log, "dev broker is running", proc)
        assert "throwaway cluster" in text
        assert re.search(r"SHA-256 [0-9A-F:]{95}", text), "the CA fingerprint is printed"
        profile = json.loads((cli / "profile.json").read_text())
        assert profile["server"].startswith("https://127.0.0.1:")
        res = subprocess.run(
            [str(BIN / "dbaccess"), "exec", "demo", "-c",
             "select count(*) as n from customers where city like '%o%'", "-o", "json"],
            env=_env(cli), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)[0]["rows"][0]["n"] > 0
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
    assert rc == 0, log.read_text()
    assert "dev broker stopped" in log.read_text()
    assert not (data / "pg" / "cluster" / "postmaster.pid").exists()
    assert not list((data / "pg").rglob("postmaster.pid")), "the throwaway cluster is stopped"


def test_ctrl_c_revokes_open_sessions(
    pg_tmp_dir: Path, demo_target: DemoTarget, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    from tests.fix_broker import Broker

    b = Broker(
        data_dir=pg_tmp_dir / "data",
        config_dir=pg_tmp_dir / "cli",
        target_dsn=demo_target.admin_dsn,
    )
    b.start()
    try:
        with held_session(b) as s:
            res = s.psql("select current_user")
            assert res.returncode == 0, res.stderr
            role = res.stdout.strip()
            assert b.stop() == 0
            row = admin_conn.execute("select 1 from pg_roles where rolname = %s", (role,))
            assert row.fetchone() is None
    finally:
        b.kill()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_run_from_a_config_file(
    pg_tmp_dir: Path,
    demo_target: DemoTarget,
    admin_conn: psycopg.Connection[tuple[object, ...]],
    pg_cluster: LocalCluster,
    backend: str,
) -> None:
    store_url = "sqlite:///{data_dir}/store.db"
    if backend == "postgresql":
        # Several broker replicas would share a store like this one.
        name = "store_" + pg_tmp_dir.name.replace("-", "_").lower()
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        store_url = pg_cluster.dsn(dbname=name).replace("postgresql://", "postgresql+psycopg://")
    tls = ensure_dev_ca(pg_tmp_dir / "tls")
    write_admin_dsn_file(pg_tmp_dir / "admin.dsn", demo_target.admin_dsn)
    (pg_tmp_dir / "policy.yaml").write_text(
        (Path(__file__).parents[2] / "server" / "demo" / "policy.yaml").read_text()
    )
    (pg_tmp_dir / "server.yaml").write_text(
        "api_listen: 127.0.0.1:0\n"
        "gateway_listen: 127.0.0.1:0\n"
        f"store_url: {store_url}\n"
        "policy: policy.yaml\n"
        f"tls: {{cert: {tls.cert}, key: {tls.key}, ca: {tls.ca}}}\n"
        "reaper_interval: 5s\n"
    )
    log = pg_tmp_dir / "run.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [str(BIN / "dbaccess-server"), "run", "--config", str(pg_tmp_dir / "server.yaml")],
            stdout=fh,
            stderr=fh,
            env=_env(pg_tmp_dir / "cli"),
        )
    try:
        text = _wait_for(log, "dbaccess broker: API", proc)
        api = re.search(r"API (https://\S+),", text).group(1)  # type: ignore[union-attr]
        token = subprocess.run(
            [str(BIN / "dbaccess-server"), "token", "create",
             "--config", str(pg_tmp_dir / "server.yaml"),
             "--identity", "ci-job", "--groups", "dev"],
            env=_env(pg_tmp_dir / "cli"), capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()  # fmt: skip
        env = _env(pg_tmp_dir / "cli")
        env["DBACCESS_TOKEN"] = token
        login = subprocess.run(
            [str(BIN / "dbaccess"), "login", "--server", api, "--ca-file", str(tls.ca),
             "--token-stdin"],
            input=token, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert login.returncode == 0, login.stderr
        res = subprocess.run(
            [str(BIN / "dbaccess"), "exec", "demo", "-c", "select current_user as u", "-o", "json"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)[0]["rows"][0]["u"].startswith("dba_ci_job_")
        # An agent may not take the name of an identity that has tokens of another kind.
        clash = subprocess.run(
            [str(BIN / "dbaccess-server"), "token", "create",
             "--config", str(pg_tmp_dir / "server.yaml"),
             "--identity", "ci-job", "--kind", "agent", "--owner", "alice"],
            env=_env(pg_tmp_dir / "cli"), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert clash.returncode == 2, clash.stderr
        assert "'ci-job' is not an agent's name" in clash.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()


def test_a_policy_typo_stops_the_server_with_file_line_and_key(pg_tmp_dir: Path) -> None:
    (pg_tmp_dir / "policy.yaml").write_text(
        "version: 1\ntargets:\n  demo:\n    database: demo\n    admin_dsn_env: X\n"
        "    scopes:\n      read:\n        grants: [demo_read]\n        max_tll: 1h\n"
    )
    res = subprocess.run(
        [str(BIN / "dbaccess-server"), "policy", "check", str(pg_tmp_dir / "policy.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 2
    assert "policy.yaml:9: targets.demo.scopes.read.max_tll: unknown key" in res.stderr
    assert "did you mean 'max_ttl'" in res.stderr


def test_dev_mode_writes_a_profile_per_identity_and_keeps_other_profiles(
    pg_tmp_dir: Path, demo_target: DemoTarget
) -> None:
    from tests.fix_broker import Broker

    b = Broker(
        data_dir=pg_tmp_dir / "data",
        config_dir=pg_tmp_dir / "cli",
        target_dsn=demo_target.admin_dsn,
    )
    mine = {"server": "https://broker.example.com", "ca_file": "/etc/ssl/company.pem"}
    (pg_tmp_dir / "cli").mkdir(parents=True)
    (pg_tmp_dir / "cli" / "profile.json").write_text(json.dumps(mine))
    b.start()
    try:
        assert "profile 'default'" in b.log() and "not the dev broker's: kept" in b.log()
        assert json.loads((pg_tmp_dir / "cli" / "profile.json").read_text()) == mine
        who = {}
        for name, extra, env in (
            ("dev", ["--profile", "dev"], {}),
            ("reviewer", [], {"DBACCESS_PROFILE": "reviewer"}),
        ):
            res = b.cli(*extra, "whoami", "-o", "json", env=env)
            assert res.returncode == 0, res.stderr
            who[name] = json.loads(res.stdout)["identity"]
        assert who == {"dev": "dev", "reviewer": "reviewer"}

        # The second identity is there to approve what the first asks for.
        asked = b.cli(
            "--profile", "dev", "exec", "demo", "--scope", "write", "--request-review",
            "--no-wait", "-c", "create index on orders (status)",
        )  # fmt: skip
        assert asked.returncode == 9, asked.stderr
        request_id = asked.stdout.strip()
        own = b.cli("--profile", "dev", "approve", request_id, "--yes")
        assert own.returncode != 0 and "your own request" in own.stderr
        other = b.cli("--profile", "reviewer", "approve", request_id, "--yes")
        assert other.returncode == 0, other.stderr
    finally:
        assert b.stop() == 0, b.log()
    dev_profile = pg_tmp_dir / "cli" / "profiles" / "dev.json"
    first = json.loads(dev_profile.read_text())
    b.start()
    try:
        assert f"warning: replacing the dev profile 'dev' ({dev_profile})" in b.log()
        again = json.loads(dev_profile.read_text())
        assert again["server"] == b.api_url
        assert again["dev_identity"] == first["dev_identity"] == "dev"
        assert json.loads((pg_tmp_dir / "cli" / "profile.json").read_text()) == mine
        assert b.cli("--profile", "reviewer", "whoami").returncode == 0
    finally:
        assert b.stop() == 0, b.log()
