"""Access facts said once per batch: later statements of the same shape refer to them,
by the key alone where they differ only in their event's own rows and decision."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from server import policytest
from server.audit import access, event_writes
from server.audit.access import FactsReader, RelationAccess, SessionFacts
from server.audit.recording import SessionEvent, event_iso, statement_made
from server.store import tables as t
from server.store.db import Store
from tests.fix_store import insert_events

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
ALICE = SessionFacts("prod", "alice", "user")
BOB = SessionFacts("prod", "bob", "user")
CUSTOMERS = RelationAccess(
    "public", "customers", access.READ, ("id", "email"), frozenset({"email"})
)
ORDERS = RelationAccess("public", "orders", access.READ, ("id",))


def template(who: SessionFacts = ALICE, relation: RelationAccess = CUSTOMERS) -> Any:
    return access.facts_template(who, command="SELECT", relations=[relation.to_json()])


def parts(facts: access.Facts | None, rows: int = 1, decision: str = "allowed") -> tuple[Any, ...]:
    sql = "select id, email from customers where id = 1"
    tag = f"SELECT {rows}"
    return (sql, True, None, None, None, (), 1_000, rows, tag, None, decision, [], facts)


def row(
    sid: str, seq: int, facts: access.Facts | None, rows: int = 1, decision: str = "allowed"
) -> event_writes.EventRow:
    ts = int(T0.timestamp() * 1e9) + seq * 1_000_000
    return event_writes.EventRow(
        sid,
        seq,
        "statement",
        "",
        event_iso(ts),
        None,
        (statement_made, parts(facts, rows, decision), ts),
    )


def test_the_first_of_a_template_in_a_batch_is_whole_and_the_others_refer_to_it() -> None:
    alice, alice_orders, bob = template(), template(relation=ORDERS), template(BOB)
    batch = [
        row("s-a", 1, alice.facts(1, "allowed", None, None)),
        row("s-b", 1, bob.facts(2, "allowed", None, None)),
        row("s-a", 2, alice.facts(3, "allowed", None, "r-review")),
        row("s-a", 3, alice_orders.facts(4, "allowed", None, None)),
        row("s-b", 2, bob.facts(5, "allowed", None, None)),
        row("s-a", 4, None),  # a statement without facts
        row("s-a", 5, alice.facts(6, "allowed", None, None)),
    ]
    events, _texts = event_writes.made(batch)
    said = [e.text for e in events]
    stored = [json.loads(text).get(access.FACTS) for text in said]
    assert [None if f is None else f.get(access.SAME_AS, "whole") for f in stored] == [
        "whole",
        "whole",
        alice.key,
        "whole",
        bob.key,
        None,
        alice.key,
    ]
    assert stored[2] == {
        access.SAME_AS: alice.key,
        "rows": 3,
        "decision": "allowed",
        "rule": None,
        "approval": "r-review",
    }
    # Each one's index entry is that of its facts in full, as a thread would make them.
    for event, (_sid, _seq, _k, _t, _i, _e, (_make, its, _ts)) in zip(events, batch, strict=True):
        whole = statement_made(its, 0)
        assert event.entry == access.index_entry("statement", whole)
    # The next batch says them in full again.
    again, _ = event_writes.made([row("s-a", 6, alice.facts(7, "allowed", None, None))])
    assert access.SAME_AS not in json.loads(again[0].text)[access.FACTS]


def test_the_reader_makes_referring_facts_whole() -> None:
    alice = template()
    first = alice.facts(1, "allowed", None, None)
    later = alice.facts(9, "allowed", None, "r-review")
    reader = FactsReader()
    assert reader.facts("s-a", "statement", {access.FACTS: first.full()}) == first.full()
    assert reader.facts("s-a", "statement", {access.FACTS: later.same()}) == later.full()
    assert reader.facts("s-a", "notice", {access.FACTS: later.same()}) is None
    # Another recording's facts are not this one's.
    with pytest.raises(LookupError):
        reader.facts("s-b", "statement", {access.FACTS: later.same()})


def _store(store: Store, events: list[SessionEvent]) -> None:
    with store.tx() as conn:
        insert_events(conn, events)
        facts = FactsReader()
        whole = [
            SessionEvent(
                e.session_id,
                e.seq,
                e.ts,
                e.kind,
                {access.FACTS: facts.facts(e.session_id, e.kind, e.data)},
            )
            for e in events
        ]
        access.write_index(conn, whole)


def _day(alice: Any, *, by_key: bool = False) -> list[SessionEvent]:
    """Three statements of one shape as the writer process says them: whole, then as
    references (``by_key``: by the key alone)."""
    events = []
    for seq in (1, 2, 3):
        facts = alice.facts(seq, "allowed", None, None)
        said = facts.full() if seq == 1 else alice.key if by_key else facts.same()
        data = {
            "text": "select id, email from customers where id = 1",
            "rows": seq,
            "decision": "allowed",
            access.FACTS: said,
        }
        events.append(SessionEvent("s-a", seq, T0 + timedelta(seconds=seq), "statement", data))
    return events


def _problems_once_edited(
    store: Store, seq: int, data: dict[str, Any]
) -> list[tuple[str, int | None, str]]:
    """What ``verify_index`` finds once statement ``seq`` of ``s-a`` holds ``data``."""
    e = t.session_events.c
    with store.tx() as conn:
        conn.execute(
            t.session_events.update().where(e.session_id == "s-a", e.seq == seq).values(data=data)
        )
    return [(p.session_id, p.seq, p.problem) for p in access.verify_index(store)]


def test_verify_holds_referring_facts_to_the_index(any_store: Store) -> None:
    alice = template()
    _store(any_store, _day(alice))
    assert access.verify_index(any_store) == []


def test_facts_that_refer_to_none_are_found(any_store: Store) -> None:
    """The first statement's facts are edited away: the others refer to nothing."""
    alice = template()
    events = _day(alice)
    _store(any_store, events)
    assert _problems_once_edited(any_store, 1, {"text": events[0].data["text"]}) == [
        ("s-a", 2, "a statement's access facts refer to none an earlier statement holds"),
        ("s-a", 3, "a statement's access facts refer to none an earlier statement holds"),
        ("s-a", 1, "an access index row has no event in the recording"),
    ]


