"""The C core of DataRow masking (server.gateway._rowmask) against the generated
Python loop: for any plan and any run of messages, well-formed or not, the same
bytes out and the same end of run, or the same ProtocolViolation."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.gateway.masking import ColumnRef, MaskingRules, MaskPlan, RowMasker, plan_for_columns
from server.gateway.masking import rows as masking_rows
from server.gateway.pgwire import BINARY, TEXT, DataRow, ProtocolViolation
from server.policy.model import MaskMethod, MaskRule

pytestmark = pytest.mark.skipif(not masking_rows.NATIVE, reason="the C core is not built")

KEY = b"0123456789abcdef0123456789abcdef"
INT4, TEXT_T = 23, 25

RULES = st.one_of(
    st.none(),
    st.sampled_from([MaskMethod.REDACT, MaskMethod.NULL]).map(
        lambda m: MaskRule(pattern="x", method=m)
    ),
    st.just(MaskRule(pattern="x", method=MaskMethod.PARTIAL, keep_domain=True)),
    st.integers(min_value=0, max_value=6).map(
        lambda k: MaskRule(pattern="x", method=MaskMethod.PARTIAL, keep_last=k)
    ),
    st.just(MaskRule(pattern="x", method=MaskMethod.HASH, hash_length=8)),
)
COLUMN = st.tuples(RULES, st.sampled_from([TEXT_T, INT4]), st.sampled_from([TEXT, BINARY]))


def _plan(columns: list[tuple[MaskRule | None, int, int]]) -> MaskPlan:
    rules = tuple(
        MaskRule(
            column=f"public.t.c{i}",
            method=r.method,
            keep_last=r.keep_last,
            keep_domain=r.keep_domain,
            hash_length=r.hash_length,
        )
        for i, (r, _, _) in enumerate(columns)
        if r is not None
    )
    refs = [ColumnRef("public", "t", f"c{i}", oid) for i, (_, oid, _) in enumerate(columns)]
    names = [(f"c{i}", oid) for i, (_, oid, _) in enumerate(columns)]
    return plan_for_columns(names, refs, MaskingRules(rules, KEY), lambda: None)


VALUE = st.one_of(
    st.none(),
    st.binary(max_size=10),
    st.text(alphabet="a@.é1\x00", max_size=12).map(str.encode),
    st.emails().map(str.encode),
    st.text(alphabet="x@", min_size=250, max_size=260).map(str.encode),  # domains past 255
)


@st.composite
def messages(draw: st.DrawFn, count: int) -> bytes:
    """One message: a DataRow of about the right width, maybe damaged, or another type."""
    kind = draw(st.sampled_from(["row"] * 6 + ["damaged", "raw", "other", "length"]))
    if kind == "other":
        return b"C\x00\x00\x00\x0dSELECT 1\x00"
    if kind == "raw":
        body = draw(st.binary(max_size=30))
        return b"D" + struct.pack("!I", len(body) + 4) + body
    width = draw(st.sampled_from([count] * 8 + [max(count - 1, 0), count + 1]))
    row = DataRow(draw(st.lists(VALUE, min_size=width, max_size=width))).encode()
    if kind == "damaged" and len(row) > 5:
        at = draw(st.integers(min_value=7 if len(row) > 7 else 5, max_value=len(row) - 1))
        row = row[:at] + bytes([draw(st.integers(0, 255))]) + row[at + 1 :]
    if kind == "length":
        # A value's length word made negative or too long.
        words = [i for i in range(7, len(row) - 3)]
        if words:
            at = draw(st.sampled_from(words))
            word = draw(st.sampled_from([-2, -1, 0x7FFFFFFF, len(row), -0x80000000]))
            row = row[:at] + struct.pack("!i", word) + row[at + 4 :]
    return row


def _run(masker: RowMasker, wire: bytes, pos: int) -> tuple[int, bytes] | str:
    out: list[bytes] = []
    try:
        stop = masker.rewrite_rows(wire, pos, out)
    except ProtocolViolation as e:
        return f"ProtocolViolation: {e}"
    return stop, b"".join(out)


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[tuple[MaskRule | None, int, int]], bytes, int]:
    columns = draw(st.lists(COLUMN, min_size=draw(st.sampled_from([0, 1, 1, 2])), max_size=6))
    msgs = draw(st.lists(messages(len(columns)), min_size=1, max_size=8))
    wire = b"".join(msgs)
    cut = draw(st.integers(min_value=0, max_value=len(wire)))  # the end of a chunk
    wire = wire[: len(wire) - draw(st.sampled_from([0, 0, 0, cut]))]
    pos = draw(st.sampled_from([0] * 4 + [draw(st.integers(min_value=0, max_value=len(wire) + 2))]))
    return columns, wire, pos


@settings(
    # ROWMASK_EXAMPLES: fewer for a run under valgrind.
    max_examples=int(os.environ.get("ROWMASK_EXAMPLES", "1500")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(cases())
def test_the_c_core_gives_what_the_python_loop_gives(
    case: tuple[list[tuple[MaskRule | None, int, int]], bytes, int],
) -> None:
    columns, wire, pos = case
    plan = _plan(columns)
    formats = tuple(fmt for _, _, fmt in columns)
    native = RowMasker(plan, formats, native=True)
    python = RowMasker(plan, formats, native=False)
    kind = masking_rows._column_kind
    hashed = any(
        kind(plan.fields[i].rule, formats[i], plan.fields[i].type_oid)[0] == "hash"  # type: ignore[arg-type]
        for i in plan.masked
    )
    assert native.native is not hashed
    assert not python.native
    assert _run(native, wire, pos) == _run(python, wire, pos)


def test_the_gateways_maskers_use_the_c_core_unless_a_column_is_hashed() -> None:
    redact = MaskRule(pattern="x", method=MaskMethod.REDACT)
    hashed = MaskRule(pattern="x", method=MaskMethod.HASH, hash_length=8)
    assert _plan([(redact, TEXT_T, TEXT), (None, TEXT_T, TEXT)]).masker().native
    assert not _plan([(redact, TEXT_T, TEXT), (hashed, TEXT_T, TEXT)]).masker().native


def test_a_run_is_one_bytes_object_between_rows_the_python_path_takes() -> None:
    keep = MaskRule(pattern="x", method=MaskMethod.PARTIAL, keep_last=2)
    masker = _plan([(keep, TEXT_T, TEXT)]).masker()
    rows = [DataRow([b"abcdef"]).encode()] * 3 + [DataRow([None]).encode()]
    out: list[bytes] = []
    wire = b"".join(rows * 2)
    assert masker.rewrite_rows(wire, 0, out) == len(wire)
    masked = DataRow([b"***ef"]).encode() * 3
    assert out == [masked, DataRow([None]).encode(), masked, DataRow([None]).encode()]


def test_bad_arguments_are_refused() -> None:
    from server.gateway import _rowmask

    with pytest.raises(ValueError):
        _rowmask.Masker(1, [(1, _rowmask.CONST, b"\xff\xff\xff\xff", 0)], lambda *a: 0)
    with pytest.raises(ValueError):
        _rowmask.Masker(1, [(0, _rowmask.KEEP_LAST, b"", 2)], lambda *a: 0)
    with pytest.raises(TypeError):
        _rowmask.Masker(1, [], None)  # type: ignore[arg-type]
    masker = _rowmask.Masker(0, [], lambda *a: 0)
    with pytest.raises(ValueError):
        masker.rewrite(b"", -1, [])
