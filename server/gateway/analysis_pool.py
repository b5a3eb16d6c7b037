"""Costly analysis in worker processes, so that it never holds the gateway's interpreter lock.

sqlglot's compiled tokenizer and parser hold the Python interpreter lock for
as long as one call runs (a 45,000-token statement: about 0.1 s tokenizing
and 0.3 s parsing), so an analysis thread still stalls the event loop, and
with it every other connection and the API, for that long.  Reading a large
statement therefore happens in another process:

* ``AnalysisPool`` keeps a few worker processes (``DEFAULT_WORKERS``), each
  started with the ``spawn`` method (a fresh interpreter that imports the
  analysis, about a second: never a fork of the threaded broker, and, unlike
  a fork server, no socket in the temporary directory that a killed broker
  would leave behind) when a call first needs one, and stopped when the
  gateway stops.  Each worker reads a pickled call from its pipe, runs it and
  writes the pickled answer back; it exits when its pipe closes (the broker
  ended, however).
* ``AnalysisPool.call`` runs one pure function there and blocks the calling
  thread until the answer comes (the thread waits without the interpreter
  lock).  Only analysis threads call it (:func:`offload` tells; the event
  loop never waits for a worker): a connection has at most one analysis under
  way, so one client cannot take more than one worker at a time, and its
  other messages wait, in order, until the decision is made.
* A call that has not answered after its wall-clock allowance (twice the CPU
  budget the analysis itself checks, plus half a second for a busy host) has
  its worker killed and replaced, and raises ``OverBudget``; a worker that
  dies (a crash, out of memory) is replaced and the call raises
  ``WorkerFailed``.  Callers fail closed: the statement is refused.
* ``close`` kills the workers (a call under way raises ``WorkerFailed``), so
  a broker told to stop never waits for an analysis.

What crosses the pipe is the statement's text and the few facts the function
needs (search path, parameters, limits), and the function's result (an
``Analysis``, a set of names, sqlglot trees): the caches stay in the broker,
so a statement seen before, and every small one, is read there without any
of this (``offload`` decides by the text's length, ``PROCESS_MIN_CHARS``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any, Final, TypeVar, cast

from server.gateway import sqlcheck
from server.gateway.sqlcheck import Analysis

log = logging.getLogger(__name__)

DEFAULT_WORKERS: Final = 2
# Texts longer than this are read in a worker process.  Measured
# (bench/analysis_pool.py): the costliest text of this length (one-character
# tokens) holds the interpreter lock 8-12 ms read inline, 1.5 ms through a worker
# (sending it, unpickling the answer), and the round trip adds a few ms of waiting
# for that statement alone; at 1 kB inline costs 4-6 ms, about one switch of the
# lock, and statements people write (literals, names) cost well under 1 ms.
PROCESS_MIN_CHARS: Final = 2048
# Over the CPU budget the analysis checks itself: the worker may wait for a core.
WALL_FACTOR: Final = 2.0
WALL_SLACK: Final = 0.5
# Workers yield the CPU to the event loop (on a host with few cores, a worker
# reading a costly statement would otherwise delay it as much as a thread).
WORKER_NICENESS: Final = 10
# How long a new worker may take to import the analysis (at its low priority, on
# a busy host) before it counts as failed; what it first says when it is ready.
START_TIMEOUT: Final = 60.0
_READY: Final = b"ready"
# Imported by a fork server, when one is used, so that its workers are ready at once.
_PRELOAD: Final = ["server.gateway.sqlcheck"]

_T = TypeVar("_T")


class WorkerFailed(Exception):
    """The worker process that ran a call ended before answering."""


class OverBudget(WorkerFailed):
    """A call did not answer within its allowance; its worker was killed."""


class _Worker:
    __slots__ = ("conn", "process")

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        with contextlib.suppress(Exception):
            self.process.kill()
            self.process.join(2)


class AnalysisPool:
    """A bounded set of worker processes that run pure functions (see the module docstring)."""

    def __init__(self, workers: int = DEFAULT_WORKERS, *, start_method: str = "spawn") -> None:
        if workers < 1:
            raise ValueError("an analysis pool needs at least one worker")
        self.size = workers
        if start_method not in ("forkserver", "spawn"):
            # A fork of the threaded broker could copy a lock another thread holds.
            raise ValueError("analysis workers start with forkserver or spawn, never fork")
        self._ctx = cast(
            "ForkServerContext | SpawnContext", multiprocessing.get_context(start_method)
        )
        if isinstance(self._ctx, ForkServerContext):
            self._ctx.set_forkserver_preload(_PRELOAD)
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._busy: set[_Worker] = set()
        self._starting = 0
        self.closed = False
        self.replaced = 0  # workers killed or lost and started again

    # -- life cycle --------------------------------------------------------------
    def start(self) -> None:
        """Start every worker now rather than at the first calls (blocks while they
        import the analysis: call it off the event loop)."""
        for _ in range(self.size):
            worker = self._spawn()
            with self._cond:
                if self.closed:
                    worker.stop()
                    return
                self._idle.append(worker)
                self._cond.notify()

    def close(self) -> None:
        """Kill every worker; calls under way raise ``WorkerFailed``, later ones too."""
        with self._cond:
            self.closed = True
            idle, busy = list(self._idle), list(self._busy)
            self._idle.clear()
            self._cond.notify_all()
        for worker in idle:
            worker.stop()
        for worker in busy:
            # Its caller sees the pipe close and stops the worker itself (closing
            # the pipe under a thread that polls it would not wake that thread).
            with contextlib.suppress(Exception):
                worker.process.kill()

    def _stopping(self) -> bool:
        return self.closed

    def pids(self) -> list[int]:
        with self._cond:
            return [w.process.pid for w in (*self._idle, *self._busy) if w.process.pid]

    # -- calls -------------------------------------------------------------------
    def call(self, budget: float, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """``fn(*args, **kwargs)`` in a worker; ``budget`` is the CPU time it is
        meant to take at most (it gets ``WALL_FACTOR`` times that, plus
        ``WALL_SLACK`` of wall-clock time before its worker is killed)."""
        request = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        worker = self._acquire()
        keep = False
        try:
            try:
                worker.conn.send_bytes(request)
                if not worker.conn.poll(budget * WALL_FACTOR + WALL_SLACK):
                    raise OverBudget(f"no answer within {budget * WALL_FACTOR + WALL_SLACK:g}s")
                # Our own worker's answer over a private pipe: a client's text is
                # data inside it, never pickle opcodes.
                ok, value = pickle.loads(worker.conn.recv_bytes())  # noqa: S301
            except OverBudget:
                raise
            except (EOFError, OSError) as exc:
                raise WorkerFailed(self._why_ended(worker, exc)) from None
            keep = True
        finally:
            self._release(worker, keep)
        if not ok:
            raise WorkerFailed(f"the analysis process failed: {value}")
        result: _T = value
        return result

    def _acquire(self) -> _Worker:
        with self._cond:
            while True:
                if self.closed:
                    raise WorkerFailed("the gateway is stopping")
                if self._idle:
                    worker = self._idle.pop()
                    self._busy.add(worker)
                    return worker
                if len(self._busy) + self._starting < self.size:
                    self._starting += 1
                    break
                self._cond.wait()
        # A worker was lost earlier (or never started): start one for this call.
        try:
            worker = self._spawn()
        except Exception as exc:
            with self._cond:
                self._starting -= 1
                self._cond.notify()
            raise WorkerFailed(f"cannot start an analysis process: {exc}") from exc
        with self._cond:
            self._starting -= 1
            if self._stopping():
                worker.stop()
                raise WorkerFailed("the gateway is stopping")
            self._busy.add(worker)
            return worker

    def _release(self, worker: _Worker, keep: bool) -> None:
        with self._cond:
            self._busy.discard(worker)
            if keep and not self.closed:
                self._idle.append(worker)
            self._cond.notify()
        if not keep:
            # Killed or dead: the next call that finds no idle worker starts another.
            worker.stop()
            self.replaced += 1

    def _spawn(self) -> _Worker:
        ours, theirs = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_serve, args=(theirs,), name="dbaccess-analysis", daemon=True
        )
        failed: list[BaseException] = []

        def start() -> None:
            # On Linux a thread has a nice value of its own, which a process it
            # starts inherits: the new interpreter imports the analysis (about a
            # second of CPU) at the workers' priority already, and this helper
            # thread ends with it.
            if sys.platform == "linux":
                with contextlib.suppress(OSError):
                    os.nice(WORKER_NICENESS)
            try:
                process.start()
            except BaseException as exc:
                failed.append(exc)

        starter = threading.Thread(target=start, name="dbaccess-analysis-start")
        starter.start()
        starter.join()
        theirs.close()
        if failed:
            ours.close()
            raise failed[0]
        worker = _Worker(process, ours)
        # Ready once it has imported the analysis: a statement's allowance starts
        # when a worker can read it, not while a new one starts on a busy host.
        try:
            ready = ours.poll(START_TIMEOUT) and ours.recv_bytes() == _READY
        except (EOFError, OSError):
            ready = False
        if not ready:
            worker.stop()
            raise WorkerFailed(f"an analysis process was not ready within {START_TIMEOUT:g}s")
        return worker

    @staticmethod
    def _why_ended(worker: _Worker, exc: BaseException) -> str:
        # Its pipe closed as it exited; under load its status may take a moment.
        worker.process.join(3)
        code = worker.process.exitcode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return f"the analysis process ended by {name}"
        if code is not None:
            return f"the analysis process exited with status {code}"
        return f"the analysis process stopped answering ({type(exc).__name__})"


def _serve(conn: Connection) -> None:
    """A worker's loop: calls in, answers out, until the pipe closes."""
    # The broker stops its workers itself; a Ctrl-C at a terminal reaches the
    # whole process group and must not print a traceback here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        conn.send_bytes(_READY)
    except OSError:
        return
    # Reading a costly statement is background work: the broker's event loop,
    # the database and the other clients come first for the CPU.  (On Linux it
    # started at that priority already, see AnalysisPool._spawn.)
    if sys.platform != "linux":
        with contextlib.suppress(OSError):
            os.nice(WORKER_NICENESS)
    while True:
        try:
            request = conn.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            fn, args, kwargs = pickle.loads(request)  # noqa: S301 (from the broker, see call)
            answer = pickle.dumps((True, fn(*args, **kwargs)), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # the caller fails closed on it
            answer = pickle.dumps((False, f"{type(exc).__name__}: {exc}"))
        try:
            conn.send_bytes(answer)
        except OSError:
            return


# Analysis threads run a relay with the pool at hand; anything else (the event
# loop, tests without a gateway) reads inline.
_LOCAL = threading.local()


@contextlib.contextmanager
def offloading(pool: AnalysisPool | None) -> Iterator[None]:
    """Within this block (in an analysis thread), ``offload`` sends long texts to ``pool``."""
    before = getattr(_LOCAL, "pool", None)
    _LOCAL.pool = pool
    try:
        yield
    finally:
        _LOCAL.pool = before


def offload(text: str) -> AnalysisPool | None:
    """The pool to read ``text`` in, or None to read it here: only for a text
    longer than ``PROCESS_MIN_CHARS``, and only in a thread that may wait."""
    if len(text) <= PROCESS_MIN_CHARS:
        return None
    pool: AnalysisPool | None = getattr(_LOCAL, "pool", None)
    return pool


def analyze(
    sql: str,
    *,
    search_path: tuple[str, ...] = ("public",),
    max_len: int = sqlcheck.DEFAULT_MAX_LEN,
    params: tuple[str | None, ...] | None = None,
    time_budget: float = sqlcheck.DEFAULT_TIME_BUDGET,
) -> Analysis:
    """:func:`sqlcheck.analyze`, in a worker process where :func:`offload` says so.

    The caches are the broker's: a text read before is answered here.  A worker
    that ran past its allowance gives the over-budget analysis, one that died a
    failed one (both refuse the statement); neither is cached."""
    # Over the length limit, the analysis refuses it before reading anything.
    pool = offload(sql) if len(sql) <= max_len else None
    if pool is None:
        return sqlcheck.analyze(
            sql, search_path=search_path, max_len=max_len, params=params, time_budget=time_budget
        )
    cached = sqlcheck.analysis_cached(sql, search_path=search_path, max_len=max_len, params=params)
    if cached is not None:
        return cached
    try:
        parts, over_budget, failed, deterministic = pool.call(
            time_budget, _analyze_in_parts, sql, search_path, max_len, params, time_budget
        )
        statements: list[sqlcheck.Statement] = []
        for part in parts:
            # One short unpickling at a time, so that the event loop gets the
            # interpreter lock in between (see _analyze_in_parts).
            statements.extend(pickle.loads(part))  # noqa: S301 (our own worker's)
        result = Analysis(tuple(statements), over_budget=over_budget, failed=failed)
    except OverBudget:
        return sqlcheck.over_budget_analysis(sql, time_budget)
    except WorkerFailed as exc:
        log.warning("analysing a statement of %d characters failed: %s", len(sql), exc)
        return sqlcheck.failed_analysis(sql, str(exc))
    if deterministic:
        sqlcheck.remember(sql, result, search_path=search_path, max_len=max_len, params=params)
    return result


# Statements per separately pickled part of an analysis.  Unpickling holds the
# interpreter lock for the whole call: thousands of statements (a Query of
# many) in one call would stall the event loop for tens of milliseconds.
_PART: Final = 256


def _analyze_in_parts(
    sql: str,
    search_path: tuple[str, ...],
    max_len: int,
    params: tuple[str | None, ...] | None,
    time_budget: float,
) -> tuple[list[bytes], bool, str | None, bool]:
    """In a worker: ``sqlcheck.analyze_uncached``, its statements pickled in parts."""
    analysis, deterministic = sqlcheck.analyze_uncached(
        sql, search_path, max_len, params, time_budget
    )
    found = analysis.statements
    parts = [
        pickle.dumps(found[i : i + _PART], protocol=pickle.HIGHEST_PROTOCOL)
        for i in range(0, len(found), _PART)
    ]
    return parts, analysis.over_budget, analysis.failed, deterministic


def read_with(text: str, fn: Callable[..., _T], failed: _T, budget: float, *args: Any) -> _T:
    """:func:`read` of ``fn(text, *args)``: ``args`` are the few facts the reading
    needs besides the text (they are sent along)."""
    pool = offload(text)
    if pool is None:
        return fn(text, *args)
    try:
        return pool.call(budget, fn, text, *args)
    except WorkerFailed as exc:
        log.warning("reading a statement of %d characters failed: %s", len(text), exc)
        return failed


def read(text: str, fn: Callable[[str], _T], failed: _T, budget: float) -> _T:
    """``fn(text)`` for a pure reading of a statement (names, columns, where its
    statements end), in a worker process where :func:`offload` says so;
    ``failed`` (the reading's own "cannot tell", on which its caller fails
    closed) when the worker ran past ``budget`` or died."""
    return read_with(text, fn, failed, budget)
