"""The connection's state against the server's: each script is what the client
sent and what the server answered, and the table must end as the server holds
it (or hold less: a name the state does not hold is refused by the hooks,
never misread).

A step is a client message (encoded by pgwire) or a server answer by its type
byte (``"1"``, ``"2"``, ``"3"``, ``"T"``, ``"C"``, ``"E"`` for an error,
``"Z"`` or ``"ZT"`` for a ReadyForQuery and its status, ``"G"`` for
CopyInResponse).  What the server answers is written as PostgreSQL answers
it (postgres.c: after an error in an extended-protocol message everything up
to the next Sync is skipped; a named Parse of a taken name fails and keeps
the old statement; a failed unnamed Parse has dropped the old one).
"""

from __future__ import annotations

import pytest

from server.gateway import pgwire
from server.gateway.connection import ConnectionState, Note
from server.gateway.connection.state import MAX_PORTALS
from server.gateway.pgwire import (
    Bind,
    Close,
    CopyData,
    CopyDone,
    Execute,
    Parse,
    ProtocolViolation,
    Query,
    Sync,
)

Step = pgwire.Message | str


def _raw(message: pgwire.Message) -> pgwire.RawMessage:
    return pgwire.split_frames(message.encode())[0][0]


def _play(script: list[Step], state: ConnectionState | None = None) -> ConnectionState:
    state = state or ConnectionState()
    for step in script:
        if isinstance(step, str):
            t = ord(step[0])
            state.server(t, (step[1:] or "I").encode() if t == 90 else b"")
            continue
        raw = _raw(step)
        assert not state.must_wait(raw.type, raw.body), step
        state.client(raw.type, raw.body)
    return state


def _texts(state: ConnectionState) -> dict[str, str]:
    texts = {}
    for entry in state.prepared():
        msg = pgwire.decode_frontend(pgwire.RawMessage(80, entry.body))
        assert isinstance(msg, Parse)
        texts[msg.name] = msg.query
    return texts


def _portals(state: ConnectionState) -> dict[str, str | None]:
    found = {}
    for name in ("", "p", "q"):
        portal = state.portal(name)
        if portal is not None:
            statement = portal.statement
            found[name] = None if statement is None else statement.key.decode()
    return found


ONE = Parse("s", "select 1")
TWO = Parse("s", "select 2")

