"""A bug in the gateway reaches psql as ``XX000 dbaccess: internal error (see the
broker log, id …)``, with the same id and the traceback in the broker log, and
never as a database failure or a connection closed without a word.

The asyncio shell is driven in process with stand-in transports: a relay hook
or a relay setup that raises is exactly what a bug looks like to it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from types import SimpleNamespace

import pytest

from server.gateway import pgwire
from server.gateway.pgwire import ErrorResponse, Query, RawMessage
from server.gateway.relay import Relay
from server.gateway.session import UpstreamPhase
from tests.fix_shell import StandInTransport as _Transport
from tests.fix_shell import connection as _connection

ID = re.compile(r"internal error \(see the broker log, id ([0-9a-f]{8})\)")


def _errors(data: bytes) -> list[dict[str, str]]:
    parser = pgwire.BackendParser()
    parser.feed(bytes(data))
    out = []
    while (raw := parser.next_raw()) is not None:
        msg = pgwire.decode_backend(raw)
        if isinstance(msg, ErrorResponse):
            out.append(msg.fields)
    return out


def _boom(raw: RawMessage, relay: Relay) -> bytes | None:
    raise RuntimeError("a bug in a relay hook")


def _check(client: _Transport, caplog: pytest.LogCaptureFixture) -> None:
    errors = _errors(bytes(client.written))
    assert len(errors) == 1, errors
    fields = errors[-1]
    assert fields["C"] == "XX000"
    assert fields["S"] == "FATAL"
    found = ID.search(fields["M"])
    assert found is not None, fields
    assert fields["M"].startswith("dbaccess: internal error")
    assert "database" not in fields["M"]
    logged = [r for r in caplog.records if found.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info is not None, caplog.text
    assert "RuntimeError" in caplog.text
    assert client.closed


def test_a_relay_hook_that_raises(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        conn, client = _connection()
        relay = Relay({})
        relay.on_client(b"Q", _boom)
        conn.relay = relay
        conn._up = _Transport()  # type: ignore[assignment]
        with caplog.at_level(logging.ERROR, "server.gateway.server"):
            conn.data_received(Query("select 1").encode())
        _check(client, caplog)

    asyncio.run(run())


def test_a_relay_setup_that_raises(caplog: pytest.LogCaptureFixture) -> None:
    def setup(relay: Relay, live: object) -> None:
        raise RuntimeError("a bug in a relay setup")

    async def run() -> None:
        conn, client = _connection([setup])
        upstream = _Transport()
        conn.upstream = SimpleNamespace(transport=upstream)  # type: ignore[assignment]
        conn.live = SimpleNamespace(  # type: ignore[assignment]
            id="s-test", upstream=SimpleNamespace(host="127.0.0.1", port=1)
        )
        login = SimpleNamespace(
            phase=UpstreamPhase.READY, backend_key=None, parameters=[], handle=lambda raw: b""
        )
        conn.login = login  # type: ignore[assignment]
        with caplog.at_level(logging.ERROR, "server.gateway.server"):
            conn.upstream_data(pgwire.ready_for_query("I"))
        _check(client, caplog)
        assert upstream.closed

    asyncio.run(run())
