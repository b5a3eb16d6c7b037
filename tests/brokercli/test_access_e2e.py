"""End to end through the real CLI, the real broker, the gateway and psql.

Each test runs the `dbaccess` console script against a dev broker process
(tests/fix_broker.py) whose target is the test cluster's demo database.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from tests.fix_broker import Broker

pytestmark = pytest.mark.slow


def managed_roles(conn: psycopg.Connection[tuple[object, ...]]) -> set[str]:
    rows = conn.execute(
        "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
        "JOIN pg_roles g ON g.oid = m.roleid WHERE g.rolname = 'dbaccess_managed'"
    ).fetchall()
    return {str(r[0]) for r in rows}


def backends_of(conn: psycopg.Connection[tuple[object, ...]], role: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,)
    ).fetchone()
    assert row is not None
    return int(str(row[0]))


def test_connect_runs_psql_on_a_fresh_role_that_is_gone_afterwards(
    broker: Broker, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    before = managed_roles(admin_conn)
    script = (
        "\\pset format unaligned\n\\pset tuples_only on\n"
        "select 'user=' || current_user;\n"
        "select 'valid_until=' || coalesce(rolvaliduntil::text, 'none') from pg_roles "
        "where rolname = current_user;\n"
        "select 'managed=' || pg_has_role(current_user, 'dbaccess_managed', 'MEMBER');\n"
        "select 'customers=' || count(*) from customers;\n"
    )
    res = broker.cli("connect", "demo", "--reason", "e2e test", input=script)
    assert res.returncode == 0, res.stderr
    values = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    role = values["user"]
    assert role.startswith("dba_dev_")
    assert values["valid_until"] != "none"
    assert values["managed"] == "true"
    assert int(values["customers"]) > 0
    assert "revoked" in res.stderr
    assert role not in managed_roles(admin_conn)
    assert managed_roles(admin_conn) <= before
    assert (
        admin_conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None
    )
    assert backends_of(admin_conn, role) == 0


def test_run_passes_the_session_to_the_child_and_its_exit_code_back(broker: Broker) -> None:
    ok = broker.cli("run", "demo", "--", "psql", "-XAtc", "select current_database()")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "demo"
    failing = broker.cli(
        "run", "demo", "--", "psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", "select 1/0"
    )
    assert failing.returncode == 1
    assert "division by zero" in failing.stderr
    assert broker.cli("run", "demo", "--", "sh", "-c", "exit 7").returncode == 7


def test_exec_prints_results_and_uses_documented_exit_codes(broker: Broker) -> None:
    res = broker.cli(
        "exec", "demo", "-c", "select 1 as a, 'x' as b; select 2 as a", "--output", "json"
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data[0]["rows"] == [{"a": 1, "b": "x"}]
    assert data[1]["rows"] == [{"a": 2}]

    csv_out = broker.cli("exec", "demo", "-c", "select 1 as a", "-o", "csv")
    assert csv_out.stdout.splitlines() == ["a", "1"]

    sql_error = broker.cli("exec", "demo", "-c", "select * from no_such_table")
    assert sql_error.returncode == 3
    assert "no_such_table" in sql_error.stderr and "42P01" in sql_error.stderr

    unknown = broker.cli("exec", "nope", "-c", "select 1")
    assert unknown.returncode == 6
    assert "unknown target" in unknown.stderr

    too_long = broker.cli("exec", "demo", "--scope", "write", "--ttl", "30d", "-c", "select 1")
    assert too_long.returncode == 5
    assert "max" in too_long.stderr

    bad_ttl = broker.cli("exec", "demo", "--ttl", "forever", "-c", "select 1")
    assert bad_ttl.returncode == 2

    usage = broker.cli("exec", "demo")
    assert usage.returncode == 2


def test_read_scope_cannot_write_by_database_privileges(fresh_broker: Broker) -> None:
    # Guardrails refuse the write first; with them opened up, the database's
    # privileges still do (the second wall).
    demo_policy = (Path(__file__).parents[2] / "server/demo/policy.yaml").read_text()
    opened = demo_policy.replace(
        "          preset: read\n", "          preset: read\n          block: []\n"
    )
    assert opened != demo_policy
    broker = fresh_broker
    broker.start(policy=opened)
    res = broker.cli(
        "exec", "demo", "--scope", "read", "-c", "update customers set city = 'x' where id = 1"
    )
    assert res.returncode == 3
    assert "permission denied" in res.stderr and "42501" in res.stderr
    write = broker.cli(
        "exec",
        "demo",
        "--scope",
        "write",
        "-c",
        "update customers set city = city where id = 1",
    )
    assert write.returncode == 0, write.stderr


def test_not_logged_in_and_unreachable_broker_exit_codes(broker: Broker, tmp_path: object) -> None:
    res = broker.cli("targets", env={"DBACCESS_CONFIG_DIR": str(tmp_path)})
    assert res.returncode == 4
    assert "not logged in" in res.stderr and "dbaccess login" in res.stderr
    bad_token = broker.cli("targets", env={"DBACCESS_TOKEN": "dba_wrong"})
    assert bad_token.returncode == 4
    assert "unknown broker token" in bad_token.stderr
    down = broker.cli(
        "targets", env={"DBACCESS_SERVER": "http://127.0.0.1:9", "DBACCESS_TOKEN": "dba_x"}
    )
    assert down.returncode == 7
    assert "cannot reach the broker" in down.stderr


def test_targets_and_sessions_list(broker: Broker) -> None:
    targets = broker.cli("targets", "-o", "json")
    assert targets.returncode == 0, targets.stderr
    data = json.loads(targets.stdout)
    assert [t["name"] for t in data] == ["demo"]
    assert {s["name"] for s in data[0]["scopes"]} == {"read", "write"}
    broker.cli("exec", "demo", "-c", "select 1")
    sessions = broker.cli("sessions", "-o", "json", "--limit", "5")
    assert sessions.returncode == 0
    recent = json.loads(sessions.stdout)
    assert recent and recent[0]["status"] == "ended"
    assert recent[0]["revocation"]["ok"] is True


def test_run_serves_many_connections_on_one_session(broker: Broker, tmp_path: Path) -> None:
    script = tmp_path / "select.sql"
    script.write_text("select count(*) from customers;\n")
    res = broker.cli(
        "run", "demo", "--", "pgbench", "-n", "-c", "8", "-j", "2", "-t", "20", "-f", str(script),
        timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr + res.stdout
    assert "number of transactions actually processed: 160/160" in res.stdout
    assert "number of failed transactions: 0" in res.stdout
