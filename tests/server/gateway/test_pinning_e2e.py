"""Session limits on a real broker and PostgreSQL: the role carries them, every way of
lifting them through the gateway is refused and leaves them as they were, and they
do their work (a runaway query is cut, an idle lock holder is ended)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from server.demo.provision import DemoTarget
from tests.fix_broker import Broker, demo_policy, running_broker
from tests.fix_pgwire import login_error
from tests.fix_session import HeldSession, held_session

pytestmark = pytest.mark.slow

LIMITS = """\
    limits:
      statement_timeout: 5s
      lock_timeout: 4s
      idle_in_transaction_session_timeout: 1s
      temp_file_limit: 64MB
"""
# A scope trusted with server-side code and schema changes, without review: what
# its sessions create must not lift the limits either.
CODE_SCOPE = """\
      etl:
        grants: [demo_write]
        default_ttl: 15m
        max_ttl: 1h
        allow:
          groups: [dev]
        guardrails:
          preset: admin
          review: []
"""
POLICY = demo_policy(target=LIMITS, scopes=CODE_SCOPE)
# What SHOW says in a session of this policy (temp_file_limit: see test_the_role_carries...).
SHOWN = {
    "statement_timeout": "5s",
    "lock_timeout": "4s",
    "idle_in_transaction_session_timeout": "1s",
    "idle_session_timeout": "1h",
}
LIMIT_NAMES = (*SHOWN, "temp_file_limit")


@pytest.fixture(scope="module")
def broker(demo_target: DemoTarget) -> Iterator[Broker]:
    with running_broker(demo_target, POLICY) as b:
        yield b


@pytest.fixture(scope="module")
def session(broker: Broker) -> Iterator[HeldSession]:
    with held_session(broker, "--scope", "write") as s:
        yield s


def connect(s: HeldSession) -> psycopg.Connection[Any]:
    return psycopg.connect(s.dsn(), autocommit=True)


def _shown(conn: psycopg.Connection[Any]) -> dict[str, str]:
    return {name: str(conn.execute(f"show {name}").fetchone()[0]) for name in LIMIT_NAMES}  # type: ignore[index]


def _rolconfig(admin: psycopg.Connection[Any], role: str) -> list[str]:
    row = admin.execute("select rolconfig from pg_roles where rolname = %s", (role,)).fetchone()
    assert row is not None
    return list(row[0] or [])


def test_the_role_carries_the_limits_and_temp_file_limit_needs_the_admin_allowed_to(
    demo_target: DemoTarget, admin_conn: psycopg.Connection[Any]
) -> None:
    # The demo admin role is not superuser: only with SET on temp_file_limit
    # (PostgreSQL 15+) may it attach that limit to a role.
    admin_conn.execute("grant set on parameter temp_file_limit to dbaccess_admin")
    try:
        with running_broker(demo_target, POLICY) as b, held_session(b, "--scope", "write") as s:
            with connect(s) as conn:
                role = str(conn.execute("select current_user").fetchone()[0])  # type: ignore[index]
                assert _shown(conn) == {**SHOWN, "temp_file_limit": "64MB"}
            assert sorted(_rolconfig(admin_conn, role)) == [
                "idle_in_transaction_session_timeout=1s",
                "idle_session_timeout=1h",
                "lock_timeout=4s",
                "statement_timeout=5s",
                "temp_file_limit=64MB",
            ]
            admin_conn.execute("revoke set on parameter temp_file_limit from dbaccess_admin")
            with held_session(b, "--scope", "read") as other, connect(other) as conn:
                role = str(conn.execute("select current_user").fetchone()[0])  # type: ignore[index]
                # Without it the role has the rest, and the session still cannot change it.
                assert "temp_file_limit=64MB" not in _rolconfig(admin_conn, role)
                assert "statement_timeout=5s" in _rolconfig(admin_conn, role)
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute("set temp_file_limit = -1")
            assert "created without temp_file_limit" in b.log()
    finally:
        admin_conn.execute("revoke set on parameter temp_file_limit from dbaccess_admin")


def _ways(name: str) -> list[str]:
    return [
        f"set {name} = 0",
        f"SET LOCAL {name} TO 0",
        f"set session {name} = 0",
        f'set "{name}" = 0',
        f"set {name} to default",
        f"reset {name}",
        f"select set_config('{name}', '0', false)",
        f"select pg_catalog.set_config('{name.upper()}', '0', true)",
        f"select \"set_config\"('{name}', '0', false)",
        f"begin; set local {name} = 0; select 1; commit",
        f"alter role current_user set {name} = 0",
        f"alter database demo set {name} = 0",
        f"do $$ begin execute 'set {name} = 0'; end $$",
        f"do $$ begin perform set_config('{name}', '0', false); end $$",
        f"create function lift() returns int language sql set {name} = 0 as 'select 1'",
        f"set/**/{name}=0",
        f"set\t{name}\n=\n0",
        f"alter role session_user set {name} = 0",
        f"select 1; set {name} = 0",
        f"explain analyze select set_config('{name}', '0', false)",
        f"declare c cursor with hold for select set_config('{name}', '0', false)",
        f"create function lift() returns text language sql return set_config('{name}', '0', false)",
    ]


ANY_LIMIT = [
    "reset all",
    "discard all",
    "select set_config('statement_'||'timeout', '0', false)",
    "update pg_settings set setting = '0' where name = 'lock_timeout'",
    "with u as (update pg_settings set setting = '0' where name = 'lock_timeout' returning 1)"
    " select 1",
    "select set_config(x, '0', false) from (values ('lock_timeout')) v(x)",
]


@pytest.mark.parametrize("name", LIMIT_NAMES)
def test_every_way_of_lifting_a_limit_is_refused_and_leaves_it_as_it_was(
    session: HeldSession, admin_conn: psycopg.Connection[Any], name: str
) -> None:
    with connect(session) as conn:
        before = _shown(conn)
        assert {k: before[k] for k in SHOWN} == SHOWN
        role = str(conn.execute("select current_user").fetchone()[0])  # type: ignore[index]
        config = _rolconfig(admin_conn, role)
        for sql in _ways(name) + ANY_LIMIT:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                conn.execute(sql)
            error = info.value.diag
            assert error.sqlstate == "42501", sql
            assert "(limits.pinned)" in str(error.message_primary), (sql, error.message_primary)
            if sql in _ways(name):
                assert name in str(error.message_primary), sql
                assert f"limits.{name}" in str(error.message_hint), sql
                assert "scope 'write' of target 'demo'" in str(error.message_primary), sql
            if sql.startswith("begin;"):
                # As PostgreSQL does when a statement fails: what came before it ran,
                # so the transaction BEGIN opened is now aborted.
                assert conn.info.transaction_status.name == "INERROR", sql
                conn.execute("rollback")
            assert conn.info.transaction_status.name == "IDLE", sql
            assert _shown(conn) == before, sql
        # A name bound as a parameter is judged with its value, at Bind.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=name):
            conn.execute("select set_config(%s, %s, false)", (name, "0"))
        assert _shown(conn) == before
        assert conn.execute("select set_config(%s, %s, false)", ("application_name", "x"))
        # ... and nothing reached the role or the database.
        assert _rolconfig(admin_conn, role) == config
        settings = admin_conn.execute(
            "select count(*) from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase"
            " where d.datname = 'demo'"
        ).fetchone()
        assert settings == (0,)


# What a scope allowed to run code and change the schema could use to lift a
# limit out of the analysis's sight (each created object is in pg_temp), and the
# statement that would then lift it.
CODE_WAYS = [
    "do $$ begin perform U&\"set\\005fconfig\"('lock' || '_timeout', '0', false); end $$",
    'do $$ begin set U&"statement\\005ftimeout" = 0; end $$',
    "create aggregate pg_temp.lift(text, bool) "
    "(sfunc = set_config, stype = text, initcond = 'lock_timeout')",
    "create view pg_temp.knobs as select * from pg_settings",
    "do language/**/plperl $$ 1 $$",
]
CODE_LOCKS = [
    "do $$ begin perform pg_advisory_lock(77); end $$",
    "create function pg_temp.lock() returns void language sql as $$ select pg_advisory_lock(78) $$",
    "create function pg_temp.lock() returns void language plpgsql as "
    "$$ begin perform pg_catalog.pg_advisory_lock(79); end $$",
]


def test_code_and_schema_changes_cannot_lift_a_limit_or_take_an_advisory_lock(
    broker: Broker,
) -> None:
    with held_session(broker, "--scope", "etl") as s, connect(s) as conn:
        before = _shown(conn)
        for sql, rule in [(w, "limits.pinned") for w in CODE_WAYS] + [
            (w, "limits.advisory_locks") for w in CODE_LOCKS
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
                conn.execute(sql)
            assert f"({rule})" in str(info.value.diag.message_primary), sql
            assert "scope 'etl' of target 'demo'" in str(info.value.diag.message_primary), sql
        # Outside a body a Unicode-escaped name is not even analysed.
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="Unicode-escaped"):
            conn.execute('set U&"lock\\005ftimeout" = 0')
        # Nothing was created, nothing changed, no lock is held.
        created = conn.execute(
            "select (select count(*) from pg_proc where pronamespace = pg_my_temp_schema())"
            " + (select count(*) from pg_class where relnamespace = pg_my_temp_schema())"
        ).fetchone()
        assert created == (0,)
        assert _shown(conn) == before
        held = conn.execute(
            "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()"
        ).fetchone()
        assert held == (0,)
        # The scope still runs code and changes its schema.
        conn.execute("do $$ begin raise notice 'hi'; end $$")
        conn.execute("create function pg_temp.one() returns int language sql as 'select 1'")
        assert conn.execute("select pg_temp.one()").fetchone() == (1,)


def test_psql_shows_the_refusal_with_its_hint(session: HeldSession) -> None:
    res = session.psql("set statement_timeout = 0")
    assert res.returncode != 0
    assert (
        "ERROR:  dbaccess: SET changes statement_timeout; statement_timeout is a limit that "
        "scope 'write' of target 'demo' sets (limits.pinned)"
    ) in res.stderr
    assert "HINT:  the limits come from the policy (limits.statement_timeout" in res.stderr
    assert session.psql("show statement_timeout").stdout.strip() == "5s"


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"statement_timeout": "0"}, "statement_timeout"),
        ({"lock_timeout": "0"}, "lock_timeout"),
        ({"idle_in_transaction_session_timeout": "0"}, "idle_in_transaction_session_timeout"),
        ({"temp_file_limit": "-1"}, "temp_file_limit"),
        ({"options": "-c statement_timeout=0"}, "options"),
    ],
)
def test_startup_parameters_cannot_lift_a_limit(
    session: HeldSession, params: dict[str, str], named: str
) -> None:
    fields = login_error(session.port, session.database, session.ticket, **params)
    assert fields["C"] == "42501", fields
    assert named in fields["M"]


def test_a_runaway_query_is_cut_by_statement_timeout(session: HeldSession) -> None:
    with connect(session) as conn:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            conn.execute(
                "with recursive r(n) as (select 1 union all select n + 1 from r) "
                "select count(*) from r"
            )
        assert 4.5 < time.monotonic() - started < 30
        assert conn.execute("select 1").fetchone() == (1,)  # the connection goes on


def test_an_idle_lock_holder_is_ended_and_the_waiting_session_proceeds(
    session: HeldSession,
) -> None:
    holder = connect(session)
    waiter = connect(session)
    try:
        holder.execute("begin")
        holder.execute("lock table customers in access exclusive mode")
        # The holder now sits idle in its transaction; the waiter queues behind it.
        outcome: list[object] = []

        def wait() -> None:
            try:
                outcome.append(waiter.execute("select count(*) from customers").fetchone())
            except psycopg.Error as exc:
                outcome.append(exc)

        started = time.monotonic()
        thread = threading.Thread(target=wait)
        thread.start()
        thread.join(30)
        assert outcome and isinstance(outcome[0], tuple), outcome
        assert time.monotonic() - started < 4  # well within lock_timeout (4s)
        with pytest.raises(psycopg.Error, match="idle-in-transaction timeout"):
            holder.execute("select 1")  # ended by idle_in_transaction_session_timeout
    finally:
        holder.close()
        waiter.close()


def test_advisory_locks_are_refused_unless_the_scope_allows_them(
    demo_target: DemoTarget, session: HeldSession
) -> None:
    with connect(session) as conn:
        for sql in ("select pg_advisory_lock(1)", "select pg_try_advisory_xact_lock(1, 2)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="advisory_locks"):
                conn.execute(sql)
        held = conn.execute(
            "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()"
        ).fetchone()
        assert held == (0,)
    allowing = demo_policy(target=LIMITS + "      advisory_locks: true\n")
    with (
        running_broker(demo_target, allowing) as b,
        held_session(b, "--scope", "write") as s,
        connect(s) as conn,
    ):
        assert conn.execute("select pg_try_advisory_lock(1)").fetchone() == (True,)
        assert conn.execute("select pg_advisory_unlock(1)").fetchone() == (True,)


def test_refusals_are_limit_events_in_the_recording(broker: Broker) -> None:
    with held_session(broker, "--scope", "write") as s:
        res = s.psql_script("set statement_timeout = 0;\nselect pg_advisory_lock(3);\n")
        assert res.stderr.count("ERROR:") == 2, res.stderr
        login_error(s.port, s.database, s.ticket, lock_timeout="0")
        session_id = s.session_id
    deadline = time.monotonic() + 20
    while True:
        res = broker.cli("replay", session_id, "--output", "json")
        assert res.returncode == 0, res.stderr
        events = json.loads(res.stdout)["events"]
        limits = [e["data"] for e in events if e["kind"] == "limit"]
        if len(limits) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [(d["limit"], d["value"], d["action"], d["sqlstate"]) for d in limits] == [
        ("statement_timeout", "5s", "refused", "42501"),
        ("advisory_locks", "false", "refused", "42501"),
        ("lock_timeout", "4s", "refused", "42501"),
    ]
    assert all(d["scope"] == "write" for d in limits)
    shown = broker.cli("replay", session_id)
    assert "statement_timeout" in shown.stdout and "advisory_locks" in shown.stdout
