"""The row budget: how many rows an UPDATE, DELETE or MERGE may touch, by the planner's estimate.

A scope with ``max_rows_by_explain`` has every statement that changes existing
rows -- an UPDATE, DELETE or MERGE, also inside a data-modifying CTE, COPY
(query), EXPLAIN ANALYZE or a prepared statement's EXECUTE (``needs``) --
planned by the server with ``EXPLAIN (FORMAT JSON)`` before it is forwarded.
The estimate is the sum, over every ModifyTable step of the plan, of the rows
its input is expected to produce (``estimated_rows``);
:func:`~server.gateway.guardrails.row_budget_decision` turns it into a
decision.  Without an estimate (EXPLAIN failed, a plan that cannot be read,
several statements in one Query) the statement is refused: the budget holds
only for what was estimated.  Plain EXPLAIN runs nothing, so asking costs one
round trip and changes nothing.  Not counted: rows changed by triggers,
foreign-key actions, rules' other statements, functions, DO and CALL; INSERT
and COPY FROM.

How the EXPLAIN goes upstream without disturbing the session
(:class:`Estimate`, a detour of the relay).  The client's message is held, and
so is everything the client sends after it.  The EXPLAIN must be the only
thing the server answers while the gateway reads it, so it is sent only when
every message forwarded before has been answered (``readiness``): every
ReadyForQuery asked for has arrived, and in an unfinished pipeline each
Parse, Bind, Describe, Execute and Close has had its answer (the gateway sends
a Flush so that the server sends them).  :class:`ServerSeen` counts those
answers from the session's first message on.  Then:

* for a simple Query the EXPLAIN is a Query of its own.  The server answers it
  up to its ReadyForQuery, all of which the gateway takes.  Inside an explicit
  transaction it runs inside it; if it fails there, the transaction is aborted
  exactly as the refusal that follows would abort it.
* for a Bind the EXPLAIN is a Parse, Bind (of the client's parameter values
  and formats), Execute and Closes of a statement and portal named
  ``dbaccess: row estimate``, ended by a Flush, not a Sync, so the client's
  pipeline and its implicit transaction go on around it.  If it fails, the
  server now discards everything up to the client's Sync, the client's
  messages included: the server's error is replaced by the gateway's, which
  the client sees exactly where it expects the answer to its Bind.

Nothing is asked when the server would refuse the statement anyway: after an
error in the current pipeline (it discards everything up to the Sync) or in an
aborted transaction; the statement is forwarded as it is.  A simple Query
inside an unfinished extended-protocol pipeline, and any statement while a
COPY FROM STDIN waits for data, are refused instead of estimated.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from server.gateway import pgwire
from server.gateway.pgwire import Bind, Close, Execute, Flush, Parse, Query, RawMessage
from server.gateway.relay import Relay
from server.gateway.sqlcheck import Analysis, Execution, Statement

# The statements whose row count the budget limits.
TOUCHING = frozenset({"UPDATE", "DELETE", "MERGE"})
ESTIMATE_NAME = "dbaccess: row estimate"
# Server messages ServerSeen counts: each answers one extended-protocol message
# (the Describe of a statement is answered by ParameterDescription and then one
# of these), plus ErrorResponse, ReadyForQuery and the start of COPY IN.
TRACKED = b"123nTCIsEZGW"
_ANSWERS = frozenset(b"123nTCIs")
_ASYNC = frozenset(b"NAS")  # notices, notifications, parameter changes: any time
# The answers to the extended-protocol EXPLAIN: CloseComplete x2, ParseComplete,
# BindComplete, CommandComplete (after the plan's DataRow), CloseComplete x2.
_EXTENDED_ANSWERS = 7


class Need(Enum):
    NONE = "none"  # touches no rows the budget counts
    ESTIMATE = "estimate"  # one statement: EXPLAIN it
    REFUSE = "refuse"  # several statements, one of them counted: cannot estimate


def needs(analysis: Analysis, prepared: Mapping[str, Analysis]) -> Need:
    """Whether the input needs an estimate; ``prepared`` are the session's SQL
    prepared statements, for EXECUTE (one the gateway does not know counts)."""
    if not any(_touches(top, prepared) for top in analysis.statements):
        return Need.NONE
    return Need.ESTIMATE if len(analysis.statements) == 1 else Need.REFUSE


def _touches(top: Statement, prepared: Mapping[str, Analysis]) -> bool:
    for statement, when in top.walk():
        if when is not Execution.NOW:
            continue
        if statement.command in TOUCHING:
            return True
        if statement.command == "EXECUTE":
            body = prepared.get(statement.prepared_name or "")
            if body is None:
                return True
            # A prepared statement cannot itself be an EXECUTE: one level only.
            if any(st.command in TOUCHING for b in body.statements for st, _ in b.walk()):
                return True
    return False


def explain_sql(sql: str) -> str:
    """The EXPLAIN of a statement the analysis read as one that EXPLAIN accepts
    (or one it refuses with an error, which then refuses the statement)."""
    return "EXPLAIN (FORMAT JSON) " + sql


def estimated_rows(text: str) -> float:
    """The rows the plan's ModifyTable steps are expected to change, from the
    output of EXPLAIN (FORMAT JSON); raises ValueError on anything unexpected."""
    try:
        plans = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the plan is not JSON: {exc}") from None
    if not isinstance(plans, list):
        raise ValueError("the plan is not a list")
    total = 0.0
    for entry in plans:
        plan = entry.get("Plan") if isinstance(entry, dict) else None
        if not isinstance(plan, dict):
            raise ValueError("a plan without a Plan")
        total += _modified(plan)
    return total


def _modified(node: dict[str, Any]) -> float:
    children = node.get("Plans", [])
    if not isinstance(children, list) or not all(isinstance(c, dict) for c in children):
        raise ValueError("a plan step with unreadable inputs")
    total = 0.0
    if node.get("Node Type") == "ModifyTable":
        # Its input: the Outer child ("Member" children before PostgreSQL 14);
        # InitPlans and SubPlans (a CTE, say) are counted where they modify.
        inputs = [c for c in children if c.get("Parent Relationship") in ("Outer", "Member")]
        if not inputs:
            raise ValueError("a ModifyTable step without input")
        for child in inputs:
            rows = child.get("Plan Rows")
            if not isinstance(rows, int | float) or isinstance(rows, bool) or rows < 0:
                raise ValueError("a ModifyTable input without a row estimate")
            total += float(rows)
    for child in children:
        total += _modified(child)
    return total


@dataclass
class ServerSeen:
    """What the server said since its last ReadyForQuery, as far as the budget
    needs it; fed every server message of ``TRACKED`` types that reaches the hooks."""

    answers: int = 0  # answers to extended-protocol messages
    error: bool = False
    copy_in: bool = False  # COPY FROM STDIN waits for the client's data
    status: str = "I"  # the transaction status of that ReadyForQuery

    def see(self, raw: RawMessage) -> None:
        t = raw.type
        if t == 90:  # Z
            self.answers = 0
            self.error = self.copy_in = False
            self.status = chr(raw.body[0]) if raw.body else "I"
        elif t == 69:  # E
            self.error = True
            self.copy_in = False
        elif t in (71, 87):  # G, W
            self.copy_in = True
        elif t in _ANSWERS:
            self.answers += 1
            if t == 67:  # C
                self.copy_in = False


class Readiness(Enum):
    READY = "ready"  # every message forwarded before is answered: ask now
    WAIT = "wait"  # answers are still to come
    SKIP = "skip"  # the server will refuse the statement itself: forward it
    REFUSE = "refuse"  # the session is in a state the gateway cannot ask in


def readiness(
    *,
    extended: bool,
    asked: int,
    ready: int,
    open_pipeline: bool,
    pipeline_messages: int,
    seen: ServerSeen,
) -> tuple[Readiness, str]:
    """Whether the EXPLAIN can go upstream now, from the relay's counts and what
    the server said since its last ReadyForQuery; the reason when REFUSE."""
    if seen.copy_in:
        return Readiness.REFUSE, "a COPY FROM STDIN is waiting for its data"
    if not extended and open_pipeline:
        return Readiness.REFUSE, "a simple query inside an unfinished pipeline (send Sync first)"
    if ready < asked:
        return Readiness.WAIT, ""
    # Every Sync and Query is answered: what came since belongs to the open pipeline.
    if seen.error:
        return Readiness.SKIP, ""  # the server discards everything up to the Sync
    if seen.answers < pipeline_messages:
        return Readiness.WAIT, ""
    if pipeline_messages == 0 and seen.status == "E":
        return Readiness.SKIP, ""  # an aborted transaction refuses the statement itself
    return Readiness.READY, ""


@dataclass(frozen=True)
class Estimated:
    """The end of a detour: ``rows``, or why there is none, or ``skipped``.
    ``discarding``: the EXPLAIN failed in a pipeline, so the server discards
    everything up to the client's Sync and answers nothing for the held message."""

    rows: float | None = None
    failure: str | None = None
    skipped: bool = False
    discarding: bool = False


