"""DataRow rewriting: byte-exact against a plain decode-mask-encode reference, in both formats."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.gateway.masking import (
    ColumnRef,
    MaskingRules,
    MaskPlan,
    apply_plan,
    mask_value,
    plan_for_columns,
)
from server.gateway.masking import rows as masking_rows
from server.gateway.pgwire import (
    BINARY,
    TEXT,
    CommandComplete,
    DataRow,
    ProtocolViolation,
    ReadyForQuery,
    decode_backend,
    split_frames,
)
from server.policy.model import MaskMethod, MaskRule

KEY = b"0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True, scope="module", params=["native", "python"])
def _row_path(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test here runs on the C core and on the generated Python loop."""
    if request.param == "native" and not masking_rows.NATIVE:
        pytest.skip("the C core (server.gateway._rowmask) is not built")
    before = masking_rows.NATIVE
    masking_rows.NATIVE = request.param == "native"  # type: ignore[misc]
    yield
    masking_rows.NATIVE = before  # type: ignore[misc]


INT4, TEXT_T, VARCHAR, BPCHAR, NUMERIC = 23, 25, 1043, 1042, 1700

METHODS = [
    MaskRule(pattern="x", method=MaskMethod.REDACT),
    MaskRule(pattern="x", method=MaskMethod.NULL),
    MaskRule(pattern="x", method=MaskMethod.HASH, hash_length=16),
    MaskRule(pattern="x", method=MaskMethod.HASH, hash_length=64),
    MaskRule(pattern="x", method=MaskMethod.PARTIAL, keep_domain=True),
    MaskRule(pattern="x", method=MaskMethod.PARTIAL, keep_last=1),
    MaskRule(pattern="x", method=MaskMethod.PARTIAL, keep_last=4),
]


def plan_with(methods: list[MaskRule | None], type_oid: int = TEXT_T) -> MaskPlan:
    """A plan over columns c0..cN where column i is masked by methods[i] (None: clear)."""
    rules = tuple(
        MaskRule(
            column=f"public.t.c{i}",
            method=m.method,
            keep_last=m.keep_last,
            keep_domain=m.keep_domain,
            hash_length=m.hash_length,
        )
        for i, m in enumerate(methods)
        if m is not None
    )
    refs = [ColumnRef("public", "t", f"c{i}", type_oid) for i in range(len(methods))]
    columns = [(f"c{i}", type_oid) for i in range(len(methods))]
    return plan_for_columns(columns, refs, MaskingRules(rules, KEY), lambda: None)


def reference(plan: MaskPlan, values: list[bytes | None]) -> bytes:
    """The obvious way: every value decoded, the masked ones replaced, the row encoded again."""
    out: list[bytes | None] = []
    for field_plan, value in zip(plan.fields, values, strict=True):
        if field_plan.rule is None or value is None:
            out.append(value)
            continue
        masked = mask_value(field_plan.rule, KEY, value.decode("utf-8"))
        out.append(None if masked is None else masked.encode("utf-8"))
    return DataRow(out).encode()[5:]


values_strategy = st.one_of(
    st.none(),
    st.text(max_size=40).map(lambda s: s.encode("utf-8")),
    st.emails().map(lambda s: s.encode()),
)


@settings(max_examples=400, deadline=None)
@given(
    row=st.lists(
        st.tuples(st.one_of(st.none(), st.sampled_from(METHODS)), values_strategy),
        min_size=1,
        max_size=12,
    )
)
def test_rewrite_matches_the_reference(row: list[tuple[MaskRule | None, bytes | None]]) -> None:
    plan = plan_with([m for m, _ in row])
    values = [v for _, v in row]
    body = DataRow(values).encode()[5:]
    assert apply_plan(plan, body) == reference(plan, values)
    # and the message form agrees, with a length word that frames it
    wire = plan.masker().message(body)
    (again,), end = split_frames(wire)
    assert end == len(wire)
    assert again.body == reference(plan, values)


def test_the_customers_row() -> None:
    plan = plan_with([None, None, METHODS[4], METHODS[2], METHODS[6], None, None])
    values: list[bytes | None] = [
        b"1",
        b"Ada Lovelace",
        b"ada.lovelace1@example.com",
        b"+1-555-037-7919",
        b"4000000009826171",
        None,
        b"2024-01-01 07:13:00+00",
    ]
    row = decode_backend(split_frames(plan.masker().message(DataRow(values).encode()[5:]))[0][0])
    assert isinstance(row, DataRow)
    assert row.values[:3] == [b"1", b"Ada Lovelace", b"***@example.com"]
    assert row.values[3] is not None and len(row.values[3]) == 16
    assert row.values[4:] == [b"***6171", None, b"2024-01-01 07:13:00+00"]


def test_nulls_stay_null_and_clear_plans_change_nothing() -> None:
    plan = plan_with([METHODS[0], METHODS[4], None])
    body = DataRow([None, None, b"x"]).encode()[5:]
    assert apply_plan(plan, body) == body
    clear = plan_with([None, None])
    body = DataRow([b"a@b.c", None]).encode()[5:]
    assert apply_plan(clear, body) == body
    assert clear.masker().identity