SCRIPTS: dict[str, tuple[list[Step], dict[str, str]]] = {
    "parsed and confirmed": ([ONE, Sync(), "1", "Z"], {"s": "select 1"}),
    "parsed, not yet answered": ([ONE, Sync()], {"s": "select 1"}),
    "a Parse that failed is undone": ([Parse("s", "selec 1"), Sync(), "E", "Z"], {}),
    "a name parsed again while taken: the server keeps the first": (
        [ONE, Sync(), "1", "Z", TWO, Sync(), "E", "Z"],
        {"s": "select 1"},
    ),
    "Close and Parse skipped after an error: the first statement is back": (
        [ONE, Sync(), "1", "Z", Bind("", "missing"), Close("S", "s"), TWO, Sync(), "E", "Z"],
        {"s": "select 1"},
    ),
    "Close and Parse that both ran": (
        [ONE, Sync(), "1", "Z", Close("S", "s"), TWO, Sync(), "3", "1", "Z"],
        {"s": "select 2"},
    ),
    "a CloseComplete for a name the state did not hold still counts": (
        [
            ONE,
            Sync(),
            "1",
            "Z",
            TWO,
            Sync(),
            "E",
            "Z",
            Close("S", "zz"),
            TWO,
            Sync(),
            "3",
            "E",
            "Z",
        ],
        {"s": "select 1"},
    ),
    "an unnamed statement replaced by a skipped Parse is kept": (
        [
            *(Parse("", "select 1"), Sync(), "1", "Z"),
            *(Bind("", "missing"), Parse("", "select 2"), Sync(), "E", "Z"),
        ],
        {"": "select 1"},
    ),
    "an unnamed statement replaced by a failed Parse is gone": (
        [Parse("", "select 1"), Sync(), "1", "Z", Parse("", "selec 2"), Sync(), "E", "Z"],
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
    "a Query skipped after an error answers nothing": (
        [Execute("nope"), Query("select 1"), ONE, Sync(), "E", "Z", TWO, Sync(), "1", "Z"],
        {"s": "select 2"},
    ),
    "names are the server's first 63 bytes": (
        [
            *(Parse("a" * 63 + "1", "select 1"), Sync(), "1", "Z"),
            *(Close("S", "a" * 63 + "2"), Sync(), "3", "Z"),
        ],
        {},
    ),
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_the_state_ends_as_the_server_holds_it(name: str) -> None:
    script, expected = SCRIPTS[name]
    assert _texts(_play(script)) == expected


def test_sql_that_changes_names_makes_the_state_forget_them() -> None:
    state = _play([ONE, Parse("k", "select 3"), Sync(), "1", "1", "Z"])
    state.forget(["S", "s"])  # DEALLOCATE S, as the analysis names it and as folded
    assert _texts(state) == {"k": "select 3"}
    state.forget(None)  # DEALLOCATE ALL
    assert _texts(state) == {}


def test_a_statement_that_deallocates_forgets_each_time_it_runs() -> None:
    state = _play([Parse("d", "deallocate s"), Sync(), "1", "Z", ONE, Sync(), "1", "Z"])
    parsed = state.statement("d")
    assert parsed is not None
    state.forgets_when_run(parsed, ["s"], portals=False)
    _play([Bind("", "d"), Execute("")], state)
    assert "s" not in _texts(state)


def test_a_message_naming_what_an_earlier_pipeline_changed_waits_for_its_answer() -> None:
    state = _play([Parse("", "select 1")])
    bind = _raw(Bind("", ""))
    # In the same pipeline it goes on: the server runs it only if the Parse succeeded.
    assert not state.must_wait(bind.type, bind.body)
    _play([Sync()], state)
    assert state.must_wait(bind.type, bind.body)
    other = _raw(Bind("", "t"))
    assert not state.must_wait(other.type, other.body)
    _play(["1"], state)  # ParseComplete: known now, before the ReadyForQuery
    assert not state.must_wait(bind.type, bind.body)


def test_messages_that_replace_a_name_do_not_wait() -> None:
    state = _play([Parse("", "select 1"), Bind("", ""), Sync()])
    for message in (Parse("", "select 2"), Bind("", "k"), Close("S", ""), Close("P", "")):
        raw = _raw(message)
        assert not state.must_wait(raw.type, raw.body), message


def test_what_an_undone_message_replaced_is_not_given_back_if_it_never_took_effect() -> None:
    # The second Parse fails (the name is taken); the Close after it, in a later
    # pipeline, is skipped: what the Close would give back is the failed one.
    state = _play([ONE, Sync(), "1", "Z", TWO, Sync(), Bind("", "missing"), Close("S", "s")])
    _play([Sync(), "E", "Z", "E", "Z"], state)
    assert _texts(state) in ({"s": "select 1"}, {})


def test_an_error_settles_what_it_skipped() -> None:
    state = _play([Bind("", "missing"), Parse("", "select 2"), Sync()])
    bind = _raw(Bind("", ""))
    assert state.must_wait(bind.type, bind.body)
    _play(["E"], state)
    assert not state.must_wait(bind.type, bind.body)


def test_portals_end_with_their_transaction_but_not_those_bound_after() -> None:
    state = _play([ONE, Bind("p", "s"), Sync(), "1", "2", Bind("q", "s")])
    _play(["Z"], state)
    assert _portals(state) == {"q": "s"}


def test_a_portal_in_a_transaction_block_outlives_its_sync() -> None:
    state = _play([Query("begin"), "ZT", ONE, Bind("p", "s"), Sync(), "1", "2", "ZT"])
    assert _portals(state) == {"p": "s"}
    _play([Query("commit"), "C", "Z"], state)
    assert _portals(state) == {}


def test_a_portal_bound_again_while_taken_keeps_the_first() -> None:
    state = _play([Query("begin"), "ZT", ONE, Bind("p", "s"), Sync(), "1", "2", "ZT"])
    _play([Parse("k", "select 3"), Bind("p", "k"), Sync(), "1", "E", "ZE"], state)
    assert _portals(state) == {"p": "s"}


def test_the_syncs_a_copy_reads_are_not_answered() -> None:
    state = _play([Parse("", "copy t from stdin"), Bind("", ""), Execute(""), Sync()])
    _play(["1", "2", "G", CopyData(b"1\n"), Sync(), CopyDone(), Sync(), "C", "Z"], state)
    _play([ONE, Sync(), "1", "Z"], state)
    assert _texts(state) == {"": "copy t from stdin", "s": "select 1"}


def test_copies_one_after_another_in_simple_queries() -> None:
    state = ConnectionState()
    for _ in range(2):
        _play([Query("copy t from stdin"), "G", CopyData(b"1\n"), CopyDone(), "C", "Z"], state)
    _play([ONE, Sync(), "1", "Z"], state)
    assert _texts(state) == {"s": "select 1"}


def test_a_copydone_sent_before_the_copyinresponse_ends_that_copy() -> None:
    copy = Parse("", "copy t from stdin")
    state = _play([copy, Bind("", ""), Execute(""), CopyData(b"1\n"), CopyDone(), Sync()])
    _play(["1", "2", "G", "C", "Z", ONE, Sync(), "1", "Z"], state)
    # Not left copying: a Parse of a taken name is still matched to its error.
    _play([TWO, Sync(), "E", "Z"], state)
    assert _texts(state) == {"": "copy t from stdin", "s": "select 1"}


def test_a_sync_after_a_copydone_sent_together_is_answered() -> None:
    state = _play([Query("copy t from stdin"), CopyDone(), Sync(), "G", "C", "Z", "Z"])
    _play([ONE, Sync(), "1", "Z"], state)
    assert _texts(state) == {"s": "select 1"}


def test_a_message_sent_into_a_copy_ends_the_connection() -> None:
    # PostgreSQL ends the connection on it, or runs it if the COPY had already
    # failed: the gateway does not guess which.
    state = _play([Query("copy t from stdin"), ONE, Sync()])
    with pytest.raises(ProtocolViolation, match="COPY data"):
        _play(["G"], state)
    state = _play([Query("copy t from stdin"), "G", CopyData(b"1\n"), Sync()])
    with pytest.raises(ProtocolViolation, match="COPY data"):
        _play([ONE], state)


def test_forgetting_a_name_also_forgets_what_an_undo_would_give_back() -> None:
    state = _play([ONE, Sync(), "1", "Z", Bind("", "missing"), Close("S", "s"), Sync()])
    state.forget(["s"])  # DEALLOCATE s; PREPARE s AS ... goes by before the error comes
    _play(["E", "Z"], state)
    assert _texts(state) == {}


def test_an_answer_that_fits_nothing_sent_ends_the_connection() -> None:
    state = _play([ONE, Sync()])
    with pytest.raises(ProtocolViolation, match="cannot tell"):
        _play(["2"], state)


def test_notes_live_and_die_with_their_entry() -> None:
    mine: Note[list[int]] = Note("test")
    state = _play([ONE])
    assert state.parsed is not None
    state.parsed.annotate(mine, [1])
    _play([Sync(), "1", "Z", Close("S", "s"), Bind("", "missing"), Sync()], state)
    assert state.statement("s") is None
    _play(["3", "E", "Z"], state)
    assert state.statement("s") is None  # closed, really
    state = _play([ONE])
    assert state.parsed is not None
    state.parsed.annotate(mine, [2])
    _play([Sync(), "1", "Z", Bind("", "missing"), Close("S", "s"), Sync(), "E", "Z"], state)
    found = state.statement("s")
    assert found is not None and found.note(mine) == [2]  # the Close was skipped


def test_a_dropped_message_is_taken_back() -> None:
    state = _play([Parse("", "select 1"), Sync(), "1", "Z"])
    parse = _raw(Parse("", "select 2"))
    state.client(parse.type, parse.body)
    state.withdrawn()
    assert _texts(state) == {"": "select 1"}  # it never reached the server


def test_named_portals_are_bounded() -> None:
    state = _play([Query("begin"), "ZT", ONE, Sync(), "1", "ZT"])
    for n in range(MAX_PORTALS + 5):
        _play([Bind(f"p{n}", "s")], state)
    assert state.portal("p0") is None and state.portal(f"p{MAX_PORTALS + 4}") is not None
