"""Role naming and the credential value types (no database involved)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from server.credentials.base import (
    MAX_ROLE_NAME_BYTES,
    Credential,
    Issuer,
    RoleMark,
    read_role_comment,
    role_comment,
    role_name_for,
)
from server.credentials.postgres import PostgresIssuer

HOSTILE_IDENTITIES = [
    'a"; drop role x; --',
    "Robert'); DROP TABLE customers;--",
    "  spaces   everywhere  ",
    "ümlaut-ünïcödé@exämple.de",
    "名前@例え.jp",
    "\x00nul\x00",
    "",
    "x" * 500,
    "é" * 200,
    "$$; DROP ROLE dbaccess_admin; $$",
]


@pytest.mark.parametrize("identity", HOSTILE_IDENTITIES)
def test_role_names_are_short_plain_and_prefixed(identity: str) -> None:
    name = role_name_for(identity, "0b5a7f3e-9c1d-4e2f-8a6b-1c2d3e4f5a6b")
    assert len(name.encode("utf-8")) <= MAX_ROLE_NAME_BYTES
    assert re.fullmatch(r"dba_[a-z0-9]+(_[a-z0-9]+)*", name), name


def test_role_name_is_traceable_to_identity_and_session() -> None:
    name = role_name_for("Alice.Smith@Example.com", "3f2a9c1e-0000-4000-8000-000000000000")
    assert name.startswith("dba_alice_smith_example_com_3f2a9c1e")


def test_accented_identity_keeps_its_letters() -> None:
    assert role_name_for("José", "s1").startswith("dba_jose_")


def test_role_names_differ_per_session_even_when_ids_sanitize_alike() -> None:
    names = {role_name_for("bob", sid) for sid in ("A-1", "a1", "a_1", "A1", "a-1 ")}
    assert len(names) == 5


def test_long_identities_with_a_common_prefix_stay_unique_per_session() -> None:
    identity = "very-long-service-account-name-" * 5
    a = role_name_for(identity, "session-a")
    b = role_name_for(identity, "session-b")
    assert a != b
    assert len(a.encode()) <= MAX_ROLE_NAME_BYTES
    assert len(b.encode()) <= MAX_ROLE_NAME_BYTES


def test_role_name_is_deterministic() -> None:
    assert role_name_for("carol", "s-42") == role_name_for("carol", "s-42")


def test_credential_repr_hides_the_password() -> None:
    cred = Credential("dba_x_1", "hunter2-secret", datetime(2030, 1, 1, tzinfo=UTC))
    assert "hunter2-secret" not in repr(cred)
    assert "dba_x_1" in repr(cred)


def test_postgres_issuer_satisfies_the_protocol() -> None:
    assert isinstance(PostgresIssuer("postgresql://u:p@127.0.0.1:1/db"), Issuer)


@pytest.mark.parametrize(
    ("comment", "read"),
    [
        (
            "dbaccess session role deployment=5f3a replica=r-0a1b session=s-9c",
            (RoleMark("5f3a", "r-0a1b"), "s-9c"),
        ),
        (None, None),
        ("", None),
        ("a DBA's note", None),
        ("dbaccess session role deployment=5f3a replica=r-0a1b", None),
        ("dbaccess session role deployment=5f3a replica=r-0a1b session=s-9c extra", None),
        ("dbaccess session role deployment=5F3A replica=r-0a1b session=s-9c", None),
    ],
)
def test_role_comments_read_back_only_as_written(
    comment: str | None, read: tuple[RoleMark, str] | None
) -> None:
    assert read_role_comment(comment) == read
    if read is not None:
        assert role_comment(*read) == comment
