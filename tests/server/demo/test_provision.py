"""The demo target the issuer works against: roles, least privilege, data, idempotence."""

from __future__ import annotations

import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from server.demo.provision import DemoTarget, provision_demo, write_admin_dsn_file
from server.pgcluster import LocalCluster

AdminConn = psycopg.Connection[Any]


def luhn_ok(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def test_luhn_helper_knows_a_valid_number_from_a_typo() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")


def test_provisioning_is_idempotent(pg_cluster: LocalCluster, demo_target: DemoTarget) -> None:
    again = provision_demo(pg_cluster)
    assert again == demo_target
    assert again.admin_dsn == demo_target.admin_dsn
    with psycopg.connect(pg_cluster.dsn(dbname=again.database)) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM orders)"
        ).fetchone()
    assert counts == (300, 900)


def test_demo_data_is_people_like_and_deterministic(admin_conn: AdminConn) -> None:
    rows = admin_conn.execute(
        "SELECT id, full_name, email, phone, card_number, city FROM customers ORDER BY id"
    ).fetchall()
    assert len(rows) == 300
    assert rows[0][:2] == (1, "Ken Berners")
    for _id, name, email, phone, card, city in rows:
        assert " " in name and "@example.com" in email and city
        assert phone.startswith("+1-555-")
        assert len(card) == 16 and card.startswith("4") and luhn_ok(card), card
    assert len({r[2] for r in rows}) == 300
    row = admin_conn.execute(
        "SELECT count(*), count(DISTINCT customer_id), min(amount) >= 0 FROM orders"
    ).fetchone()
    assert row == (900, 300, True)


def test_the_admin_role_has_just_what_it_needs(admin_conn: AdminConn) -> None:
    row = admin_conn.execute(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin"
        " FROM pg_roles WHERE rolname = 'dbaccess_admin'"
    ).fetchone()
    assert row == (False, True, False, False, False, True)
    held = dict(
        admin_conn.execute(
            "SELECT g.rolname, m.admin_option FROM pg_auth_members m"
            " JOIN pg_roles g ON g.oid = m.roleid"
            " WHERE m.member = 'dbaccess_admin'::regrole"
        ).fetchall()
    )
    assert held == {
        "pg_signal_backend": False,
        "dbaccess_managed": True,
        "demo_read": True,
        "demo_write": True,
    }


def test_grant_roles_and_public_have_least_privilege(admin_conn: AdminConn) -> None:
    def has(role: str, table: str, priv: str) -> bool:
        row = admin_conn.execute(
            "SELECT has_table_privilege(%s, %s, %s)", (role, table, priv)
        ).fetchone()
        return bool(row and row[0])

    assert has("demo_read", "customers", "SELECT")
    assert not has("demo_read", "customers", "INSERT")
    assert not has("demo_read", "orders", "DELETE")
    assert has("demo_write", "orders", "INSERT")
    assert has("demo_write", "customers", "DELETE")
    assert not has("demo_write", "orders", "TRUNCATE")
    row = admin_conn.execute(
        "SELECT count(*) FROM pg_namespace, aclexplode(nspacl) a"
        " WHERE nspname = 'public' AND a.grantee = 0 AND a.privilege_type = 'CREATE'"
    ).fetchone()
    assert row == (0,)


@pytest.mark.parametrize(("role", "can_create"), [("demo_write", True), ("demo_read", False)])
def test_only_the_write_scope_may_create_tables_in_public(
    admin_conn: AdminConn, role: str, can_create: bool
) -> None:
    # The write scope's reviewed DDL (the demo's CREATE TABLE) must be able to run.
    row = admin_conn.execute(
        "SELECT has_schema_privilege(%s, 'public', 'CREATE')", (role,)
    ).fetchone()
    assert row == (can_create,)


@pytest.fixture
def outsider(admin_conn: AdminConn) -> Iterator[tuple[str, str]]:
    name, password = f"outsider_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin_conn.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(name), sql.Literal(password)
        )
    )
    yield name, password
    admin_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_roles_outside_dbaccess_cannot_connect_to_the_demo_database(
    pg_cluster: LocalCluster, demo_target: DemoTarget, outsider: tuple[str, str]
) -> None:
    name, password = outsider
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(pg_cluster.dsn(user=name, password=password, dbname=demo_target.database))
    # The same role reaches a database that kept PostgreSQL's defaults.
    with psycopg.connect(pg_cluster.dsn(user=name, password=password)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (name,)


def test_admin_dsn_file_is_private(pg_tmp_dir: Path, demo_target: DemoTarget) -> None:
    path = pg_tmp_dir / "admin.dsn"
    path.write_text("old")
    path.chmod(0o644)
    write_admin_dsn_file(path, demo_target.admin_dsn)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == demo_target.admin_dsn
    assert [p.name for p in pg_tmp_dir.iterdir()] == ["admin.dsn"]


def test_demo_target_repr_hides_the_admin_dsn(demo_target: DemoTarget) -> None:
    assert demo_target.admin_dsn not in repr(demo_target)
    assert "demo" in repr(demo_target)
