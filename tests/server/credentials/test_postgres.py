"""The postgres issuer against a real cluster, driven by the least-privilege dbaccess_admin."""

from __future__ import annotations

import base64
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from server.credentials.base import MAX_ROLE_NAME_BYTES, Credential, RoleMark, role_name_for
from server.credentials.postgres import PostgresIssuer
from server.credentials.scram import SESSION_ITERATIONS, scram_sha256_verifier
from server.demo.provision import DemoTarget, provision_demo
from server.errors import Conflict, Forbidden, InvalidInput, Unavailable
from server.pgcluster import LocalCluster, free_port
from server.policy.model import READ_LIMITS, SessionLimits
from tests.server.credentials.test_base import HOSTILE_IDENTITIES

AdminConn = psycopg.Connection[Any]
IssueFn = Callable[..., Credential]


@pytest.fixture
def issuer(demo_target: DemoTarget) -> Iterator[PostgresIssuer]:
    issuer = PostgresIssuer(demo_target.admin_dsn)
    yield issuer
    issuer.close()


@pytest.fixture
def issue(issuer: PostgresIssuer) -> Iterator[IssueFn]:
    """Issue credentials for the test; whatever is still there afterwards is revoked."""
    issued: list[str] = []

    def _issue(
        *,
        identity: str = "alice@example.com",
        grants: tuple[str, ...] = ("demo_read",),
        ttl: timedelta = timedelta(minutes=10),
        session_id: str | None = None,
        limits: SessionLimits | None = None,
    ) -> Credential:
        cred = issuer.issue(
            identity=identity,
            session_id=session_id or str(uuid.uuid4()),
            grants=list(grants),
            valid_until=datetime.now(UTC) + ttl,
            limits=limits,
        )
        issued.append(cred.username)
        return cred

    yield _issue
    for name in issued:
        issuer.revoke(name)


def session_connect(
    cluster: LocalCluster, target: DemoTarget, cred: Credential
) -> psycopg.Connection[Any]:
    return psycopg.connect(
        cluster.dsn(user=cred.username, password=cred.password, dbname=target.database),
        autocommit=True,
        connect_timeout=5,
    )


def role_oid(admin_conn: AdminConn, name: str) -> int | None:
    row = admin_conn.execute(
        "SELECT oid::bigint FROM pg_roles WHERE rolname = %s", (name,)
    ).fetchone()
    return None if row is None else int(row[0])


def backends_of(admin_conn: AdminConn, oid: int) -> int:
    row = admin_conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE usesysid = %s::oid", (oid,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def memberships(admin_conn: AdminConn, name: str) -> set[str]:
    rows = admin_conn.execute(
        "SELECT g.rolname FROM pg_auth_members m"
        " JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member"
        " WHERE r.rolname = %s",
        (name,),
    ).fetchall()
    return {str(r[0]) for r in rows}


def test_the_admin_role_is_not_a_superuser(admin_conn: AdminConn) -> None:
    row = admin_conn.execute(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles"
        " WHERE rolname = 'dbaccess_admin'"
    ).fetchone()
    assert row == (False, True, False, False)


def test_issued_role_logs_in_until_its_deadline_with_exactly_its_grants(
    issue: IssueFn, pg_cluster: LocalCluster, demo_target: DemoTarget, admin_conn: AdminConn
) -> None:
    deadline = datetime.now(UTC) + timedelta(minutes=7)
    cred = issue(ttl=deadline - datetime.now(UTC))
    with session_connect(pg_cluster, demo_target, cred) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (cred.username,)
        row = conn.execute("SELECT count(*) FROM customers").fetchone()
        assert row is not None
        assert row[0] > 0

    row = admin_conn.execute(
        "SELECT rolvaliduntil, rolcanlogin, rolinherit, rolsuper, rolcreaterole, rolcreatedb,"
        " rolreplication, rolbypassrls, rolconnlimit, rolpassword"
        " FROM pg_authid WHERE rolname = %s",
        (cred.username,),
    ).fetchone()
    assert row is not None
    valid_until, login, inherit, *powers, connlimit, verifier = row
    assert valid_until == cred.valid_until
    assert abs(valid_until - deadline) < timedelta(seconds=5)
    assert (login, inherit) == (True, True)
    assert powers == [False, False, False, False, False]
    assert connlimit == 50
    assert str(verifier).startswith(f"SCRAM-SHA-256${SESSION_ITERATIONS}:")
    assert cred.password not in str(verifier)
    assert memberships(admin_conn, cred.username) == {"dbaccess_managed", "demo_read"}


