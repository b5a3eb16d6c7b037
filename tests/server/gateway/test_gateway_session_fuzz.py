"""Fuzzing the gateway's per-connection logic: whatever a client or a target
sends, only ProtocolViolation or GatewayError escape (each becomes an
ErrorResponse and a close), and every call returns."""

from __future__ import annotations

import itertools
import struct
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.gateway import pgwire
from server.gateway.pgwire import ProtocolViolation, RawMessage
from server.gateway.relay import Relay
from server.gateway.session import (
    CANCEL_REQUEST,
    GSSENC_REQUEST,
    PROTOCOL_3_0,
    SSL_REQUEST,
    ClientStartup,
    GatewayError,
    UpstreamLogin,
)

FUZZ = settings(
    max_examples=400,
    deadline=timedelta(seconds=1),
    suppress_health_check=[HealthCheck.too_slow],
)

small = st.binary(max_size=40)
codes = st.sampled_from([SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST, PROTOCOL_3_0, 0x00030001])
frontend_types = st.sampled_from([0, *b"pQPBESDCHXdcfF", *b"\xffa!"])
backend_types = st.sampled_from([*b"RSKZNEDTCAnIs12t3GHWdcv", 0xFF])
names = st.sampled_from(["user", "database", "application_name", "options", "client_encoding"])


@st.composite
def startup_messages(draw: st.DrawFn) -> RawMessage:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return RawMessage(draw(frontend_types), draw(small))
    if kind == 1:
        body = struct.pack("!I", draw(codes)) + draw(small)
        return RawMessage(0, body)
    if kind == 2:
        params = draw(st.dictionaries(names, st.text(max_size=8), max_size=4))
        text = b"".join(
            k.encode() + b"\0" + v.encode("utf-8", "replace") + b"\0" for k, v in params.items()
        )
        return RawMessage(
            0, struct.pack("!I", PROTOCOL_3_0) + text + draw(st.sampled_from([b"\0", b"", b"x"]))
        )
    return RawMessage(ord("p"), draw(small) + draw(st.sampled_from([b"\0", b""])))


@FUZZ
@given(st.lists(startup_messages(), max_size=6), st.booleans(), st.booleans())
def test_client_startup_only_refuses(msgs: list[RawMessage], tls: bool, required: bool) -> None:
    startup = ClientStartup(tls_available=tls, tls_required=required)
    for msg in msgs:
        try:
            reply, _result = startup.handle(msg)
        except (ProtocolViolation, GatewayError):
            return
        assert isinstance(reply, bytes)


def sasl(code: int, data: bytes) -> RawMessage:
    return RawMessage(ord("R"), struct.pack("!I", code) + data)


@st.composite
def upstream_messages(draw: st.DrawFn) -> RawMessage:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return RawMessage(draw(backend_types), draw(small))
    if kind == 1:
        code = draw(st.sampled_from([0, 3, 5, 10, 11, 12, 99]))
        data = draw(
            st.sampled_from(
                [
                    b"SCRAM-SHA-256\0\0",
                    b"r=abc,s=c2FsdA==,i=1",
                    b"v=bm90IGEgc2lnbmF0dXJl",
                    b"\xff\xfe",
                    b"",
                ]
            )
            | small
        )
        return sasl(code, data)
    t = draw(st.sampled_from(b"SKZNE"))
    return RawMessage(t, draw(small))


# Openings that get the login past its first state, so the fuzz reaches the later ones.
openings = st.sampled_from(
    [
        [],
        [sasl(0, b"")],
        [sasl(10, b"SCRAM-SHA-256\0\0")],
        [sasl(10, b"SCRAM-SHA-256\0\0"), sasl(11, b"r=x,s=c2FsdHNhbHRzYWx0,i=1")],
    ]
)


@FUZZ
@given(openings, st.lists(upstream_messages(), max_size=8))
def test_upstream_login_only_refuses(opening: list[RawMessage], msgs: list[RawMessage]) -> None:
    login = UpstreamLogin("dba_x", "secret")
    for msg in opening + msgs:
        try:
            out = login.handle(msg)
        except (ProtocolViolation, GatewayError):
            return
        assert isinstance(out, bytes)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@st.composite
def client_stream(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            parts.append(pgwire.encode_raw(draw(st.sampled_from(b"QPBESDCHXdcfF")), draw(small)))
        else:
            parts.append(draw(st.binary(max_size=12)))
    return b"".join(parts)


@FUZZ
@given(client_stream(), st.lists(st.integers(0, 400), max_size=6), st.booleans())
def test_relay_client_side_only_refuses(data: bytes, cuts: list[int], hooked: bool) -> None:
    relay = Relay()
    if hooked:
        relay.on_client(b"QP", lambda msg, r: None)
        relay.on_client(b"B", lambda msg, r: r.reply_to_client(pgwire.ready_for_query("I")) or b"")
    forwarded = b""
    for piece in chunks(data, cuts):
        try:
            up, back = relay.from_client(piece)
        except (ProtocolViolation, GatewayError):
            return
        forwarded += up
        assert isinstance(back, bytes)
    if not hooked:
        # Whatever passes is a prefix of what came in, cut at a message boundary.
        assert data.startswith(forwarded)
        _msgs, end = pgwire.split_frames(forwarded)
        assert end == len(forwarded)
        partial = relay._client_partial
        assert forwarded + (b"".join(partial.parts) if partial else b"") == data


@FUZZ
@given(
    st.lists(
        st.tuples(backend_types, small).map(lambda m: pgwire.encode_raw(*m))
        | st.binary(max_size=10),
        max_size=8,
    ),
    st.lists(st.integers(0, 400), max_size=6),
    st.booleans(),
)
def test_relay_server_side_only_refuses(parts: list[bytes], cuts: list[int], hooked: bool) -> None:
    relay = Relay()
    if hooked:
        relay.on_server(b"D", lambda msg, r: b"")
        relay.asked = 1
        relay.reply_to_client(pgwire.ready_for_query("I"))
    data = b"".join(parts)
    for piece in chunks(data, cuts):
        try:
            out, back = relay.from_server(piece)
        except (ProtocolViolation, GatewayError):
            return
        assert isinstance(out, bytes) and back == b""
