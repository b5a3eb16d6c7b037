"""Masking's refusals before execution, through the real tunnel: a write that
reads masked columns and a call of a function that could read them never run,
so nothing is copied in clear.

``customers.email`` and ``customers.card_number`` are masked; the session uses
the ``write`` scope.  ``masking_copy`` is where an attacker would copy them;
``masking_leak()`` copies them itself when it runs.  Every test checks, as the
superuser, that ``masking_copy`` holds nothing it should not.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from server.demo.provision import DemoTarget
from server.pgcluster import LocalCluster
from tests.fix_broker import masked_demo_policy, running_broker
from tests.fix_session import HeldSession, held_session

pytestmark = pytest.mark.slow

COPY = "masking_copy"
SEED = ("seed@example.org", "0000")


def _policy() -> str:
    return masked_demo_policy("trusted_functions: [public.masking_trusted]")


@pytest.fixture(scope="module")
def superuser(pg_cluster: LocalCluster, demo_target: DemoTarget) -> Iterator[psycopg.Connection]:
    dsn = pg_cluster.dsn(dbname=demo_target.database)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {COPY}, masking_ctas, masking_into CASCADE")
        conn.execute(f"CREATE TABLE {COPY} (email text, card text)")
        conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {COPY} TO demo_write")
        conn.execute(
            "CREATE OR REPLACE FUNCTION public.masking_leak() RETURNS text LANGUAGE sql AS "
            f"$$ INSERT INTO public.{COPY} SELECT email, card_number FROM public.customers; "
            "SELECT 'copied' $$"
        )
        # Called as c.masking_attr on a row of the clear table: no call in sight.
        conn.execute(
            f"CREATE OR REPLACE FUNCTION public.masking_attr(c public.{COPY}) RETURNS text "
            "LANGUAGE sql AS $$ SELECT email FROM public.customers ORDER BY id LIMIT 1 $$"
        )
        conn.execute(
            "CREATE OR REPLACE FUNCTION public.masking_trusted(x int) RETURNS int "
            "LANGUAGE sql AS $$ SELECT x + 1 $$"
        )
        yield conn
        conn.execute(f"DROP TABLE IF EXISTS {COPY}, masking_ctas, masking_into CASCADE")
        conn.execute(
            "DROP FUNCTION IF EXISTS public.masking_leak(), public.masking_trusted(int), "
            f"public.masking_attr(public.{COPY})"
        )


@pytest.fixture(scope="module")
def session(demo_target: DemoTarget, superuser: psycopg.Connection) -> Iterator[HeldSession]:
    with running_broker(demo_target, _policy()) as b, held_session(b, "--scope", "write") as s:
        yield s


@pytest.fixture
def copy_table(superuser: psycopg.Connection) -> Iterator[psycopg.Connection]:
    superuser.execute(f"DELETE FROM {COPY}")
    superuser.execute(f"INSERT INTO {COPY} VALUES (%s, %s)", SEED)
    yield superuser
    assert superuser.execute(f"SELECT email, card FROM {COPY}").fetchall() == [SEED]
    superuser.execute("DROP TABLE IF EXISTS masking_ctas, masking_into")


def _refused(s: HeldSession, sql: str, rule: str) -> str:
    res = s.psql(sql)
    assert res.returncode != 0, res.stdout
    assert rule in res.stderr, res.stderr
    assert "HINT:" in res.stderr
    return res.stderr


@pytest.mark.parametrize(
    "sql",
    [
        f"insert into {COPY} select email, card_number from customers",
        f"insert into {COPY} (email) select (select email from customers limit 1)",
        f"update {COPY} set email = c.email, card = c.card_number from customers c where c.id = 1",
        f"update {COPY} set email = (select email from customers limit 1) where card = '0000'",
        f"merge into {COPY} m using customers c on m.card = c.card_number "
        "when not matched then insert values (c.email, c.card_number)",
        f"with x as (insert into {COPY} select email, card_number from customers returning 1) "
        "select count(*) from x",
        f"begin; insert into {COPY} select email, card_number from customers; commit",
        f"explain analyze insert into {COPY} select email, card_number from customers",
        f"select 1; insert into {COPY} select email, card_number from customers",
    ],
)
def test_writes_that_read_masked_columns_never_run(
    session: HeldSession, copy_table: psycopg.Connection, sql: str
) -> None:
    _refused(session, sql, "masking.write_from_masked")


@pytest.mark.parametrize(
    ("sql", "table"),
    [
        ("create table masking_ctas as select email, card_number from customers", "masking_ctas"),
        ("select email, card_number into masking_into from customers", "masking_into"),
    ],
)
def test_tables_made_from_masked_columns_are_never_made(
    session: HeldSession, copy_table: psycopg.Connection, sql: str, table: str
) -> None:
    _refused(session, sql, "masking.write_from_masked")
    assert copy_table.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,)


@pytest.mark.parametrize(
    "sql",
    [
        "select masking_leak()",
        "select public.masking_leak()",
        "select email from customers where masking_leak() = 'copied'",
        "begin; select masking_leak(); commit",
    ],
)
def test_an_untrusted_function_never_runs(
    session: HeldSession, copy_table: psycopg.Connection, sql: str
) -> None:
    _refused(session, sql, "masking.untrusted_function")


@pytest.mark.parametrize(
    "sql",
    [f"select c.masking_attr from {COPY} c", f"select (c).masking_attr from {COPY} c"],
)
def test_a_function_called_in_attribute_notation_is_refused(
    session: HeldSession, copy_table: psycopg.Connection, sql: str
) -> None:
    err = _refused(session, sql, "masking.untrusted_function")
    assert "masking_attr" in err


def test_the_extended_protocol_is_refused_alike_and_the_connection_goes_on(
    session: HeldSession, copy_table: psycopg.Connection
) -> None:
    with psycopg.connect(session.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="write_from_masked"):
            conn.execute(
                f"insert into {COPY} select email, card_number from customers where id = %s",
                (1,),
            )
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="untrusted_function"):
            conn.execute("select masking_leak() where %s", (True,))
        assert conn.execute("select 1 + %s", (1,)).fetchone() == (2,)


def test_what_reads_nothing_masked_still_runs(
    session: HeldSession, copy_table: psycopg.Connection
) -> None:
    outputs = []
    for sql in (
        f"insert into {COPY} select 'a', 'b' where false",
        "select public.masking_trusted(1), lower('X'), now() > '2000-01-01'",
        "select email from customers limit 1",
    ):
        res = session.psql(sql)
        assert res.returncode == 0, res.stderr
        outputs.append(res.stdout.strip())
    assert outputs[1] == "2|x|t"
    assert outputs[2].startswith("***@"), outputs
