"""Result limits through the real tunnel: a scope whose policy allows 1000 rows and
1MB per statement, and psql, psycopg and a raw client asking for more -- in the
simple and the extended protocol, in transactions, through COPY -- then going on
on the same connection; and the cut in ``dbaccess replay``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from server.demo.provision import DemoTarget
from server.gateway import pgwire
from tests.fix_broker import Broker, demo_policy, running_broker
from tests.fix_pgwire import RawClient, rows_and_error
from tests.fix_session import HeldSession, held_session

pytestmark = pytest.mark.slow

ROWS = 1000
SCOPE = f"""\
      capped:
        grants: [demo_read]
        max_ttl: 1h
        allow:
          groups: [dev]
        limits:
          max_result_rows: {ROWS}
          max_result_bytes: 1MB
"""
HUGE = "SELECT repeat('x', 1000) FROM generate_series(1, 1e7)"
MANY = "SELECT g FROM generate_series(1, 5000) AS g"


@pytest.fixture(scope="module")
def capped_broker(demo_target: DemoTarget) -> Iterator[Broker]:
    with running_broker(demo_target, demo_policy(scopes=SCOPE)) as b:
        yield b


@pytest.fixture(scope="module")
def session(capped_broker: Broker) -> Iterator[HeldSession]:
    with held_session(capped_broker, "--scope", "capped") as s:
        yield s


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class PeakRss:
    """The broker's largest resident set while the block runs (sampled)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = _rss_kb(pid)
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_kb(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_gigabyte_result_is_cut_at_once_and_the_connection_goes_on(
    session: HeldSession, capped_broker: Broker
) -> None:
    assert capped_broker.proc is not None
    script = f"{HUGE};\nSELECT 42 AS answer;\n"
    started = time.monotonic()
    with PeakRss(capped_broker.proc.pid) as rss:
        res = session.psql_script(script, timeout=60)
    took = time.monotonic() - started
    # A thousand rows of 1011 bytes: the row limit comes first.
    assert "ERROR:  dbaccess: the result passed max_result_rows (1000 rows)" in res.stderr, (
        res.stderr
    )
    assert "HINT:  scope capped allows 1000 rows per statement (max_result_rows" in res.stderr
    assert "LIMIT" in res.stderr
    # psql ran the next statement on the same connection.
    assert res.stdout.splitlines()[-1] == "42", res.stdout
    # Ten gigabytes were asked for: cancelled upstream, not streamed and dropped.
    assert took < 10, took
    assert rss.peak - rss.before < 64 * 1024, (rss.before, rss.peak)


def test_bytes_over_the_limit(session: HeldSession) -> None:
    res = session.psql_script(
        "SELECT repeat('y', 5000) FROM generate_series(1, 1e6);\nSELECT 'next';\n"
    )
    assert (
        "ERROR:  dbaccess: the result passed max_result_bytes (1MB) and was cut after 209 rows"
        in (res.stderr)
    ), res.stderr
    assert "HINT:  scope capped allows 1MB per statement (max_result_bytes" in res.stderr
    assert res.stdout.splitlines()[-1] == "next"


def test_rows_over_the_limit_simple_protocol(session: HeldSession) -> None:
    res = session.psql(MANY)
    assert res.returncode != 0
    assert (
        "dbaccess: the result passed max_result_rows (1000 rows) and was cut after 1000 rows"
        in (res.stderr)
    ), res.stderr
    assert res.stdout == ""  # psql shows nothing of a result that ended in an error
    # At the limit, all of it.
    res = session.psql(f"SELECT g FROM generate_series(1, {ROWS}) AS g")
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.splitlines()) == ROWS


def test_rows_over_the_limit_extended_protocol_and_the_next_statement(
    session: HeldSession,
) -> None:
    with psycopg.connect(session.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded) as caught:
            conn.execute("SELECT g FROM generate_series(1, %s) AS g", [5000]).fetchall()
        diag = caught.value.diag
        assert diag.sqlstate == "54000"
        assert diag.message_hint is not None and "max_result_rows" in diag.message_hint
        assert conn.execute("SELECT %s::int + 1", [41]).fetchone() == (42,)
        rows = conn.execute("SELECT g FROM generate_series(1, %s) AS g", [ROWS]).fetchall()
        assert len(rows) == ROWS


