"""The other ways data leaves: error and notice texts, COPY rows, and grants inside the database."""

from __future__ import annotations

import pytest

from server.gateway.masking import (
    ColumnRef,
    CopyFormat,
    CopyMasker,
    MaskingRules,
    database_side_grants,
    plan_for_columns,
    redact_report,
    redact_text,
)
from server.gateway.pgwire import BINARY, TEXT, ProtocolViolation
from server.policy.model import MaskMethod, MaskRule

KEY = b"0123456789abcdef0123456789abcdef"

# --------------------------------------------------------------------------- texts


@pytest.mark.parametrize(
    ("text", "values", "columns", "touches", "expected"),
    [
        pytest.param(
            "Key (email)=(ada@example.com) already exists.",
            (),
            {"email"},
            False,
            "Key (email)=(***) already exists.",
            id="unique-violation",
        ),
        pytest.param(
            "Key (id, email)=(7, ada@example.com) already exists.",
            (),
            {"email"},
            False,
            "Key (id, email)=(***) already exists.",
            id="composite-key",
        ),
        pytest.param(
            'Key ("Email")=(x) is not present in table "customers".',
            (),
            {"email"},
            False,
            'Key ("Email")=(***) is not present in table "customers".',
            id="quoted-column",
        ),
        pytest.param(
            "Key (id)=(7) already exists.",
            (),
            {"email"},
            False,
            "Key (id)=(7) already exists.",
            id="key-of-clear-column",
        ),
        pytest.param(
            "Key (id)=(7) already exists.",
            (),
            (),
            True,
            "Key (id)=(***) already exists.",
            id="key-when-masked-data-was-read",
        ),
        pytest.param(
            'invalid input syntax for type integer: "ada@example.com"',
            (),
            (),
            True,
            'invalid input syntax for type integer: "***"',
            id="cast-echo",
        ),
        pytest.param(
            'invalid input syntax for type integer: "abc"',
            (),
            (),
            False,
            'invalid input syntax for type integer: "abc"',
            id="cast-echo-of-clear-data",
        ),
        pytest.param(
            "Failing row contains (1, Ada, ada@example.com, +1-555).",
            (),
            (),
            True,
            "Failing row contains (***).",
            id="failing-row",
        ),
        pytest.param(
            "value ada@example.com and again ada@example.com",
            ["ada@example.com"],
            (),
            False,
            "value *** and again ***",
            id="known-values",
        ),
        pytest.param(
            "card 4111111111111111 ends 1111",
            ["1111", "4111111111111111"],
            (),
            False,
            "card *** ends ***",
            id="longest-value-first",
        ),
        pytest.param("nothing here", ["", "zzz"], (), False, "nothing here", id="untouched"),
    ],
)
def test_redact_text(
    text: str, values: list[str], columns: set[str], touches: bool, expected: str
) -> None:
    assert redact_text(text, values, masked_columns=columns, touches_masked=touches) == expected


def test_redact_report_touches_only_text_fields() -> None:
    fields = {
        "S": "ERROR",
        "C": "23505",
        "M": 'duplicate key value violates unique constraint "customers_email_key"',
        "D": "Key (email)=(ada@example.com) already exists.",
        "t": "customers",
        "n": "customers_email_key",
        "W": "SQL statement with ada@example.com",
    }
    out = redact_report(fields, ["ada@example.com"], masked_columns={"email"})
    assert out["D"] == "Key (email)=(***) already exists."
    assert out["W"] == "SQL statement with ***"
    assert {k: out[k] for k in "SCMtn"} == {k: fields[k] for k in "SCMtn"}


# --------------------------------------------------------------------------- COPY

EMAIL = MaskRule(column="public.c.email", method=MaskMethod.PARTIAL, keep_domain=True)
CARD = MaskRule(column="public.c.card", method=MaskMethod.PARTIAL, keep_last=4)
NOTE = MaskRule(column="public.c.note", method=MaskMethod.NULL)
RULES = MaskingRules((EMAIL, CARD, NOTE), KEY)
COLUMNS = ["id", "email", "card", "note", "city"]


def copy_masker(fmt: CopyFormat, overall: int = TEXT) -> CopyMasker:
    refs = [ColumnRef("public", "c", name, 25) for name in COLUMNS]
    plan = plan_for_columns([(n, 25) for n in COLUMNS], refs, RULES, lambda: None)
    return CopyMasker(plan, overall, fmt)


