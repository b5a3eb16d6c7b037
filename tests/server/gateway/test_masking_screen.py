"""What the content detectors and the format decisions leave of the values that go out:
DataRows, report texts, notification payloads, parameter values, Bind result formats."""

from __future__ import annotations

import pytest

from server.gateway.detectors import NO_DETECTORS, DetectorSet
from server.gateway.masking import (
    REDACTED,
    UNCHANGED,
    Action,
    ColumnRef,
    FieldPlan,
    MaskingRules,
    MaskPlan,
    hash_value,
    plan_for_columns,
    screen_notification,
    screen_parameter,
    screen_report,
    screen_row,
)
from server.gateway.pgwire import BINARY, TEXT, DataRow, Field
from server.policy.model import DetectorAction, DetectorKind, MaskMethod, MaskRule

KEY = b"0123456789abcdef0123456789abcdef"
MASK_ALL = DetectorSet.of({kind: DetectorAction.MASK for kind in DetectorKind})
BLOCK_SECRETS = DetectorSet.of(
    {DetectorKind.EMAIL: DetectorAction.MASK, DetectorKind.SECRET: DetectorAction.BLOCK}
)
CARD = "4111111111111111"
EMAIL = "ada@example.com"
SSN = "078-05-1120"
AWS = "AKIAIOSFODNN7EXAMPLE"

TEXT_OID, INT8, JSONB, BYTEA, VARCHAR = 25, 20, 3802, 17, 1043


def _body(*values: bytes | None) -> bytes:
    return DataRow(list(values)).encode()[5:]


def _clear(*types: int) -> MaskPlan:
    return MaskPlan(
        tuple(FieldPlan(f"c{i}", Action.CLEAR, type_oid=t) for i, t in enumerate(types))
    )


# --------------------------------------------------------------------------- rows


@pytest.mark.parametrize(
    ("types", "values", "expected"),
    [
        pytest.param(
            (TEXT_OID, TEXT_OID),
            (b"Lisbon", b"2024-01-01"),
            None,
            id="nothing-found-nothing-changes",
        ),
        pytest.param(
            (TEXT_OID, TEXT_OID),
            (f"note: card {CARD} ok".encode(), b"Lisbon"),
            (b"note: card *** ok", b"Lisbon"),
            id="card-in-a-text-column-masked-in-place",
        ),
        pytest.param(
            (VARCHAR, TEXT_OID),
            (f"{EMAIL}, {SSN}".encode(), None),
            (b"***, ***", None),
            id="two-findings-one-value-null-stays-null",
        ),
        pytest.param(
            (INT8, TEXT_OID),
            (CARD.encode(), b"x"),
            (None, b"x"),
            id="int8-text-format-becomes-null",
        ),
        pytest.param(
            (JSONB, TEXT_OID),
            (b'{"card": ' + CARD.encode() + b"}", b"x"),
            (None, b"x"),
            id="json-number-becomes-null-not-invalid-json",
        ),
        pytest.param(
            (BYTEA, TEXT_OID),
            (b"\x00\x01 mail " + EMAIL.encode() + b" \xff", b"x"),
            (None, b"x"),
            id="binary-bytes-become-null",
        ),
    ],
)
def test_screen_row(
    types: tuple[int, ...],
    values: tuple[bytes | None, ...],
    expected: tuple[bytes | None, ...] | None,
) -> None:
    plan = _clear(*types)
    got = screen_row(
        MASK_ALL, _body(*values), plan.names, in_place=plan.in_place, scanned=plan.scanned
    )
    if expected is None:
        assert got is UNCHANGED
    else:
        assert got.blocked is None and got.body == _body(*expected)
        for secret in (CARD, EMAIL, SSN):
            assert secret.encode() not in got.body


def test_screen_row_without_a_shape_nulls_what_it_finds() -> None:
    got = screen_row(MASK_ALL, _body(b"1", f"mail {EMAIL}".encode()))
    assert got.body == _body(b"1", None)


def test_screen_row_block_names_column_and_detector_but_not_the_value() -> None:
    plan = _clear(TEXT_OID, TEXT_OID)
    got = screen_row(
        BLOCK_SECRETS,
        _body(f"mail {EMAIL}".encode(), f"key {AWS}".encode()),
        plan.names,
        in_place=plan.in_place,
    )
    assert got.body is None and got.blocked is not None
    assert "'c1'" in got.blocked and "secret" in got.blocked and "aws_access_key" in got.blocked
    assert AWS not in got.blocked


