"""The gateway checked against the real thing: the same psql scripts, psycopg
programs and pgbench runs, once straight to PostgreSQL and once through the
gateway, must give the same rows, types, command tags, notices and SQLSTATEs.

Through the gateway means through ``dbaccess connect``'s TLS tunnel (a held
session), and for some runs TLS straight to the gateway port
(``sslmode=verify-full`` against the broker's dev CA, the ticket as password).
The direct side logs in as a twin role with the same grants as the session
role (``demo_write``, CONNECT and TEMPORARY), so privileges match too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import pq

from server.demo.provision import DemoTarget
from server.pgcluster import LocalCluster
from tests.fix_broker import Broker, running_broker
from tests.fix_session import HeldSession, held_session

pytestmark = pytest.mark.slow

TWIN = "xcheck_twin"
TWIN_PASSWORD = "xcheck-twin-password"


@pytest.fixture(scope="module")
def twin(pg_cluster: LocalCluster, demo_target: DemoTarget) -> Iterator[dict[str, str]]:
    """pgbench tables readable by demo_read, and a direct role with a session role's grants."""
    superuser = pg_cluster.dsn(dbname=demo_target.database)
    env = pg_env(pg_cluster.port, pg_cluster.superuser, pg_cluster.password, demo_target.database)
    subprocess.run(
        ["pgbench", "-i", "-q", "-s", "1"], env=env, capture_output=True, check=True, timeout=120
    )
    with psycopg.connect(superuser, autocommit=True) as conn:
        conn.execute(
            "grant select on pgbench_accounts, pgbench_branches, pgbench_tellers, "
            "pgbench_history to demo_read"
        )
        conn.execute(f"drop role if exists {TWIN}")
        conn.execute(f"create role {TWIN} login password '{TWIN_PASSWORD}' in role demo_write")
        conn.execute(f"grant connect, temporary on database {demo_target.database} to {TWIN}")
    try:
        yield pg_env(pg_cluster.port, TWIN, TWIN_PASSWORD, demo_target.database)
    finally:
        with psycopg.connect(superuser, autocommit=True) as conn:
            conn.execute(
                "drop table if exists pgbench_accounts, pgbench_branches, pgbench_tellers, "
                "pgbench_history"
            )
            conn.execute(f"revoke all on database {demo_target.database} from {TWIN}")
            conn.execute(f"drop role if exists {TWIN}")


# The wire protocol is what is compared here, so the write scope's guardrails
# let through what the scripts use (DO blocks, DDL on temp tables, LISTEN);
# the guardrails have tests of their own.
POLICY = """
version: 1
targets:
  demo:
    description: cross-check target
    database: demo
    issuer: postgres
    admin_dsn_file: admin.dsn
    scopes:
      read:
        grants: [demo_read]
        default_ttl: 30m
        max_ttl: 8h
        allow: {groups: [dev]}
      write:
        grants: [demo_write]
        default_ttl: 15m
        max_ttl: 1h
        allow: {groups: [dev]}
        guardrails:
          preset: admin
          review: []
          allow_code: true
          allow_listen_notify: true
"""


@pytest.fixture(scope="module")
def broker(demo_target: DemoTarget) -> Iterator[Broker]:
    with running_broker(demo_target, POLICY) as b:
        yield b


@pytest.fixture(scope="module")
def session(broker: Broker) -> Iterator[HeldSession]:
    with held_session(broker, "--scope", "write", "--ttl", "1h") as s:
        yield s


def pg_env(port: int, user: str, password: str, database: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PGHOST="127.0.0.1",
        PGPORT=str(port),
        PGUSER=user,
        PGPASSWORD=password,
        PGDATABASE=database,
        PGSSLMODE="disable",
        PGCONNECT_TIMEOUT="10",
    )
    env.update(extra)
    return env