def test_a_role_without_grants_is_only_in_the_marker_role(
    issue: IssueFn, admin_conn: AdminConn
) -> None:
    cred = issue(grants=())
    assert memberships(admin_conn, cred.username) == {"dbaccess_managed"}


def test_a_read_role_cannot_write_but_a_write_role_can(
    issue: IssueFn, pg_cluster: LocalCluster, demo_target: DemoTarget
) -> None:
    reader = issue(grants=("demo_read",))
    with session_connect(pg_cluster, demo_target, reader) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO orders (customer_id, amount, status, created_at)"
                " VALUES (1, 1, 'paid', now())"
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.sneaky (x int)")

    writer = issue(grants=("demo_write",))
    with session_connect(pg_cluster, demo_target, writer) as conn, conn.transaction():
        row = conn.execute(
            "INSERT INTO orders (customer_id, amount, status, created_at)"
            " VALUES (1, 1, 'paid', now()) RETURNING id"
        ).fetchone()
        assert row is not None
        assert row[0] > 900
        raise psycopg.Rollback()  # leave the shared demo data as it was


def test_revoke_ends_a_live_connection_and_drops_the_role(
    issue: IssueFn,
    issuer: PostgresIssuer,
    pg_cluster: LocalCluster,
    demo_target: DemoTarget,
    admin_conn: AdminConn,
) -> None:
    cred = issue()
    live = session_connect(pg_cluster, demo_target, cred)
    try:
        live.execute("SELECT 1")
        oid = role_oid(admin_conn, cred.username)
        assert oid is not None
        assert backends_of(admin_conn, oid) == 1

        result = issuer.revoke(cred.username)

        assert result.username == cred.username
        assert result.terminated_backends == 1
        assert result.dropped
        assert result.verified, result.detail
        with pytest.raises(psycopg.OperationalError):
            live.execute("SELECT 1")
        assert role_oid(admin_conn, cred.username) is None
        assert backends_of(admin_conn, oid) == 0
        with pytest.raises(psycopg.OperationalError):
            session_connect(pg_cluster, demo_target, cred)
    finally:
        live.close()


def test_revoke_is_idempotent(issue: IssueFn, issuer: PostgresIssuer) -> None:
    cred = issue()
    first = issuer.revoke(cred.username)
    second = issuer.revoke(cred.username)
    assert (first.dropped, first.verified) == (True, True)
    assert (second.dropped, second.verified, second.terminated_backends) == (False, True, 0)


@pytest.mark.parametrize("name", ['not "managed" role', "plain_app_user"])
def test_revoke_refuses_roles_outside_the_marker_role(
    issuer: PostgresIssuer, admin_conn: AdminConn, name: str
) -> None:
    role = sql.Identifier(name)
    admin_conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(role))
    try:
        with pytest.raises(Forbidden):
            issuer.revoke(name)
        with pytest.raises(Forbidden):
            issuer.terminate_backends(name)
        row = admin_conn.execute(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (name,)
        ).fetchone()
        assert row == (True,)
    finally:
        admin_conn.execute(sql.SQL("DROP ROLE {}").format(role))