def test_screen_row_leaves_masked_columns_to_their_rule() -> None:
    # A hash can look like anything; the masked column is not scanned again.
    rules = MaskingRules((MaskRule(pattern="email", method=MaskMethod.PARTIAL, keep_last=16),))
    plan = plan_for_columns(
        [("email", TEXT_OID), ("note", TEXT_OID)],
        [ColumnRef("public", "t", "email", TEXT_OID), ColumnRef("public", "t", "note", TEXT_OID)],
        rules,
        lambda: None,
    )
    assert plan.scanned == (False, True)
    masked = plan.masker(()).body(_body(b"zz" + CARD.encode(), f"card {CARD}".encode()))
    got = screen_row(MASK_ALL, masked, plan.names, in_place=plan.in_place, scanned=plan.scanned)
    assert got.body == _body(b"***" + CARD.encode(), b"card ***")


@pytest.mark.parametrize(
    ("type_oid", "scanned"),
    [
        pytest.param(TEXT_OID, True, id="text"),
        pytest.param(INT8, True, id="int8-can-hold-a-card-number"),
        pytest.param(1700, True, id="numeric-too"),
        pytest.param(JSONB, True, id="jsonb"),
        pytest.param(BYTEA, True, id="bytea"),
        pytest.param(23, False, id="int4-has-ten-digits-at-most"),
        pytest.param(1184, False, id="timestamptz"),
        pytest.param(2950, False, id="uuid"),
        pytest.param(16, False, id="bool"),
    ],
)
def test_columns_of_closed_types_are_not_scanned(type_oid: int, scanned: bool) -> None:
    assert _clear(type_oid).scanned == (scanned,)


def test_retyped_columns_mask_in_place() -> None:
    rules = MaskingRules((MaskRule(pattern="n", method=MaskMethod.REDACT),))
    plan = plan_for_columns(
        [("n", INT8), ("m", INT8)],
        [ColumnRef("public", "t", "n", INT8), ColumnRef("public", "t", "m", INT8)],
        rules,
        lambda: None,
    )
    assert plan.in_place == (True, False)


# --------------------------------------------------------------------------- texts


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(
            {"S": "ERROR", "C": "22P02", "M": f'invalid input syntax for type integer: "{EMAIL}"'},
            {"S": "ERROR", "C": "22P02", "M": 'invalid input syntax for type integer: "***"'},
            id="message",
        ),
        pytest.param(
            {"C": "23514", "D": f"Failing row contains (1, {CARD}).", "W": f"SQL {SSN}"},
            {"C": "23514", "D": "Failing row contains (1, ***).", "W": "SQL ***"},
            id="detail-and-context",
        ),
        pytest.param(
            {"C": "P0001", "M": f"raised {AWS}", "H": "see 415-555-2671"},
            {"C": "P0001", "M": "raised ***", "H": "see ***"},
            id="block-action-still-masks-a-report",
        ),
        pytest.param(
            {"C": "4111111111111111", "n": EMAIL},
            {"C": "4111111111111111", "n": EMAIL},
            id="codes-and-names-are-not-texts",
        ),
    ],
)
def test_screen_report(fields: dict[str, str], expected: dict[str, str]) -> None:
    assert screen_report(fields, MASK_ALL) == expected


@pytest.mark.parametrize(
    ("payload", "masked", "detectors", "expected"),
    [
        pytest.param("", True, MASK_ALL, "", id="empty-stays-empty"),
        pytest.param("42", True, NO_DETECTORS, REDACTED, id="masked-session-any-payload"),
        pytest.param("Ada Lovelace", True, MASK_ALL, REDACTED, id="no-shape-still-redacted"),
        pytest.param(f"new {EMAIL}", False, MASK_ALL, "new ***", id="detectors-only"),
        pytest.param(f"key {AWS}", False, BLOCK_SECRETS, "key ***", id="block-masks"),
        pytest.param("order 42 shipped", False, MASK_ALL, "order 42 shipped", id="clean"),
    ],
)
def test_screen_notification(
    payload: str, masked: bool, detectors: DetectorSet, expected: str
) -> None:
    assert screen_notification(payload, masked=masked, detectors=detectors) == expected