def test_in_a_transaction_the_cut_aborts_it(session: HeldSession) -> None:
    with psycopg.connect(session.dsn()) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            conn.execute(MANY).fetchall()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 2").fetchone() == (2,)
    # psql: the statements after the cut fail until the transaction ends.
    res = session.psql_script(f"BEGIN;\n{MANY};\nSELECT 1;\nCOMMIT;\nSELECT 'after';\n")
    assert "max_result_rows" in res.stderr, res.stderr
    assert "current transaction is aborted" in res.stderr, res.stderr
    lines = res.stdout.splitlines()
    assert "ROLLBACK" in lines or lines[-1] == "after", res.stdout
    assert lines[-1] == "after"


def test_a_suspended_portal_counts_across_its_executes(session: HeldSession) -> None:
    client = RawClient(session.port, session.database, session.ticket)
    try:
        assert client.query("BEGIN")[1] is None
        client.send(
            pgwire.Parse("", MANY),
            pgwire.Bind("c", "", [], [], []),
            pgwire.Execute("c", 600),
            pgwire.Sync(),
        )
        got = client.until_ready()
        assert bytes(m.type for m in got) == b"12" + b"D" * 600 + b"sZ"
        client.send(pgwire.Execute("c", 600), pgwire.Sync())
        got = client.until_ready()
        rows, error = rows_and_error(got)
        assert len(rows) == ROWS - 600
        assert error is not None and error["C"] == "54000", error
        assert got[-1].body == b"E"  # the transaction is aborted
        rows, error = client.query("SELECT 1")
        assert error is not None and error["C"] == "25P02"
        assert client.query("ROLLBACK")[1] is None
        assert client.query("SELECT 1") == ([["1"]], None)
    finally:
        client.close()


def test_a_pipeline_gets_one_error_and_its_next_sync_works(session: HeldSession) -> None:
    client = RawClient(session.port, session.database, session.ticket)
    try:
        client.send(
            pgwire.Parse("", MANY),
            pgwire.Bind("", "", [], [], []),
            pgwire.Execute("", 0),
            pgwire.Parse("", "SELECT 7"),
            pgwire.Bind("", "", [], [], []),
            pgwire.Execute("", 0),
            pgwire.Sync(),
            pgwire.Parse("", "SELECT 8"),
            pgwire.Bind("", "", [], [], []),
            pgwire.Execute("", 0),
            pgwire.Sync(),
        )
        got = client.until_ready()
        assert bytes(m.type for m in got) == b"12" + b"D" * ROWS + b"EZ"
        got = client.until_ready()
        assert bytes(m.type for m in got) == b"12DCZ"
        assert rows_and_error(got) == ([["8"]], None)
    finally:
        client.close()


def test_copy_to_stdout_is_cut(session: HeldSession) -> None:
    res = session.psql(f"COPY ({MANY}) TO STDOUT")
    assert res.returncode != 0
    assert "max_result_rows (1000 rows)" in res.stderr, res.stderr
    with psycopg.connect(session.dsn(), autocommit=True) as conn:
        got = 0
        with (
            pytest.raises(psycopg.errors.ProgramLimitExceeded),
            conn.cursor().copy(f"COPY ({HUGE}) TO STDOUT") as copy,
        ):
            for data in copy:
                got += len(data)
        assert 0 < got <= 1 << 20
        assert conn.execute("SELECT 3").fetchone() == (3,)