def test_revoke_refuses_the_admin_role_itself(
    issuer: PostgresIssuer, pg_cluster: LocalCluster, demo_target: DemoTarget
) -> None:
    # dbaccess_admin holds the marker role WITH ADMIN OPTION, which makes it a
    # member too: it must still never be treated as a session role.
    with pytest.raises(Forbidden):
        issuer.revoke("dbaccess_admin")
    with psycopg.connect(demo_target.admin_dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("dbaccess_admin",)
    assert "dbaccess_admin" not in {r.name for r in issuer.list_managed()}


def test_hostile_names_reach_the_database_only_as_identifiers(
    issuer: PostgresIssuer, admin_conn: AdminConn
) -> None:
    admin_conn.execute("CREATE ROLE x NOLOGIN")
    try:
        result = issuer.revoke('x"; drop role x; --')
        assert (result.dropped, result.verified) == (False, True)
        assert role_oid(admin_conn, "x") is not None
    finally:
        admin_conn.execute("DROP ROLE x")


@pytest.mark.parametrize("identity", HOSTILE_IDENTITIES)
def test_hostile_identities_get_working_short_roles(
    issue: IssueFn,
    issuer: PostgresIssuer,
    pg_cluster: LocalCluster,
    demo_target: DemoTarget,
    admin_conn: AdminConn,
    identity: str,
) -> None:
    session_id = f'{uuid.uuid4()}"; DROP ROLE dbaccess_admin; --'
    cred = issue(identity=identity, session_id=session_id)
    assert cred.username == role_name_for(identity, session_id)
    assert len(cred.username.encode("utf-8")) <= MAX_ROLE_NAME_BYTES
    assert role_oid(admin_conn, cred.username) is not None
    with session_connect(pg_cluster, demo_target, cred) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (cred.username,)
    assert issuer.revoke(cred.username).verified
    assert role_oid(admin_conn, "dbaccess_admin") is not None


def test_the_stored_verifier_is_the_one_of_one_round_for_256_random_bits(
    issue: IssueFn, pg_cluster: LocalCluster, demo_target: DemoTarget, admin_conn: AdminConn
) -> None:
    """The target stores the broker's verifier as sent (one PBKDF2 round, which is safe for
    a password of 32 random bytes only), and libpq logs in with it."""
    cred = issue()
    assert len(base64.urlsafe_b64decode(cred.password + "=")) == 32
    row = admin_conn.execute(
        "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (cred.username,)
    ).fetchone()
    assert row is not None
    stored = str(row[0])
    mechanism, iterations_salt, _keys = stored.split("$")
    iterations, salt = iterations_salt.split(":")
    assert (mechanism, iterations) == ("SCRAM-SHA-256", "1")
    assert scram_sha256_verifier(cred.password, base64.b64decode(salt), 1) == stored
    with session_connect(pg_cluster, demo_target, cred) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (cred.username,)


def test_plaintext_passwords_never_reach_the_server_log(
    pg_cluster: LocalCluster,
    demo_target: DemoTarget,
    issue: IssueFn,
    issuer: PostgresIssuer,
) -> None:
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as su:
        su.execute("ALTER SYSTEM SET log_statement = 'all'")
        su.execute("SELECT pg_reload_conf()")
        try:
            _wait_for_setting(pg_cluster, "log_statement", "all")
            offset = pg_cluster.log_path.stat().st_size
            again = provision_demo(pg_cluster)  # re-sends the admin role's password
            cred = issue()
            with session_connect(pg_cluster, demo_target, cred) as conn:
                conn.execute("SELECT 1")
            issuer.revoke(cred.username)
        finally:
            su.execute("ALTER SYSTEM RESET log_statement")
            su.execute("SELECT pg_reload_conf()")
    log = pg_cluster.log_path.read_text(errors="replace")[offset:]
    # The statements were logged (so the check below looks at something real)...
    assert f'CREATE ROLE "{cred.username}"' in log
    assert 'ALTER ROLE "dbaccess_admin"' in log
    assert "SCRAM-SHA-256$4096:" in log
    # ...but neither plaintext password was.
    admin_password = conninfo_to_dict(again.admin_dsn)["password"]
    assert str(admin_password) not in log
    assert cred.password not in log


def _wait_for_setting(cluster: LocalCluster, name: str, value: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT setting FROM pg_settings WHERE name = %s", (name,)
            ).fetchone()
        if row == (value,) or time.monotonic() > deadline:
            assert row == (value,)
            return
        time.sleep(0.05)


def test_a_role_with_a_temp_table_is_revoked_cleanly(
    issue: IssueFn,
    issuer: PostgresIssuer,
    pg_cluster: LocalCluster,
    demo_target: DemoTarget,
    admin_conn: AdminConn,
) -> None:
    cred = issue()
    with session_connect(pg_cluster, demo_target, cred) as live:
        live.execute("CREATE TEMP TABLE scratch AS SELECT id FROM customers LIMIT 5")
        result = issuer.revoke(cred.username)
    assert (result.dropped, result.verified, result.terminated_backends) == (True, True, 1)
    assert role_oid(admin_conn, cred.username) is None


def test_a_role_that_owned_objects_is_revoked_and_the_objects_handed_over(
    issue: IssueFn,
    issuer: PostgresIssuer,
    pg_cluster: LocalCluster,
    demo_target: DemoTarget,
    admin_conn: AdminConn,
) -> None:
    schema = sql.Identifier(f"scratch_{uuid.uuid4().hex[:8]}")
    admin_conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
    try:
        # The scope's grant role may create here, so its session roles can own objects.
        admin_conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO demo_write").format(schema))
        cred = issue(grants=("demo_write",))
        with session_connect(pg_cluster, demo_target, cred) as conn:
            conn.execute(sql.SQL("CREATE TABLE {}.notes (body text)").format(schema))
            conn.execute(sql.SQL("INSERT INTO {}.notes VALUES ('kept')").format(schema))
            # A privilege the session role itself granted, on its own object.
            conn.execute(sql.SQL("GRANT SELECT ON {}.notes TO demo_read").format(schema))

        result = issuer.revoke(cred.username)

        assert (result.dropped, result.verified) == (True, True), result.detail
        assert role_oid(admin_conn, cred.username) is None
        row = admin_conn.execute(
            sql.SQL(
                "SELECT pg_get_userbyid(relowner), (SELECT body FROM {}.notes)"
                " FROM pg_class WHERE oid = %s::regclass"
            ).format(schema),
            (f"{schema.as_string(admin_conn)}.notes",),
        ).fetchone()
        assert row == ("dbaccess_admin", "kept")
    finally:
        admin_conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(schema))


