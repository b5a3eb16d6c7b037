"""What recording access facts costs the gateway, with and without them in one run.

Statements go through the gateway's own hooks of one connection
(``MaskingHooks`` on a ``Relay``, no sockets; the answers and catalog of
``bench/recording.py``) with the session's recorder writing to a SQLite store,
once without access facts and once with them (an ``AccessContext``, as every
session has), interleaved, best of ``--runs``.  Each text is analysed first
(untimed) and its analysis handed over as the guard hands it over
(``Relay.keep_analysis``).  The statements:

* **simple** -- a Query with a number and a string that differ each time: no
  two texts share an analysis, so the facts' relations are made again for
  each (their template and index rows are found by what they say);
* **shaped simple** -- numbers only (as ``pgbench -S``): every text has the
  analysis of one shape, and the facts of the shape are made once;
* **extended** -- one text, Parse, Bind with a parameter, Describe of the
  portal (as libpq sends it: a masked session needs the result's columns
  before they come), Execute, Sync;
* each again in a masked session (one rule on the table read).

Reported:

* **event loop** -- CPU µs per statement of the driving thread: what the data
  path pays (with facts it keeps a few references and, for a masked Query,
  the plan of each result);
* **writer thread** -- CPU µs per statement of the recorder's writer thread:
  reading what only the broker holds (with facts: the facts, from their
  template), numbering the events, handing the batch to the writer process
  and adding the texts it answers with to the digest;
* **writer process** -- CPU µs per statement of the recorder's writer process
  (``server/audit/event_writes.py``): making the events (redaction, times,
  JSON; with facts: their index entries) and writing them (with facts: their
  index rows too) to the store; read from ``/proc`` in clock ticks, so coarse
  over a few thousand statements.

The gateway's throughput is bound by the broker's CPU per transaction
(bench/gateway_throughput.py reports it, and measures the throughput with and
without access events, ``dbaccess`` against ``dbaccess-no-access``); the
writer thread competes with the event loop for the interpreter lock while it
works, the writer process only for the machine's CPU.  The requirement: access
facts cost under 5 % of throughput.

Run: ``.venv/bin/python bench/access_facts.py [--statements 3000] [--runs 5]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from recording import (  # type: ignore[import-not-found]
    _DONE,
    COLUMNS,
    EXTENDED_SQL,
    MASKED,
    OID,
    SESSION,
    SIMPLE_ANSWER,
    _Catalog,
    writer_cpu,
)

from server.audit.access import SessionFacts
from server.audit.recording import Recorder
from server.gateway.access_facts import AccessContext
from server.gateway.masking import MaskingRules
from server.gateway.masking_relay import MaskingHooks
from server.gateway.pgwire import (
    Bind,
    BindComplete,
    Describe,
    Execute,
    Field,
    Parse,
    ParseComplete,
    Query,
    RowDescription,
    Sync,
)
from server.gateway.relay import Relay
from server.gateway.sqlcheck import analyze
from server.store.db import Store

CONTEXT = AccessContext(
    SessionFacts("demo", "alice", "user"), ("dba_alice", "public"), "dba_alice", "r-0123456789ab"
)


# The extended protocol as libpq (and pgbench -M extended) speaks it: the portal is
# described, so that a masked session knows its result's columns before they come.
EXTENDED_ANSWER = (
    ParseComplete().encode()
    + BindComplete().encode()
    + RowDescription(
        [Field(n, OID, i + 1, 25, -1, -1, 0) for i, n in enumerate(COLUMNS[:3])]
    ).encode()
    + _DONE
)


def _messages(n: int, variant: str) -> list[tuple[str, bytes]]:
    """Each statement's text and what the client sends for it."""
    if variant == "extended":
        return [
            (
                EXTENDED_SQL,
                Parse("", EXTENDED_SQL).encode()
                + Bind("", "", [], [str(i).encode()], []).encode()
                + Describe("P", "").encode()
                + Execute("").encode()
                + Sync().encode(),
            )
            for i in range(n)
        ]
    if variant == "shaped":  # numbers only: one analysis for every text (as pgbench -S)
        texts = [f"select id, full_name, city from customers where id = {i}" for i in range(n)]
    else:  # a string too: each text its own analysis
        texts = [
            f"select id, full_name, city from customers where id = {i} and city = 'c{i}'"
            for i in range(n)
        ]
    return [(text, Query(text).encode()) for text in texts]


