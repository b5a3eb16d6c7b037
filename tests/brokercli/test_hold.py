"""The tunnel's details for other clients, as a pure function of the connection."""

from __future__ import annotations

import json
import shlex
from typing import Any, cast

import pytest

from brokercli.client import GatewayEndpoint, StartedSession
from brokercli.commands.common import Connection
from brokercli.commands.hold import DetailsFormat, details, service_name

TICKET = "dbt_a/b+c=d$e'f"


def _conn(user: str = "alice@example.com", target: str = "prod db") -> Connection:
    session = StartedSession(
        id="s-0123456789ab",
        identity=user,
        target=target,
        scope="read",
        database="app",
        expires_at="2026-03-01T10:00:00+00:00",
        ticket=TICKET,
        gateway=GatewayEndpoint("127.0.0.1", 6432, True, None),
        raw={},
    )
    return Connection(session, "127.0.0.1", 54321, user, cast(Any, None))


def test_env_lines_are_shell_quoted_exports() -> None:
    first, *exports = details(_conn(), DetailsFormat.env).splitlines()
    assert first == (
        "# session s-0123456789ab: prod db scope=read, expires 2026-03-01T10:00:00+00:00"
    )
    values = dict(shlex.split(line)[1].split("=", 1) for line in exports)
    assert all(line.startswith("export ") for line in exports)
    assert values == {
        "PGHOST": "127.0.0.1",
        "PGPORT": "54321",
        "PGUSER": "alice@example.com",
        "PGPASSWORD": TICKET,
        "PGDATABASE": "app",
        "PGSSLMODE": "disable",
    }


def test_uri_percent_encodes_user_and_password() -> None:
    from urllib.parse import unquote, urlsplit

    uri = details(_conn(), DetailsFormat.uri).strip()
    parts = urlsplit(uri)
    assert parts.scheme == "postgresql" and parts.hostname == "127.0.0.1"
    assert parts.port == 54321 and parts.path == "/app" and parts.query == "sslmode=disable"
    assert unquote(parts.username or "") == "alice@example.com"
    assert unquote(parts.password or "") == TICKET


def test_pg_service_section_and_json() -> None:
    lines = details(_conn(), DetailsFormat.pg_service).splitlines()
    assert lines[1] == f"[{service_name('prod db')}]" == "[dbaccess-prod_db]"
    assert f"password={TICKET}" in lines and "sslmode=disable" in lines
    data = json.loads(details(_conn(), DetailsFormat.json))
    assert data["port"] == 54321 and data["password"] == TICKET
    assert data["session"] == "s-0123456789ab" and data["uri"].startswith("postgresql://")


@pytest.mark.parametrize("fmt", list(DetailsFormat))
def test_every_format_ends_with_a_newline(fmt: DetailsFormat) -> None:
    assert details(_conn(), fmt).endswith("\n")
