"""The relay phase without sockets: what passes, what is refused, when a
connection counts as busy, and how hooks see and replace messages."""

from __future__ import annotations

import struct

import pytest

from server.gateway import pgwire
from server.gateway.pgwire import ProtocolViolation, RawMessage
from server.gateway.relay import MAX_CLIENT_MESSAGE, Relay
from server.gateway.session import GatewayError


def msg(tag: bytes, body: bytes = b"") -> bytes:
    return tag + struct.pack("!I", len(body) + 4) + body


def query(sql: str) -> bytes:
    return msg(b"Q", sql.encode() + b"\0")


SYNC = msg(b"S")
READY = pgwire.ready_for_query("I")
ROW = msg(b"D", struct.pack("!hi", 1, 1) + b"1")
DONE = msg(b"C", b"SELECT 1\0")


def relay() -> Relay:
    return Relay()


def test_a_whole_batch_passes_as_the_same_bytes() -> None:
    r = relay()
    data = query("select 1") + query("select 2")
    up, back = r.from_client(data)
    assert up is data and back == b""
    reply = ROW + DONE + READY
    out, _ = r.from_server(reply)
    assert out is reply


def test_partial_messages_wait_for_the_rest() -> None:
    r = relay()
    data = query("select 1") + query("select 2")
    assert r.from_client(data[:3]) == (b"", b"")
    up, _ = r.from_client(data[3:15])
    assert up == data[:14]
    up, _ = r.from_client(data[15:])
    assert up == data[14:]


def test_a_large_message_in_many_pieces_comes_out_whole() -> None:
    r = relay()
    row = msg(b"D", struct.pack("!hi", 1, 300_000) + b"x" * 300_000)
    data = row + DONE + READY
    out = b""
    for i in range(0, len(data), 1000):
        got, _ = r.from_server(data[i : i + 1000])
        assert pgwire.split_frames(got)[1] == len(got)  # whole messages only
        out += got
    assert out == data


@pytest.mark.parametrize("tag", [b"\x00", b"\xff", b"a", b"!", b"R", b"T"])
def test_unknown_client_message_types_are_refused(tag: bytes) -> None:
    r = relay()
    with pytest.raises(GatewayError) as info:
        r.from_client(query("select 1") + msg(tag, b"x"))
    assert info.value.sqlstate == "08P01"
    assert "not part of the protocol" in info.value.message
    with pytest.raises(ProtocolViolation):
        r.from_client(query("select 1"))


@pytest.mark.parametrize(
    "data",
    [
        b"Q\x00\x00\x00\x02",  # a length word below 4
        b"Q" + struct.pack("!I", 0x7FFFFFFF),  # beyond PostgreSQL's own limit
        b"Q" + struct.pack("!I", MAX_CLIENT_MESSAGE + 5),  # beyond the gateway's
        b"S" + struct.pack("!I", 20_000),  # Sync is never that long
    ],
)
def test_bad_length_words_are_protocol_violations(data: bytes) -> None:
    r = relay()
    with pytest.raises(ProtocolViolation):
        r.from_client(data)
    # A violation poisons the stream: nothing after it is framed.
    with pytest.raises(ProtocolViolation):
        r.from_client(query("select 1"))


def test_busy_from_query_to_ready_for_query() -> None:
    r = relay()
    assert not r.busy
    r.from_client(query("select 1") + query("select 2"))
    assert r.busy
    r.from_server(ROW + DONE + READY)
    assert r.busy  # the second query is still running
    r.from_server(ROW + DONE)
    assert r.busy
    r.from_server(READY)
    assert not r.busy
    # An asynchronous notice after the last ReadyForQuery does not make it busy.
    r.from_server(msg(b"N", b"SNOTICE\0\0"))
    assert not r.busy


