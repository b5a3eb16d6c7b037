"""The session's search_path: how the gateway reads it at startup, what the
analysis resolves names with, and when pg_catalog is searched first."""

from __future__ import annotations

import struct

import pytest

from server.gateway import pgwire
from server.gateway.pgwire import RawMessage
from server.gateway.search_path import DEFAULT_SEARCH_PATH, catalog_first, session_search_path
from server.gateway.session import PROTOCOL_3_0, ClientStartup, GatewayError, StartupResult
from server.gateway.sqlcheck import analyze

ROLE = "dbaccess_s_1a2b"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, (ROLE, "public")),
        (DEFAULT_SEARCH_PATH, (ROLE, "public")),
        ("secret, public", ("secret", "public")),
        ('"$user"', (ROLE,)),
        ("$user, app", (ROLE, "app")),
        ('"$USER"', ("$USER",)),  # only the exact spelling is special
        ("App,pg_catalog", ("app", "pg_catalog")),
        ("", ()),
    ],
)
def test_session_search_path(value: str | None, expected: tuple[str, ...]) -> None:
    assert session_search_path(value, ROLE) == expected


def test_session_search_path_refuses_what_postgres_refuses() -> None:
    with pytest.raises(ValueError):
        session_search_path("a,", ROLE)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ((ROLE, "public"), True),
        ((), True),
        (("pg_catalog", "app"), True),
        (("pg_temp", "pg_catalog", "app"), True),
        (("", "pg_catalog", "app"), True),
        (("app", "pg_catalog"), False),
        ((ROLE, "pg_catalog", "public"), False),
    ],
)
def test_catalog_first(path: tuple[str, ...], expected: bool) -> None:
    assert catalog_first(path) is expected


@pytest.mark.parametrize(
    ("value", "sql", "writes"),
    [
        # The attack the analysis must see through: the rule's table is in secret.
        ("secret, public", "DELETE FROM people WHERE id = 1", "secret.people,public.people"),
        (None, "DELETE FROM people WHERE id = 1", f"{ROLE}.people,public.people"),
        ("public", "DELETE FROM people WHERE id = 1", "public.people"),
        ("public", "DELETE FROM secret.people WHERE id = 1", "secret.people"),
    ],
)
def test_the_analysis_resolves_with_the_session_path(
    value: str | None, sql: str, writes: str
) -> None:
    path = session_search_path(value, ROLE)
    statement = analyze(sql, search_path=path).statements[0]
    assert ",".join(map(str, statement.writes)) == writes


def test_an_analysis_is_not_reused_for_another_search_path() -> None:
    sql = "DELETE FROM people WHERE id = 7"
    public = analyze(sql, search_path=("public",))
    secret = analyze(sql, search_path=("secret", "public"))
    assert public.statements[0].writes != secret.statements[0].writes
    assert analyze(sql, search_path=("public",)) is public


def _startup(**params: str) -> RawMessage:
    body = struct.pack("!I", PROTOCOL_3_0) + pgwire.StartupMessage(params).encode()[8:]
    return RawMessage(0, body)


def test_startup_keeps_a_valid_search_path() -> None:
    startup = ClientStartup()
    startup.handle(_startup(user="dev", database="demo", search_path='app, "$user"'))
    _reply, result = startup.handle(RawMessage(ord("p"), b"ticket\0"))
    assert isinstance(result, StartupResult)
    assert result.params["search_path"] == 'app, "$user"'


@pytest.mark.parametrize("value", ["a,", '"open', "a b", "a\vb"])
def test_startup_refuses_a_search_path_postgres_would_read_otherwise(value: str) -> None:
    with pytest.raises(GatewayError) as info:
        ClientStartup().handle(_startup(user="dev", database="demo", search_path=value))
    assert info.value.sqlstate == "22023"
    assert "search_path" in info.value.message
