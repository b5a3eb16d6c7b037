"""Masking is visible: psql is told at login which columns of the target leave
masked in the session, and ``dbaccess exec`` marks the masked columns of each
result (a ``masked`` list in JSON, a ``# masked:`` line in CSV with
``--header-comments``), from the gateway's ``dbaccess.masked_columns`` report.

Each channel is also tried as a way out for a masked value: none carries one.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

import psycopg
import pytest

from server.demo.provision import DemoTarget
from tests.fix_broker import Broker, masked_demo_policy, running_broker
from tests.fix_session import HeldSession, held_session

pytestmark = pytest.mark.slow

NOTICE = (
    "NOTICE:  dbaccess: masked in this session: public.customers.card_number (redact), "
    "public.customers.email (partial)"
)


@pytest.fixture(scope="module")
def masked_broker(demo_target: DemoTarget) -> Iterator[Broker]:
    # One broker per target at a time: another one's reaper would take this
    # one's roles for orphans.  Sessions of the dba group are not masked.
    with running_broker(demo_target, masked_demo_policy("exempt: {groups: [dba]}")) as b:
        yield b


@pytest.fixture(scope="module")
def dba(masked_broker: Broker) -> str:
    return masked_broker.token("root", "dev", "dba")


@pytest.fixture(scope="module")
def session(masked_broker: Broker) -> Iterator[HeldSession]:
    with held_session(masked_broker, "--scope", "read") as s:
        yield s


@pytest.fixture(scope="module")
def clear_values(demo_target: DemoTarget) -> list[str]:
    with psycopg.connect(demo_target.admin_dsn) as conn:
        rows = conn.execute("select email, card_number from customers").fetchall()
    return [str(v) for row in rows for v in row]


def test_psql_is_told_at_login_what_is_masked(session: HeldSession) -> None:
    res = session.psql("select 1")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1"
    assert NOTICE in res.stderr, res.stderr


def test_a_session_without_masking_is_told_nothing(masked_broker: Broker, dba: str) -> None:
    with held_session(masked_broker, "--scope", "read", token=dba) as s:
        res = s.psql("select 1")
    assert res.returncode == 0, res.stderr
    assert "masked" not in res.stderr


def test_exec_json_marks_masked_columns(masked_broker: Broker, clear_values: list[str]) -> None:
    sql = (
        "select id, email, city from customers order by id limit 2; "
        "select status from orders order by id limit 1; "
        "select card_number, id as n from customers order by id limit 1"
    )
    res = masked_broker.cli("exec", "demo", "-c", sql, "-o", "json")
    assert res.returncode == 0, res.stderr
    results = json.loads(res.stdout)
    assert [r["masked"] for r in results] == [["email"], [], ["card_number"]]
    assert not any(v in res.stdout for v in clear_values)


def test_exec_json_in_an_unmasked_session(masked_broker: Broker, dba: str) -> None:
    sql = "select email from customers limit 1"
    res = masked_broker.cli("exec", "demo", "-c", sql, "-o", "json", token=dba)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["masked"] == []


def test_exec_csv_marks_masked_columns_only_with_header_comments(masked_broker: Broker) -> None:
    sql = (
        "select email, city from customers order by id limit 1; select city from customers limit 1"
    )
    res = masked_broker.cli("exec", "demo", "-c", sql, "-o", "csv", "--header-comments")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "# masked: email"
    assert lines[1] == "email,city"
    assert lines[3] == "# masked: "
    assert lines[4] == "city"
    plain = masked_broker.cli("exec", "demo", "-c", sql, "-o", "csv")
    assert plain.returncode == 0, plain.stderr
    assert not any(line.startswith("#") for line in plain.stdout.splitlines())
    rows = list(csv.reader(io.StringIO(plain.stdout)))
    assert rows[0] == ["email", "city"] and rows[1][0].startswith("***@")


def test_the_report_cannot_be_forged_or_carry_values(
    session: HeldSession, clear_values: list[str]
) -> None:
    """The report names columns and methods, never values; a client-set setting of
    the same name does not reach the client as the report."""
    with psycopg.connect(session.dsn(), autocommit=True) as conn:
        conn.execute("select email from customers order by id limit 3").fetchall()
        report = conn.info.parameter_status("dbaccess.masked_columns")
        assert report is not None
        assert json.loads(report) == {
            "query": 1,
            "results": [
                {"result": 0, "columns": [{"position": 0, "name": "email", "method": "partial"}]}
            ],
        }
        assert not any(v in report for v in clear_values)
        conn.execute("select city from customers limit 1").fetchall()
        # Unmasked results leave the last report alone (its query number says whose it is).
        assert conn.info.parameter_status("dbaccess.masked_columns") == report
