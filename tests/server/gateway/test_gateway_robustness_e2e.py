"""The gateway when things go wrong: the target backend dies mid-query, a
client stops reading a large result, and a client sends malformed bytes after
login.  Each time the affected connection ends with a clear ErrorResponse and
the session's other connections carry on."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from server.gateway import pgwire
from server.gateway.session import startup_packet
from tests.fix_broker import Broker
from tests.fix_session import HeldSession, held_session

pytestmark = pytest.mark.slow


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class RawClient:
    """A client on a raw socket through the session's tunnel, logged in."""

    def __init__(self, s: HeldSession, *, rcvbuf: int | None = None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", s.port))
        self.sock = sock
        self.parser = pgwire.BackendParser()
        sock.sendall(startup_packet({"user": "dev", "database": s.database}))
        password = s.ticket.encode() + b"\0"
        self.until(ord("R"))
        sock.sendall(b"p" + struct.pack("!I", len(password) + 4) + password)
        self.until(ord("Z"))

    def until(self, type_: int) -> list[pgwire.RawMessage]:
        """Messages up to and including the first of ``type_``."""
        got: list[pgwire.RawMessage] = []
        while True:
            for raw in self.parser.messages():
                got.append(raw)
                if raw.type == type_:
                    return got
                if raw.type == ord("E") and type_ != ord("E"):
                    raise AssertionError(f"error: {pgwire.decode_backend(raw)}")
            data = self.sock.recv(1 << 20)
            if not data:
                raise AssertionError(f"closed before a {chr(type_)!r} message")
            self.parser.feed(data)

    def error_then_close(self) -> dict[str, str]:
        fields: dict[str, str] | None = None
        while True:
            for raw in self.parser.messages():
                if raw.type == ord("E"):
                    fields = dict(pgwire.decode_backend(raw).fields)  # type: ignore[attr-defined]
            data = self.sock.recv(65536)
            if not data:
                assert fields is not None, "closed without an ErrorResponse"
                return fields
            self.parser.feed(data)

    def close(self) -> None:
        self.sock.close()


def test_the_target_backend_dies_mid_query(
    broker: Broker, admin_conn: psycopg.Connection[Any]
) -> None:
    with held_session(broker) as s:
        victim = psycopg.connect(s.dsn(), autocommit=True)
        bystander = psycopg.connect(s.dsn(), autocommit=True)
        role = victim.execute("select current_user").fetchone()[0]  # type: ignore[index]
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                victim.execute("select pg_sleep(30)")
            except psycopg.Error as exc:
                outcome.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        deadline = time.monotonic() + 10
        killed = 0
        while not killed and time.monotonic() < deadline:
            time.sleep(0.2)
            row = admin_conn.execute(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity "
                "where usename = %s and query = 'select pg_sleep(30)'",
                (role,),
            ).fetchone()
            killed = row[0] if row else 0
        worker.join(15)
        assert killed == 1 and outcome
        err = outcome[0]
        assert isinstance(err, psycopg.OperationalError)
        assert err.sqlstate in ("57P01", "08006", None)
        assert "terminating connection" in str(err)
        victim.close()
        # The session's other connection, and new ones, are unaffected.
        assert bystander.execute("select 41 + 1").fetchone() == (42,)
        bystander.close()
        res = s.psql("select 'still here'")
        assert res.returncode == 0 and res.stdout.strip() == "still here"


def test_a_client_that_stops_reading_does_not_grow_the_gateway(broker: Broker) -> None:
    assert broker.proc is not None
    rows = 1_000_000
    with held_session(broker) as s:
        client = RawClient(s, rcvbuf=64 * 1024)
        try:
            before = rss_mb(broker.proc.pid)
            sql = f"select repeat('x', 200) from generate_series(1, {rows})"  # ~210 MB
            body = sql.encode() + b"\0"
            client.sock.sendall(b"Q" + struct.pack("!I", len(body) + 4) + body)
            peak = before
            for _ in range(16):  # ~8 s without reading a byte
                time.sleep(0.5)
                peak = max(peak, rss_mb(broker.proc.pid))
            assert peak - before < 150, f"broker RSS grew from {before:.0f} to {peak:.0f} MB"
            # Reading again resumes the result where it stopped, to the end.
            started = time.monotonic()
            data_rows = 0
            tag = b""
            while True:
                data = client.sock.recv(1 << 20)
                assert data, "closed before the end of the result"
                client.parser.feed(data)
                types, _wire = client.parser.drain_wire()
                data_rows += types.count(ord("D"))
                if types.endswith(b"Z"):
                    tag = types[-2:-1]
                    break
                assert time.monotonic() - started < 120
            assert data_rows == rows and tag == b"C"
        finally:
            client.close()
        res = s.psql("select 1")
        assert res.returncode == 0


@pytest.mark.parametrize(
    ("garbage", "why"),
    [
        (b"\xff\xfe\xfd\xfc\xfb\xfa" * 4, "is not part of the protocol"),
        (b"Q\x00\x00\x00\x02", "invalid message length 2"),
        (b"Q\x7f\xff\xff\xff" + b"select 1", "more than the limit"),
        # 64 MiB + 1: within PostgreSQL's limit, over the gateway's.
        (b"Q\x04\x00\x00\x01" + b"x" * 100, "more than the limit"),
    ],
)
def test_malformed_bytes_after_login(broker: Broker, garbage: bytes, why: str) -> None:
    with held_session(broker) as s:
        other = psycopg.connect(s.dsn(), autocommit=True)
        try:
            client = RawClient(s)
            client.sock.sendall(garbage)
            fields = client.error_then_close()
            client.close()
            assert fields["C"] == "08P01" and fields["S"] == "FATAL"
            assert why in fields["M"]
            assert other.execute("select 'unaffected'").fetchone() == ("unaffected",)
        finally:
            other.close()
