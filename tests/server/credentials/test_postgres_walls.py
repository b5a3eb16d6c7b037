"""Column walls (masking.database_grants): a session role that logs in to PostgreSQL directly,
past the gateway, with its own credentials, still cannot read a masked column."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from server.credentials.base import Credential, role_name_for
from server.credentials.postgres import PostgresIssuer
from server.credentials.rds_iam import RdsIamIssuer
from server.demo.provision import ADMIN_ROLE, DemoTarget
from server.errors import Forbidden, InvalidInput, Unavailable
from server.gateway.masking import ColumnRef, MaskingRules, RelationWall, column_walls
from server.pgcluster import LocalCluster
from server.policy.model import MaskingPolicy, MaskMethod, MaskRule, RdsIamSettings

AdminConn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Walled:
    """A schema of the test's own; its grant roles' SELECT was granted by the admin role."""

    schema: str
    read: str  # grant role with SELECT on the tables
    write: str  # grant role that inherits ``read``
    policy: MaskingPolicy

    def table(self, name: str) -> str:
        return f"{self.schema}.{name}"


def _ident(*parts: str) -> sql.Identifier:
    return sql.Identifier(*parts)


@pytest.fixture
def walled(admin_conn: AdminConn) -> Iterator[Walled]:
    tag = secrets.token_hex(4)
    schema, read, write = f"wall_{tag}", f"wall_read_{tag}", f"wall_write_{tag}"
    s, r, w, admin = _ident(schema), _ident(read), _ident(write), _ident(ADMIN_ROLE)
    statements: list[sql.Composed | sql.SQL] = [
        sql.SQL("CREATE SCHEMA {}").format(s),
        sql.SQL(
            "CREATE TABLE {}.people (id int, full_name text, email text, card_number text,"
            " city text, {} text)"
        ).format(s, _ident(f"ssn_{tag}")),
        sql.SQL(
            "INSERT INTO {}.people VALUES (1, 'Ada', 'ada@example.com', '4111111111111111',"
            " 'Lisbon', '078-05-1120')"
        ).format(s),
        sql.SQL("CREATE VIEW {}.people_v AS SELECT id, email FROM {}.people").format(s, s),
        sql.SQL("CREATE TABLE {}.other (id int, note text)").format(s),
        sql.SQL("INSERT INTO {}.other VALUES (1, 'fine')").format(s),
        sql.SQL("CREATE ROLE {} NOLOGIN").format(r),
        sql.SQL("CREATE ROLE {} NOLOGIN IN ROLE {}").format(w, r),
        sql.SQL("GRANT {}, {} TO {} WITH ADMIN OPTION").format(r, w, admin),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}, {}").format(s, admin, r),
        sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {} WITH GRANT OPTION").format(s, admin),
        # The admin role is the grantor of the grant role's privileges: it may take them back.
        sql.SQL("SET ROLE {}").format(admin),
        sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(s, r),
        sql.SQL("RESET ROLE"),
    ]
    for statement in statements:
        admin_conn.execute(statement)
    policy = MaskingPolicy(
        rules=(
            MaskRule(column=f"{schema}.people.email", method=MaskMethod.PARTIAL, keep_domain=True),
            MaskRule(
                column=f"{schema}.people.card_number",
                method=MaskMethod.HASH,
                scopes=frozenset({"read"}),
            ),
            MaskRule(pattern=f"ssn_{tag}", method=MaskMethod.REDACT),
        ),
        exempt_scopes=frozenset({"admin"}),
        database_grants=True,
    )
    try:
        yield Walled(schema, read, write, policy)
    finally:
        admin_conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(s))
        for role in (w, r):
            admin_conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
            admin_conn.execute(sql.SQL("DROP ROLE {}").format(role))


@pytest.fixture
def issuer(demo_target: DemoTarget) -> Iterator[PostgresIssuer]:
    issuer = PostgresIssuer(demo_target.admin_dsn)
    yield issuer
    for role in issuer.list_managed():
        if role.name.startswith("dba_wall_"):
            issuer.revoke(role.name)


def _issue(
    issuer: PostgresIssuer,
    grants: list[str],
    policy: MaskingPolicy | None,
    scope: str | None = "read",
    session_id: str | None = None,
) -> Credential:
    return issuer.issue(
        identity="wall",
        session_id=session_id or str(uuid.uuid4()),
        grants=grants,
        valid_until=datetime.now(UTC) + timedelta(minutes=10),
        scope=scope,
        masking=policy,
    )


def _direct(cluster: LocalCluster, target: DemoTarget, cred: Credential) -> AdminConn:
    """The session role's own login to PostgreSQL: no gateway in between."""
    return psycopg.connect(
        cluster.dsn(user=cred.username, password=cred.password, dbname=target.database),
        autocommit=True,
        connect_timeout=5,
    )


