"""database_grants through the broker: a session's role is walled off masked columns
inside PostgreSQL, and a session whose wall cannot be built does not start."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from server.demo.provision import ADMIN_ROLE, DemoTarget
from server.pgcluster import LocalCluster
from tests.fix_broker import Broker, demo_policy, running_broker
from tests.fix_session import held_session

pytestmark = pytest.mark.slow

TAG = secrets.token_hex(4)
SCHEMA, ROLE = f"walls_e2e_{TAG}", f"walls_e2e_read_{TAG}"


def _policy() -> str:
    text = demo_policy()
    masking = f"""\
    masking:
      rules:
        - column: {SCHEMA}.people.email
          method: partial
          keep: domain
        - column: public.customers.email
          method: redact
          scopes: [read]
      database_grants: true
"""
    walled = f"""\
      walled:
        grants: [{ROLE}]
        max_ttl: 1h
        allow:
          groups: [dev]
        guardrails:
          preset: read
"""
    marker = "    scopes:\n"
    return text.replace(marker, masking + marker + walled, 1)


@pytest.fixture(scope="module")
def walls_broker(pg_cluster: LocalCluster, demo_target: DemoTarget) -> Iterator[Broker]:
    s, r, admin = sql.Identifier(SCHEMA), sql.Identifier(ROLE), sql.Identifier(ADMIN_ROLE)
    superuser = pg_cluster.dsn(dbname=demo_target.database)
    with psycopg.connect(superuser, autocommit=True) as conn:
        for statement in (
            sql.SQL("CREATE SCHEMA {}").format(s),
            sql.SQL("CREATE TABLE {}.people (id int, email text, city text)").format(s),
            sql.SQL("INSERT INTO {}.people VALUES (1, 'ada@example.com', 'Lisbon')").format(s),
            sql.SQL("CREATE ROLE {} NOLOGIN").format(r),
            sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(r, admin),
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}, {}").format(s, admin, r),
            sql.SQL("GRANT SELECT ON {}.people TO {} WITH GRANT OPTION").format(s, admin),
            sql.SQL("SET ROLE {}").format(admin),
            sql.SQL("GRANT SELECT ON {}.people TO {}").format(s, r),
            sql.SQL("RESET ROLE"),
        ):
            conn.execute(statement)
    try:
        with running_broker(demo_target, _policy()) as b:
            yield b
    finally:
        with psycopg.connect(superuser, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(s))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(r))
            conn.execute(sql.SQL("DROP ROLE {}").format(r))


def test_the_database_refuses_masked_columns_to_the_session(walls_broker: Broker) -> None:
    with held_session(walls_broker, "--scope", "walled") as s:
        ok = s.psql(f"select id, city from {SCHEMA}.people")
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.strip() == "1|Lisbon"
        for attempt in (f"select email from {SCHEMA}.people", f"select * from {SCHEMA}.people"):
            res = s.psql(attempt)
            assert res.returncode != 0
            assert "permission denied" in res.stderr, res.stderr
            assert "ada@" not in res.stdout + res.stderr


def test_a_session_whose_wall_cannot_be_built_does_not_start(walls_broker: Broker) -> None:
    # demo_read's SELECT on customers was granted by the superuser, not the admin role.
    res = walls_broker.cli("exec", "demo", "--scope", "read", "-c", "select 1")
    assert res.returncode != 0
    assert "public.customers.email" in res.stderr, res.stderr
    # The demo's grant role was left as it was.
    ok = walls_broker.cli("exec", "demo", "--scope", "write", "-c", "select count(*) from orders")
    assert ok.returncode == 0, ok.stderr
