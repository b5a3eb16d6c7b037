"""One-off start-up work in a short-lived child process, so that what it imports
stays out of the long-running broker.

Python does not give memory back by unloading a module: once the broker has
imported Alembic to migrate its store (Alembic, Mako and Pygments come to about
10 MB resident) or ``cryptography`` to make its dev certificates (about 9 MB),
that memory is resident for as long as the broker runs.  ``run_isolated`` runs
such a step in a forked child instead, hands its (pickled) result back through
a pipe, and the broker carries on without the modules.

It falls back to running the step in this process where forking is not safe or
possible (no ``os.fork``, or more than one thread running), and when the child
fails: the step then runs here again and fails with its own exception and
traceback.  Steps must therefore be idempotent (migrating a store, making the
dev certificates when they are missing).
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _single_threaded() -> bool:
    if threading.active_count() != 1:
        return False
    try:
        # Threads that Python does not know of (started by a C library) count too.
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return True


def run_isolated(step: Callable[..., T], *args: object) -> T:
    """``step(*args)``, run in a forked child when that is safe; see the module docstring."""
    if not hasattr(os, "fork") or not _single_threaded():
        return step(*args)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns, never runs the parent's cleanup
        status = 1
        try:
            os.close(read_end)
            payload = pickle.dumps(step(*args))
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
            status = 0
        except BaseException:  # noqa: S110 - the parent runs the step again and reports
            pass
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            payload = pipe.read()
    finally:
        _, wait_status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(wait_status) != 0:
        return step(*args)
    result: T = pickle.loads(payload)  # noqa: S301 - written by our own child
    return result