def test_what_a_session_created_never_serves_others_with_the_admin_roles_rights(
    issue: IssueFn,
    issuer: PostgresIssuer,
    pg_cluster: LocalCluster,
    demo_target: DemoTarget,
    admin_conn: AdminConn,
) -> None:
    # Handed to the admin role as they were, a SECURITY DEFINER function would
    # run as the admin (CREATEROLE, ADMIN OPTION on the grant roles) for whoever
    # calls it, a view would read with the admin's privileges and a rule's
    # actions would run as the admin.  What a migration made stays usable.
    schema = sql.Identifier(f"scratch_{uuid.uuid4().hex[:8]}")
    admin_conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
    try:
        admin_conn.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO demo_write").format(schema))
        admin_conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO demo_read").format(schema))
        writer = issue(grants=("demo_write",))
        with session_connect(pg_cluster, demo_target, writer) as conn:
            for statement in (
                "CREATE FUNCTION {s}.whoami() RETURNS text LANGUAGE sql SECURITY DEFINER"
                " AS 'SELECT current_user::text'",
                "GRANT EXECUTE ON FUNCTION {s}.whoami() TO PUBLIC",
                "CREATE VIEW {s}.all_orders AS SELECT * FROM orders",
                "GRANT ALL ON {s}.all_orders TO PUBLIC",
                "CREATE TABLE {s}.notes (body text)",
                "INSERT INTO {s}.notes VALUES ('kept')",
                "GRANT SELECT ON {s}.notes TO demo_read",
                "CREATE TABLE {s}.inbox (id int)",
                "CREATE RULE purge AS ON INSERT TO {s}.inbox DO ALSO DELETE FROM orders",
                "GRANT INSERT ON {s}.inbox TO PUBLIC",
            ):
                conn.execute(sql.SQL(statement).format(s=schema))

        result = issuer.revoke(writer.username)
        assert (result.dropped, result.verified) == (True, True), result.detail

        reader = issue(grants=("demo_read",))
        with session_connect(pg_cluster, demo_target, reader) as conn:
            # The function is still there, and runs as its caller.
            row = conn.execute(sql.SQL("SELECT {}.whoami()").format(schema)).fetchone()
            assert row == (reader.username,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql.SQL("DELETE FROM {}.all_orders WHERE id < 0").format(schema))
        with (
            session_connect(pg_cluster, demo_target, reader) as conn,
            pytest.raises(psycopg.errors.InsufficientPrivilege),
        ):
            conn.execute(sql.SQL("INSERT INTO {}.inbox VALUES (1)").format(schema))
        with session_connect(pg_cluster, demo_target, reader) as conn:
            # The migration's table, data and grant stay.
            row = conn.execute(sql.SQL("SELECT body FROM {}.notes").format(schema)).fetchone()
            assert row == ("kept",)
        assert admin_conn.execute("SELECT count(*) FROM orders").fetchone() != (0,)
    finally:
        admin_conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(schema))