def test_replay_shows_the_cut_with_its_limit(capped_broker: Broker) -> None:
    with held_session(capped_broker, "--scope", "capped") as held:
        res = held.psql(MANY)
        assert res.returncode != 0
        session_id = held.session_id
    deadline = time.monotonic() + 20
    while True:
        out = capped_broker.cli("replay", session_id)
        if "limit" in out.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert out.returncode == 0, out.stderr
    assert "max_result_rows = 1000 (scope capped): cut after 1000 rows" in out.stdout, out.stdout
    assert "cut 54000" in out.stdout
    data = json.loads(capped_broker.cli("replay", session_id, "--output", "json").stdout)
    [event] = [e for e in data["events"] if e["kind"] == "limit"]
    assert event["data"]["limit"] == "max_result_rows" and event["data"]["value"] == ROWS
    assert event["data"]["rows"] == ROWS and event["data"]["action"] == "cut"
    statements = [e for e in data["events"] if e["kind"] == "statement"]
    assert statements[-1]["data"]["sqlstate"] == "54000"
    csv = capped_broker.cli("replay", session_id, "--output", "csv").stdout
    assert "max_result_rows = 1000" in csv


def test_a_cursor_fetch_is_a_statement_of_its_own_and_is_cut(session: HeldSession) -> None:
    # FETCH as often as one likes: each gets the budget, none gets more.
    res = session.psql_script(
        f"BEGIN;\nDECLARE c CURSOR FOR {MANY};\nFETCH 600 FROM c;\nFETCH 600 FROM c;\n"
        "FETCH 100000000 FROM c;\nROLLBACK;\nSELECT 'after';\n",
        timeout=60,
    )
    assert res.stderr.count("max_result_rows (1000 rows)") == 1, res.stderr
    assert res.stdout.splitlines()[-1] == "after", res.stdout
    # A server-side cursor of psycopg's (DECLARE, then FETCH FORWARD ALL).
    with psycopg.connect(session.dsn()) as conn:
        cursor = conn.cursor("big")
        cursor.execute(MANY)
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            cursor.fetchall()
        conn.rollback()
        assert conn.execute("SELECT 4").fetchone() == (4,)


def test_one_row_over_the_byte_limit_is_cut_before_any_of_it_is_sent(
    session: HeldSession,
) -> None:
    with psycopg.connect(session.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="cut after 0 rows"):
            conn.execute("SELECT repeat('x', 4 << 20)").fetchall()
        assert conn.execute("SELECT 5").fetchone() == (5,)


def test_a_huge_row_is_cut_on_its_length_word_and_never_held_by_the_broker(
    session: HeldSession, capped_broker: Broker
) -> None:
    # 50 MB in one row, and 20 MB in each of several COPY lines: each is
    # discarded as it arrives, not gathered and then cut.
    assert capped_broker.proc is not None
    copy_sql = "COPY (SELECT repeat('y', 20000000) FROM generate_series(1, 3)) TO STDOUT"
    with (
        PeakRss(capped_broker.proc.pid) as rss,
        psycopg.connect(session.dsn(), autocommit=True) as conn,
    ):
        for _ in range(3):
            with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="cut after 0 rows"):
                conn.execute("SELECT repeat('x', 50000000)").fetchall()
        with (
            pytest.raises(psycopg.errors.ProgramLimitExceeded, match="max_result_bytes"),
            conn.cursor().copy(copy_sql) as copy,
        ):
            for _block in copy:
                pass
        assert conn.execute("SELECT 6").fetchone() == (6,)
    assert rss.peak - rss.before < 30 * 1024, (rss.before, rss.peak)


def test_a_huge_error_is_clipped_and_never_held_by_the_broker(
    session: HeldSession, capped_broker: Broker
) -> None:
    # PostgreSQL echoes the 50 MB value in its error: it reaches the client
    # clipped, SQLSTATE kept.
    assert capped_broker.proc is not None
    with (
        PeakRss(capped_broker.proc.pid) as rss,
        psycopg.connect(session.dsn(), autocommit=True) as conn,
    ):
        for _ in range(3):
            with pytest.raises(psycopg.errors.InvalidTextRepresentation) as err:
                conn.execute("SELECT repeat('x', 50000000)::int")
            message = err.value.diag.message_primary or ""
            assert message.startswith('invalid input syntax for type integer: "xxx')
            assert message.endswith("... [clipped by dbaccess]")
            assert len(message) <= 8192
        assert conn.execute("SELECT 7").fetchone() == (7,)
    assert rss.peak - rss.before < 30 * 1024, (rss.before, rss.peak)