def test_an_open_pipeline_is_busy_until_its_sync_is_answered() -> None:
    r = relay()
    parse = msg(b"P", b"\0select 1\0\0\0")
    bind = msg(b"B", b"\0\0\0\0\0\0\0\0")
    execute = msg(b"E", b"\0\0\0\0\0")
    r.from_client(parse + bind + execute + msg(b"H"))
    assert r.busy  # no Sync yet: mid-pipeline
    r.from_server(msg(b"1") + msg(b"2") + ROW + DONE)
    assert r.busy
    r.from_client(SYNC)
    assert r.busy
    r.from_server(READY)
    assert not r.busy


def test_copy_in_is_busy_until_copy_done_is_answered() -> None:
    r = relay()
    r.from_client(query("copy t from stdin"))
    r.from_server(msg(b"G", b"\0\0\0"))
    r.from_client(msg(b"d", b"1\n") + msg(b"c"))
    assert r.busy
    r.from_server(msg(b"C", b"COPY 1\0") + READY)
    assert not r.busy


def test_terminate_is_noticed() -> None:
    r = relay()
    r.from_client(msg(b"X"))
    assert r.terminating


def test_a_client_hook_sees_and_replaces_its_messages() -> None:
    r = relay()
    seen: list[RawMessage] = []

    def rewrite(m: RawMessage, _r: Relay) -> bytes | None:
        seen.append(m)
        return query("select 42") if m.body.startswith(b"select 1") else None

    r.on_client(b"Q", rewrite)
    up, _ = r.from_client(query("select 1") + msg(b"H") + query("select 2"))
    assert [m.body for m in seen] == [b"select 1\0", b"select 2\0"]
    assert up == query("select 42") + msg(b"H") + query("select 2")
    assert r.asked == 2


def test_a_refusal_is_answered_after_what_was_forwarded_before_it() -> None:
    r = relay()
    refusal = pgwire.error_response("ERROR", "42501", "refused") + READY

    def refuse(m: RawMessage, rel: Relay) -> bytes | None:
        if b"drop" in m.body:
            rel.reply_to_client(refusal)
            return b""
        return None

    r.on_client(b"Q", refuse)
    up, back = r.from_client(query("select 1") + query("drop table t"))
    assert up == query("select 1") and back == b""  # waits for select 1's answer
    out, _ = r.from_server(ROW + DONE)
    assert out == ROW + DONE
    out, _ = r.from_server(READY)
    assert out == READY + refusal
    assert not r.busy
    # With nothing in flight, the answer goes back at once.
    up, back = r.from_client(query("drop table t"))
    assert up == b"" and back == refusal


def test_a_server_hook_rewrites_rows() -> None:
    r = relay()
    masked = msg(b"D", struct.pack("!hi", 1, 3) + b"***")
    r.on_server(b"D", lambda m, _r: masked)
    r.from_client(query("select 1"))
    out, _ = r.from_server(msg(b"T", b"\0\0") + ROW + ROW + DONE + READY)
    assert out == msg(b"T", b"\0\0") + masked + masked + DONE + READY
    assert not r.busy


def test_hooks_are_only_for_frontend_types_on_the_client_side() -> None:
    with pytest.raises(ValueError):
        relay().on_client(b"T", lambda m, r: None)


# -- run hooks: a whole run of DataRows in one call ---------------------------------

MASKED = msg(b"D", struct.pack("!hi", 1, 3) + b"***")


