"""Masking against PostgreSQL itself: COPY rows it wrote, masked, must load back as the masked
values; column grants computed from the catalog must stop a role from reading masked columns."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from server.demo.provision import DemoTarget
from server.gateway.catalog import Catalog
from server.gateway.masking import (
    ColumnRef,
    CopyFormat,
    CopyMasker,
    MaskingRules,
    database_side_grants,
    mask_value,
    plan_for_columns,
)
from server.gateway.pgwire import TEXT
from server.policy.model import MaskMethod, MaskRule

Conn = psycopg.Connection[tuple[object, ...]]
KEY = b"0123456789abcdef0123456789abcdef"

# Values that exercise every escape and quote rule of both formats.
TRICKY = [
    (1, "ada@example.com", "4111111111111111", "plain", "Lisbon"),
    (2, 'tab\there"@x.org', "12\\34\n5678", "line1\nline2\r", "back\\slash"),
    (3, "comma,and;semi@y.org", "", None, 'quo"te'),
    (4, None, None, "\\N", "\\."),
    (5, "ünïcode@exämple.com", "日本語テキスト1234", "", ","),
]
COLUMNS = ["id", "email", "card", "note", "city"]
RULES = MaskingRules(
    (
        MaskRule(pattern="email", method=MaskMethod.PARTIAL, keep_domain=True),
        MaskRule(pattern="card", method=MaskMethod.PARTIAL, keep_last=4),
        MaskRule(pattern="note", method=MaskMethod.HASH, hash_length=10),
    ),
    KEY,
)


@pytest.fixture
def schema(admin_conn: Conn) -> Iterator[str]:
    name = f"mask_{secrets.token_hex(4)}"
    admin_conn.execute(f"CREATE SCHEMA {name}")
    admin_conn.execute(
        f"CREATE TABLE {name}.src (id int, email text, card text, note text, city text)"
    )
    admin_conn.execute(f"CREATE TABLE {name}.dst (LIKE {name}.src)")
    with admin_conn.cursor() as cur:
        cur.executemany(f"INSERT INTO {name}.src VALUES (%s, %s, %s, %s, %s)", TRICKY)
    try:
        yield name
    finally:
        admin_conn.execute(f"DROP SCHEMA {name} CASCADE")


def expected_rows() -> list[tuple[object, ...]]:
    out = []
    for row in TRICKY:
        masked: list[object] = [row[0]]
        for name, value in zip(COLUMNS[1:], row[1:], strict=True):
            rule = RULES.rule_for(ColumnRef("s", "src", name))
            if rule is None or value is None:
                masked.append(value)
            else:
                masked.append(mask_value(rule, KEY, str(value)))
        out.append(tuple(masked))
    return out


@pytest.mark.parametrize(
    ("options", "fmt"),
    [
        ("(FORMAT text)", CopyFormat()),
        ("(FORMAT text, DELIMITER '|', NULL 'NULL')", CopyFormat(delimiter="|", null="NULL")),
        ("(FORMAT csv)", CopyFormat(csv=True)),
        ("(FORMAT csv, HEADER)", CopyFormat(csv=True, header=True)),
        (
            "(FORMAT csv, DELIMITER ';', QUOTE '''', ESCAPE '\\', NULL 'nil')",
            CopyFormat(csv=True, delimiter=";", quote="'", escape="\\", null="nil"),
        ),
    ],
)
def test_masked_copy_rows_load_back_as_the_masked_values(
    admin_conn: Conn, schema: str, options: str, fmt: CopyFormat
) -> None:
    refs = [ColumnRef(schema, "src", c, 25) for c in COLUMNS]
    plan = plan_for_columns([(c, 25) for c in COLUMNS], refs, RULES, lambda: None)
    masker = CopyMasker(plan, TEXT, fmt)
    payloads: list[bytes] = []
    with admin_conn.cursor() as cur:
        copy_out = f"COPY (SELECT * FROM {schema}.src ORDER BY id) TO STDOUT {options}"
        with cur.copy(copy_out) as copy:
            for data in copy:
                payloads.append(masker.row(bytes(data)))
        assert len(payloads) == len(TRICKY) + (1 if fmt.header else 0)
        with cur.copy(f"COPY {schema}.dst FROM STDIN {options}") as copy:
            for payload in payloads:
                copy.write(payload)
    got = admin_conn.execute(f"SELECT * FROM {schema}.dst ORDER BY id").fetchall()
    assert got == expected_rows()


# --------------------------------------------------------------------------- grants


def test_column_grants_keep_masked_columns_from_the_role(
    admin_conn: Conn, demo_target: DemoTarget, schema: str
) -> None:
    role = f"mask_role_{secrets.token_hex(4)}"
    admin_conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    try:
        admin_conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        admin_conn.execute(f"GRANT SELECT ON {schema}.src TO {role}")
        catalog = Catalog(demo_target.admin_dsn)
        columns = [c for c in catalog.columns() if c.schema == schema]
        statements = database_side_grants(RULES, columns, role)
        assert statements == [
            f'REVOKE SELECT ON "{schema}"."dst" FROM "{role}"',
            f'GRANT SELECT ("id", "city") ON "{schema}"."dst" TO "{role}"',
            f'REVOKE SELECT ON "{schema}"."src" FROM "{role}"',
            f'GRANT SELECT ("id", "city") ON "{schema}"."src" TO "{role}"',
        ]
        for statement in statements:
            admin_conn.execute(statement)  # type: ignore[arg-type]
        admin_conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        try:
            rows = admin_conn.execute(f"SELECT id, city FROM {schema}.src ORDER BY id").fetchall()
            assert rows[0] == (1, "Lisbon")
            for attempt in (
                f"SELECT email FROM {schema}.src",
                f"SELECT * FROM {schema}.src",
                f"SELECT count(*) FROM {schema}.src WHERE card LIKE '4%'",
                f"SELECT s FROM {schema}.src s",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    admin_conn.execute(attempt)  # type: ignore[arg-type]
        finally:
            admin_conn.execute("RESET ROLE")
    finally:
        admin_conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        admin_conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
