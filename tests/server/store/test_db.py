"""Transactions of the embedded SQLite store, as two processes sharing one file see them.

Each :class:`Store` here stands for one process (a broker, an admin command, a
test writing a recording): its own connections to the same file.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from server import metrics
from server.approvals.machine import Status
from server.approvals.repo import RequestRepo
from server.audit import chain
from server.store import tables as t
from server.store.db import Store


@pytest.fixture
def two_stores(tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    first, second = Store.open(url), Store.open(url)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def test_what_a_transaction_read_holds_until_it_ends(two_stores: tuple[Store, Store]) -> None:
    """A transaction that read the chain's head and writes after it must not see another
    process append in between (its next number would be taken): the other waits."""
    mine, theirs = two_stores
    chain.append(mine, "first")
    appended = threading.Event()

    def append_elsewhere() -> None:
        chain.append(theirs, "elsewhere")
        appended.set()

    with mine.tx() as conn:
        head = conn.execute(sa.select(sa.func.max(t.audit_events.c.seq))).scalar()
        other = threading.Thread(target=append_elsewhere)
        other.start()
        # While this transaction is open the other process's append cannot commit.
        assert not appended.wait(0.5)
        assert conn.execute(sa.select(sa.func.max(t.audit_events.c.seq))).scalar() == head
    other.join(10)
    assert appended.is_set()
    assert chain.verify(mine).ok


def test_two_processes_appending_to_the_chain_at_once_keep_it_whole(
    two_stores: tuple[Store, Store],
) -> None:
    failures: list[BaseException] = []

    def append_many(store: Store, who: str) -> None:
        try:
            for i in range(40):
                chain.append(store, "test.event", identity=who, data={"i": i})
        except BaseException as exc:  # collected: the assertion names it
            failures.append(exc)

    threads = [
        threading.Thread(target=append_many, args=(store, who))
        for store, who in zip(two_stores, ("one", "two"), strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    result = chain.verify(two_stores[0])
    assert result.ok
    assert len(chain.events(two_stores[0], limit=1000)) == 80


def test_a_long_read_holds_up_no_writer_and_sees_one_view(two_stores: tuple[Store, Store]) -> None:
    """An audit report reading for seconds must not stall the sessions being recorded."""
    mine, theirs = two_stores
    chain.append(mine, "first")
    appended = threading.Event()

    def append_elsewhere() -> None:
        chain.append(theirs, "elsewhere")
        appended.set()

    count = sa.select(sa.func.count()).select_from(t.audit_events)
    with mine.read() as conn:
        assert conn.execute(count).scalar() == 1
        other = threading.Thread(target=append_elsewhere)
        other.start()
        assert appended.wait(10)  # not held up by the read
        assert conn.execute(count).scalar() == 1  # the read's own view
    other.join(10)
    with mine.read() as conn:
        assert conn.execute(count).scalar() == 2


def test_the_readiness_probe_answers_while_a_writer_holds_the_store(
    two_stores: tuple[Store, Store],
) -> None:
    """``/readyz`` asks whether the store answers: it must not wait for the write lock
    (up to the 30 s timeout) behind a long transaction, nor take it itself."""
    mine, theirs = two_stores
    service = SimpleNamespace(store=theirs, policy=SimpleNamespace(targets={}), archiver=None)
    answers: list[dict[str, Any]] = []
    with mine.tx() as conn:
        conn.execute(sa.text("SELECT 1"))  # holds the write lock until it ends
        probe = threading.Thread(target=lambda: answers.append(metrics.readiness(service)))  # type: ignore[arg-type]
        probe.start()
        probe.join(5)
        assert answers and answers[0]["checks"]["store"] == {"ok": True}
    probe.join(40)


def test_lookups_on_every_request_wait_for_no_writer(two_stores: tuple[Store, Store]) -> None:
    """What each API request and each gateway login reads (a token, a session by its
    ticket), and a reviewed statement's lookup of its approval before it uses
    one (a compare-and-set of its own), are reads: they must not queue for the
    write lock behind a long transaction of another process (up to the 30 s
    timeout), nor take it."""
    mine, theirs = two_stores
    secret, token = theirs.create_token("alice", ("dev",), "api", timedelta(hours=1))
    found: list[object] = []

    def lookups() -> None:
        found.append(theirs.find_token(secret))
        found.append(theirs.get_token(token.id))
        found.append(theirs.session_by_ticket("no such ticket"))
        found.append(theirs.list_tokens())
        found.append(
            RequestRepo(theirs).statement_requests("alice", "t", "s", "0" * 64, Status.APPROVED)
        )

    with mine.tx() as conn:
        conn.execute(sa.text("SELECT 1"))  # holds the write lock until it ends
        reader = threading.Thread(target=lookups)
        reader.start()
        reader.join(5)
        assert len(found) == 5, "the lookups waited for the write lock"
    reader.join(40)
    assert found[0] is not None and found[2] is None