def _run_relay(calls: list[int]) -> Relay:
    """A relay whose run hook masks every DataRow of a run (and records each run's length),
    and whose per-message hook masks any it leaves."""
    r = relay()
    r.on_server(b"D", lambda m, _r: MASKED)

    def run(buf: bytes, pos: int, _r: Relay) -> tuple[int, bytes] | None:
        stop = pos
        while stop < len(buf) and buf[stop] == ord("D"):
            stop += 1 + int.from_bytes(buf[stop + 1 : stop + 5], "big")
        calls.append((stop - pos) // len(ROW))
        return stop, MASKED * ((stop - pos) // len(ROW))

    r.on_server_run(b"D", run)
    return r


def test_a_run_hook_takes_consecutive_rows_in_one_call() -> None:
    calls: list[int] = []
    r = _run_relay(calls)
    r.from_client(query("select 1"))
    out, _ = r.from_server(msg(b"T", b"\0\0") + ROW * 5 + DONE + READY)
    assert out == msg(b"T", b"\0\0") + MASKED * 5 + DONE + READY
    assert calls == [5] and not r.busy


def test_a_run_is_cut_by_other_types_and_by_chunk_boundaries() -> None:
    calls: list[int] = []
    r = _run_relay(calls)
    r.from_client(query("select 1"))
    notice = msg(b"N", b"Mhi\0\0")
    wire = msg(b"T", b"\0\0") + ROW * 3 + notice + ROW * 2 + DONE + READY
    out = b""
    for i in range(0, len(wire), 7):  # cuts rows and headers anywhere
        out += r.from_server(wire[i : i + 7])[0]
    assert out == msg(b"T", b"\0\0") + MASKED * 3 + notice + MASKED * 2 + DONE + READY
    assert sum(calls) == 5 and not r.busy


def test_a_run_hook_may_leave_a_row_to_the_message_hook() -> None:
    r = relay()
    seen: list[bytes] = []
    r.on_server(b"D", lambda m, _r: seen.append(m.body) or MASKED)
    r.on_server_run(b"D", lambda buf, pos, _r: None)
    r.from_client(query("select 1"))
    out, _ = r.from_server(ROW + ROW + DONE + READY)
    assert out == MASKED + MASKED + DONE + READY and len(seen) == 2


def test_a_run_hook_that_overreaches_is_a_bug_not_a_desync() -> None:
    r = relay()
    r.on_server(b"D", lambda m, _r: None)
    r.on_server_run(b"D", lambda buf, pos, _r: (len(buf) + 1, b""))
    with pytest.raises(RuntimeError):
        r.from_server(ROW + DONE)


def test_a_run_hook_needs_a_message_hook_and_is_dropped_when_one_is_registered_again() -> None:
    r = relay()
    with pytest.raises(ValueError):
        r.on_server_run(b"D", lambda buf, pos, _r: None)
    calls: list[int] = []
    r = _run_relay(calls)
    r.on_server(b"D", lambda m, _r: None)  # chained later: must see every row
    out, _ = r.from_server(ROW + ROW + DONE)
    assert out == ROW + ROW + DONE and calls == []


def test_rows_during_a_detour_go_to_the_detour_not_to_the_run_hook() -> None:
    calls: list[int] = []
    r = _run_relay(calls)

    class Swallow:
        def on_server(self, raw: RawMessage, relay: Relay) -> bytes | None:
            if raw.type == ord("Z"):
                relay.end_detour(b"")
            return b""

        def after(self, raw: RawMessage, relay: Relay) -> None:
            pass

    def detour(raw: RawMessage, rel: Relay) -> bytes:
        rel.start_detour(Swallow(), query("explain select 1"))
        return b""

    r.on_client(b"Q", detour)
    up, _ = r.from_client(query("select 1"))
    assert up == query("explain select 1")
    out, _ = r.from_server(ROW * 3 + DONE + READY)
    assert out == b"" and calls == [] and not r.holding


def test_each_query_takes_the_guard_s_analysis_of_its_own_text_in_order() -> None:
    """Two pipelined Queries of one text get one analysis each; the analysis of a
    Query refused after the guard let it through goes when a later one is taken."""
    from server.gateway.sqlcheck import analyze

    relay = Relay()
    a1, a2, b = analyze("select 1"), analyze("select 1 "), analyze("select 2")
    relay.keep_analysis("select 1", a1, query=True)
    relay.keep_analysis("select 1", a2, query=True)
    relay.keep_analysis("select 2", b, query=True)
    assert relay.take_query_analysis("select 1") is a1
    assert relay.take_query_analysis("select 1") is a2
    assert relay.take_query_analysis("select 2") is b
    assert relay.take_query_analysis("select 2") is None
    stale, ran = analyze("select 3"), analyze("select 4")
    relay.keep_analysis("select 3", stale, query=True)  # refused later: never taken
    relay.keep_analysis("select 4", ran, query=True)
    assert relay.take_query_analysis("select 4") is ran
    assert not relay.queried
