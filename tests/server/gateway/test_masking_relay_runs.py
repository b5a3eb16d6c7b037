"""The masking hooks take whole runs of DataRows at once (``Relay.on_server_run``):
the client must see exactly what the one-row-per-call path gives it, wherever the
server's bytes are cut and whatever else comes between the rows."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.gateway import pgwire
from server.gateway.masking import ColumnRef, MaskingRules
from server.gateway.masking_relay import MaskingHooks
from server.gateway.pgwire import Field, ProtocolViolation, Query, RowDescription
from server.gateway.relay import Relay
from server.policy.model import MaskMethod, MaskRule
from tests.fix_relay import StaticCatalog
from tests.fix_relay import row as _row

OID = 16400
COLUMNS = (
    ColumnRef("public", "customers", "email", type_oid=25),
    ColumnRef("public", "customers", "city", type_oid=25),
    ColumnRef("public", "customers", "card", type_oid=25),
)
RULES = MaskingRules(
    (
        MaskRule(column="public.customers.email", method=MaskMethod.PARTIAL, keep_domain=True),
        MaskRule(column="public.customers.card", method=MaskMethod.PARTIAL, keep_last=4),
    )
)
DESCRIPTION = RowDescription(
    [Field(c.column, OID, i + 1, 25, -1, -1, 0) for i, c in enumerate(COLUMNS)]
).encode()
DONE = pgwire.encode_raw(ord("C"), b"SELECT 1\0") + pgwire.ready_for_query("I")
NOTICE = pgwire.encode_raw(ord("N"), b"SNOTICE\0Mhello\0\0")


def _relay(*, runs: bool) -> tuple[Relay, MaskingHooks]:
    relay = Relay()
    hooks = MaskingHooks(RULES, StaticCatalog(OID, COLUMNS), session_id="s")  # type: ignore[arg-type]
    hooks.install(relay)
    if not runs:
        # Registering the message hook again drops the run hook: one row per call.
        hook = relay.server_hook(ord("D"))
        assert hook is not None
        relay.on_server(b"D", hook)
    relay.from_client(Query("select email, city, card from customers").encode())
    return relay, hooks


def _feed(relay: Relay, wire: bytes, cuts: list[int]) -> bytes:
    out = []
    last = 0
    for cut in [*sorted(set(cuts)), len(wire)]:
        out.append(relay.from_server(wire[last:cut])[0])
        last = cut
    return b"".join(out)


_VALUE = st.one_of(
    st.none(),
    st.binary(max_size=12),
    st.text(alphabet="ab@.é1", max_size=12).map(str.encode),
)
_ROWS = st.lists(
    st.one_of(st.tuples(_VALUE, _VALUE, _VALUE).map(lambda v: _row(*v)), st.just(NOTICE)),
    max_size=20,
)


@settings(max_examples=150, deadline=None)
@given(_ROWS, st.lists(st.integers(min_value=0, max_value=2000), max_size=8))
def test_runs_give_what_rows_one_by_one_give(rows: list[bytes], cuts: list[int]) -> None:
    wire = DESCRIPTION + b"".join(rows) + DONE
    cuts = [c % (len(wire) + 1) for c in cuts]
    whole, _ = _relay(runs=False)
    cut, _ = _relay(runs=True)
    assert _feed(cut, wire, cuts) == _feed(whole, wire, [])
    assert not cut.busy


def test_a_run_is_one_call_and_rows_are_counted_from_the_tag() -> None:
    relay, hooks = _relay(runs=True)
    calls = []
    on_row = hooks._on_row
    hooks._on_row = lambda raw, head: calls.append(raw) or on_row(raw, head)  # type: ignore[method-assign]
    rows = [_row(b"ann@example.com", b"Oslo", b"4111111111111111")] * 50
    out, _ = relay.from_server(DESCRIPTION + b"".join(rows) + NOTICE + b"".join(rows) + DONE)
    assert calls == []  # both runs were taken whole
    assert out.count(b"***@example.com") == 100 and out.count(b"***1111") == 100
    assert b"ann@" not in out and b"4111111111111111" not in out


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (pgwire.encode_raw(ord("D"), b"\0\x02\0\0\0\x01a\0\0\0\x01b"), "2 columns"),
        (pgwire.encode_raw(ord("D"), b"\0\x03\0\0\0\x09ann@x.com\0\0\0\x02Os"), "past"),
        (pgwire.encode_raw(ord("D"), b"\0"), "no column count"),
    ],
)
def test_a_malformed_row_inside_a_run_is_a_protocol_violation(bad: bytes, why: str) -> None:
    good = _row(b"ann@example.com", b"Oslo", b"4111111111111111")
    wire = DESCRIPTION + good * 3 + bad + good + DONE
    for runs in (True, False):
        relay, _ = _relay(runs=runs)
        with pytest.raises(ProtocolViolation, match=why):
            relay.from_server(wire)


def test_rows_of_an_unknown_shape_are_still_refused() -> None:
    relay, _ = _relay(runs=True)
    out, _ = relay.from_server(_row(b"ann@example.com", b"Oslo", b"1") * 3 + DONE)
    assert b"ann@" not in out
    assert [m.type for m in pgwire.split_frames(out)[0]] == [ord("E"), ord("Z")]
