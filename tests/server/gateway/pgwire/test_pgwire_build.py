"""The ready-made messages the gateway sends on its own, byte for byte."""

from __future__ import annotations

import pytest

from server.gateway.pgwire import (
    ENCRYPTION_REFUSED,
    GSSENC_ACCEPTED,
    SSL_ACCEPTED,
    BackendParser,
    ErrorResponse,
    auth_cleartext_request,
    auth_ok,
    backend_key_data,
    decode_backend,
    error_response,
    negotiate_protocol_version,
    notice_response,
    parameter_status,
    ready_for_query,
)

BUILT: list[tuple[str, bytes, bytes]] = [
    (
        "error",
        error_response("FATAL", "28P01", "bad ticket"),
        b"E\x00\x00\x00\x26SFATAL\x00VFATAL\x00C28P01\x00Mbad ticket\x00\x00",
    ),
    (
        "error with detail and hint",
        error_response("ERROR", "42501", "no", hint="ask", detail="why"),
        b"E\x00\x00\x00\x28SERROR\x00VERROR\x00C42501\x00Mno\x00Dwhy\x00Hask\x00\x00",
    ),
    (
        "notice",
        notice_response("WARNING", "01000", "careful", hint="h"),
        b"N\x00\x00\x00\x2aSWARNING\x00VWARNING\x00C01000\x00Mcareful\x00Hh\x00\x00",
    ),
    ("ready idle", ready_for_query("I"), b"Z\x00\x00\x00\x05I"),
    ("ready in transaction", ready_for_query("T"), b"Z\x00\x00\x00\x05T"),
    ("ready failed", ready_for_query("E"), b"Z\x00\x00\x00\x05E"),
    ("auth ok", auth_ok(), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
    ("cleartext request", auth_cleartext_request(), b"R\x00\x00\x00\x08\x00\x00\x00\x03"),
    (
        "parameter status",
        parameter_status("server_version", "15.4"),
        b"S\x00\x00\x00\x18server_version\x0015.4\x00",
    ),
    (
        "backend key data",
        backend_key_data(0x7FFFFFFF, 0xFFFFFFFF),
        b"K\x00\x00\x00\x0c\x7f\xff\xff\xff\xff\xff\xff\xff",
    ),
    (
        "negotiate",
        negotiate_protocol_version(["_pq_.a"]),
        b"v\x00\x00\x00\x13\x00\x03\x00\x00\x00\x00\x00\x01_pq_.a\x00",
    ),
    (
        "negotiate minor only",
        negotiate_protocol_version(),
        b"v\x00\x00\x00\x0c\x00\x03\x00\x00\x00\x00\x00\x00",
    ),
    ("ssl yes", SSL_ACCEPTED, b"S"),
    ("gss yes", GSSENC_ACCEPTED, b"G"),
    ("refused", ENCRYPTION_REFUSED, b"N"),
]


@pytest.mark.parametrize(("case", "built", "wire"), BUILT, ids=[b[0] for b in BUILT])
def test_built_messages(case: str, built: bytes, wire: bytes) -> None:
    assert built == wire
    if len(wire) > 1:
        parser = BackendParser()
        parser.feed(built)
        raw = parser.next_raw()
        assert raw is not None and raw.wire == wire
        assert decode_backend(raw).encode() == wire


def test_error_fields_read_back() -> None:
    parser = BackendParser()
    parser.feed(error_response("FATAL", "08P01", "dbaccess: nope", hint="try again"))
    raw = parser.next_raw()
    assert raw is not None
    err = decode_backend(raw)
    assert isinstance(err, ErrorResponse)
    assert (err.severity, err.sqlstate, err.message) == ("FATAL", "08P01", "dbaccess: nope")
    assert err.fields["H"] == "try again"


@pytest.mark.parametrize(
    ("call", "why"),
    [
        (lambda: error_response("NOTICE", "00000", "m"), "severity must be one of"),
        (lambda: notice_response("ERROR", "00000", "m"), "severity must be one of"),
        (lambda: error_response("ERROR", "4250", "m"), "SQLSTATE"),
        (lambda: error_response("ERROR", "42p01", "m"), "SQLSTATE"),
        (lambda: error_response("ERROR", "42501", "a\x00b"), "NUL"),
        (lambda: ready_for_query("X"), "transaction status"),
        (lambda: parameter_status("a\x00", "b"), "NUL"),
        (lambda: backend_key_data(-1, 0), "cannot encode"),
    ],
)
def test_builders_refuse_bad_values(call: object, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        call()  # type: ignore[operator]