@pytest.mark.parametrize(
    ("fmt", "row", "expected"),
    [
        pytest.param(
            CopyFormat(),
            "1\tada@example.com\t4111111111111111\tsecret\tLisbon\n",
            "1\t***@example.com\t***1111\t\\N\tLisbon\n",
            id="text",
        ),
        pytest.param(
            CopyFormat(),
            "1\t\\N\t\\N\t\\N\tLi\\tsbon\n",
            "1\t\\N\t\\N\t\\N\tLi\\tsbon\n",
            id="text-nulls-and-escapes",
        ),
        pytest.param(
            CopyFormat(),
            "2\ta\\\\b@ex\\tample.com\tab\\nc\\\\12345\tx\ty\n",
            "2\t***@ex\\tample.com\t***2345\t\\N\ty\n",
            id="text-escaped-values",
        ),
        pytest.param(
            CopyFormat(delimiter="|", null="NULL"),
            "3|a\\|b@x.org|NULL|n|Oslo\n",
            "3|***@x.org|NULL|NULL|Oslo\n",
            id="text-custom-delimiter",
        ),
        pytest.param(
            CopyFormat(csv=True),
            '4,ada@example.com,"4111 1111, 1111 1111",,"Lis,bon"\n',
            '4,"***@example.com","***1111",,"Lis,bon"\n',
            id="csv",
        ),
        pytest.param(
            CopyFormat(csv=True),
            '5,"a""b@x.org","",note,x\n',
            '5,"***@x.org","***",,x\n',
            id="csv-quotes-and-empty-string",
        ),
        pytest.param(
            CopyFormat(csv=True),
            '6,"line1\nline2@x.org",1234567,"multi\nline",x\r\n',
            '6,"***@x.org","***4567",,x\r\n',
            id="csv-newlines",
        ),
        pytest.param(
            CopyFormat(csv=True, delimiter=";", null="\\N", quote="'", escape="\\"),
            "7;'it\\'s@x.org';\\N;'n';x\n",
            "7;'***@x.org';\\N;\\N;x\n",
            id="csv-options",
        ),
    ],
)
def test_copy_rows_are_masked_by_position(fmt: CopyFormat, row: str, expected: str) -> None:
    assert copy_masker(fmt).row(row.encode()).decode() == expected


def test_copy_header_passes_and_binary_copy_is_blocked() -> None:
    masker = copy_masker(CopyFormat(csv=True, header=True))
    assert masker.row(b"id,email,card,note,city\n") == b"id,email,card,note,city\n"
    assert masker.row(b"1,a@b.org,,,x\n") == b'1,"***@b.org",,,x\n'
    binary = copy_masker(CopyFormat(), overall=BINARY)
    assert binary.blocked is not None and "binary COPY" in binary.blocked
    with pytest.raises(ValueError, match="binary COPY"):
        binary.row(b"PGCOPY\n\xff\r\n\x00")


def test_copy_of_clear_columns_passes_as_it_is() -> None:
    refs = [ColumnRef("public", "c", name, 25) for name in ("id", "city")]
    plan = plan_for_columns([("id", 25), ("city", 25)], refs, RULES, lambda: None)
    masker = CopyMasker(plan, BINARY, CopyFormat())
    assert masker.identity and masker.blocked is None
    assert masker.row(b"anything at all") == b"anything at all"


@pytest.mark.parametrize(
    ("fmt", "row"),
    [
        (CopyFormat(), "1\ta@b.org\n"),
        (CopyFormat(csv=True), '1,"unterminated,x,y,z\n'),
        (CopyFormat(csv=True), '1,"a"b,x,y,z\n'),
    ],
)
def test_copy_rows_that_do_not_fit_are_refused(fmt: CopyFormat, row: str) -> None:
    with pytest.raises(ProtocolViolation):
        copy_masker(fmt).row(row.encode())


# --------------------------------------------------------------------------- grants


def col(
    table: str, column: str, relkind: str = "r", sources: frozenset[ColumnRef] = frozenset()
) -> ColumnRef:
    return ColumnRef("public", table, column, 25, relkind, sources)


CUSTOMERS = [col("customers", c) for c in ("id", "email", "card_number", "city")]
ORDERS = [col("orders", c) for c in ("id", "amount")]
GRANT_RULES = MaskingRules(
    (
        MaskRule(pattern="*email*", method=MaskMethod.REDACT),
        MaskRule(pattern="card_*", method=MaskMethod.REDACT),
        MaskRule(column="public.v_ids.id", method=MaskMethod.CLEAR),
    )
)


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        pytest.param(ORDERS, [], id="nothing-masked"),
        pytest.param(
            CUSTOMERS + ORDERS,
            [
                'REVOKE SELECT ON "public"."customers" FROM "demo_read"',
                'GRANT SELECT ("id", "city") ON "public"."customers" TO "demo_read"',
            ],
            id="table",
        ),
        pytest.param(
            [col("contacts", "email"), col("contacts", "work_email")],
            ['REVOKE SELECT ON "public"."contacts" FROM "demo_read"'],
            id="every-column-masked",
        ),
        pytest.param(
            [
                col("v_contacts", "id", "v", frozenset(CUSTOMERS[:2])),
                col("v_contacts", "name", "v", frozenset(CUSTOMERS[:2])),
                col("v_ids", "id", "v", frozenset(CUSTOMERS[:2])),
                col("v_cities", "city", "v", frozenset(CUSTOMERS[3:])),
            ],
            [
                'REVOKE SELECT ON "public"."v_contacts" FROM "demo_read"',
            ],
            id="views",
        ),
        pytest.param(
            [col('we"ird', "Email"), col('we"ird', "Id")],
            [
                'REVOKE SELECT ON "public"."we""ird" FROM "demo_read"',
                'GRANT SELECT ("Id") ON "public"."we""ird" TO "demo_read"',
            ],
            id="quoting",
        ),
    ],
)
def test_database_side_grants(columns: list[ColumnRef], expected: list[str]) -> None:
    assert database_side_grants(GRANT_RULES, columns, "demo_read") == expected