def _denied(conn: AdminConn, statement: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
        conn.execute(statement.encode())


def test_a_session_role_cannot_read_masked_columns_past_the_gateway(
    walled: Walled,
    issuer: PostgresIssuer,
    pg_cluster: LocalCluster,
    demo_target: DemoTarget,
    admin_conn: AdminConn,
) -> None:
    cred = _issue(issuer, [walled.read], walled.policy)
    people, view = walled.table("people"), walled.table("people_v")
    with _direct(pg_cluster, demo_target, cred) as conn:
        assert conn.execute(f"SELECT id, full_name, city FROM {people}".encode()).fetchall() == [
            (1, "Ada", "Lisbon")
        ]
        assert conn.execute(f"SELECT note FROM {walled.table('other')}".encode()).fetchall() == [
            ("fine",)
        ]
        for attempt in (
            f"SELECT email FROM {people}",
            f"SELECT card_number FROM {people}",
            f"SELECT ssn_{walled.schema[5:]} FROM {people}",
            f"SELECT * FROM {people}",
            f"SELECT p FROM {people} p",
            f"SELECT count(*) FROM {people} WHERE email LIKE 'ada%'",
            f"SELECT id FROM {people} ORDER BY card_number",
            f"SELECT email FROM {view}",
            f"SELECT id FROM {view}",  # a view's columns cannot be told apart: all withheld
            f"COPY {people} TO STDOUT",
        ):
            _denied(conn, attempt)
    # The grant role keeps the clear columns only.
    row = admin_conn.execute(
        "SELECT has_table_privilege(%(r)s, %(t)s, 'SELECT'),"
        " has_column_privilege(%(r)s, %(t)s, 'city', 'SELECT'),"
        " has_column_privilege(%(r)s, %(t)s, 'email', 'SELECT')",
        {"r": walled.read, "t": people},
    ).fetchone()
    assert row == (False, True, False)


def test_a_grant_role_that_inherits_the_reading_role_is_walled_too(
    walled: Walled, issuer: PostgresIssuer, pg_cluster: LocalCluster, demo_target: DemoTarget
) -> None:
    cred = _issue(issuer, [walled.write], walled.policy)
    with _direct(pg_cluster, demo_target, cred) as conn:
        _denied(conn, f"SELECT email FROM {walled.table('people')}")
        assert conn.execute(f"SELECT city FROM {walled.table('people')}".encode()).fetchall()


def test_walls_are_built_once_and_hold_for_later_sessions(
    walled: Walled, issuer: PostgresIssuer, pg_cluster: LocalCluster, demo_target: DemoTarget
) -> None:
    for _ in range(2):
        cred = _issue(issuer, [walled.read], walled.policy)
        with _direct(pg_cluster, demo_target, cred) as conn:
            _denied(conn, f"SELECT email FROM {walled.table('people')}")


def test_a_column_masked_in_one_scope_only_is_withheld_in_that_scope(
    walled: Walled, issuer: PostgresIssuer, pg_cluster: LocalCluster, demo_target: DemoTarget
) -> None:
    # card_number is masked in scope "read" only: a "write" session walls email, not card.
    cred = _issue(issuer, [walled.read], walled.policy, scope="write")
    with _direct(pg_cluster, demo_target, cred) as conn:
        _denied(conn, f"SELECT email FROM {walled.table('people')}")
        got = conn.execute(f"SELECT card_number FROM {walled.table('people')}".encode())
        assert got.fetchall() == [("4111111111111111",)]


def test_a_privilege_the_admin_did_not_grant_refuses_the_session(
    walled: Walled, issuer: PostgresIssuer, admin_conn: AdminConn
) -> None:
    # The superuser grants a table with a masked column straight to the grant role:
    # the admin cannot take that back, so no session role may be issued.
    legacy = walled.table("legacy")
    admin_conn.execute(f"CREATE TABLE {legacy} (id int, email text)".encode())
    admin_conn.execute(
        sql.SQL("GRANT SELECT ON {} TO {}").format(
            _ident(walled.schema, "legacy"), _ident(walled.read)
        )
    )
    policy = MaskingPolicy(
        rules=(*walled.policy.rules, MaskRule(column=f"{legacy}.email", method=MaskMethod.REDACT)),
        database_grants=True,
    )
    session_id = str(uuid.uuid4())
    with pytest.raises(Forbidden, match=rf"{legacy}\.email") as caught:
        _issue(issuer, [walled.read], policy, session_id=session_id)
    assert "GRANT OPTION" in (caught.value.hint or "")
    # Nothing was issued, and the walls built on the way were rolled back.
    exists = admin_conn.execute(
        "SELECT 1 FROM pg_roles WHERE rolname = %s", (role_name_for("wall", session_id),)
    ).fetchone()
    assert exists is None
    row = admin_conn.execute(
        "SELECT has_table_privilege(%s, %s, 'SELECT')", (walled.read, walled.table("people"))
    ).fetchone()
    assert row == (True,)


def test_public_access_to_a_masked_column_refuses_the_session(
    walled: Walled, issuer: PostgresIssuer, admin_conn: AdminConn
) -> None:
    admin_conn.execute(
        sql.SQL("GRANT SELECT ({}) ON {} TO PUBLIC").format(
            _ident("email"), _ident(walled.schema, "people")
        )
    )
    with pytest.raises(Forbidden, match=r"people\.email"):
        _issue(issuer, [walled.read], walled.policy)


def test_an_exempt_scope_and_a_target_without_database_grants_change_nothing(
    walled: Walled,
    issuer: PostgresIssuer,
    pg_cluster: LocalCluster,
    demo_target: DemoTarget,
) -> None:
    off = MaskingPolicy(rules=walled.policy.rules, database_grants=False)
    for cred in (
        _issue(issuer, [walled.read], walled.policy, scope="admin"),
        _issue(issuer, [walled.read], off),
        _issue(issuer, [walled.read], None),
    ):
        with _direct(pg_cluster, demo_target, cred) as conn:
            got = conn.execute(f"SELECT email FROM {walled.table('people')}".encode())
            assert got.fetchall() == [("ada@example.com",)]


def test_walls_need_the_scope(walled: Walled, issuer: PostgresIssuer) -> None:
    with pytest.raises(InvalidInput, match="scope"):
        _issue(issuer, [walled.read], walled.policy, scope=None)


def test_an_rds_iam_target_without_roles_of_its_own_refuses_walls() -> None:
    issuer = RdsIamIssuer(
        RdsIamSettings(region="eu-central-1", ca_bundle=Path("/dev/null"), db_user="app"),
        host="db.example.com",
        port=5432,
    )
    with pytest.raises(Unavailable, match="database_grants"):
        issuer.issue(
            identity="a",
            session_id="s-1",
            grants=(),
            valid_until=datetime.now(UTC) + timedelta(minutes=5),
            scope="read",
            masking=MaskingPolicy(database_grants=True),
        )


# --------------------------------------------------------------------------- deciding


def _col(table: str, column: str, relkind: str = "r", *sources: ColumnRef) -> ColumnRef:
    return ColumnRef("s", table, column, 25, relkind, frozenset(sources))


EMAIL = _col("t", "email")
CITY = _col("t", "city")
HASHED = MaskingPolicy(
    rules=(
        MaskRule(pattern="email", method=MaskMethod.HASH),
        MaskRule(column="s.t.city", method=MaskMethod.REDACT, scopes=frozenset({"read"})),
    ),
    exempt_scopes=frozenset({"admin"}),
)


@pytest.mark.parametrize(
    ("scope", "columns", "expected"),
    [
        pytest.param(
            "read",
            [EMAIL, CITY, _col("t", "id")],
            (RelationWall("s", "t", ("email", "city"), ("id",)),),
            id="hash-rules-count-without-a-key",
        ),
        pytest.param(
            "write",
            [EMAIL, CITY, _col("t", "id")],
            (RelationWall("s", "t", ("email",), ("city", "id")),),
            id="scoped-rule-elsewhere",
        ),
        pytest.param("admin", [EMAIL, CITY], (), id="exempt-scope"),
        pytest.param(
            "write",
            [_col("v", "id", "v", EMAIL), _col("v", "name", "v", _col("t", "name"))],
            (RelationWall("s", "v", ("id",), ("name",)),),
            id="view-column-over-masked-source",
        ),
        pytest.param("write", [_col("seq", "email", "S")], (), id="relations-without-rows-ignored"),
    ],
)
def test_column_walls_per_scope(
    scope: str, columns: list[ColumnRef], expected: tuple[RelationWall, ...]
) -> None:
    rules = MaskingRules.for_scope(HASHED, scope)
    assert rules.key == b""
    assert column_walls(rules, columns) == expected
