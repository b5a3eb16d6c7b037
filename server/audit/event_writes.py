"""Writing a batch of a recorder's numbered events to the store: in its thread, or in a process.

The recorder's writer thread makes each event's data, its canonical text and
its number, and adds its line to the recording's digest (``recording.py``);
what is left is the store's part, :func:`write_events`: in one transaction,
which of the batch's recordings this recorder still writes (``FOR SHARE`` on
PostgreSQL, so that a replica taking one over waits for the batch), their
events (``server.store.bulk``: COPY on PostgreSQL, rows of many values on
SQLite) and the access index of their statements (``access.write_entries``).

That part is Python too (rows made, the driver called, the index's rows made
from each statement's facts), and on a busy broker the writer thread competes
with the event loop for the interpreter lock: every hand-over of the lock is a
pair of context switches, and the thread's work slows the loop's through the
caches it shares.  Measured on the gateway's throughput bench (pgbench -S, 8
clients, SQLite store), leaving the store's part out took the broker from
6,200 to 8,000 transactions a second.  :class:`WriterProcess` therefore does
that part in a child process of its own (``python -P -m
server.audit.event_writes``: ``-P``, so that nothing in the broker's working
directory is run in its place), which holds its own connection to the store:
the writer thread sends it each batch as plain tuples (session, number, kind,
canonical text, time, and the values the access index holds of a statement's
facts, ``access.index_entry``, which the events of one statement shape share)
and waits for the answer without holding the lock.  An event whose data is made
in two steps (``recording.TwoStep``: a statement's) comes as what its second
step makes it from instead, with that step's function (by name): the child
makes its data, canonical text and index entry (:func:`made`), writes it, and
answers with the texts it made, for the recording's digest; one it cannot
make fails the whole batch unwritten (:class:`Unmade`), and the writer thread
makes that batch itself.  Only a store another
process can open can be written so (a SQLite file, PostgreSQL; not an
in-memory SQLite database).

The child reads requests on its standard input and answers on a pipe the
parent hands it (a length, then a pickle: both ends are this module, and the
pipes are the parent's own; the child's standard output and error are the
broker's).  It ignores SIGINT and SIGTERM (a Ctrl-C at the terminal reaches
the whole process group, and the broker still has events to write while it
stops) and ends when its input closes: when the recorder stops, or when the
broker dies, however it died.  A child that ends during a batch (killed, out
of memory) may have committed it or not: the recorder reads back whether the
store holds the batch (one transaction: all of it or none), keeps it as
written if it does, and otherwise fails the batch's recordings, loudly, as
when the store refuses a batch; the next batch starts a new child.  A child
that cannot start, or speaks another version of this protocol (a broker
upgraded in place), was handed nothing: the recorder logs why and writes from
its own thread from then on.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final, NamedTuple

import sqlalchemy as sa

from server.audit import access, canonical
from server.store import bulk
from server.store import tables as t
from server.store.db import Store

log = logging.getLogger(__name__)

_EVENT_COLUMNS: Final = ("session_id", "seq", "ts", "kind", "data")
_LENGTH = struct.Struct("!Q")
# How long a stopping recorder waits for its child to end once its input is closed.
_STOP_TIMEOUT: Final = 10.0


# A ``recording.TwoStep``'s second step: data from its parts, the event's time and
# what earlier events of its recording in the batch said.
Make = Callable[[Any, int, "access.Said | None"], Mapping[str, Any]]
# How an event's data is made in the writer process: a module-level function (it
# travels by name), what it makes the data from (plain values), the event's time.
Later = tuple[Make, Any, int]


class EventRow(NamedTuple):
    """An event as the store keeps it."""

    session_id: str
    seq: int
    kind: str
    text: str  # the data's canonical JSON: stored as it is, and hashed in the event's line
    iso: str  # its time
    entry: access.IndexEntry | None  # what the access index holds of its facts
    # Its data is made where it is written, by :func:`made` (``text`` and ``entry``
    # wait for it): the recorder's ``TwoStep`` builds.
    later: Later | None = None


class Unmade(Exception):
    """An event's data could not be made where the batch was to be written: nothing
    of the batch was written."""


def made_data(later: Later, said: access.Said | None = None) -> tuple[Mapping[str, Any], str]:
    """The data of an event made later, and its canonical text (``canonical.stored_form``);
    ``said``: see ``recording.TwoStep``."""
    make, parts, ts_ns = later
    return canonical.stored_form(make(parts, ts_ns, said))


def made(events: Sequence[EventRow]) -> tuple[list[EventRow], list[str]]:
    """The events, those whose data is made here (``later``) made: their canonical
    text (``canonical.stored_form``) and access index entry; and those texts, in
    order, for the recorder's digests.  :class:`Unmade` when one cannot be made.
    The events of a recording in the batch are made knowing what the earlier ones
    said (a statement's access facts, after the first of theirs, refer to it):
    the batch is written whole or not at all."""
    out: list[EventRow] = []
    texts: list[str] = []
    said: dict[str, access.Said] = {}
    reader = access.FactsReader(interleaved=True)
    for e in events:
        if e.later is None:
            out.append(e)
            continue
        try:
            data, text = made_data(e.later, said.setdefault(e.session_id, {}))
            entry = reader.entry(e.session_id, e.kind, data)
        except Exception as exc:
            raise Unmade(
                f"a {e.kind} event could not be made: {type(exc).__name__}: {exc}"
            ) from exc
        out.append(EventRow(e.session_id, e.seq, e.kind, text, e.iso, entry))
        texts.append(text)
    return out, texts


def mine_query(writer: str | None) -> sa.Select[tuple[str]]:
    """Which of the recordings ``:ids`` a recorder writing as ``writer`` still writes,
    held ``FOR SHARE`` until the transaction ends."""
    r = t.session_recordings.c
    mine = r.writer.is_(None) if writer is None else r.writer == writer
    return (
        sa.select(r.session_id)
        .where(
            r.session_id.in_(sa.bindparam("ids", expanding=True)),
            sa.or_(mine, r.writer.is_(None)),
        )
        .with_for_update(read=True)
    )


def write_events(
    conn: sa.Connection, mine: sa.Select[tuple[str]], events: Sequence[EventRow]
) -> set[str]:
    """Write, in ``conn``'s transaction, the events of the recordings this writer
    still writes (``mine``: :func:`mine_query`) and their access index; returns the
    recordings whose events were not written (another replica took them over)."""
    ids = sorted({e.session_id for e in events})
    writes = {str(sid) for sid in conn.execute(mine, {"ids": ids}).scalars()}
    stamp = bulk.iso_timestamps(conn)
    written = [(e, stamp(e.iso)) for e in events if e.session_id in writes]
    if written:
        bulk.insert(
            conn,
            t.session_events,
            _EVENT_COLUMNS,
            [(e.session_id, e.seq, ts, e.kind, e.text) for e, ts in written],
        )
        access.write_entries(
            conn,
            [
                (e.session_id, e.seq, datetime.fromisoformat(e.iso), e.entry)
                for e, _ in written
                if e.entry is not None
            ],
        )
    return set(ids) - writes


def shareable(store: Store) -> bool:
    """Whether another process can open ``store`` (not an in-memory SQLite database)."""
    url = store.engine.url
    if url.get_backend_name() != "sqlite":
        return True
    database = url.database or ""
    return database not in ("", ":memory:") and not database.startswith("file:")


class WriterUnavailable(Exception):
    """The child process could not be started: nothing was handed to it."""


class WriterLost(Exception):
    """The child process ended with a batch: it may or may not have written it."""


# What the child runs (``python -m``); the tests name another to make it fail.
CHILD_MODULE = "server.audit.event_writes"
# What the child says once it has opened the store, with the version of what the
# two say to each other (a broker upgraded in place starts the new module's code).
_READY: Final = "ready"
PROTOCOL: Final = 3


class WriterProcess:
    """The store's part of a recorder's writes, in a child process (see the module)."""

    def __init__(self, store: Store, writer: str | None) -> None:
        self._url = store.engine.url.render_as_string(hide_password=False)
        self._writer = writer
        self._proc: subprocess.Popen[bytes] | None = None
        self._answers: IO[bytes] | None = None  # the child's answers (a pipe of their own)
        # One batch at a time: the recorder's writer thread calls write(), stop() may
        # come from another thread.
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def write(self, events: Sequence[EventRow]) -> tuple[str | None, set[str], list[str]]:
        """What :func:`write_events` returns, with the store's problem (or None), and
        the texts of the events whose data the child made (:func:`made`).
        Raises :class:`WriterUnavailable` when no child could be started (the
        batch was not handed over: the caller may write it itself),
        :class:`Unmade` when the child could not make an event's data (it wrote
        nothing), and :class:`WriterLost` when the child ended with the batch in
        its hands (whether it was written is for the caller to find out in the
        store)."""
        with self._lock:
            try:
                proc = self._started()
            except (OSError, WriterUnavailable, pickle.PickleError) as exc:
                self._end(kill=True)
                raise WriterUnavailable(str(exc) or type(exc).__name__) from None
            try:
                assert proc.stdin is not None and self._answers is not None
                _send(proc.stdin, _plain(events))
                answer = _receive(self._answers)
            except (OSError, EOFError, pickle.PickleError) as exc:
                answer, lost = None, f"{type(exc).__name__}: {exc}"
            else:
                lost = "it ended"
            if answer is None:
                # Ended (killed, or out of memory) with the batch: it may have
                # written it before it ended, and it writes nothing more now.
                self._end(kill=True)
                raise WriterLost(lost)
        problem, fenced, detail, texts = answer
        if texts is None:
            raise Unmade(detail)
        if problem is not None:
            log.error("cannot write %d session events: %s", len(events), detail)
        return problem, fenced, texts

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Close the child's input and wait for it to end; a child still busy with a
        batch after ``timeout`` is killed (the recorder then finds out what it wrote)."""
        if not self._lock.acquire(timeout=timeout):
            proc = self._proc
            if proc is not None:
                proc.kill()
            self._lock.acquire()
        try:
            self._end(kill=False)
        finally:
            self._lock.release()

    def _started(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                return proc
            self._end(kill=True)  # ended between batches: its pipes go with it
        root = str(Path(__file__).resolve().parents[2])
        path = os.environ.get("PYTHONPATH")
        # The answers come on a pipe of their own, not on the child's standard output,
        # where whatever the interpreter or a library prints would end up among them.
        answers, answering = os.pipe()
        try:
            proc = subprocess.Popen(
                # -P: the broker's working directory is not searched for the module
                # (a server/ there would be run instead, and be handed the store's URL).
                [sys.executable, "-P", "-m", CHILD_MODULE, str(answering)],
                stdin=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}"},
                close_fds=True,
                pass_fds=(answering,),
            )
        except BaseException:
            os.close(answers)
            raise
        finally:
            os.close(answering)
        self._proc = proc
        self._answers = os.fdopen(answers, "rb")
        assert proc.stdin is not None
        # The store's URL (with its password) goes through the pipe, never the command line.
        _send(proc.stdin, (PROTOCOL, self._url, self._writer))
        ready = _receive(self._answers)
        if ready != (_READY, PROTOCOL):
            if ready is None:
                raise WriterUnavailable(f"the writer process ended at its start ({proc.wait()})")
            raise WriterUnavailable(f"the writer process speaks another protocol: {ready!r}")
        return proc

    def _end(self, *, kill: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
        else:
            try:
                assert proc.stdin is not None
                proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        answers, self._answers = self._answers, None
        for pipe in (proc.stdin, answers):
            if pipe is not None:
                pipe.close()


# A batch goes through the pipe as plain tuples: pickle writes those in C, where a
# named tuple costs a Python call (its __getnewargs__) each, on the writer thread.
_Entry = tuple[tuple[Any, ...], int | None, list[access.ColumnAccess]]  # an IndexEntry's
_Row = tuple[str, int, str, str, str, _Entry | None, Later | None]


def _plain(events: Sequence[EventRow]) -> list[_Row]:
    return [
        (
            e.session_id,
            e.seq,
            e.kind,
            e.text,
            e.iso,
            None if e.entry is None else (e.entry.described, e.entry.rows, e.entry.columns),
            e.later,
        )
        for e in events
    ]


def _rows(rows: Sequence[_Row]) -> list[EventRow]:
    return [
        EventRow(sid, seq, kind, text, iso, None if d is None else access.IndexEntry(*d), later)
        for sid, seq, kind, text, iso, d, later in rows
    ]


def _send(pipe: IO[bytes], value: object) -> None:
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.write(_LENGTH.pack(len(payload)) + payload)
    pipe.flush()


def _receive(pipe: IO[bytes]) -> Any:
    """The next value from ``pipe``; None when it closed."""
    head = pipe.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    payload = pipe.read(size)
    if len(payload) < size:
        return None
    return pickle.loads(payload)  # noqa: S301 - written by this module's other end


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """The child: make and write each batch that comes, answer (problem, fenced,
    detail, the texts it made); texts None: it could not make them, and wrote nothing."""
    first = _receive(requests)
    if first is None:
        return
    protocol, url, writer = first
    if protocol != PROTOCOL:
        _send(answers, (_READY, PROTOCOL))  # the parent sees another protocol, and stops
        return
    store = Store.open(url)
    mine = mine_query(writer)
    _send(answers, (_READY, PROTOCOL))
    try:
        while (rows := _receive(requests)) is not None:
            answer: tuple[str | None, set[str], str | None, list[str] | None]
            try:
                events, texts = made(_rows(rows))
            except Unmade as exc:
                _send(answers, (None, set(), str(exc), None))
                continue
            try:
                with store.tx() as conn:
                    fenced = write_events(conn, mine, events)
                answer = (None, fenced, None, texts)
            except Exception as exc:
                access.forget(store.engine)
                answer = (
                    f"the store refused the recording: {type(exc).__name__}",
                    set(),
                    str(exc),
                    texts,
                )
            _send(answers, answer)
    finally:
        store.close()


def main() -> None:
    # A batch is thousands of new tuples, none of them in a cycle: collecting after
    # every 700 allocations (the default) cost the child an eighth of its time.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with os.fdopen(int(sys.argv[1]), "wb") as answers:  # the parent's pipe for them
        serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    main()
