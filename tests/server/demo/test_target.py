"""`dbaccess-server dev --target-dsn DSN`: sessions go to the database the DSN
names, whatever it is called, and a policy file left by an earlier run follows
the target unless someone edited it."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from server.demo.provision import DemoTarget
from server.demo.target import DEMO_DATABASE, PolicyPlan, demo_policy_text, dev_policy
from server.pgcluster import LocalCluster
from server.policy import parse_policy
from tests.fix_broker import Broker
from tests.fix_session import held_session


@pytest.mark.parametrize("database", ["demo", "app", "Sales DB", 'we"ird'])
def test_the_demo_policy_names_the_database_it_is_given(database: str) -> None:
    policy = parse_policy(demo_policy_text(database), "/etc/dbaccess/policy.yaml")
    assert policy.targets["demo"].database == database


EDITED = demo_policy_text("app").replace("default_ttl: 30m", "default_ttl: 20m")


@pytest.mark.parametrize(
    ("existing", "database", "expected"),
    [
        (None, "app", PolicyPlan(text=demo_policy_text("app"))),
        (demo_policy_text("app"), "app", PolicyPlan()),
        (
            demo_policy_text(DEMO_DATABASE),
            "app",
            PolicyPlan(
                text=demo_policy_text("app"),
                note="the demo policy now sends sessions to database 'app'",
            ),
        ),
        (
            demo_policy_text('we"ird'),
            "demo",
            PolicyPlan(
                text=demo_policy_text("demo"),
                note="the demo policy now sends sessions to database 'demo'",
            ),
        ),
        (EDITED, "app", PolicyPlan()),
        (
            EDITED,
            "demo",
            PolicyPlan(
                problem="policy.yaml: target 'demo' names database 'app', "
                "but --target-dsn names database 'demo'"
            ),
        ),
        ("version: 1\ntargets: {}\n", "app", PolicyPlan()),
        ("not: [a, policy", "app", PolicyPlan()),  # the broker reports it, with its line
    ],
    ids=[
        "missing",
        "same",
        "unedited-follows",
        "unedited-quoted-follows",
        "edited-same-db",
        "edited-other-db",
        "no-demo-target",
        "broken",
    ],
)
def test_what_the_dev_mode_does_with_its_policy_file(
    existing: str | None, database: str, expected: PolicyPlan
) -> None:
    assert dev_policy(existing, database) == expected


@pytest.fixture
def other_database(pg_cluster: LocalCluster, demo_target: DemoTarget) -> Iterator[str]:
    """A database not called demo, with a table the read scope may read."""
    name = f"app_{secrets.token_hex(4)}"
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(pg_cluster.dsn(dbname=name), autocommit=True) as conn:
            conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
            conn.execute("INSERT INTO notes VALUES (1, 'hello from app')")
            conn.execute("GRANT USAGE ON SCHEMA public TO demo_read")
            conn.execute("GRANT SELECT ON notes TO demo_read")
        yield name
    finally:
        with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.mark.slow
def test_a_target_dsn_names_the_database_sessions_use_and_revoke_on(
    pg_tmp_dir: Path, demo_target: DemoTarget, pg_cluster: LocalCluster, other_database: str
) -> None:
    dsn = make_conninfo(demo_target.admin_dsn, dbname=other_database)
    b = Broker(data_dir=pg_tmp_dir / "data", config_dir=pg_tmp_dir / "cli", target_dsn=dsn)
    b.start(shipped_policy=True)
    try:
        assert f"database '{other_database}'" in b.log()
        res = b.cli(
            "exec", "demo", "-o", "json",
            "-c", "select current_database() as db, current_user as role, body from notes",
        )  # fmt: skip
        assert res.returncode == 0, res.stderr + b.log()
        row = json.loads(res.stdout)[0]["rows"][0]
        assert (row["db"], row["body"]) == (other_database, "hello from app")
        assert not _role_exists(pg_cluster, row["role"]), "the session role is revoked"
        sessions = b.cli("sessions", "-o", "json")
        assert sessions.returncode == 0, sessions.stderr
        [ended] = json.loads(sessions.stdout)
        assert ended["revocation"]["ok"] and ended["revocation"]["verified"], ended

        # The reaper works on that database too: a broker killed mid-session
        # revokes the orphaned role when it is back.
        with held_session(b) as s:
            role = s.psql("select current_user").stdout.strip()
            assert s.database == other_database and role
            b.kill()
            b.start(shipped_policy=True)
            deadline = time.monotonic() + 20
            while _role_exists(pg_cluster, role) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not _role_exists(pg_cluster, role)
    finally:
        assert b.stop() == 0, b.log()
        b.kill()


def _role_exists(cluster: LocalCluster, role: str) -> bool:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    return row is not None