def routes(broker: Broker, session: HeldSession, twin: dict[str, str]) -> dict[str, dict[str, str]]:
    ca = json.loads((broker.config_dir / "profile.json").read_text())["ca_file"]
    host, port = broker.gateway
    return {
        "direct": twin,
        "tunnel": pg_env(session.port, "dev", session.ticket, session.database),
        "tls": pg_env(
            port,
            "dev",
            session.ticket,
            session.database,
            PGHOST=host,
            PGSSLMODE="verify-full",
            PGSSLROOTCERT=ca,
        ),
    }


def dsn(env: dict[str, str]) -> str:
    keys = {
        "PGHOST": "host",
        "PGPORT": "port",
        "PGUSER": "user",
        "PGPASSWORD": "password",
        "PGDATABASE": "dbname",
        "PGSSLMODE": "sslmode",
        "PGSSLROOTCERT": "sslrootcert",
        "PGCONNECT_TIMEOUT": "connect_timeout",
    }
    return " ".join(f"{keys[k]}={v}" for k, v in env.items() if k in keys)


# -- psql ---------------------------------------------------------------------

PSQL_SCRIPT = r"""
create temp table items (id int primary key, name text, price numeric(10,2));
copy items from stdin;
1	apple	1.50
2	pear	2.25
\.
\copy items from 'in.tsv'
\copy (select * from items order by id) to 'out.tsv'
copy (select * from items order by id) to stdout;
copy (select * from items order by id) to stdout with (format csv, header);
select id, name, price, price * 2 as double, name || '!' as shout from items order by id;
select 1 as one \; select 'two' as two \; select null::int as nothing;
select count(*) > 0 as has_customers from customers;
begin;
insert into items values (10, 'ten', 10);
select 1/0;
select 1;
rollback;
select count(*) from items;
do $$ begin raise notice 'notice from a % block', 'DO'; raise warning 'careful: %', 42; end $$;
select * from no_such_table;
insert into items values (1, 'duplicate', 0);
select aid, abalance from pgbench_accounts order by aid limit 3;
\echo done
"""


