"""A dev broker whose target uses the vault issuer, driven with the real CLI, psql and OpenBao."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator

import psycopg
import pytest

from server.demo.provision import DemoTarget
from server.pgcluster import free_port
from server.store.db import Store, StoreLeaseBook
from server.store.sealing import StoreKeys
from tests.fix_broker import BIN, Broker, new_broker
from tests.fix_session import held_session
from tests.fix_store import found_in_clear, pg_store_url
from tests.fix_vault import VaultDemo

pytestmark = pytest.mark.slow

Admin = psycopg.Connection[tuple[object, ...]]
TOKEN_ENV = "DBACCESS_TEST_VAULT_TOKEN"


def vault_policy(demo: VaultDemo, *, admin_dsn: bool, address: str | None = None) -> str:
    where = (
        "    admin_dsn_file: admin.dsn\n"
        if admin_dsn
        else f"    host: {demo.host}\n    port: {demo.port}\n"
    )
    return (
        "version: 1\n"
        "targets:\n"
        "  demo:\n"
        f"    database: {demo.database}\n"
        "    issuer: vault\n"
        f"{where}"
        "    vault:\n"
        f"      address: {address or demo.address}\n"
        "      role: read\n"
        "      auth:\n"
        "        method: token\n"
        f"        token_env: {TOKEN_ENV}\n"
        "    scopes:\n"
        "      read:\n"
        "        max_ttl: 1h\n"
        "        allow:\n"
        "          groups: [dev]\n"
    )


@pytest.fixture
def vault_broker(demo_target: DemoTarget, vault_demo: VaultDemo) -> Iterator[Broker]:
    b = new_broker(demo_target)
    b.server_env[TOKEN_ENV] = vault_demo.token
    try:
        yield b
    finally:
        b.stop()
        b.kill()


def leases(broker: Broker) -> list[tuple[str, str, str | None]]:
    """The broker's kept leases, their ids opened with the dev broker's store key."""
    keys = StoreKeys.load(broker.store_key)
    with sqlite3.connect(broker.data_dir / "store.db") as db:
        rows = db.execute(
            "SELECT lease_sealed, db_user, revoked_at FROM credential_leases"
        ).fetchall()
    return [(keys.open("credential_leases.lease_id", a), str(b), c) for a, b, c in rows]


def role_exists(conn: Admin, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


def wait_for(check: object, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_exec_through_a_vault_credential_without_an_admin_dsn(
    vault_broker: Broker, vault_demo: VaultDemo, admin_conn: Admin
) -> None:
    vault_broker.start(policy=vault_policy(vault_demo, admin_dsn=False))
    res = vault_broker.cli(
        "exec", "demo", "-c", "select current_user as u, count(*) as n from customers", "-o", "json"
    )
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(res.stdout)[0]["rows"]
    assert row["u"].startswith("v-") and "-read-" in row["u"] and row["n"] > 0
    ((lease_id, db_user, revoked_at),) = leases(vault_broker)
    assert db_user == row["u"] and revoked_at is not None
    assert not vault_demo.lease_known(lease_id)
    assert not role_exists(admin_conn, db_user)
    sessions = json.loads(vault_broker.cli("sessions", "-o", "json").stdout)
    assert sessions[0]["revocation"]["ok"] is True


def test_an_open_connection_is_cut_when_the_session_ends(
    vault_broker: Broker, vault_demo: VaultDemo, admin_conn: Admin
) -> None:
    vault_broker.start(policy=vault_policy(vault_demo, admin_dsn=True))
    with held_session(vault_broker) as s:
        conn = psycopg.connect(s.dsn(), autocommit=True)
        user, pid = conn.execute("select current_user::text, pg_backend_pid()").fetchone()  # type: ignore[misc]
        assert role_exists(admin_conn, user)
        assert s.end() == 0
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
        conn.close()
    backend = admin_conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
    assert backend.fetchone() is None
    assert not role_exists(admin_conn, user)
    ((lease_id, _, revoked_at),) = leases(vault_broker)
    assert revoked_at is not None and not vault_demo.lease_known(lease_id)
    sessions = json.loads(vault_broker.cli("sessions", "-o", "json").stdout)
    assert sessions[0]["revocation"]["verified"] is True


def test_vault_down_is_a_clear_error_and_nothing_is_stored(
    vault_broker: Broker, vault_demo: VaultDemo
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    vault_broker.start(policy=vault_policy(vault_demo, admin_dsn=False, address=dead))
    res = vault_broker.cli("exec", "demo", "-c", "select 1")
    assert res.returncode == 7, res.stderr
    assert f"Vault at {dead} is unreachable" in res.stderr
    sessions = vault_broker.cli("sessions", "--all", "-o", "json")
    assert sessions.returncode == 0 and json.loads(sessions.stdout) == []
    assert leases(vault_broker) == []
    with sqlite3.connect(vault_broker.data_dir / "store.db") as db:
        assert db.execute("SELECT count(*) FROM sessions").fetchone() == (0,)


def test_a_broker_killed_mid_session_revokes_the_lease_when_it_restarts(
    vault_broker: Broker, vault_demo: VaultDemo, admin_conn: Admin
) -> None:
    vault_broker.start(policy=vault_policy(vault_demo, admin_dsn=True))
    with held_session(vault_broker) as s:
        res = s.psql("select current_user")
        assert res.returncode == 0, res.stderr
        user = res.stdout.strip()
        sleeper = subprocess.Popen(
            ["psql", "-XAt", "-c", "select pg_sleep(60)", s.dsn()],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        vault_broker.kill()  # SIGKILL: no clean-up runs
        sleeper.wait(20)
        ((lease_id, db_user, revoked_at),) = leases(vault_broker)
        assert db_user == user and revoked_at is None
        # Until the broker is back the lease (and so the role) lives on in Vault.
        assert vault_demo.lease_known(lease_id) and role_exists(admin_conn, user)
        vault_broker.start()
        assert wait_for(lambda: not vault_demo.lease_known(lease_id))
        assert wait_for(lambda: not role_exists(admin_conn, user))
    assert leases(vault_broker)[0][2] is not None
    sessions = json.loads(vault_broker.cli("sessions", "-o", "json").stdout)
    assert sessions[0]["status"] == "orphaned"


def test_a_vault_session_runs_with_the_scope_limits_the_gateway_sends(
    vault_broker: Broker, vault_demo: VaultDemo, admin_conn: Admin
) -> None:
    """The Vault role's creation statements set no limits: the gateway's startup
    parameters do, from the first statement, and SET cannot lift them."""
    vault_broker.start(policy=vault_policy(vault_demo, admin_dsn=False))
    res = vault_broker.cli(
        "exec",
        "demo",
        "-c",
        "select current_setting('statement_timeout') as s,"
        " current_setting('idle_in_transaction_session_timeout') as i,"
        " (select rolconfig from pg_roles where rolname = current_user) as c",
        "-o",
        "json",
    )
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(res.stdout)[0]["rows"]
    assert (row["s"], row["i"], row["c"]) == ("5min", "1min", None)
    refused = vault_broker.cli("exec", "demo", "-c", "set statement_timeout = 0")
    assert refused.returncode != 0
    assert "statement_timeout is a limit" in refused.stderr + refused.stdout


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_copy_of_the_store_holds_no_secret_of_a_session(
    backend: str,
    demo_target: DemoTarget,
    vault_demo: VaultDemo,
    request: pytest.FixtureRequest,
) -> None:
    with contextlib.ExitStack() as stack:
        url = None
        if backend == "postgresql":
            url = stack.enter_context(pg_store_url(request.getfixturevalue("pg_cluster")))
        broker = new_broker(demo_target, store_url=url)
        broker.server_env[TOKEN_ENV] = vault_demo.token
        stack.callback(broker.kill)
        stack.callback(broker.stop)
        broker.start(policy=vault_policy(vault_demo, admin_dsn=True))
        url = url or f"sqlite:///{broker.data_dir / 'store.db'}"
        with held_session(broker) as s:
            res = s.psql("select current_user")
            assert res.returncode == 0, res.stderr
            ticket = s.ticket
            # Kept while the session lives, so that a restarted broker can revoke it.
            keyed = Store.open(url, StoreKeys.load(broker.store_key))
            try:
                (lease,) = StoreLeaseBook(keyed, "demo").outstanding()
            finally:
                keyed.close()
            assert vault_demo.lease_known(lease.lease_id)
            assert s.end() == 0
        # A broker API token too, one that works.
        create = ("token", "create", "--identity", "ci-bot", "--groups", "dev")
        made = subprocess.run(
            [str(BIN / "dbaccess-server"), *create, "--store-url", url],
            capture_output=True,
            text=True,
            timeout=60,
            env=broker.env(),
            check=False,
        )
        api_token = made.stdout.strip()
        assert made.returncode == 0 and api_token, made.stderr
        assert broker.cli("sessions", token=api_token).returncode == 0
        broker.stop()
        store = Store.open(url)
        try:
            random_part = lease.lease_id.rsplit("/", 1)[1]
            secrets = (ticket, api_token, vault_demo.token, lease.lease_id, random_part)
            assert found_in_clear(store, *secrets) == []
        finally:
            store.close()
