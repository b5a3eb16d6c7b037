"""A real OpenBao server (``bao server -dev``) with its database secrets engine
pointed at the test cluster's demo database.

``vault_server`` starts one dev server per test run, on a free loopback port
with a known root token, and stops it by its PID at the end (the ``bao``
console script execs the real binary, so the PID is the server's).  Dev mode
keeps everything in memory: a restarted server would have lost its leases, so
tests that need "Vault is down" point at a port where nothing listens instead.

``vault_demo`` configures what an operator would:

* in the database, a group role ``vault_demo_read`` (``demo_read`` plus CONNECT
  on ``demo``) and Vault's own least-privilege admin ``vault_admin`` (LOGIN,
  CREATEROLE, ``pg_signal_backend``, ADMIN OPTION on ``vault_demo_read`` only);
  the broker's ``dbaccess_admin`` is left as provisioned;
* the ``database`` secrets engine with a connection ``demo`` as
  ``vault_admin``, and Vault roles ``read`` (1h/8h) and ``short`` (1m/2m)
  whose statements create a ``VALID UNTIL`` login role in ``vault_demo_read``
  and on revocation terminate its backends, then drop it (the plugin's default
  revocation needs more privileges than a CREATEROLE admin has);
* a Vault policy ``dbaccess-broker`` with just what the broker needs, and a
  renewable token with it, written 0600 to ``token_file``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import psycopg
import pytest
from psycopg import sql

from server.credentials.scram import scram_sha256_verifier
from server.demo.provision import DemoTarget
from server.pgcluster import LocalCluster, free_port
from tests.fix_pg import make_tmp_dir

BAO = Path(sys.executable).parent / "bao"
ROOT_TOKEN = "dbaccess-test-root"
GROUP_ROLE = "vault_demo_read"
VAULT_ADMIN = "vault_admin"

CREATION = [
    "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
    "VALID UNTIL '{{expiration}}' IN ROLE " + GROUP_ROLE + ";"
]
REVOCATION = [
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
    'DROP ROLE IF EXISTS "{{name}}";',
]
BROKER_POLICY = """
path "database/creds/*" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
path "sys/leases/lookup" { capabilities = ["update"] }
"""


@dataclass
class VaultServer:
    address: str
    root_token: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.address, token=token or self.root_token, timeout=10)

    def bao(self, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
        """The real ``bao`` CLI against this server."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.log_path.parent),
            "BAO_ADDR": self.address,
            "BAO_TOKEN": token or self.root_token,
        }
        return subprocess.run(
            [str(BAO), *args], capture_output=True, text=True, timeout=30, env=env, check=False
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_vault(base: Path) -> VaultServer:
    port = free_port()
    log_path = base / "bao.log"
    proc = subprocess.Popen(
        [
            str(BAO),
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{port}",
            f"-dev-root-token-id={ROOT_TOKEN}",
            "-dev-no-store-token",
        ],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base)},
    )
    server = VaultServer(f"http://127.0.0.1:{port}", ROOT_TOKEN, proc, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bao exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if server.client().sys.is_initialized():
                return server
        except Exception:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"bao did not start in 30s:\n{log_path.read_text()}")


@pytest.fixture(scope="session")
def vault_server() -> Iterator[VaultServer]:
    base = make_tmp_dir("dbaccess-bao-")
    server = start_vault(base)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class VaultDemo:
    server: VaultServer
    token: str
    token_file: Path
    database: str
    host: str
    port: int
    dir: Path
    roles: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return self.server.address

    def token_with(self, *policies: str, **params: Any) -> str:
        """A new token with ``policies`` (root-created; ``params`` as for auth/token/create)."""
        res = self.server.client().auth.token.create(policies=list(policies), **params)
        return str(res["auth"]["client_token"])

    def write_secret(self, name: str, value: str) -> Path:
        path = self.dir / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value + "\n")
        return path

    def lease_known(self, lease_id: str) -> bool:
        """``bao lease lookup``: whether Vault still knows the lease."""
        return self.server.bao("lease", "lookup", lease_id).returncode == 0


def _role_exists(conn: psycopg.Connection[tuple[Any, ...]], name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


@pytest.fixture(scope="session")
def vault_demo(
    vault_server: VaultServer, pg_cluster: LocalCluster, demo_target: DemoTarget
) -> Iterator[VaultDemo]:
    admin_password = secrets.token_urlsafe(24)
    with psycopg.connect(pg_cluster.dsn(dbname=demo_target.database), autocommit=True) as conn:
        if not _role_exists(conn, GROUP_ROLE):
            conn.execute(f"CREATE ROLE {GROUP_ROLE} NOLOGIN")
        conn.execute(f"GRANT demo_read TO {GROUP_ROLE}")
        conn.execute(f"GRANT CONNECT ON DATABASE {demo_target.database} TO {GROUP_ROLE}")
        verb = "ALTER" if _role_exists(conn, VAULT_ADMIN) else "CREATE"
        conn.execute(
            sql.SQL("{} ROLE {} WITH LOGIN CREATEROLE NOSUPERUSER PASSWORD {}").format(
                sql.SQL(verb),
                sql.Identifier(VAULT_ADMIN),
                sql.Literal(scram_sha256_verifier(admin_password)),
            )
        )
        conn.execute(f"GRANT pg_signal_backend TO {VAULT_ADMIN}")
        conn.execute(f"GRANT {GROUP_ROLE} TO {VAULT_ADMIN} WITH ADMIN OPTION")
        conn.execute(f"GRANT CONNECT ON DATABASE {demo_target.database} TO {VAULT_ADMIN}")
    root = vault_server.client()
    root.sys.enable_secrets_engine("database", path="database")
    root.secrets.database.configure(
        name="demo",
        plugin_name="postgresql-database-plugin",
        connection_url=(
            f"postgresql://{{{{username}}}}:{{{{password}}}}@{demo_target.host}:"
            f"{demo_target.port}/{demo_target.database}"
        ),
        username=VAULT_ADMIN,
        password=admin_password,
        allowed_roles=["read", "short"],
        verify_connection=True,
    )
    for name, default_ttl, max_ttl in (("read", "1h", "8h"), ("short", "1m", "2m")):
        root.secrets.database.create_role(
            name=name,
            db_name="demo",
            creation_statements=CREATION,
            revocation_statements=REVOCATION,
            default_ttl=default_ttl,
            max_ttl=max_ttl,
        )
    root.sys.create_or_update_policy("dbaccess-broker", BROKER_POLICY)
    base = make_tmp_dir("dbaccess-vault-")
    token = str(
        root.auth.token.create(policies=["dbaccess-broker"], ttl="4h", renewable=True)["auth"][
            "client_token"
        ]
    )
    demo = VaultDemo(
        server=vault_server,
        token=token,
        token_file=base / "token",
        database=demo_target.database,
        host=demo_target.host,
        port=demo_target.port,
        dir=base,
    )
    demo.write_secret("token", token)
    try:
        yield demo
    finally:
        shutil.rmtree(base, ignore_errors=True)