@pytest.mark.parametrize(
    ("name", "value", "masked", "sql", "expected"),
    [
        pytest.param("TimeZone", "Europe/Lisbon", True, "", "Europe/Lisbon", id="vocabulary"),
        pytest.param("DateStyle", "ISO, MDY", True, "", "ISO, MDY", id="datestyle"),
        pytest.param(
            "application_name",
            "report-7",
            True,
            "SET application_name = 'report-7'",
            "report-7",
            id="the-client-wrote-it",
        ),
        pytest.param(
            "application_name",
            "Ada Lovelace",
            True,
            "select my_func()",
            REDACTED,
            id="set-by-something-else",
        ),
        pytest.param(
            "application_name",
            EMAIL,
            True,
            f"SET application_name = '{EMAIL}'",
            REDACTED,
            id="detector-first",
        ),
        pytest.param("application_name", "Ada", False, "", "Ada", id="detectors-only-no-shape"),
        pytest.param("application_name", EMAIL, False, "", REDACTED, id="detectors-only-found"),
        pytest.param("session_authorization", "dba_x", True, "", REDACTED, id="free-text"),
        pytest.param("application_name", "", True, "", "", id="empty"),
    ],
)
def test_screen_parameter(name: str, value: str, masked: bool, sql: str, expected: str) -> None:
    got = screen_parameter(
        name, value, masked=masked, detectors=MASK_ALL, written=lambda v: v in sql
    )
    assert got == expected


# --------------------------------------------------------------------------- formats

PHONE_HASHED = MaskingRules(
    (
        MaskRule(pattern="phone", method=MaskMethod.HASH, hash_length=8),
        MaskRule(pattern="card", method=MaskMethod.PARTIAL, keep_last=4),
        MaskRule(pattern="ssn", method=MaskMethod.REDACT),
    ),
    KEY,
)


def _plan(*columns: tuple[str, int]) -> MaskPlan:
    refs = [ColumnRef("public", "t", name, oid) for name, oid in columns]
    return plan_for_columns(list(columns), refs, PHONE_HASHED, lambda: None)


@pytest.mark.parametrize(
    ("columns", "requested", "upstream"),
    [
        pytest.param((("id", INT8), ("phone", INT8)), [], None, id="text-already"),
        pytest.param((("id", INT8), ("phone", INT8)), [TEXT], None, id="one-text"),
        pytest.param(
            (("id", INT8), ("phone", INT8)), [BINARY], [BINARY, TEXT], id="one-binary-for-all"
        ),
        pytest.param(
            (("id", INT8), ("phone", INT8), ("card", TEXT_OID)),
            [BINARY, BINARY, BINARY],
            [BINARY, TEXT, BINARY],
            id="text-like-card-stays-binary",
        ),
        pytest.param((("ssn", INT8), ("id", INT8)), [BINARY], None, id="redact-needs-no-text"),
        pytest.param((("id", INT8),), [BINARY], None, id="clear"),
    ],
)
def test_bind_formats(
    columns: tuple[tuple[str, int], ...], requested: list[int], upstream: list[int] | None
) -> None:
    assert _plan(*columns).bind_formats(requested) == upstream


def test_row_description_shows_the_client_its_own_formats_for_text_columns() -> None:
    plan = _plan(("id", INT8), ("phone", INT8))
    upstream = [Field("id", 1, 1, INT8, 8, -1, BINARY), Field("phone", 1, 2, INT8, 8, -1, TEXT)]
    out = plan.row_description(upstream, [BINARY, BINARY])
    assert [(f.type_oid, f.format) for f in out] == [(INT8, BINARY), (TEXT_OID, BINARY)]
    # Without a rewrite the server's formats stand.
    assert [f.format for f in plan.row_description(upstream)] == [BINARY, TEXT]


@pytest.mark.parametrize(
    ("formats", "unmaskable"),
    [
        ([], None),
        ([BINARY, TEXT], None),
        ([BINARY], "phone"),
        ([TEXT, BINARY], "phone"),
    ],
)
def test_unmaskable(formats: list[int], unmaskable: str | None) -> None:
    plan = _plan(("id", INT8), ("phone", INT8))
    found = plan.unmaskable(formats)
    assert (found.name if found is not None else None) == unmaskable
    assert plan.masker(formats).unmaskable == found


def test_text_upstream_masks_what_binary_could_only_null() -> None:
    plan = _plan(("id", INT8), ("phone", INT8))
    seven = (7).to_bytes(8, "big")
    masked = plan.masker([BINARY, TEXT]).body(_body(seven, b"4155552671"))
    assert masked == _body(seven, hash_value(KEY, b"4155552671", 8).encode())
    # The same value in binary has no text to hash: the pure masker sends NULL
    # (and the relay refuses such rows before, see unmaskable).
    binary = plan.masker([BINARY]).body(_body(seven, (4155552671).to_bytes(8, "big")))
    assert binary == _body(seven, None)