def test_bytes_that_look_like_length_words_are_only_values() -> None:
    # A clear column before the masked one holds what looks like a length word and a value.
    plan = plan_with([None, METHODS[0]])
    sneaky = b"\x00\x00\x00\x05hello\x00\x00\x00\x03abc"
    body = DataRow([sneaky, b"secret@example.com"]).encode()[5:]
    assert apply_plan(plan, body) == DataRow([sneaky, b"***"]).encode()[5:]


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("type_oid", "mask", "fmt", "value", "expected"),
    [
        pytest.param(TEXT_T, METHODS[4], BINARY, b"a@example.com", b"***@example.com", id="text"),
        pytest.param(VARCHAR, METHODS[6], BINARY, b"4111111111111111", b"***1111", id="varchar"),
        pytest.param(BPCHAR, METHODS[0], BINARY, b"abc  ", b"***", id="bpchar"),
        pytest.param(INT4, METHODS[0], BINARY, b"\x00\x00\x00\x2a", b"***", id="int-redacted"),
        pytest.param(INT4, METHODS[1], BINARY, b"\x00\x00\x00\x2a", None, id="int-nulled"),
        pytest.param(INT4, METHODS[2], BINARY, b"\x00\x00\x00\x2a", None, id="int-hash-needs-text"),
        pytest.param(NUMERIC, METHODS[6], BINARY, b"\x00\x01\x00\x00", None, id="numeric-partial"),
        pytest.param(INT4, METHODS[6], TEXT, b"123456", b"***3456", id="int-as-text"),
    ],
)
def test_binary_values(
    type_oid: int, mask: MaskRule, fmt: int, value: bytes, expected: bytes | None
) -> None:
    plan = plan_with([None, mask], type_oid)
    body = DataRow([b"\x00\x00\x00\x01", value]).encode()[5:]
    assert (
        apply_plan(plan, body, [BINARY, fmt])
        == DataRow([b"\x00\x00\x00\x01", expected]).encode()[5:]
    )


def test_hashes_agree_across_formats_for_text() -> None:
    plan = plan_with([METHODS[2]])
    body = DataRow([b"ada@example.com"]).encode()[5:]
    assert apply_plan(plan, body, [TEXT]) == apply_plan(plan, body, [BINARY])


def test_maskers_are_compiled_once_per_formats() -> None:
    plan = plan_with([METHODS[0], None])
    assert plan.masker([TEXT]) is plan.masker([])
    assert plan.masker([TEXT]) is plan.masker([TEXT, TEXT])
    assert plan.masker([BINARY]) is not plan.masker([TEXT])


def test_format_counts_must_fit() -> None:
    plan = plan_with([METHODS[0], None, None])
    with pytest.raises(ProtocolViolation):
        plan.masker([TEXT, BINARY])


# --------------------------------------------------------------------------- streams


def test_rewrite_rows_runs_over_many_messages_and_stops_at_the_first_other() -> None:
    plan = plan_with([None, METHODS[0]])
    rows = [DataRow([str(i).encode(), b"x" * i]).encode() for i in range(50)]
    tail = CommandComplete("SELECT 50").encode() + ReadyForQuery("I").encode()
    wire = b"".join(rows) + tail
    out: list[bytes] = []
    stop = plan.masker().rewrite_rows(wire, 0, out)
    assert stop == len(wire) - len(tail)
    expected = b"".join(DataRow([str(i).encode(), b"***"]).encode() for i in range(50))
    assert b"".join(out) == expected
    # From the middle of the stream, and at a message it does not handle.
    out.clear()
    assert plan.masker().rewrite_rows(wire, len(rows[0]), out) == stop
    assert b"".join(out) == expected[len(DataRow([b"0", b"***"]).encode()) :]
    out.clear()
    assert plan.masker().rewrite_rows(wire, stop, out) == stop
    assert out == []


def test_an_incomplete_row_is_left_for_later() -> None:
    plan = plan_with([METHODS[0]])
    row = DataRow([b"secret"]).encode()
    out: list[bytes] = []
    assert plan.masker().rewrite_rows(row + row[:7], 0, out) == len(row)
    assert b"".join(out) == DataRow([b"***"]).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(DataRow([b"a"]).encode()[5:], "1 columns", id="too-few-columns"),
        pytest.param(DataRow([b"a", b"b", b"c"]).encode()[5:], "3 columns", id="too-many"),
        pytest.param(b"\x00\x02\x00\x00\x00\x09ab", "runs past", id="value-past-end"),
        pytest.param(b"\x00\x02\x00\x00\x00\x01a", "runs past", id="length-word-missing"),
        pytest.param(b"\x00", "no column count", id="no-count"),
    ],
)
def test_malformed_rows_are_refused(body: bytes, message: str) -> None:
    plan = plan_with([None, METHODS[0]])
    with pytest.raises(ProtocolViolation, match=message):
        apply_plan(plan, body)
