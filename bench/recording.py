"""What recording a session costs the data path, and what closing a long recording costs.

Each figure comes with a reference measured in the same run:

* **append** -- one ``Recorder.record`` call as the gateway's hooks make it for
  a statement (its raw fields and the function that makes the event later),
  against appending the same tuple to a list: the floor of "queue a tuple".
* **data path** -- statements through the gateway's own hooks of an unmasked
  session (``server.gateway.masking_relay.MaskingHooks`` on a ``Relay``, no
  sockets): a simple Query with new literals each time and its answer
  (RowDescription, DataRow, CommandComplete, ReadyForQuery), and the same
  statement over the extended protocol (Parse, Bind with a parameter,
  Execute, Sync).  The driving thread's CPU per statement with the session's
  recorder minus without one is what recording costs the event loop.  In a
  masked session (one rule, statements that touch its table) that includes
  masking's lookup of whether the statement touches masked columns, which
  says what the writer redacts (every literal, then).  Best of ``--runs``
  interleaved runs.
  While the data path is timed the writer only gathers its queue, and writes
  it between the timed parts, so that the two do not take turns on the
  interpreter lock inside one measurement; ``--statements`` (5,000) is about
  what the writer finds queued when it wakes every 0.2 s at 25,000 statements
  a second (a longer queue holds more raw fields in memory, which the
  collector then walks: the data path's figure grows with it).
* **writer** -- CPU of the recorder's writer thread per event (making the
  statement event: redaction, times, JSON; writing it to a SQLite store in
  batches of ``DEFAULT_BATCH_SIZE``; its digest), read from the thread's own
  CPU clock.
* **close** -- a recording of ``--close-statements`` (1,000,000) statement
  events written to a SQLite store through the recorder, then
  ``Recorder.close`` timed, with the peak of the memory Python allocates
  during it (tracemalloc); the reference is closing a recording of one
  statement in the same store.  The requirement: under 2 s, memory that
  does not grow with the recording.

Run: ``.venv/bin/python bench/recording.py [--statements 5000] [--runs 9]
[--close-statements 1000000]``
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.audit.recording import DEFAULT_BATCH_SIZE, Recorder, RecordFn
from server.gateway.catalog import CatalogSnapshot
from server.gateway.masking import ColumnRef, MaskingRules
from server.gateway.masking_relay import MaskingHooks, StatementFields, statement_data
from server.gateway.pgwire import (
    Bind,
    BindComplete,
    CommandComplete,
    DataRow,
    Execute,
    Field,
    Parse,
    ParseComplete,
    Query,
    ReadyForQuery,
    RowDescription,
    Sync,
)
from server.gateway.relay import Relay
from server.policy.model import MaskMethod, MaskRule
from server.store.db import Store

OID = 16384
COLUMNS = ("id", "full_name", "city", "email")
ORIGINS = {(OID, i + 1): ColumnRef("public", "customers", n, 25) for i, n in enumerate(COLUMNS)}
MASKED = MaskingRules(
    (MaskRule(column="public.customers.email", method=MaskMethod.PARTIAL, keep_domain=True),)
)
SESSION = "s-bench"
_ROW = DataRow([b"1", b"Grace Hopper", b"Lisbon"]).encode()
_DONE = _ROW + CommandComplete("SELECT 1").encode() + ReadyForQuery("I").encode()
SIMPLE_ANSWER = (
    RowDescription(
        [Field(n, OID, i + 1, 25, -1, -1, 0) for i, n in enumerate(COLUMNS[:3])]
    ).encode()
    + _DONE
)
EXTENDED_ANSWER = ParseComplete().encode() + BindComplete().encode() + _DONE
EXTENDED_SQL = "select id, full_name, city from customers where id = $1"


class _Catalog:
    """The customers table, as the gateway's catalog would give it."""

    current = CatalogSnapshot(ORIGINS, {OID: tuple(ORIGINS.values())}, loaded_at=0.0)

    def invalidate(self) -> None:
        pass

    def reload_if_old(self) -> None:
        pass

    def reload_missing(self) -> None:
        pass


def _messages(n: int, extended: bool) -> list[bytes]:
    if extended:
        return [
            Parse("", EXTENDED_SQL).encode()
            + Bind("", "", [], [str(i).encode()], []).encode()
            + Execute("").encode()
            + Sync().encode()
            for i in range(n)
        ]
    return [
        Query(
            f"select id, full_name, city from customers where id = {i} and city = 'c{i}'"
        ).encode()
        for i in range(n)
    ]


def drive(record: RecordFn | None, rules: MaskingRules, extended: bool, n: int) -> float:
    """CPU µs per statement of the driving thread, through the hooks of one connection."""
    relay = Relay()
    MaskingHooks(rules, _Catalog(), session_id=SESSION, record=record).install(relay)  # type: ignore[arg-type]
    messages = _messages(n, extended)
    answer = EXTENDED_ANSWER if extended else SIMPLE_ANSWER
    start = time.thread_time()
    for message in messages:
        relay.from_client(message)
        relay.from_server(answer)
    return (time.thread_time() - start) / n * 1e6


def _fields(i: int) -> StatementFields:
    """What the hooks queue for a statement of an unmasked session (no access facts)."""
    now = time.monotonic_ns()
    sql = f"select id, full_name, city from customers where id = {i} and city = 'c{i}'"
    return (
        sql,
        False,
        None,
        "unread",
        None,
        (),
        now,
        now + 1000,
        1,
        "SELECT 1",
        None,
        "allowed",
        [],
        None,
    )


