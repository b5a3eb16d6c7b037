"""The limits an input must fit before it is analysed, and the cut of messages.

**Budgets before work.**  Inputs longer than ``max_len`` (:data:`DEFAULT_MAX_LEN`
unless the gateway's ``analysis_limits`` say otherwise), with more than
:data:`MAX_TOKENS` tokens or nested deeper than PostgreSQL code written by people
ever is (:data:`MAX_DEPTH`, :data:`MAX_BRACKET_DEPTH`), are UNKNOWN before the
parser sees them: the compiled parser can recurse past the C stack on deep
nesting and backtracks exponentially on nested ``ARRAY[``.  A budget of CPU time
(:data:`DEFAULT_TIME_BUDGET` seconds of the thread's, so a busy host does not trip
it, less the collections of the oldest generation of garbage it happened to run:
:func:`cpu_clock`) is checked between statements by ``classify``; an analysis
that overran it is UNKNOWN and not cached.  Texts longer than ``_CACHE_MAX_KEY`` are not kept by any
of the package's caches.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

# The gateway's default statement size limit (``analysis_limits``); the guard
# passes the configured one, masking's readers use this.
DEFAULT_MAX_LEN = 262_144
DEFAULT_TIME_BUDGET = 1.0
# Deeper nesting than this is machine-made or hostile; the compiled parser
# recurses once per level and can overflow the C stack long before Python's
# recursion limit would stop it.
MAX_DEPTH = 64
# sqlglot backtracks on nested ARRAY[...] and doubles its work per level.
MAX_BRACKET_DEPTH = 6
MAX_TOKENS = 50_000
# Statement.text is for messages; a longer statement is cut.
MAX_TEXT = 2_000


_CACHE_MAX_KEY = 16_384


class _Collections(threading.local):
    started = 0.0
    spent = 0.0  # CPU seconds this thread spent collecting the oldest generation


_COLLECTIONS = _Collections()


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    # A full collection walks every object of the process: in a broker holding
    # many, hundreds of milliseconds that are no statement's cost, and that
    # would refuse whichever statement was being read when it came.
    if info.get("generation") != 2:
        return
    here = _COLLECTIONS
    if phase == "start":
        here.started = time.thread_time()
    else:
        here.spent += time.thread_time() - here.started


gc.callbacks.append(_on_collection)


def cpu_clock() -> float:
    """This thread's CPU seconds, less those it spent in full garbage collections:
    the clock an analysis's budget is counted on."""
    return time.thread_time() - _COLLECTIONS.spent