def drive(recorder: Recorder, rules: MaskingRules, variant: str, n: int, facts: bool) -> float:
    """CPU µs per statement of the driving thread, through the hooks of one connection."""
    relay = Relay()
    MaskingHooks(
        rules,
        _Catalog(),  # type: ignore[arg-type]
        session_id=SESSION,
        record=recorder.record,
        search_path=CONTEXT.search_path,
        access=CONTEXT if facts else None,
    ).install(relay)
    messages = _messages(n, variant)
    extended = variant == "extended"
    # The guard analyses each text before it runs (with the session's search path)
    # and hands its analysis over (``Relay.keep_analysis``): done first, untimed.
    analyses = [analyze(text, search_path=CONTEXT.search_path) for text, _ in messages]
    answer = EXTENDED_ANSWER if extended else SIMPLE_ANSWER
    start = time.thread_time()
    for (text, message), analysis in zip(messages, analyses, strict=True):
        relay.keep_analysis(text, analysis, query=not extended)
        relay.from_client(message)
        relay.from_server(answer)
    return (time.thread_time() - start) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--statements", type=int, default=3_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="dbaccess-bench-access-"))
    store = Store.open(f"sqlite:///{base / 'store.db'}")
    # As the broker records: the store's part of each batch in the writer process.
    recorder = Recorder(store, write_process=True)
    try:
        recorder.open(SESSION, {"identity": "alice"})
        recorder.flush(60)
        variants = {
            "simple": (MaskingRules(), "simple"),
            "shaped simple": (MaskingRules(), "shaped"),
            "extended": (MaskingRules(), "extended"),
            "masked simple": (MASKED, "simple"),
            "masked shaped": (MASKED, "shaped"),
            "masked extended": (MASKED, "extended"),
        }
        best: dict[tuple[str, bool], list[float]] = {
            (name, facts): [float("inf")] * 3 for name in variants for facts in (0, 1)
        }
        for _ in range(args.runs):
            for name, (rules, variant) in variants.items():
                count = args.statements if not (rules.active and variant == "simple") else 1_000
                for facts in (False, True):
                    recorder.flush(600)
                    before, child_before = writer_cpu(recorder), process_cpu(recorder)
                    loop = drive(recorder, rules, variant, count, facts)
                    recorder.flush(600)
                    writer = (writer_cpu(recorder) - before) / count * 1e6
                    child = (process_cpu(recorder) - child_before) / count * 1e6
                    got = best[(name, facts)]
                    now = (loop, writer, child)
                    best[(name, facts)] = [min(a, b) for a, b in zip(got, now, strict=True)]
        heads = ("without", "with", "+")
        print(
            f"{'µs/statement':16s} {'event loop':>26s}   {'writer thread':>26s}   "
            f"{'writer process':>26s}"
        )
        print(f"{'':16s} " + "   ".join(" ".join(f"{h:>8s}" for h in heads) for _ in range(3)))
        for name in variants:
            without, with_ = best[(name, False)], best[(name, True)]
            print(
                f"{name:16s} "
                + "   ".join(
                    f"{a:8.2f} {b:8.2f} {b - a:+8.2f}" for a, b in zip(without, with_, strict=True)
                )
            )
    finally:
        recorder.stop()
        store.close()
        shutil.rmtree(base, ignore_errors=True)


def process_cpu(recorder: Recorder) -> float:
    """CPU seconds the recorder's writer process has used so far (0 before it starts)."""
    process = recorder._process
    pid = process.pid if process is not None else None
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