def gathering(store: Store) -> Recorder:
    """A recorder whose writer waits, while the data path is timed, until ``written``."""
    return Recorder(store, batch_size=10**9, flush_interval=3600.0)


def written(recorder: Recorder) -> float:
    """Have the writer write what is queued, as it does by default; its CPU µs for that."""
    recorder.batch_size, recorder.flush_interval = DEFAULT_BATCH_SIZE, 0.01
    before = writer_cpu(recorder)
    assert recorder.flush(3600)
    spent = writer_cpu(recorder) - before
    recorder.batch_size, recorder.flush_interval = 10**9, 3600.0
    return spent * 1e6


def append_cost(recorder: Recorder, n: int) -> tuple[float, float]:
    """µs per ``Recorder.record`` of a statement's fields, and per list.append of them."""
    items = [_fields(i) for i in range(n)]
    best_record = best_list = float("inf")
    for _ in range(5):
        kept: list[tuple[Any, ...]] = []
        append = kept.append
        start = time.thread_time()
        for item in items:
            append((SESSION, time.time_ns(), "statement", item, statement_data))
        best_list = min(best_list, time.thread_time() - start)
        record = recorder.record
        start = time.thread_time()
        for item in items:
            record(SESSION, "statement", item, statement_data)
        best_record = min(best_record, time.thread_time() - start)
        written(recorder)
    return best_record / n * 1e6, best_list / n * 1e6


def writer_cpu(recorder: Recorder) -> float:
    """CPU seconds the recorder's writer thread has used so far."""
    thread = recorder._thread
    assert thread is not None and thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def data_path(recorder: Recorder, n: int, runs: int) -> dict[str, tuple[float, float, float]]:
    """Per variant: µs per statement without recording, with it, and the writer's µs per event."""
    variants: dict[str, tuple[MaskingRules, bool]] = {
        "simple": (MaskingRules(), False),
        "extended": (MaskingRules(), True),
        "masked simple": (MASKED, False),
        "masked extended": (MASKED, True),
    }
    best: dict[str, list[float]] = {name: [float("inf")] * 3 for name in variants}
    for _ in range(runs):
        for name, (rules, extended) in variants.items():
            count = n if not (rules.active and not extended) else max(n // 20, 200)
            plain = drive(None, rules, extended, count)
            recorded = drive(recorder.record, rules, extended, count)
            writer = written(recorder) / count
            got = best[name]
            best[name] = [min(got[0], plain), min(got[1], recorded), min(got[2], writer)]
    return {name: (v[0], v[1], v[2]) for name, v in best.items()}


def close_cost(store: Store, statements: int) -> tuple[float, float, float, float, float]:
    """Seconds to write ``statements`` events, to close that recording and one of a
    single statement, and the peak MB Python allocated during each close."""
    recorder = Recorder(store)
    try:

        def closing(session_id: str) -> tuple[float, float]:
            tracemalloc.start()
            start = time.perf_counter()
            closed = recorder.close(session_id, {"reason": "bench"})
            elapsed = time.perf_counter() - start
            peak = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
            assert closed.status == "closed", closed
            return elapsed, peak

        recorder.open("s-short", {"identity": "bench"})
        recorder.record("s-short", "statement", _fields(0), statement_data)
        recorder.flush(600)
        recorder.open("s-long", {"identity": "bench"})
        start = time.perf_counter()
        for i in range(statements):
            recorder.record("s-long", "statement", _fields(i), statement_data)
            if i % 20_000 == 19_999:
                recorder.flush(600)  # the queue holds 100,000 at most
        recorder.flush(3600)
        writing = time.perf_counter() - start
        short, short_peak = closing("s-short")
        long, long_peak = closing("s-long")
    finally:
        recorder.stop()
    return writing, long, long_peak, short, short_peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--statements", type=int, default=5_000)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--close-statements", type=int, default=1_000_000)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="dbaccess-bench-recording-"))
    try:
        store = Store.open(f"sqlite:///{base / 'store.db'}")
        recorder = gathering(store)
        recorder.open(SESSION, {"identity": "bench"})
        written(recorder)
        try:
            record_us, list_us = append_cost(recorder, args.statements)
            print(
                f"append: Recorder.record {record_us:.2f} µs, list.append of the same tuple "
                f"{list_us:.2f} µs ({record_us / list_us:.1f}x)"
            )
            print(
                f"data path ({args.statements} statements, best of {args.runs}; "
                "CPU µs per statement):"
            )
            for name, (plain, recorded, writer) in data_path(
                recorder, args.statements, args.runs
            ).items():
                print(
                    f"  {name:16s} hooks {plain:7.2f}  with recording {recorded:7.2f}  "
                    f"recording {recorded - plain:6.2f} on the event loop, "
                    f"{writer:6.2f} on the writer"
                )
        finally:
            recorder.stop()
        writing, long, long_peak, short, short_peak = close_cost(store, args.close_statements)
        print(
            f"close: {args.close_statements} statements (written in {writing:.0f} s): "
            f"{long:.3f} s, peak {long_peak:.2f} MB; one statement: {short:.3f} s, "
            f"peak {short_peak:.2f} MB ({long / short:.1f}x)"
        )
        store.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
