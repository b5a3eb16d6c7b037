"""The session's search_path through the real tunnel: the attacks that used it to
run a function the guardrails did not judge, and what the gateway does instead.

The trap: schema ``shadow`` holds ``lower(text)``, which deletes every row of a
scratch table.  The ``allowlist`` scope allows only ``lower`` (meaning the
built-in), so a session that gets ``shadow`` searched before ``pg_catalog`` would
run the trap under a name the allow-list accepts.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from server.demo.provision import DemoTarget
from tests.fix_broker import Broker, demo_policy, running_broker
from tests.fix_pgwire import RawClient
from tests.fix_session import HeldSession, held_session

pytestmark = pytest.mark.slow

TABLE = "search_path_scratch"
ALLOWLIST_SCOPE = """\
      allowlist:
        grants: [demo_write]
        max_ttl: 1h
        allow:
          groups: [dev]
        guardrails:
          preset: write
          functions_allow: [lower, count]
"""
TRAP = "shadow, pg_catalog, public"


def _policy() -> str:
    return demo_policy(scopes=ALLOWLIST_SCOPE)


@pytest.fixture(scope="module")
def path_broker(demo_target: DemoTarget) -> Iterator[Broker]:
    with running_broker(demo_target, _policy()) as b:
        yield b


@pytest.fixture
def trap(admin_conn: psycopg.Connection[tuple[object, ...]]) -> Iterator[None]:
    admin_conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    admin_conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY)")
    admin_conn.execute(f"INSERT INTO {TABLE} SELECT generate_series(1, 5)")
    admin_conn.execute(f"ALTER TABLE {TABLE} OWNER TO demo_write")
    admin_conn.execute("DROP SCHEMA IF EXISTS shadow CASCADE")
    admin_conn.execute("CREATE SCHEMA shadow")
    admin_conn.execute("GRANT USAGE ON SCHEMA shadow TO demo_read")
    admin_conn.execute(
        "CREATE FUNCTION shadow.lower(text) RETURNS text LANGUAGE sql "
        f"AS $$ DELETE FROM public.{TABLE}; SELECT 'trapped' $$"
    )
    yield
    admin_conn.execute("DROP SCHEMA IF EXISTS shadow CASCADE")
    admin_conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


@pytest.fixture
def session(path_broker: Broker, trap: None) -> Iterator[HeldSession]:
    with held_session(path_broker, "--scope", "allowlist") as s:
        yield s


def _count(admin: psycopg.Connection[tuple[object, ...]]) -> int:
    row = admin.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
    assert row is not None
    return int(str(row[0]))


def test_the_trap_works_when_shadow_comes_first(
    admin_conn: psycopg.Connection[tuple[object, ...]], trap: None
) -> None:
    """The attack itself, straight against the database: what the gateway prevents."""
    admin_conn.execute(f"SET search_path = {TRAP}")
    try:
        assert admin_conn.execute("SELECT lower('X')").fetchone() == ("trapped",)
    finally:
        admin_conn.execute("RESET search_path")
    assert _count(admin_conn) == 0


@pytest.mark.parametrize(
    "sql",
    [
        f"SET search_path = {TRAP}; SELECT lower('X')",
        f"SET search_path = {TRAP}",
        f"SET LOCAL search_path = {TRAP}",
        "SET SCHEMA 'shadow'",
        "RESET search_path",
        f"SELECT set_config('search_path', '{TRAP}', false)",
        f"BEGIN; SET LOCAL search_path = {TRAP}; SELECT lower('X'); COMMIT",
    ],
)
def test_changing_the_search_path_is_refused_and_changes_nothing(
    session: HeldSession, admin_conn: psycopg.Connection[tuple[object, ...]], sql: str
) -> None:
    res = session.psql(sql)
    assert res.returncode != 0, res.stdout
    assert "guardrails.pinned_setting" in res.stderr, res.stderr
    assert "set search_path as a startup parameter" in res.stderr, res.stderr
    assert _count(admin_conn) == 5
    # The built-in still runs, and the path is the one the session started with.
    after = session.psql("SELECT lower('X'); SHOW search_path")
    assert after.stdout.split("\n")[:2] == ["x", '"$user", public'], after.stderr
    assert _count(admin_conn) == 5


def test_a_parameter_naming_the_search_path_is_refused_at_bind(
    session: HeldSession, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    with psycopg.connect(session.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pinned_setting"):
            conn.execute("SELECT set_config(%s, %s, false)", ("search_path", TRAP))
        assert conn.execute("SELECT lower('X')").fetchone() == ("x",)
    assert _count(admin_conn) == 5


def test_a_startup_search_path_is_what_the_analysis_uses(
    session: HeldSession, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    client = RawClient(session.port, session.database, session.ticket, search_path=TRAP)
    try:
        rows, error = client.query("SHOW search_path")
        assert error is None and rows == [[TRAP]]
        # pg_catalog comes after shadow: an unqualified lower() may be the trap.
        rows, error = client.query("SELECT lower('X')")
        assert error is not None and rows == []
        assert error["C"] == "42501" and "guardrails.function_not_allowed" in error["M"]
        rows, error = client.query("SELECT pg_catalog.lower('X')")
        assert error is None and rows == [["x"]]
    finally:
        client.close()
    assert _count(admin_conn) == 5


def test_a_database_default_search_path_does_not_apply(
    session: HeldSession, admin_conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    """A default the gateway cannot see (set on the database) would have made
    lower() the trap for every session that sends no search_path."""
    database = session.database
    admin_conn.execute(f"ALTER DATABASE {database} SET search_path = {TRAP}")
    try:
        res = session.psql("SHOW search_path; SELECT lower('X')")
        assert res.returncode == 0, res.stderr
        assert res.stdout.split("\n")[:2] == ['"$user", public', "x"]
    finally:
        admin_conn.execute(f"ALTER DATABASE {database} RESET search_path")
    assert _count(admin_conn) == 5


def test_an_invalid_startup_search_path_is_refused(session: HeldSession) -> None:
    with pytest.raises(AssertionError, match="22023"):
        RawClient(session.port, session.database, session.ticket, search_path="shadow,")