def test_a_privilege_the_admin_cannot_revoke_leaves_the_role_locked_and_reported(
    issue: IssueFn,
    issuer: PostgresIssuer,
    pg_cluster: LocalCluster,
    demo_target: DemoTarget,
    admin_conn: AdminConn,
) -> None:
    # Granted by the superuser straight to the session role: a CREATEROLE admin
    # can only revoke what it (or a role it belongs to) granted, so DROP ROLE
    # fails. The role must then stay, without LOGIN, and the result must say so.
    cred = issue()
    role = sql.Identifier(cred.username)
    admin_conn.execute(sql.SQL("GRANT TRUNCATE ON public.orders TO {}").format(role))
    try:
        result = issuer.revoke(cred.username)
        assert (result.dropped, result.verified) == (False, False)
        assert "privileges for table orders" in result.detail
        row = admin_conn.execute(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (cred.username,)
        ).fetchone()
        assert row == (False,)
        with pytest.raises(psycopg.OperationalError):
            session_connect(pg_cluster, demo_target, cred)
    finally:
        admin_conn.execute(sql.SQL("REVOKE TRUNCATE ON public.orders FROM {}").format(role))
    assert issuer.revoke(cred.username).verified


def test_objects_in_another_database_keep_the_role_but_not_its_login(
    issue: IssueFn,
    issuer: PostgresIssuer,
    pg_cluster: LocalCluster,
    demo_target: DemoTarget,
    admin_conn: AdminConn,
) -> None:
    other = f"other_{uuid.uuid4().hex[:8]}"
    admin_conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(other)))
    cred = issue()
    try:
        admin_conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(other), sql.Identifier(cred.username)
            )
        )
        dsn = pg_cluster.dsn(user=cred.username, password=cred.password, dbname=other)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA left_behind")

        result = issuer.revoke(cred.username)

        assert (result.dropped, result.verified) == (False, False)
        assert "depend" in result.detail
        row = admin_conn.execute(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (cred.username,)
        ).fetchone()
        assert row == (False,)
        with pytest.raises(psycopg.OperationalError):
            session_connect(pg_cluster, demo_target, cred)
    finally:
        admin_conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(other)))
    assert issuer.revoke(cred.username).verified


def test_terminate_backends_cuts_connections_but_keeps_the_role(
    issue: IssueFn,
    issuer: PostgresIssuer,
    pg_cluster: LocalCluster,
    demo_target: DemoTarget,
    admin_conn: AdminConn,
) -> None:
    cred = issue()
    conns = [session_connect(pg_cluster, demo_target, cred) for _ in range(2)]
    try:
        assert issuer.terminate_backends(cred.username) == 2
        for conn in conns:
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        with session_connect(pg_cluster, demo_target, cred) as again:
            assert again.execute("SELECT 1").fetchone() == (1,)
    finally:
        for conn in conns:
            conn.close()
    assert issuer.terminate_backends("no_such_role_at_all") == 0


def test_list_managed_shows_session_roles_with_their_deadlines(
    issue: IssueFn, issuer: PostgresIssuer
) -> None:
    cred = issue()
    managed = {r.name: r.valid_until for r in issuer.list_managed()}
    assert managed[cred.username] == cred.valid_until
    issuer.revoke(cred.username)
    assert cred.username not in {r.name for r in issuer.list_managed()}


def test_an_expired_role_cannot_log_in(
    issue: IssueFn, pg_cluster: LocalCluster, demo_target: DemoTarget
) -> None:
    cred = issue(ttl=timedelta(seconds=1.5))
    with session_connect(pg_cluster, demo_target, cred) as conn:
        conn.execute("SELECT 1")
    time.sleep(max(0.0, (cred.valid_until - datetime.now(UTC)).total_seconds()) + 0.3)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        session_connect(pg_cluster, demo_target, cred)