def test_policy_test_reads_referring_facts_whole_across_the_periods_start(
    any_store: Store,
) -> None:
    """The statement whose facts a later one names may lie before the period."""
    alice = template()
    _store(any_store, _day(alice))
    got = list(
        policytest._statements(
            any_store, "s-a", T0 + timedelta(seconds=1.5), T0 + timedelta(hours=1)
        )
    )
    assert [data[access.FACTS] for _ts, data in got] == [
        alice.facts(2, "allowed", None, None).full(),
        alice.facts(3, "allowed", None, None).full(),
    ]


def test_a_run_of_one_shape_refers_by_the_key_alone() -> None:
    """Facts that differ from those said only in the event's own rows and decision are
    the key; another approval, or facts whose rows are not the event's, say theirs."""
    alice = template()
    batch = [
        row("s-a", 1, alice.facts(1, "allowed", None, None), rows=1),
        row("s-a", 2, alice.facts(7, "allowed", None, None), rows=7),
        row("s-a", 3, alice.facts(2, "allowed", None, "r-review"), rows=2),
        row("s-a", 4, alice.facts(5, "allowed", None, None), rows=4),
        row("s-a", 5, alice.facts(3, "allowed", "some.rule", None), rows=3),
        row("s-a", 6, alice.facts(0, "allowed", None, None), rows=0),
    ]
    events, _texts = event_writes.made(batch)
    stored = [json.loads(e.text)[access.FACTS] for e in events]
    assert stored[1] == stored[5] == alice.key
    assert [type(f) for f in stored] == [dict, str, dict, dict, dict, str]
    assert stored[0][access.KEY] == alice.key
    for i in (2, 3, 4):
        assert stored[i][access.SAME_AS] == alice.key
    # Each made whole is what was handed over, and indexed as such.
    reader = FactsReader()
    for event, (*_, (_make, its, _ts)) in zip(events, batch, strict=True):
        data = json.loads(event.text)
        whole = statement_made(its, 0)
        assert reader.facts("s-a", "statement", data) == whole[access.FACTS]
        assert event.entry == access.index_entry("statement", whole)


def test_the_key_alone_takes_the_event_s_rows_and_decision() -> None:
    alice = template()
    first = alice.facts(1, "allowed", None, "r-1")
    reader = FactsReader()
    reader.facts("s-a", "statement", {access.FACTS: first.full()})
    made = reader.facts("s-a", "statement", {access.FACTS: alice.key, "rows": 9, "decision": "x"})
    assert made == alice.facts(9, "x", None, "r-1").full()
    # Nothing earlier of this recording holds the key: as for any reference.
    with pytest.raises(LookupError):
        reader.facts("s-b", "statement", {access.FACTS: alice.key, "rows": 1})
    assert reader.facts("s-a", "notice", {access.FACTS: alice.key}) is None


def test_facts_that_refer_are_never_indexed_as_none() -> None:
    """Outside a reader of the recording, a reference cannot be made whole: it is an
    error, never an event without facts (which would leave it out of the index)."""
    alice = template()
    for said in (alice.key, alice.facts(2, "allowed", None, "r-1").same()):
        with pytest.raises(LookupError):
            access.index_entry("statement", {access.FACTS: said, "rows": 2})
    assert access.index_entry("statement", {"rows": 2}) is None


def test_verify_holds_facts_said_by_key_to_the_index(any_store: Store) -> None:
    _store(any_store, _day(template(), by_key=True))
    assert access.verify_index(any_store) == []


@pytest.mark.parametrize("edited", [0, "abc", [1]])
def test_an_edited_row_count_of_a_statement_said_by_key_is_found(
    any_store: Store, edited: object
) -> None:
    """The rows of facts said by key are the event's own: changing them in the event
    (to hide how much was read, or to make the check fail) no longer matches the
    index, and is reported as such."""
    events = _day(template(), by_key=True)
    _store(any_store, events)
    assert _problems_once_edited(any_store, 2, {**events[1].data, "rows": edited}) == [
        ("s-a", 2, "the access index differs from the recorded event")
    ]