def run_psql(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str, str]:
    res = subprocess.run(
        ["psql", "-X", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return res.returncode, res.stdout, res.stderr


@pytest.mark.parametrize("route", ["tunnel", "tls"])
def test_psql_script_matches_a_direct_connection(
    broker: Broker, session: HeldSession, twin: dict[str, str], tmp_path: Path, route: str
) -> None:
    script = tmp_path / "script.sql"
    script.write_text(PSQL_SCRIPT)
    envs = routes(broker, session, twin)
    outputs = {}
    for name in ("direct", route):
        cwd = tmp_path / name
        cwd.mkdir()
        (cwd / "in.tsv").write_text("3\tplum\t0.75\n4\tfig\t3.00\n")
        code, out, err = run_psql(envs[name], cwd, "-f", str(script))
        outputs[name] = (code, out, err, (cwd / "out.tsv").read_text())
    direct, via = outputs["direct"], outputs[route]
    assert via == direct
    code, out, err, copied = direct
    # The script really exercised what it is meant to.
    assert "1\tapple\t1.50" in out and "id,name,price" in out and "done" in out
    assert "one" in out and "two" in out
    assert "ERROR:  division by zero" in err
    assert "current transaction is aborted" in err
    assert "NOTICE:  notice from a DO block" in err and "WARNING:  careful: 42" in err
    assert 'relation "no_such_table" does not exist' in err
    assert "duplicate key value" in err
    assert copied.splitlines() == [
        "1\tapple\t1.50",
        "2\tpear\t2.25",
        "3\tplum\t0.75",
        "4\tfig\t3.00",
    ]


def test_psql_multi_statement_command(
    broker: Broker, session: HeldSession, twin: dict[str, str], tmp_path: Path
) -> None:
    envs = routes(broker, session, twin)
    sql = "select 1 as a; select 'x' as b, 2.5::float8 as c; select 1/0; select 3"
    got = {name: run_psql(envs[name], tmp_path, "-c", sql) for name in ("direct", "tunnel")}
    assert got["tunnel"] == got["direct"]
    assert got["direct"][0] != 0 and "division by zero" in got["direct"][2]


# -- psycopg ------------------------------------------------------------------

TYPES_SQL = """
select 1::int2 as i2, 2::int4 as i4, 3::int8 as i8, 1.25::numeric(6,3) as num,
       1.5::float4 as f4, 2.5::float8 as f8, 'text'::text as t, 'v'::varchar(4) as v,
       true as b, null::int as n, '\\x00ff10'::bytea as bin, date '2024-02-29' as d,
       timestamp '2024-02-29 12:34:56.789' as ts, timestamptz '2024-02-29 12:34:56+00' as tstz,
       interval '1 day 2 hours' as iv, '{"a": [1, 2]}'::jsonb as jb, '{"b": 1}'::json as js,
       array[1, 2, 3] as arr, array['a', null] as tarr,
       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid as u, '192.168.0.1/24'::inet as ip,
       int4range(1, 5) as rng, s as series
from generate_series(1, 3) as s
"""

Transcript = list[Any]


def described(cur: psycopg.Cursor[Any]) -> list[tuple[str, int]]:
    return [(d.name, d.type_code) for d in cur.description or []]


def scenario_text_and_binary(conn: psycopg.Connection[Any]) -> Transcript:
    out: Transcript = []
    for binary in (False, True):
        cur = conn.cursor(binary=binary)
        cur.execute(TYPES_SQL)
        out.append((binary, described(cur), cur.fetchall(), cur.statusmessage, cur.rowcount))
        cur.execute("select %s::int + %s::int as sum, %s::text as t", (40, 2, "x"))
        out.append((binary, cur.fetchall(), cur.statusmessage))
    return out


def scenario_server_side_cursor(conn: psycopg.Connection[Any]) -> Transcript:
    out: Transcript = []
    with conn.transaction():
        cur = conn.cursor(name="series")
        cur.itersize = 7
        cur.execute("select s, md5(s::text) from generate_series(1, 50) as s")
        out.append([row for row in cur])
        cur.close()
        cur = conn.cursor(name="pages")
        cur.execute("select s from generate_series(1, 25) as s")
        # Each fetchmany resumes a suspended portal with a bounded Execute.
        out.append([cur.fetchmany(10), cur.fetchmany(10), cur.fetchmany(10), cur.fetchmany(10)])
        cur.close()
        cur = conn.cursor(name="binary", binary=True)
        cur.execute("select s, s::numeric / 3, now() - now() from generate_series(1, 5) as s")
        out.append(cur.fetchmany(2) + cur.fetchall())
        cur.close()
    return out


def scenario_pipeline_with_an_error(conn: psycopg.Connection[Any]) -> Transcript:
    out: Transcript = []
    conn.execute("create temp table if not exists pl (n int)")
    errors = []
    try:
        with conn.pipeline():
            first = conn.execute("select 'first' as f")
            conn.execute("insert into pl values (1)")
            conn.execute("select 1/0")
            conn.execute("insert into pl values (2)")
    except psycopg.Error as exc:
        errors.append((type(exc).__name__, exc.sqlstate))
    out.append(errors)
    out.append(first.fetchall())
    # Discard-until-Sync: nothing of the failed implicit transaction stayed.
    out.append(conn.execute("select count(*) from pl").fetchall())
    with conn.pipeline() as p:
        a = conn.execute("select 1")
        p.sync()
        b = conn.execute("select 2")
    out.append((a.fetchall(), b.fetchall()))
    return out


def libpq_pipeline(env: dict[str, str]) -> Transcript:
    """The raw protocol view: results, errors and Syncs in order, straight from libpq."""
    pgc = pq.PGconn.connect(dsn(env).encode())
    try:
        assert pgc.status == pq.ConnStatus.OK, pgc.get_error_message()
        pgc.enter_pipeline_mode()
        for sql in (b"select 1", b"select 1/0", b"select 2"):
            pgc.send_query_params(sql, None)
        pgc.pipeline_sync()
        pgc.send_query_params(b"select 3", None)
        pgc.pipeline_sync()
        out: Transcript = []
        syncs = 0
        while syncs < 2:
            res = pgc.get_result()
            if res is None:
                out.append("end of query")
                continue
            status = pq.ExecStatus(res.status).name
            sqlstate = res.error_field(pq.DiagnosticField.SQLSTATE)
            value = res.get_value(0, 0) if res.status == pq.ExecStatus.TUPLES_OK else None
            out.append((status, sqlstate, value))
            if res.status == pq.ExecStatus.PIPELINE_SYNC:
                syncs += 1
        pgc.exit_pipeline_mode()
        return out
    finally:
        pgc.finish()


def scenario_prepared(conn: psycopg.Connection[Any]) -> Transcript:
    out: Transcript = []
    for i in range(4):
        cur = conn.execute(
            "select %s::int * 2 as twice, %s::text as label", (i, f"n{i}"), prepare=True
        )
        out.append((cur.fetchall(), described(cur), cur.statusmessage))
    names = conn.execute("select name, statement from pg_prepared_statements order by name")
    out.append(names.fetchall())
    with pytest.raises(psycopg.errors.UndefinedTable) as info:
        conn.execute("select * from missing_table where id = %s", (1,), prepare=True)
    out.append(info.value.sqlstate)
    return out


def scenario_copy(conn: psycopg.Connection[Any]) -> Transcript:
    out: Transcript = []
    conn.execute("create temp table cp (id int, name text, data bytea)")
    with conn.cursor().copy("copy cp (id, name, data) from stdin") as copy:
        for i in range(200):
            copy.write_row((i, f"name {i}\twith tab", bytes([i % 256]) * 3))
    cur = conn.cursor()
    with cur.copy("copy (select * from cp order by id) to stdout") as copy:
        out.append([bytes(chunk) for chunk in copy])
    out.append(cur.statusmessage)
    with cur.copy(
        "copy (select id, name from cp order by id limit 5) to stdout (format binary)"
    ) as copy:
        copy.set_types(["int4", "text"])
        out.append(list(copy.rows()))
    with (
        pytest.raises(psycopg.errors.InvalidTextRepresentation) as info,
        cur.copy("copy cp (id) from stdin") as copy,
    ):
        copy.write(b"not a number\n")
    out.append(info.value.sqlstate)
    return out


def scenario_errors_in_transactions(conn: psycopg.Connection[Any]) -> Transcript:
    out: Transcript = []
    conn.execute("create temp table if not exists tx (n int primary key)")
    conn.autocommit = False
    try:
        conn.execute("insert into tx values (1)")
        for sql in ("select 1/0", "select 1"):
            try:
                conn.execute(sql)
            except psycopg.Error as exc:
                out.append((type(exc).__name__, exc.sqlstate, conn.info.transaction_status.name))
        conn.rollback()
        out.append(conn.info.transaction_status.name)
        conn.execute("insert into tx values (2)")
        conn.execute("savepoint s")
        try:
            conn.execute("insert into tx values (2)")
        except psycopg.Error as exc:
            out.append((type(exc).__name__, exc.sqlstate, exc.diag.constraint_name))
        conn.execute("rollback to savepoint s")
        out.append(conn.execute("select n from tx order by n").fetchall())
        conn.commit()
    finally:
        conn.rollback()
        conn.autocommit = True
    return out


def scenario_notices(conn: psycopg.Connection[Any]) -> Transcript:
    notices: Transcript = []
    conn.add_notice_handler(
        lambda d: notices.append((d.severity_nonlocalized, d.sqlstate, d.message_primary))
    )
    conn.execute(
        "do $$ begin raise notice 'hello %', 42; raise warning 'careful'; "
        "raise notice using message = 'custom', errcode = '01000'; end $$"
    )
    conn.execute("set client_min_messages = debug1")
    conn.execute("reset client_min_messages")
    return notices


def scenario_listen_notify(
    conn: psycopg.Connection[Any], other: psycopg.Connection[Any]
) -> Transcript:
    conn.execute("listen xcheck")
    for i in range(3):
        other.execute("select pg_notify('xcheck', %s)", (f"payload {i}",))
    got = [(n.channel, n.payload) for n in conn.notifies(timeout=10, stop_after=3)]
    conn.execute("unlisten xcheck")
    return got


SCENARIOS: dict[str, Callable[[psycopg.Connection[Any]], Transcript]] = {
    "text_and_binary": scenario_text_and_binary,
    "server_side_cursor": scenario_server_side_cursor,
    "pipeline_with_an_error": scenario_pipeline_with_an_error,
    "prepared": scenario_prepared,
    "copy": scenario_copy,
    "errors_in_transactions": scenario_errors_in_transactions,
    "notices": scenario_notices,
}


def connect(env: dict[str, str]) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn(env), autocommit=True)


@pytest.mark.parametrize("route", ["tunnel", "tls"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_psycopg_matches_a_direct_connection(
    broker: Broker, session: HeldSession, twin: dict[str, str], name: str, route: str
) -> None:
    envs = routes(broker, session, twin)
    results = {}
    for where in ("direct", route):
        with connect(envs[where]) as conn:
            results[where] = SCENARIOS[name](conn)
    assert results[route] == results["direct"]
    assert results["direct"]  # the scenario produced something to compare


def test_psycopg_notifications_match(
    broker: Broker, session: HeldSession, twin: dict[str, str]
) -> None:
    envs = routes(broker, session, twin)
    results = {}
    for where in ("direct", "tunnel"):
        with connect(envs[where]) as conn, connect(envs[where]) as other:
            results[where] = scenario_listen_notify(conn, other)
    assert results["tunnel"] == results["direct"]
    assert results["direct"] == [("xcheck", f"payload {i}") for i in range(3)]


@pytest.mark.parametrize("route", ["tunnel", "tls"])
def test_the_libpq_pipeline_discards_until_sync(
    broker: Broker, session: HeldSession, twin: dict[str, str], route: str
) -> None:
    envs = routes(broker, session, twin)
    got = libpq_pipeline(envs[route])
    assert got == libpq_pipeline(envs["direct"])
    assert got == [
        ("TUPLES_OK", None, b"1"),
        "end of query",
        ("FATAL_ERROR", b"22012", None),
        "end of query",
        ("PIPELINE_ABORTED", None, None),
        "end of query",
        ("PIPELINE_SYNC", None, None),
        ("TUPLES_OK", None, b"3"),
        "end of query",
        ("PIPELINE_SYNC", None, None),
    ]


# -- pgbench ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_select_only_matches(
    broker: Broker, twin: dict[str, str], mode: str, tmp_path: Path
) -> None:
    with held_session(broker) as reader:  # the read scope is enough for pgbench -S
        envs = {
            "direct": twin,
            "tunnel": pg_env(reader.port, "dev", reader.ticket, reader.database),
        }
        summary = {}
        for where, env in envs.items():
            res = subprocess.run(
                ["pgbench", "-n", "-S", "-M", mode, "-c", "2", "-t", "50"],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert res.returncode == 0, res.stderr
            processed = re.search(r"actually processed: (\d+)/(\d+)", res.stdout)
            failed = re.search(r"number of failed transactions: (\d+)", res.stdout)
            assert processed is not None and failed is not None, res.stdout
            summary[where] = (processed.groups(), failed.group(1))
    assert summary["tunnel"] == summary["direct"] == (("100", "100"), "0")
