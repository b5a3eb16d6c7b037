"""The connection's state against the server's: each script is what the client
sent and what the server answered, and the table must end as the server's is
(or hold less: a name the state does not hold is refused by the hooks, never
misread).

Each script is a list of steps: a client message (encoded by pgwire), or a
server answer by its type byte (``"1"``, ``"2"``, ``"3"``; ``"Z"`` or
``"ZT"`` for a ReadyForQuery and its status).  ``pipeline`` is counted as the
relay counts it: a Sync or a Query asks for the next ReadyForQuery.
"""

from __future__ import annotations

import pytest

from server.gateway import pgwire
from server.gateway.connection import ConnectionState, Note
from server.gateway.pgwire import Bind, Close, Describe, Execute, Parse, Query, Sync

Step = pgwire.Message | str


def _play(script: list[Step]) -> ConnectionState:
    state = ConnectionState()
    asked = ready = 0
    for step in script:
        if isinstance(step, str):
            if step[0] == "Z":
                ready += 1
                state.ready(ready, (step[1:] or "I").encode())
            else:
                assert step in ("1", "2", "3"), step
                state.confirmed()
            continue
        raw = pgwire.split_frames(step.encode())[0][0]
        assert not state.must_wait(raw.type, raw.body, asked + 1), step
        state.client(raw.type, raw.body, asked + 1)
        if isinstance(step, (Sync, Query)):
            asked += 1
    return state


def _texts(state: ConnectionState) -> dict[str, str]:
    return {
        name: pgwire.decode_frontend(pgwire.RawMessage(80, entry.body)).query  # type: ignore[union-attr]
        for name, entry in state.statements.items()
    }


SCRIPTS: dict[str, tuple[list[Step], dict[str, str]]] = {
    "parsed and confirmed": ([Parse("s", "select 1"), Sync(), "1", "Z"], {"s": "select 1"}),
    "parsed in one pipeline, not yet answered": (
        [Parse("s", "select 1"), Sync()],
        {"s": "select 1"},
    ),
    "a Parse that failed is undone at its ReadyForQuery": (
        [Parse("s", "selec 1"), Sync(), "Z"],
        {},
    ),
    "a name parsed again while taken: the server keeps the first; the state forgets it": (
        [Parse("s", "select 1"), Sync(), "1", "Z", Parse("s", "select 2"), Sync(), "Z"],
        {},
    ),
    "Close and Parse skipped after an error: the first statement is back": (
        [
            Parse("s", "select 1"),
            Sync(),
            "1",
            "Z",
            Bind("", "missing"),
            Close("S", "s"),
            Parse("s", "select 2"),
            Sync(),
            "Z",
        ],
        {"s": "select 1"},
    ),
    "Close and Parse that both ran": (
        [
            Parse("s", "select 1"),
            Sync(),
            "1",
            "Z",
            Close("S", "s"),
            Parse("s", "select 2"),
            Sync(),
            "3",
            "1",
            "Z",
        ],
        {"s": "select 2"},
    ),
    "an unnamed statement replaced by a skipped Parse is forgotten": (
        [
            Parse("", "select 1"),
            Sync(),
            "1",
            "Z",
            Bind("", "missing"),
            Parse("", "select 2"),
            Sync(),
            "Z",
        ],
        {},
    ),
    "an unnamed statement replaced in the same pipeline": (
        [Parse("", "select 1"), Parse("", "select 2"), Sync(), "1", "1", "Z"],
        {"": "select 2"},
    ),
    "a simple Query drops the unnamed statement": (
        [Parse("", "select 1"), Parse("k", "select 3"), Sync(), "1", "1", "Z", Query("select 2")],
        {"k": "select 3"},
    ),
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_the_state_ends_as_the_server_holds_it(name: str) -> None:
    script, expected = SCRIPTS[name]
    assert _texts(_play(script)) == expected


def test_a_message_naming_what_an_earlier_pipeline_changed_waits_for_its_end() -> None:
    state = ConnectionState()
    parse = pgwire.split_frames(Parse("s", "select 1").encode())[0][0]
    state.client(parse.type, parse.body, 1)
    bind = pgwire.split_frames(Bind("", "s").encode())[0][0]
    other = pgwire.split_frames(Bind("", "t").encode())[0][0]
    # In the same pipeline it goes on: the server runs it only if the Parse succeeded.
    assert not state.must_wait(bind.type, bind.body, 1)
    # After the Sync it waits, unless it names something else.
    assert state.must_wait(bind.type, bind.body, 2)
    assert not state.must_wait(other.type, other.body, 2)
    state.confirmed()
    assert not state.must_wait(bind.type, bind.body, 2)


def test_portals_end_with_their_transaction_but_not_those_bound_after() -> None:
    state = _play(
        [
            Parse("s", "select 1"),
            Bind("p", "s"),
            Sync(),
            "1",
            "2",
            Bind("q", "s"),  # pipelined after the Sync, before its answer
        ]
    )
    state.ready(1, b"I")
    assert list(state.portals) == ["q"]


def test_a_portal_in_a_transaction_block_outlives_its_sync() -> None:
    state = _play([Query("begin"), "Z", Parse("s", "select 1"), Bind("p", "s"), Sync()])
    state.confirmed()
    state.confirmed()
    state.ready(2, b"T")
    assert list(state.portals) == ["p"]
    execute = pgwire.split_frames(Execute("p").encode())[0][0]
    assert not state.must_wait(execute.type, execute.body, 3)


def test_a_portal_bound_again_while_taken_is_forgotten() -> None:
    state = _play([Query("begin"), "Z", Parse("s", "select 1"), Bind("p", "s"), Sync(), "1", "2"])
    state.ready(2, b"T")
    # The server refuses a second portal "p" (42P03), or takes it if a COMMIT
    # ended the first one meanwhile: which one "p" is, is not known.
    bind = pgwire.split_frames(Bind("p", "s").encode())[0][0]
    state.client(bind.type, bind.body, 3)
    assert state.bound is None and "p" not in state.portals


def test_notes_live_and_die_with_their_entry() -> None:
    mine: Note[list[int]] = Note("test")
    state = _play([Parse("s", "select 1")])
    assert state.parsed is not None
    state.parsed.annotate(mine, [1])
    state.confirmed()  # ParseComplete
    assert state.statements["s"].note(mine) == [1]
    close = pgwire.split_frames(Close("S", "s").encode())[0][0]
    state.client(close.type, close.body, 1)
    assert "s" not in state.statements
    state.ready(1, b"I")  # the Close was not confirmed: skipped, so the statement is back
    assert state.statements["s"].note(mine) == [1]


def test_a_dropped_message_is_taken_back() -> None:
    state = _play([Parse("", "select 1"), Sync(), "1", "Z"])
    parse = pgwire.split_frames(Parse("", "select 2").encode())[0][0]
    state.client(parse.type, parse.body, 2)
    state.withdrawn()
    # It never reached the server, which still has "select 1"; the state cannot
    # restore what it replaced, so it forgets the name.
    assert "" not in state.statements
    describe = pgwire.split_frames(Describe("S", "").encode())[0][0]
    assert not state.must_wait(describe.type, describe.body, 2)