def test_grants_are_checked_before_anything_is_created(
    issuer: PostgresIssuer, admin_conn: AdminConn
) -> None:
    admin_conn.execute("CREATE ROLE undelegated_group NOLOGIN")
    try:
        deadline = datetime.now(UTC) + timedelta(minutes=5)
        cases: list[tuple[list[str], type[Exception]]] = [
            (["no_such_grant_role"], InvalidInput),
            (["dbaccess_managed"], InvalidInput),
            (["dbaccess_admin"], Forbidden),  # a LOGIN role, not a group
            (["undelegated_group"], Forbidden),  # never granted WITH ADMIN OPTION
            (["pg_execute_server_program"], Forbidden),
            (["demo_read", ""], InvalidInput),
        ]
        for grants, error in cases:
            session_id = str(uuid.uuid4())
            with pytest.raises(error):
                issuer.issue(
                    identity="mallory", session_id=session_id, grants=grants, valid_until=deadline
                )
            assert role_oid(admin_conn, role_name_for("mallory", session_id)) is None
    finally:
        admin_conn.execute("DROP ROLE undelegated_group")


def test_a_session_role_cannot_be_granted_to_another(issue: IssueFn) -> None:
    first = issue()
    with pytest.raises(Forbidden):
        issue(grants=(first.username,))


def test_deadlines_must_be_aware_and_in_the_future(issuer: PostgresIssuer) -> None:
    with pytest.raises(InvalidInput):
        issuer.issue(identity="a", session_id="s", grants=[], valid_until=datetime(2099, 1, 1))
    with pytest.raises(InvalidInput):
        issuer.issue(
            identity="a",
            session_id="s",
            grants=[],
            valid_until=datetime.now(UTC) - timedelta(seconds=1),
        )


def test_the_same_session_twice_is_a_conflict(issue: IssueFn) -> None:
    session_id = str(uuid.uuid4())
    issue(session_id=session_id)
    with pytest.raises(Conflict):
        issue(session_id=session_id)


@pytest.mark.parametrize("failure", ["unreachable", "wrong_password"])
def test_failures_never_show_the_admin_password(
    demo_target: DemoTarget, pg_cluster: LocalCluster, failure: str
) -> None:
    secret = "Sup3r-s3cret/p@ss word"
    port = free_port() if failure == "unreachable" else pg_cluster.port
    dsn = pg_cluster.dsn(user="dbaccess_admin", password=secret, dbname=demo_target.database)
    dsn = dsn.replace(f":{pg_cluster.port}/", f":{port}/")
    issuer = PostgresIssuer(dsn, connect_timeout=2)
    for call in (
        lambda: issuer.revoke("dba_whoever"),
        lambda: issuer.list_managed(),
        lambda: issuer.issue(
            identity="a",
            session_id=str(uuid.uuid4()),
            grants=[],
            valid_until=datetime.now(UTC) + timedelta(minutes=1),
        ),
    ):
        with pytest.raises(Unavailable) as info:
            call()
        text = "".join(traceback.format_exception(info.value)) + repr(info.value)
        assert secret not in text
        assert "p%40ss" not in text
    assert secret not in repr(issuer)


def test_a_malformed_admin_dsn_is_not_echoed() -> None:
    with pytest.raises(InvalidInput) as info:
        PostgresIssuer("host=127.0.0.1 password='Sup3r-s3cret")
    assert "Sup3r" not in str(info.value)