# Given the result, the bytes to forward in place of the held message, and (when
# ``discarding``) the ErrorResponse the client sees in place of the server's.
Finish = Callable[[Relay, Estimated], tuple[bytes, bytes | None]]


def simple_request(sql: str) -> bytes:
    return Query(explain_sql(sql)).encode()


def extended_request(sql: str, param_oids: list[int], bind: Bind) -> bytes:
    name = ESTIMATE_NAME
    return b"".join(
        m.encode()
        for m in (
            Close("S", name),
            Close("P", name),
            Parse(name, explain_sql(sql), param_oids),
            Bind(name, name, bind.param_formats, bind.params, [0]),
            Execute(name, 0),
            Close("P", name),
            Close("S", name),
            Flush(),
        )
    )


class Estimate:
    """One EXPLAIN as a relay detour (see the module docstring)."""

    def __init__(self, seen: ServerSeen, *, extended: bool, request: bytes, finish: Finish):
        self.seen = seen
        self.extended = extended
        self.request = request
        self.finish = finish
        self.asking = False
        self.answers = 0
        self.rows: list[bytes | None] = []
        self.failure: str | None = None

    def start(self, relay: Relay) -> bytes | None:
        """From the client hook of the held message: what the hook returns (None:
        forward the message as it is)."""
        state, why = self._readiness(relay)
        if state is Readiness.SKIP:
            return None
        if state is Readiness.REFUSE:
            return self.finish(relay, Estimated(failure=why))[0]
        self.asking = state is Readiness.READY
        # A Flush makes the server send the answers still due in a pipeline.
        relay.start_detour(self, self.request if self.asking else Flush().encode())
        return b""

    def _readiness(self, relay: Relay) -> tuple[Readiness, str]:
        return readiness(
            extended=self.extended,
            asked=relay.asked,
            ready=relay.ready,
            open_pipeline=relay.open_pipeline,
            pipeline_messages=relay.pipeline_messages,
            seen=self.seen,
        )

    # -- Detour ---------------------------------------------------------------
    def after(self, raw: RawMessage, relay: Relay) -> None:
        if self.asking:
            return
        state, why = self._readiness(relay)
        if state is Readiness.READY:
            self.asking = True
            relay.send_upstream(self.request)
        elif state is Readiness.SKIP:
            self._end(relay, Estimated(skipped=True))
        elif state is Readiness.REFUSE:
            self._end(relay, Estimated(failure=why))

    def on_server(self, raw: RawMessage, relay: Relay) -> bytes | None:
        t = raw.type
        if not self.asking or t in _ASYNC:
            return None
        if t == 68:  # D: the plan
            self.rows.append(raw.body)
        elif t == 69:  # E
            self.failure = self.failure or _error_text(raw)
            if self.extended:
                return self._end(relay, Estimated(failure=self.failure, discarding=True))
        elif self.extended:
            if t in _ANSWERS:
                self.answers += 1
            else:
                self.failure = self.failure or f"unexpected answer {chr(t)!r} to EXPLAIN"
            if self.answers == _EXTENDED_ANSWERS:
                return self._end(relay, self._result())
        elif t == 90:  # Z: the end of the simple query
            return self._end(relay, self._result())
        return b""

    def _result(self) -> Estimated:
        if self.failure is not None:
            return Estimated(failure=self.failure)
        try:
            return Estimated(rows=estimated_rows(_plan_text(self.rows)))
        except ValueError as exc:
            return Estimated(failure=f"the plan could not be read: {exc}")

    def _end(self, relay: Relay, result: Estimated) -> bytes:
        resume, error = self.finish(relay, result)
        relay.end_detour(resume)
        return error or b""


def _plan_text(rows: list[bytes | None]) -> str:
    if len(rows) != 1:
        raise ValueError(f"{len(rows)} rows instead of one")
    body = rows[0] or b""
    # DataRow: a column count (int16), then the one column's length (int32) and bytes.
    if len(body) < 6 or body[:2] != b"\0\1":
        raise ValueError("not one column")
    length = int.from_bytes(body[2:6], "big", signed=True)
    if length < 0 or len(body) != 6 + length:
        raise ValueError("not one text value")
    return body[6:].decode("utf-8")


def _error_text(raw: RawMessage) -> str:
    try:
        msg = pgwire.decode_backend(raw)
    except pgwire.ProtocolViolation:
        return "EXPLAIN failed"
    fields = msg.fields if isinstance(msg, pgwire.ErrorResponse) else {}
    return f"EXPLAIN failed: {fields.get('M', 'unknown error')} ({fields.get('C', '?')})"
