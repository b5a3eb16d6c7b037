"""The gateway's admission limits on a real broker: connection caps in all and
per identity (refused with 53300 and a hint), a configurable login timeout,
and CancelRequests over the rate limit ignored and logged."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from brokercli.tunnel import SSL_REQUEST
from server.demo.provision import DemoTarget
from server.gateway import pgwire
from tests.fix_broker import Broker, running_broker
from tests.fix_pgwire import login_error
from tests.fix_session import held_session

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def limited(demo_target: DemoTarget) -> Iterator[Broker]:
    with running_broker(
        demo_target,
        None,
        "--gateway-max-connections",
        "3",
        "--gateway-max-connections-per-identity",
        "2",
        "--gateway-startup-timeout",
        "1",
        "--gateway-cancel-rate",
        "0.05",
    ) as b:
        yield b


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def test_connection_caps_per_identity_and_in_all(limited: Broker) -> None:
    alice = limited.token("alice", "dev")
    with held_session(limited) as dev, held_session(limited, token=alice) as other:
        first, second = connect(dev.dsn()), connect(dev.dsn())
        try:
            fields = login_error(dev.port, dev.database, dev.ticket)
            assert fields["C"] == "53300" and fields["S"] == "FATAL"
            assert "too many connections for identity 'dev'" in fields["M"]
            assert "gateway_max_connections_per_identity" in fields["H"]
            with pytest.raises(psycopg.OperationalError, match="too many connections"):
                connect(dev.dsn())

            third = connect(other.dsn())  # another identity: fine, and now 3 in all
            try:
                fields = login_error(other.port, other.database, other.ticket)
                assert fields["C"] == "53300"
                assert "too many connections to the gateway (limit 3)" in fields["M"]
                assert "gateway_max_connections" in fields["H"]
            finally:
                third.close()
            # Closed connections give their place back.
            second.close()
            again = connect(dev.dsn())
            assert again.execute("select 1").fetchone() == (1,)
            again.close()
            assert first.execute("select 2").fetchone() == (2,)
        finally:
            first.close()
            second.close()


def test_the_login_timeout_is_configurable(limited: Broker) -> None:
    started = time.monotonic()
    with socket.create_connection(limited.gateway, timeout=10) as sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert time.monotonic() - started < 5
    assert b"08P01" in data and b"timeout waiting for the client to log in" in data


def cancel_directly(broker: Broker, pid: int, secret: int) -> None:
    ca = json.loads((broker.config_dir / "profile.json").read_text())["ca_file"]
    with socket.create_connection(broker.gateway, timeout=10) as raw:
        raw.sendall(SSL_REQUEST)
        assert raw.recv(1) == b"S"
        ctx = ssl.create_default_context(cafile=ca)
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(struct.pack("!IIII", 16, pgwire.CANCEL_REQUEST_CODE, pid, secret))
            assert sock.recv(1024) == b""


def test_cancel_requests_over_the_rate_limit_are_ignored_and_logged(
    limited: Broker, admin_conn: psycopg.Connection[Any]
) -> None:
    # At 0.05 a second with bursts of 2, two cancels pass and then none for 20 s.
    with held_session(limited) as s:
        conn = connect(s.dsn())
        try:
            outcome: list[object] = []

            def run() -> None:
                try:
                    conn.execute("select pg_sleep(30)")
                    outcome.append("finished")
                except psycopg.Error as exc:
                    outcome.append(exc)

            worker = threading.Thread(target=run)
            worker.start()
            time.sleep(0.5)
            for i in range(2):  # unknown keys use up the burst
                cancel_directly(limited, 1000 + i, 1)
            conn.cancel_safe(timeout=10)  # the real one, from the same address: over the limit
            time.sleep(2.5)
            assert worker.is_alive() and not outcome  # still sleeping: not cancelled
            assert "ignoring CancelRequests over the rate limit" in limited.log()
            # End the statement from the database side so the test does not wait 30 s.
            admin_conn.execute(
                "select pg_cancel_backend(pid) from pg_stat_activity "
                "where query = 'select pg_sleep(30)' and usename like 'dba_dev_%'"
            )
            worker.join(10)
            assert outcome and isinstance(outcome[0], psycopg.errors.QueryCanceled)
        finally:
            conn.close()