def test_the_role_carries_the_scope_limits_into_every_login(
    issue: IssueFn, pg_cluster: LocalCluster, demo_target: DemoTarget, admin_conn: AdminConn
) -> None:
    """Set on the role, the limits hold for a connection that never saw the gateway."""
    cred = issue(limits=READ_LIMITS)
    row = admin_conn.execute(
        "SELECT rolconfig FROM pg_roles WHERE rolname = %s", (cred.username,)
    ).fetchone()
    assert row is not None
    # The demo admin role is not superuser and may not set temp_file_limit.
    assert sorted(row[0]) == [
        "idle_in_transaction_session_timeout=1min",
        "idle_session_timeout=1h",
        "lock_timeout=10s",
        "statement_timeout=5min",
    ]
    with session_connect(pg_cluster, demo_target, cred) as conn:
        shown = [
            conn.execute(f"SHOW {name}").fetchone()
            for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
        ]
        assert shown == [("5min",), ("10s",), ("1min",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SET temp_file_limit = -1")


def test_pooled_admin_connections_survive_being_cut_and_say_when_all_are_busy(
    demo_target: DemoTarget, admin_conn: AdminConn
) -> None:
    issuer = PostgresIssuer(demo_target.admin_dsn, pool_size=1, connect_timeout=1)
    try:
        until = datetime.now(UTC) + timedelta(minutes=5)
        first = issuer.issue(identity="p", session_id="s-pool1", grants=[], valid_until=until)
        issuer.revoke(first.username)  # by now through the pool
        # A DBA (or a restart of the target) ends the pooled connection: the next
        # call is handed a checked, working one.
        admin_conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'dbaccess-issuer' AND usename = 'dbaccess_admin'"
        )
        second = issuer.issue(identity="p", session_id="s-pool2", grants=[], valid_until=until)
        assert issuer.revoke(second.username).verified
        with issuer.admin_connection(), pytest.raises(Unavailable, match="stayed busy for 1s"):
            issuer.list_managed()
    finally:
        issuer.close()


def test_roles_carry_their_mark_and_another_deployments_are_refused(
    demo_target: DemoTarget,
) -> None:
    ours = PostgresIssuer(demo_target.admin_dsn)
    theirs = PostgresIssuer(demo_target.admin_dsn)
    ours.mark_roles(RoleMark("dep1", "r-one"))
    theirs.mark_roles(RoleMark("dep2", "r-two"))
    try:
        until = datetime.now(UTC) + timedelta(minutes=5)
        cred = ours.issue(identity="m", session_id="s-marked", grants=[], valid_until=until)
        listed = {r.name: r for r in theirs.list_managed()}[cred.username]
        assert (listed.mark, listed.session_id) == (RoleMark("dep1", "r-one"), "s-marked")
        with pytest.raises(Forbidden, match="another dbaccess deployment"):
            theirs.revoke(cred.username)
        with pytest.raises(Forbidden, match="another dbaccess deployment"):
            theirs.terminate_backends(cred.username)
        assert ours.revoke(cred.username).verified
    finally:
        ours.close()
        theirs.close()


def _role_config(admin_conn: AdminConn, name: str) -> tuple[list[str], str | None]:
    row = admin_conn.execute(
        "SELECT rolconfig, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s",
        (name,),
    ).fetchone()
    assert row is not None
    return sorted(row[0] or []), row[1]


@pytest.mark.parametrize("temp_file_limit", ["not allowed", "allowed"])
def test_a_role_made_in_one_message_has_all_a_role_made_step_by_step_has(
    temp_file_limit: str, demo_target: DemoTarget, admin_conn: AdminConn
) -> None:
    """The first role tries the superuser-only setting on its own; the next ones are
    made, marked and limited in one Query message, and end up the same."""
    allowed = temp_file_limit == "allowed"
    if allowed:
        admin_conn.execute("GRANT SET ON PARAMETER temp_file_limit TO dbaccess_admin")
    issuer = PostgresIssuer(demo_target.admin_dsn)
    issuer.mark_roles(RoleMark("dep1", "r-one"))
    names = []
    try:
        until = datetime.now(UTC) + timedelta(minutes=5)
        for i in range(3):
            cred = issuer.issue(
                identity="b",
                session_id=f"s-batch{i}",
                grants=["demo_read"],
                valid_until=until,
                limits=READ_LIMITS,
            )
            names.append(cred.username)
        assert (issuer.settable, issuer.unsettable) == (
            ({"temp_file_limit"}, set()) if allowed else (set(), {"temp_file_limit"})
        )
        first, *others = [_role_config(admin_conn, n) for n in names]
        assert ("temp_file_limit=" in " ".join(first[0])) == allowed
        assert len(first[0]) == (5 if allowed else 4)
        for config, name in zip(others, names[1:], strict=True):
            assert config[0] == first[0]
            assert config[1] is not None and "dep1" in config[1]
            assert memberships(admin_conn, name) == memberships(admin_conn, names[0])
        with pytest.raises(Conflict):
            issuer.issue(
                identity="b",
                session_id="s-batch1",
                grants=["demo_read"],
                valid_until=until,
                limits=READ_LIMITS,
            )
    finally:
        for name in names:
            assert issuer.revoke(name).verified
        issuer.close()
        if allowed:
            admin_conn.execute("REVOKE SET ON PARAMETER temp_file_limit FROM dbaccess_admin")
